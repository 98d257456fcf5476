"""Retrieval recall and classification accuracy in numpy (caption metrics: `captions`; VQA: `vqa`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# ------------------------------------------------------------------------------------------ retrieval


def retrieval_recall(
    similarity: np.ndarray, text_to_image: Sequence[int], ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Recall@k in both directions for image-text retrieval, in percent.

    Args:
        similarity: (num_images, num_texts) scores, higher is better.
        text_to_image: for every text (column), the index of the image it describes. An image may have
            several texts; every text has exactly one image.
        ks: the cut-offs.

    Returns:
        `{"i2t_R@k": ..., "t2i_R@k": ..., "i2t_mean": ..., "t2i_mean": ..., "rsum": ...}`. Image-to-text:
        an image counts as found at k when ANY of its texts ranks in its top k (the COCO/Flickr protocol);
        text-to-image: a text counts when its image ranks in its top k. Ties are broken pessimistically
        (a tied wrong item ranks before the right one).

    Example:

    ```python
    >>> import numpy as np
    >>> from turbo_hf.evaluation.metrics import retrieval_recall
    >>> sim = np.array([[0.9, 0.1, 0.99], [0.2, 0.7, 0.95]])
    >>> retrieval_recall(sim, [0, 1, 1], ks=(1,))
    {'i2t_R@1': 50.0, 't2i_R@1': 66.66666666666666, 'i2t_mean': 50.0, 't2i_mean': 66.66666666666666, 'rsum': 116.66666666666666}
    ```
    """
    similarity = np.asarray(similarity, dtype=np.float64)
    text_to_image = np.asarray(text_to_image, dtype=np.int64)
    num_images, num_texts = similarity.shape
    if text_to_image.shape != (num_texts,):
        raise ValueError(f"`text_to_image` needs one image index per text ({num_texts}), got {text_to_image.shape}.")
    if num_texts and (text_to_image.min() < 0 or text_to_image.max() >= num_images):
        raise ValueError("`text_to_image` holds an index outside the images.")
    # image -> text: rank of the best-ranked correct text = number of wrong texts scoring >= it
    i2t_ranks = np.empty(num_images, dtype=np.int64)
    for image in range(num_images):
        scores = similarity[image]
        correct = text_to_image == image
        if not correct.any():
            raise ValueError(f"Image {image} has no text.")
        best = scores[correct].max()
        i2t_ranks[image] = int(((scores >= best) & ~correct).sum())
    # text -> image: rank of the correct image = number of other images scoring >= it
    t2i_ranks = np.empty(num_texts, dtype=np.int64)
    for text in range(num_texts):
        scores = similarity[:, text]
        target = scores[text_to_image[text]]
        t2i_ranks[text] = int((scores >= target).sum()) - 1
    result: dict[str, float] = {}
    for k in ks:
        result[f"i2t_R@{k}"] = 100.0 * float((i2t_ranks < k).mean())
    for k in ks:
        result[f"t2i_R@{k}"] = 100.0 * float((t2i_ranks < k).mean())
    result["i2t_mean"] = float(np.mean([result[f"i2t_R@{k}"] for k in ks]))
    result["t2i_mean"] = float(np.mean([result[f"t2i_R@{k}"] for k in ks]))
    result["rsum"] = float(sum(result[f"i2t_R@{k}"] + result[f"t2i_R@{k}"] for k in ks))
    return result


# ------------------------------------------------------------------------------------- classification


def topk_accuracy(logits: np.ndarray, labels: Sequence[int], k: int = 1) -> float:
    """Top-k accuracy in percent (a sample counts when its label is among the k highest logits)."""
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    if logits.shape[0] != labels.shape[0]:
        raise ValueError(f"{logits.shape[0]} rows of logits but {labels.shape[0]} labels.")
    k = min(k, logits.shape[1])
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return 100.0 * float((top == labels[:, None]).any(axis=1).mean())


__all__ = ["retrieval_recall", "topk_accuracy"]
