"""Write evaluation results into a model card's ``model-index`` metadata (the Hub's results format).

Every language is its own result entry, with the language as the dataset config, so the Hub shows per-language
numbers. Updating is idempotent: an entry that describes the same task, dataset, config, split and metric as an
existing one replaces its value (as `huggingface_hub.metadata_update(..., overwrite=True)` does on the Hub), and
everything else in the card (other metadata, the text) is kept.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard

from ..safe_io import atomic_output, check_outputs_not_inputs
from .retrieval import TASK_TYPE as RETRIEVAL_TASK
from .zero_shot import TASK_TYPE as ZERO_SHOT_TASK

TASK_NAMES = {RETRIEVAL_TASK: "Image-text retrieval", ZERO_SHOT_TASK: "Zero-shot image classification"}


def _retrieval_metrics(
    metrics: Mapping[str, Any], ks: Iterable[int]
) -> list[tuple[str, str | None, str, float]]:
    """(metric type, metric config, metric name, value) for one language's retrieval results."""
    out = []
    for direction, prefix, label in (
        ("image-to-text", "i2t", "Image-to-text"),
        ("text-to-image", "t2i", "Text-to-image"),
    ):
        for k in ks:
            out.append((f"recall@{k}", direction, f"{label} R@{k}", metrics[f"{prefix}_R@{k}"]))
    out.append(("mean_recall", None, "mR", metrics["mR"]))
    return out


def _zero_shot_metrics(
    metrics: Mapping[str, Any], ks: Iterable[int]
) -> list[tuple[str, str | None, str, float]]:
    out = [("accuracy", f"top-{k}", f"Top-{k} accuracy", metrics[f"top{k}"]) for k in ks]
    out.append(
        ("mean_per_class_accuracy", None, "Mean per-class accuracy", metrics["mean_per_class_accuracy"])
    )
    return out


def eval_results_from_results(results: Mapping[str, Any], decimals: int = 2) -> list[EvalResult]:
    """`EvalResult` entries (one per language and metric) from a results JSON of `eval-retrieval`/`eval-zero-shot`."""
    task = results.get("task")
    if task == RETRIEVAL_TASK:
        to_metrics = _retrieval_metrics
    elif task == ZERO_SHOT_TASK:
        to_metrics = _zero_shot_metrics
    else:
        raise ValueError(f"unknown results task {task!r}; expected {RETRIEVAL_TASK!r} or {ZERO_SHOT_TASK!r}")
    dataset = results["dataset"]
    eval_results = []
    for lang, metrics in results["languages"].items():
        for metric_type, metric_config, metric_name, value in to_metrics(metrics, results["ks"]):
            eval_results.append(
                EvalResult(
                    task_type=task,
                    task_name=TASK_NAMES[task],
                    dataset_type=dataset["type"],
                    dataset_name=dataset["name"],
                    dataset_config=lang,
                    dataset_split=dataset.get("split"),
                    metric_type=metric_type,
                    metric_config=metric_config,
                    metric_name=f"{metric_name} ({lang})",
                    metric_value=round(float(value), decimals),
                )
            )
    return eval_results


def merge_eval_results(existing: list[EvalResult], new: Iterable[EvalResult]) -> list[EvalResult]:
    """``existing`` with every ``new`` result replacing the value of the same metric, or appended."""
    merged = list(existing)
    for result in new:
        for old in merged:
            if result.is_equal_except_value(old):
                old.metric_value = result.metric_value
                break
        else:
            merged.append(result)
    return merged


def load_results(source: str | os.PathLike | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(source, Mapping):
        return source
    path = Path(source)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"results file not found: {path}") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err


def update_model_card(
    card_path: str | os.PathLike,
    results: Iterable[str | os.PathLike | Mapping[str, Any]],
    model_name: str | None = None,
) -> ModelCard:
    """Add or replace the ``model-index`` entries of ``results`` in the card at ``card_path`` and save it.

    A missing card is created with just the metadata and a title. ``model_name`` is the model-index name; by
    default the card's existing one, else the card's first ``#`` heading, else the card folder's name.
    """
    card_path = Path(card_path)
    results = list(results)
    check_outputs_not_inputs([card_path], [r for r in results if not isinstance(r, Mapping)])
    new: list[EvalResult] = []
    for source in results:
        try:
            new.extend(eval_results_from_results(load_results(source)))
        except (KeyError, TypeError) as err:
            raise ValueError(
                f"{source}: not an evaluation results file ({err!r} missing or malformed)"
            ) from err
    if card_path.is_file():
        card = ModelCard.load(card_path)
    else:
        name = model_name or card_path.resolve().parent.name
        card = ModelCard(f"---\npipeline_tag: zero-shot-image-classification\n---\n\n# {name}\n")
    heading = re.search(r"^#\s+(.+?)\s*$", card.text, flags=re.MULTILINE)
    default_name = heading.group(1) if heading else card_path.resolve().parent.name
    card.data.model_name = model_name or card.data.model_name or default_name
    card.data.eval_results = merge_eval_results(card.data.eval_results or [], new)
    with atomic_output(card_path) as tmp:
        card.save(tmp)
    return card
