"""Model-agnostic retrieval and zero-shot metrics on embeddings and score matrices.

Every function here takes plain arrays (numpy arrays or torch tensors) so it can be checked against hand
computations without a model.

Tie rule
--------
Scores are compared exactly, and ties are resolved against the model (the worst case over every possible
ordering of tied items). For a query whose set of correct gallery items is ``C``, with ``s* = max_{c in C} s_c``
the best score of a correct item, the rank of the query is

    rank = #{ j not in C : s_j >= s* }

i.e. every *incorrect* item that scores at least as high as the best correct item is counted as ranked above it,
while ties among correct items do not hurt. The query is a hit at K when ``rank < K``. A model that gives every
item the same score therefore gets a recall of 0 at every ``K`` smaller than the number of incorrect items, instead
of whatever an arbitrary sort order would give it. The same rule gives zero-shot top-K accuracy (the correct set
is the true class), and top-1 predictions for the confusion matrix resolve a tie at the maximum to a wrong class,
so that its diagonal always agrees with top-1 accuracy.

All recalls and accuracies are percentages (0-100), as remote-sensing retrieval papers report them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..inference.classes import average_prompt_embeddings  # noqa: F401  (part of the metrics API)

TIE_RULES = {
    "pessimistic": "pessimistic: rank = number of incorrect items scoring >= the best-scoring correct item; "
    "hit@K iff rank < K",
    # Published remote-sensing retrieval numbers rank with a sort, where an exact tie (e.g. the same caption text
    # written for several images, frequent in UCM-Captions and RSICD) may fall either way; this rule is the
    # favourable bound of that.
    "optimistic": "optimistic: rank = number of incorrect items scoring > the best-scoring correct item; "
    "hit@K iff rank < K",
}
TIE_RULE = TIE_RULES["pessimistic"]

DEFAULT_RETRIEVAL_KS: tuple[int, ...] = (1, 5, 10)
DEFAULT_ZERO_SHOT_KS: tuple[int, ...] = (1, 5)


def as_numpy(array: Any, dtype: Any = np.float64) -> np.ndarray:
    """Convert a numpy array, torch tensor or nested sequence to a numpy array of ``dtype``."""
    if hasattr(array, "detach"):  # torch.Tensor, without importing torch here
        array = array.detach().cpu().float().numpy()
    return np.asarray(array, dtype=dtype)


def as_float_array(array: Any) -> np.ndarray:
    """Like `as_numpy`, but float32 and float64 inputs keep their precision (large score matrices stay float32;
    comparisons are exact in either)."""
    if hasattr(array, "detach"):
        array = array.detach().cpu().float().numpy()
    array = np.asarray(array)
    return array if array.dtype in (np.float32, np.float64) else array.astype(np.float64)


def _check_scores(scores: Any, name: str = "scores") -> np.ndarray:
    scores = as_float_array(scores)
    if scores.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (queries x gallery) matrix, got shape {scores.shape}")
    if not np.isfinite(scores).all():
        bad = np.argwhere(~np.isfinite(scores))[0]
        raise ValueError(f"{name} contains a non-finite value at row {bad[0]}, column {bad[1]}")
    return scores


def correct_mask_from_indices(correct: Sequence[Sequence[int] | int], num_gallery: int) -> np.ndarray:
    """Build a (queries x gallery) boolean mask from, per query, the index or indices of its correct items."""
    mask = np.zeros((len(correct), num_gallery), dtype=bool)
    for row, items in enumerate(correct):
        items = [items] if np.isscalar(items) else list(items)
        for item in items:
            item = int(item)
            if not 0 <= item < num_gallery:
                raise ValueError(
                    f"query {row}: correct index {item} is outside the gallery of size {num_gallery}"
                )
            mask[row, item] = True
    return mask


def first_correct_ranks(
    scores: Any, correct: Any, chunk_size: int = 1024, ties: str = "pessimistic"
) -> np.ndarray:
    """0-based rank of the best-placed correct item of every query, under a tie rule of `TIE_RULES`
    (`"pessimistic"` by default: a tie counts against the query).

    Args:
        scores: (queries x gallery) similarity scores, higher is better.
        correct: boolean (queries x gallery) mask of the correct items, or per query a sequence of correct
            gallery indices (or a single index). Every query needs at least one correct item.
        chunk_size: number of queries processed at once (bounds the temporary memory for large galleries).
    """
    if ties not in TIE_RULES:
        raise ValueError(f"ties must be one of {sorted(TIE_RULES)}, got {ties!r}")
    scores = _check_scores(scores)
    if isinstance(correct, np.ndarray) and correct.dtype == bool:
        mask = correct
    elif hasattr(correct, "detach") and str(correct.dtype) == "torch.bool":
        mask = correct.detach().cpu().numpy()
    else:
        mask = correct_mask_from_indices(correct, scores.shape[1])
    if mask.shape != scores.shape:
        raise ValueError(f"correct mask shape {mask.shape} does not match scores shape {scores.shape}")
    empty = np.flatnonzero(~mask.any(axis=1))
    if empty.size:
        raise ValueError(f"query {empty[0]} has no correct gallery item ({empty.size} such queries)")
    ranks = np.empty(scores.shape[0], dtype=np.int64)
    for start in range(0, scores.shape[0], chunk_size):
        s = scores[start : start + chunk_size]
        m = mask[start : start + chunk_size]
        best = np.where(m, s, -np.inf).max(axis=1, keepdims=True)
        ahead = s >= best if ties == "pessimistic" else s > best
        ranks[start : start + chunk_size] = (ahead & ~m).sum(axis=1)
    return ranks


def recall_at_k(scores: Any, correct: Any, ks: Sequence[int] = DEFAULT_RETRIEVAL_KS) -> dict[int, float]:
    """Recall@K in percent: the share of queries with a correct item in their top K (any-of rule, tie rule above)."""
    ranks = first_correct_ranks(scores, correct)
    return recall_from_ranks(ranks, ks)


def recall_from_ranks(ranks: np.ndarray, ks: Sequence[int]) -> dict[int, float]:
    for k in ks:
        if int(k) < 1:
            raise ValueError(f"K must be >= 1, got {k}")
    if ranks.size == 0:
        raise ValueError("no queries to compute recall on")
    return {int(k): float(100.0 * np.mean(ranks < int(k))) for k in ks}


def retrieval_metrics(
    similarity: Any,
    text_to_image: Sequence[int] | np.ndarray,
    ks: Sequence[int] = DEFAULT_RETRIEVAL_KS,
    ties: str = "pessimistic",
) -> dict[str, float | int]:
    """Image->text and text->image recall@K and their mean (mR) for one language.

    Args:
        similarity: (images x texts) similarity matrix.
        text_to_image: for every text (column), the index of the image it describes.
        ks: cut-offs.
        ties: the tie rule (`TIE_RULES`).

    Image->text counts an image as correct when any of its captions is in its top K. Images that have no caption
    (e.g. a language whose translations are missing) cannot be scored as image->text queries; they are left out of
    image->text and reported as ``images_without_texts``. They stay in the gallery of text->image retrieval.
    Returns keys ``i2t_R@K``, ``t2i_R@K`` for every K, ``mR`` (mean of all of them), ``num_images``, ``num_texts``,
    ``images_without_texts``.
    """
    similarity = _check_scores(similarity, "similarity")
    num_images, num_texts = similarity.shape
    text_to_image = np.asarray(text_to_image, dtype=np.int64)
    if text_to_image.shape != (num_texts,):
        raise ValueError(f"text_to_image has shape {text_to_image.shape}, expected ({num_texts},)")
    if num_texts and (text_to_image.min() < 0 or text_to_image.max() >= num_images):
        bad = int(np.flatnonzero((text_to_image < 0) | (text_to_image >= num_images))[0])
        raise ValueError(f"text {bad} points to image {text_to_image[bad]}, outside 0..{num_images - 1}")
    # t2i: one correct image per text.
    t2i_mask = np.zeros((num_texts, num_images), dtype=bool)
    t2i_mask[np.arange(num_texts), text_to_image] = True
    t2i = recall_from_ranks(first_correct_ranks(similarity.T, t2i_mask, ties=ties), ks)
    # i2t: all captions of the image are correct.
    i2t_mask = t2i_mask.T
    has_text = i2t_mask.any(axis=1)
    i2t = recall_from_ranks(first_correct_ranks(similarity[has_text], i2t_mask[has_text], ties=ties), ks)
    out: dict[str, float | int] = {}
    for k in ks:
        out[f"i2t_R@{int(k)}"] = i2t[int(k)]
    for k in ks:
        out[f"t2i_R@{int(k)}"] = t2i[int(k)]
    out["mR"] = float(np.mean(list(i2t.values()) + list(t2i.values())))
    out["num_images"] = int(num_images)
    out["num_texts"] = int(num_texts)
    out["images_without_texts"] = int((~has_text).sum())
    return out


def normalize(embeddings: Any) -> np.ndarray:
    """L2-normalise rows (float64); a zero row is an error rather than a silent NaN."""
    x = as_numpy(embeddings)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    if (norms == 0).any():
        raise ValueError(f"embedding row {int(np.flatnonzero(norms.reshape(-1) == 0)[0])} has zero norm")
    return x / norms


def retrieval_metrics_by_language(
    image_embeds: Any,
    text_embeds: Any,
    text_to_image: Sequence[int] | np.ndarray,
    text_languages: Sequence[str],
    ks: Sequence[int] = DEFAULT_RETRIEVAL_KS,
) -> dict[str, dict[str, float | int]]:
    """Retrieval metrics computed separately per language over the same image gallery.

    ``text_embeds`` holds the captions of all languages; ``text_languages[j]`` is the language of text ``j``.
    Embeddings are L2-normalised here, so the similarity is the cosine similarity.
    """
    images = normalize(image_embeds)
    texts = normalize(text_embeds)
    text_to_image = np.asarray(text_to_image, dtype=np.int64)
    langs = np.asarray(list(text_languages))
    if not (len(texts) == len(text_to_image) == len(langs)):
        raise ValueError(
            f"text_embeds ({len(texts)}), text_to_image ({len(text_to_image)}) and text_languages ({len(langs)}) "
            "must have the same length"
        )
    results: dict[str, dict[str, float | int]] = {}
    for lang in dict.fromkeys(langs.tolist()):
        sel = langs == lang
        results[lang] = retrieval_metrics(images @ texts[sel].T, text_to_image[sel], ks)
    return results


def pessimistic_top1(logits: Any, labels: Sequence[int] | np.ndarray) -> np.ndarray:
    """Top-1 predictions where a tie at the maximum that involves the true class resolves to a wrong class.

    Without a tie this is the argmax; with one, the lowest-index tied class other than the true one is predicted.
    This makes ``predictions == labels`` exactly the top-1 hits of the tie rule.
    """
    logits = _check_scores(logits, "logits")
    labels = np.asarray(labels, dtype=np.int64)
    rows = np.arange(len(labels))
    preds = logits.argmax(axis=1)
    tied = logits == logits.max(axis=1, keepdims=True)
    contested = tied[rows, labels] & (tied.sum(axis=1) > 1)
    if contested.any():
        others = tied[contested].copy()
        others[np.arange(others.shape[0]), labels[contested]] = False
        preds[contested] = others.argmax(axis=1)
    return preds


def zero_shot_metrics(
    logits: Any,
    labels: Sequence[int] | np.ndarray,
    class_names: Sequence[str],
    ks: Sequence[int] = DEFAULT_ZERO_SHOT_KS,
) -> dict[str, Any]:
    """Zero-shot classification metrics from (images x classes) logits and integer labels.

    Returns ``top{K}`` accuracy for every K (K larger than the number of classes is capped, and the key keeps the
    requested K), ``mean_per_class_accuracy``, ``per_class_accuracy`` ({class: % or None when the class has no
    image}), ``confusion_matrix`` (rows = true class, columns = predicted class, counts), ``num_images``.
    """
    logits = _check_scores(logits, "logits")
    labels = np.asarray(labels, dtype=np.int64)
    num_classes = len(class_names)
    if logits.shape != (len(labels), num_classes):
        raise ValueError(
            f"logits shape {logits.shape} != (num images {len(labels)}, num classes {num_classes})"
        )
    if len(labels) == 0:
        raise ValueError("no images to evaluate")
    if labels.min() < 0 or labels.max() >= num_classes:
        bad = int(np.flatnonzero((labels < 0) | (labels >= num_classes))[0])
        raise ValueError(f"image {bad} has label {labels[bad]}, outside 0..{num_classes - 1}")
    onehot = np.zeros(logits.shape, dtype=bool)
    onehot[np.arange(len(labels)), labels] = True
    ranks = first_correct_ranks(logits, onehot)
    out: dict[str, Any] = {
        f"top{int(k)}": float(100.0 * np.mean(ranks < min(int(k), num_classes))) for k in ks
    }
    preds = pessimistic_top1(logits, labels)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, preds), 1)
    support = confusion.sum(axis=1)
    per_class = {
        name: (float(100.0 * confusion[i, i] / support[i]) if support[i] else None)
        for i, name in enumerate(class_names)
    }
    present = [v for v in per_class.values() if v is not None]
    out["mean_per_class_accuracy"] = float(np.mean(present))
    out["per_class_accuracy"] = per_class
    out["confusion_matrix"] = confusion.tolist()
    out["num_images"] = int(len(labels))
    return out


# ------------------------------------------------------------------------------------------- bounded memory
DEFAULT_BLOCK_BYTES = 64 * 1024**2


def _as_float32_tensor(array: Any):
    import torch

    if isinstance(array, torch.Tensor):
        return array.detach().cpu().float().contiguous()
    return torch.from_numpy(np.ascontiguousarray(np.asarray(array, dtype=np.float32)))


def retrieval_metrics_chunked(
    image_embeds: Any,
    text_embeds: Any,
    text_to_image: Sequence[int] | np.ndarray,
    ks: Sequence[int] = DEFAULT_RETRIEVAL_KS,
    ties: str = "pessimistic",
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> dict[str, float | int]:
    """`retrieval_metrics` of ``image_embeds @ text_embeds.T`` without building that matrix or its masks.

    The similarity is computed block by block, always as ``images[rows] @ texts[cols].T`` in float32 (the same
    product, in the same orientation, as the full matrix), and each block is reduced to ranks before the next one:
    text->image over all images for a block of texts, image->text over all texts for a block of images. Peak extra
    memory is about ``block_bytes`` (plus the embeddings and O(images + texts) bookkeeping), so 100,000 images x
    500,000 captions fit in well under 2 GiB. The results are exactly those of `retrieval_metrics` under both tie
    rules (same scores, same comparisons).
    """
    if ties not in TIE_RULES:
        raise ValueError(f"ties must be one of {sorted(TIE_RULES)}, got {ties!r}")
    images = _as_float32_tensor(image_embeds)
    texts = _as_float32_tensor(text_embeds)
    if images.ndim != 2 or texts.ndim != 2 or images.shape[1] != texts.shape[1]:
        raise ValueError(
            f"embeddings must be (images, dim) and (texts, dim), got {tuple(images.shape)}, {tuple(texts.shape)}"
        )
    num_images, num_texts = images.shape[0], texts.shape[0]
    text_to_image = np.asarray(text_to_image, dtype=np.int64)
    if text_to_image.shape != (num_texts,):
        raise ValueError(f"text_to_image has shape {text_to_image.shape}, expected ({num_texts},)")
    if num_texts and (text_to_image.min() < 0 or text_to_image.max() >= num_images):
        bad = int(np.flatnonzero((text_to_image < 0) | (text_to_image >= num_images))[0])
        raise ValueError(f"text {bad} points to image {text_to_image[bad]}, outside 0..{num_images - 1}")
    if num_texts == 0:
        raise ValueError("no texts to compute recall on")
    pessimistic = ties == "pessimistic"

    def check_finite(block: np.ndarray, row0: int, col0: int) -> None:
        if not np.isfinite(block).all():
            bad = np.argwhere(~np.isfinite(block))[0]
            raise ValueError(
                f"similarity contains a non-finite value at row {row0 + bad[0]}, column {col0 + bad[1]}"
            )

    # text -> image: a block of texts against every image.
    t2i_ranks = np.empty(num_texts, dtype=np.int64)
    cols_per_block = max(1, block_bytes // (4 * num_images))
    for start in range(0, num_texts, cols_per_block):
        stop = min(start + cols_per_block, num_texts)
        block = (images @ texts[start:stop].T).numpy()  # (images, texts in block)
        check_finite(block, 0, start)
        correct = block[text_to_image[start:stop], np.arange(stop - start)]
        if pessimistic:  # the correct image itself is the one item counted by >= that is not incorrect
            t2i_ranks[start:stop] = (block >= correct).sum(axis=0) - 1
        else:
            t2i_ranks[start:stop] = (block > correct).sum(axis=0)

    # image -> text: a block of images against every text; an image's captions are all correct.
    order = np.argsort(text_to_image, kind="stable")
    sorted_owner = text_to_image[order]
    has_text = np.zeros(num_images, dtype=bool)
    has_text[text_to_image] = True
    i2t_ranks = np.empty(num_images, dtype=np.int64)
    rows_per_block = max(1, block_bytes // (4 * num_texts))
    for start in range(0, num_images, rows_per_block):
        stop = min(start + rows_per_block, num_images)
        block = (images[start:stop] @ texts.T).numpy()  # (images in block, texts)
        check_finite(block, start, 0)
        lo, hi = np.searchsorted(sorted_owner, [start, stop])
        cols = order[lo:hi]
        rows = sorted_owner[lo:hi] - start
        values = block[rows, cols]
        best = np.full(stop - start, -np.inf, dtype=block.dtype)
        np.maximum.at(best, rows, values)
        correct_ahead = np.zeros(stop - start, dtype=np.int64)
        ahead = values >= best[rows] if pessimistic else values > best[rows]
        np.add.at(correct_ahead, rows, ahead.astype(np.int64))
        threshold = best[:, None]
        total_ahead = (block >= threshold).sum(axis=1) if pessimistic else (block > threshold).sum(axis=1)
        i2t_ranks[start:stop] = total_ahead - correct_ahead

    t2i = recall_from_ranks(t2i_ranks, ks)
    i2t = recall_from_ranks(i2t_ranks[has_text], ks)
    out: dict[str, float | int] = {}
    for k in ks:
        out[f"i2t_R@{int(k)}"] = i2t[int(k)]
    for k in ks:
        out[f"t2i_R@{int(k)}"] = t2i[int(k)]
    out["mR"] = float(np.mean(list(i2t.values()) + list(t2i.values())))
    out["num_images"] = int(num_images)
    out["num_texts"] = int(num_texts)
    out["images_without_texts"] = int((~has_text).sum())
    return out
