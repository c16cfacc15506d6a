"""Evaluation: retrieval recall@K and zero-shot classification per language, plots, model-card metadata.

The metric functions (`metrics`) work on plain arrays; the runners (`retrieval`, `zero_shot`) work with any model
that has ``get_image_features`` / ``get_text_features`` and a CLIP-style processor, through an `Embedder` that
computes embeddings in batches and caches them on disk per model and dataset.
"""

from .embed import DatasetImages, Embedder, EmbeddingCache, ImageFiles, ImageSource, model_fingerprint
from .metrics import (
    TIE_RULE,
    average_prompt_embeddings,
    first_correct_ranks,
    recall_at_k,
    retrieval_metrics,
    retrieval_metrics_by_language,
    zero_shot_metrics,
)
from .model_index import eval_results_from_results, update_model_card
from .retrieval import RetrievalData, evaluate_retrieval, load_builder_dataset, load_karpathy
from .zero_shot import (
    ZeroShotData,
    evaluate_zero_shot,
    load_builder_labels,
    load_image_folder,
    load_labels_csv,
    resolve_class_names,
)

__all__ = [
    "TIE_RULE",
    "DatasetImages",
    "Embedder",
    "EmbeddingCache",
    "ImageFiles",
    "ImageSource",
    "RetrievalData",
    "ZeroShotData",
    "average_prompt_embeddings",
    "eval_results_from_results",
    "evaluate_retrieval",
    "evaluate_zero_shot",
    "first_correct_ranks",
    "load_builder_dataset",
    "load_builder_labels",
    "load_image_folder",
    "load_karpathy",
    "load_labels_csv",
    "model_fingerprint",
    "recall_at_k",
    "resolve_class_names",
    "retrieval_metrics",
    "retrieval_metrics_by_language",
    "update_model_card",
    "zero_shot_metrics",
]
