"""Where the visual items (images and videos) of a prompt sit among its tokens, for the in-LLM reduction.

A visual item is one image or one video: the placeholder tokens its features replace. Its tokens are consecutive
among the prompt's visual tokens (text may sit between them, as Qwen3-VL's timestamps between a video's frames);
the in-LLM reduction keeps `llm_keep` of each item's tokens, so a video's frames are reduced jointly.
"""

from __future__ import annotations

from collections import deque

import torch

CHUNKED = (
    "Image token reduction inside the language model needs all image tokens of a prompt in one forward call "
    "(chunked prefill, `prefill_chunk_size`, splits images and is not supported)"
)


def visual_item_counts(
    input_ids: torch.Tensor, counts: dict[int, list[int]]
) -> tuple[torch.Tensor, list[list[int]]]:
    """The visual tokens of a batch and, per sample, the token count of each of its visual items in order.

    Args:
        input_ids: (B, Q) the prompt.
        counts: for each placeholder token id (the image token, the video token), the token counts of all its
            items in the batch, in order (sample after sample), as the vision encoder gives them.

    Returns:
        `(is_visual, item_counts)`: (B, Q) bool, and per sample the count of each item in order of appearance.

    Example:

    ```python
    >>> import torch
    >>> from turbo_hf.modeling.llm_token_layout import visual_item_counts
    >>> ids = torch.tensor([[7, 7, 1, 8, 8, 8], [1, 8, 8, 7, 0, 0]])  # 7: image token, 8: video token
    >>> visual_item_counts(ids, {7: [2, 1], 8: [3, 2]})[1]
    [[2, 3], [2, 1]]
    ```
    """
    mismatch = (
        "The prompt's visual tokens do not line up with its encoded images and videos (expand each placeholder "
        "with this model's processor; {CHUNKED})"
    ).format(CHUNKED=CHUNKED[0].lower() + CHUNKED[1:])
    queues = {token: deque(int(count) for count in token_counts) for token, token_counts in counts.items()}
    tokens = torch.tensor(list(counts), device=input_ids.device, dtype=input_ids.dtype)
    is_visual = torch.isin(input_ids, tokens)
    result = []
    for sample in range(input_ids.shape[0]):
        kinds = input_ids[sample][is_visual[sample]].tolist()
        items, start = [], 0
        while start < len(kinds):
            token = kinds[start]
            if not queues[token]:
                raise ValueError(f"{mismatch}: sample {sample} holds more tokens of id {token} than its items give.")
            count = queues[token].popleft()
            if kinds[start : start + count] != [token] * count:
                raise ValueError(
                    f"{mismatch}: sample {sample} holds a run of tokens of id {token} that is not a whole item of "
                    f"{count} tokens."
                )
            items.append(count)
            start += count
        result.append(items)
    left = {token: list(queue) for token, queue in queues.items() if queue}
    if left:
        raise ValueError(f"{mismatch}: items of {left} tokens (by placeholder id) have no tokens in the prompt.")
    return is_visual, result


__all__ = ["CHUNKED", "visual_item_counts"]
