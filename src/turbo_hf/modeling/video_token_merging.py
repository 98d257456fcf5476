"""Joint merging of a video's tokens across its frames, before the language model (`video_keep`): the one count
for the model and the processor, and the merge itself.

The frames of a video repeat most of their content, so the tokens of all frames are matched together. Bipartite
matching pairs even with odd positions; the tokens are laid out position-major (token `t` of frame `f` at
`t * F + f`), so the same patch in consecutive frames sits side by side and can merge, as can spatial neighbours
(each token takes its most similar partner among all of the other set). Each round removes at most half the tokens
(`max_reduction`), so a small `video_keep` takes a few rounds. The kept tokens go back to time order (frame-major,
each at the first position it holds), which is the order the language model reads.

Scores come from the projected features themselves (no attention layer runs here): redundancy is their cosine
similarity, and the semantic value (modes `"turbo"` and `"semantic"`) the attention of their size-weighted mean,
as for towers without [CLS]. `reduction="merge"` averages by size; `"prune"` drops. The sizes go with the merged
tokens to the language model, whose masks give each one its `log(size)` key bias (`llava_next_kit`).

Example:

```python
>>> from turbo_hf.modeling.video_token_merging import video_token_count
>>> video_token_count(8 * 144, 0.25), video_token_count(8 * 144, 100), video_token_count(8 * 144, None)
(288, 100, 1152)
```
"""

from __future__ import annotations

import torch

from .configuration_turbo import TurboConfig
from .merging import max_reduction, merge_tokens
from .turbo_encoder import LayerStep


def video_token_count(num_tokens: int, video_keep: int | float | None) -> int:
    """Tokens a video of `num_tokens` stock tokens gives the language model under `video_keep`."""
    if video_keep is None:
        return num_tokens
    keep = video_keep if isinstance(video_keep, int) else max(1, round(video_keep * num_tokens))
    return min(keep, num_tokens)


def _step(config: TurboConfig, round_idx: int, r: int) -> LayerStep:
    settings = config.score_settings()
    return LayerStep(
        layer_idx=round_idx, r=r, merged_before=round_idx > 0, mode=settings["mode"], alpha=settings["alpha"],
        alpha_scale=settings["alpha_scale"], reduction=settings["reduction"], seed=settings["seed"],
        protect_first=False, summary_query="mean", proportional_attention=config.proportional_attention,
    )


def merge_video_tokens(
    features: torch.Tensor, frames: int, keep: int, config: TurboConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge the tokens of each video (a row of `features`, (B, F * T, C), frame-major) down to `keep` tokens.

    Returns:
        `(features, sizes)`: (B, keep, C) in time order and (B, keep, 1), the stock tokens each one stands for.
    """
    batch, num_tokens, channels = features.shape
    per_frame = num_tokens // frames
    # position-major: entry t * F + f is token t of frame f; `origin` is each token's frame-major position
    origin = torch.arange(num_tokens, device=features.device).view(frames, per_frame).t().reshape(1, -1)
    origin = origin.expand(batch, -1)
    hidden = features.gather(1, origin[..., None].expand(-1, -1, channels))
    size = torch.ones(batch, num_tokens, 1, device=features.device, dtype=torch.float32)
    scaling, round_idx = channels**-0.5, 0
    while hidden.shape[1] > keep:
        step = _step(config, round_idx, min(hidden.shape[1] - keep, max_reduction(hidden.shape[1], False)))
        heads = hidden[:, None]  # one head: the features are queries and keys
        plan = step.plan(size, heads, heads, scaling, step.attention_bias(size, hidden.dtype))
        hidden, size = merge_tokens(hidden, size, plan, step.reduction)
        origin = origin.gather(1, plan.keep_idx)
        round_idx += 1
    order = origin.argsort(dim=1)
    hidden = hidden.gather(1, order[..., None].expand(-1, -1, channels))
    return hidden, size.gather(1, order[..., None])


__all__ = ["merge_video_tokens", "video_token_count"]
