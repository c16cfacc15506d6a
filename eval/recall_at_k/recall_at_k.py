"""Recall@K for retrieval, as an ``evaluate`` metric module.

Load it from a checkout without network access with ``evaluate.load("eval/recall_at_k")`` (a path to this folder).
It depends only on numpy, so the folder can also be published on its own as a Hub metric.
"""

from __future__ import annotations

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """\
Recall@K for retrieval: the percentage of queries that have at least one correct gallery item among their K
highest-scoring gallery items. A query may have several correct items (e.g. the five captions of an image in
image->text retrieval); the query is a hit when any of them is in the top K.

Ties are resolved against the model: the rank of a query is the number of incorrect gallery items whose score is
greater than or equal to the best score of a correct item, and the query is a hit at K when that rank is below K.
Ties among correct items do not count against it. A model that scores every item the same gets no credit.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): for every query, the score of every gallery item (higher is better).
        All rows have the same length (the gallery size).
    references (`list` of `list` of `int`): for every query, the indices of its correct gallery items (at least one).
    k (`int` or `list` of `int`, *optional*, defaults to `[1, 5, 10]`): the cut-offs.

Returns:
    `recall@K` for every K: percentage (0-100) of queries with a correct item in their top K;
    `mean_recall`: the mean of these recalls.

Examples:
    >>> recall = evaluate.load("eval/recall_at_k")
    >>> recall.compute(
    ...     predictions=[[0.9, 0.1, 0.3], [0.2, 0.8, 0.8]],
    ...     references=[[0], [2]],
    ...     k=[1, 2],
    ... )
    {'recall@1': 50.0, 'recall@2': 100.0, 'mean_recall': 75.0}
"""

_CITATION = """\
@inproceedings{silva2024rsmclip,
  title={Multilingual Vision-Language Pre-training for the Remote Sensing Domain},
  author={Silva, Jo{\\~a}o Daniel and Magalh{\\~a}es, Jo{\\~a}o and Tuia, Devis and Martins, Bruno},
  booktitle={Proceedings of the 32nd ACM SIGSPATIAL International Conference on Advances in Geographic
             Information Systems},
  year={2024}
}
"""


def _first_correct_ranks(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    best = np.where(mask, scores, -np.inf).max(axis=1, keepdims=True)
    return ((scores >= best) & ~mask).sum(axis=1)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RecallAtK(evaluate.Metric):
    """Recall@K with the any-of rule for several correct items and a pessimistic tie rule."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float64")),
                    "references": datasets.Sequence(datasets.Value("int64")),
                }
            ),
            reference_urls=["https://arxiv.org/abs/2410.23370"],
        )

    def _compute(self, predictions, references, k=(1, 5, 10)) -> dict[str, float]:
        ks = [int(k)] if np.isscalar(k) else [int(x) for x in k]
        if not ks or min(ks) < 1:
            raise ValueError(f"k must be one or more integers >= 1, got {k}")
        if len(predictions) == 0:
            raise ValueError("no queries given")
        lengths = {len(row) for row in predictions}
        if len(lengths) != 1:
            raise ValueError(
                f"every row of predictions needs the same gallery size, got sizes {sorted(lengths)}"
            )
        scores = np.asarray(predictions, dtype=np.float64)
        if not np.isfinite(scores).all():
            row = int(np.argwhere(~np.isfinite(scores))[0][0])
            raise ValueError(f"predictions row {row} contains a non-finite score")
        mask = np.zeros(scores.shape, dtype=bool)
        for row, items in enumerate(references):
            if len(items) == 0:
                raise ValueError(f"references row {row} has no correct item")
            for item in items:
                if not 0 <= item < scores.shape[1]:
                    raise ValueError(
                        f"references row {row}: index {item} outside gallery of size {scores.shape[1]}"
                    )
                mask[row, item] = True
        ranks = _first_correct_ranks(scores, mask)
        out = {f"recall@{x}": float(100.0 * np.mean(ranks < x)) for x in ks}
        out["mean_recall"] = float(np.mean([out[f"recall@{x}"] for x in ks]))
        return out
