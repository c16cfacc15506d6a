"""Evaluation: retrieval recall@K and zero-shot classification per language, plots, model-card metadata.

The metric functions (`metrics`) work on plain arrays; the runners (`retrieval`, `zero_shot`) work with any model
that has ``get_image_features`` / ``get_text_features`` and a CLIP-style processor, through an `Embedder` that
computes embeddings in batches and caches them on disk per model and dataset.

Names are imported on first use (`modeling_rsmclip._lazy`).
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "run_benchmark": ".benchmark",
    "resolve_dataset": ".benchmark",
    "DatasetImages": ".embed",
    "Embedder": ".embed",
    "EmbeddingCache": ".embed",
    "ImageFiles": ".embed",
    "ImageSource": ".embed",
    "model_fingerprint": ".embed",
    "TIE_RULE": ".metrics",
    "average_prompt_embeddings": ".metrics",
    "first_correct_ranks": ".metrics",
    "recall_at_k": ".metrics",
    "retrieval_metrics": ".metrics",
    "retrieval_metrics_by_language": ".metrics",
    "zero_shot_metrics": ".metrics",
    "eval_results_from_results": ".model_index",
    "update_model_card": ".model_index",
    "RetrievalData": ".retrieval",
    "evaluate_retrieval": ".retrieval",
    "load_builder_dataset": ".retrieval",
    "load_karpathy": ".retrieval",
    "ZeroShotData": ".zero_shot",
    "evaluate_zero_shot": ".zero_shot",
    "load_builder_labels": ".zero_shot",
    "load_image_folder": ".zero_shot",
    "load_labels_csv": ".zero_shot",
    "resolve_class_names": ".zero_shot",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
