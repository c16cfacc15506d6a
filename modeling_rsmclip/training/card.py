"""The model card written next to a trained model: data, languages, hyper-parameters and validation results."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from ..templates import LANGUAGE_NAMES, LANGUAGES
from .config import TrainingConfig

PAPER_CITATION = """@inproceedings{silva2024rsmclip,
  title     = {Multilingual Vision-Language Pre-training for the Remote Sensing Domain},
  author    = {Silva, Jo{\\~a}o Daniel and Magalh{\\~a}es, Jo{\\~a}o and Tuia, Devis and Martins, Bruno},
  booktitle = {Proceedings of the 32nd ACM International Conference on Advances in Geographic Information Systems},
  year      = {2024},
  note      = {arXiv:2410.23370}
}"""

# Hyper-parameters of the self-distillation loss: shown only when it is on.
DISTILLATION_HYPERPARAMETERS = (
    "distillation_weight",
    "num_global_crops",
    "num_local_crops",
    "global_crop_scale",
    "local_crop_scale",
    "student_temp",
    "teacher_temp",
    "warmup_teacher_temp",
    "teacher_temp_warmup_steps",
    "center_momentum",
    "teacher_momentum",
    "teacher_momentum_final",
)

# Hyper-parameters shown in the card, in this order.
CARD_HYPERPARAMETERS = (
    "learning_rate",
    "head_learning_rate",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "lr_scheduler_type",
    "warmup_steps",
    "max_grad_norm",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "distillation",
    *DISTILLATION_HYPERPARAMETERS,
    "clip_view",
    "freeze_vision_tower",
    "freeze_text_tower",
    "lora",
    "lora_r",
    "lora_alpha",
    "lora_target_modules",
    "gradient_checkpointing",
    "seed",
)


def _looks_like_hub_id(value: str | None) -> bool:
    return (
        bool(value)
        and not Path(value).exists()
        and value.count("/") == 1
        and not value.startswith((".", "/"))
    )


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


def build_model_card(
    config: TrainingConfig,
    *,
    languages: Sequence[str],
    num_processes: int,
    total_steps: int,
    train_rows: int | None,
    sources: Mapping[str, int] | None,
    results: Mapping[str, Mapping[str, float]] | None,
    mixed_precision: str,
) -> ModelCard:
    """A Hub model card (YAML metadata + markdown) for the model trained with `config`.

    `results` maps a language to its validation retrieval metrics (`mR`, `i2t_R@1`, ...).
    """
    languages = [lang for lang in LANGUAGES if lang in set(languages)]
    card_data = ModelCardData(
        language=languages,
        license="mit",
        library_name="transformers",
        pipeline_tag="zero-shot-image-classification",
        tags=["remote-sensing", "clip", "multilingual", "rsmclip", "image-text-retrieval", "dino"],
        datasets=[config.dataset] if _looks_like_hub_id(config.dataset) else None,
        base_model=config.model_name_or_path if _looks_like_hub_id(config.model_name_or_path) else None,
    )
    start = (
        f"fine-tuned from `{config.model_name_or_path}`"
        if config.model_name_or_path
        else f"trained from scratch (architecture preset `{config.preset}`)"
    )
    objective = (
        f"the CLIP loss (symmetric InfoNCE, negatives gathered across processes) plus "
        f"{config.distillation_weight:g} x a DINO-style self-distillation loss on the image tower "
        f"({config.num_global_crops} global + {config.num_local_crops} local crops, EMA teacher)"
        if config.distillation
        else "the CLIP loss (symmetric InfoNCE, negatives gathered across processes)"
    )
    global_batch = config.per_device_train_batch_size * config.gradient_accumulation_steps * num_processes
    lines = [
        "# RS-M-CLIP",
        "",
        "A multilingual CLIP for remote-sensing imagery (ViT image tower + XLM-RoBERTa text tower), "
        f"{start} with {objective}.",
        "",
        "## Training data",
        "",
        f"- Dataset: `{config.dataset}`, split `{config.train_split}`"
        + (f" ({train_rows} images)" if train_rows is not None else " (streamed)"),
    ]
    if sources:
        lines.append(
            "- Sources: " + ", ".join(f"{name} ({count} images)" for name, count in sorted(sources.items()))
        )
    lines.append(
        "- Caption languages: "
        + ", ".join(f"{LANGUAGE_NAMES.get(lang, lang)} (`{lang}`)" for lang in languages)
        + "; at every step each image's caption is drawn from a uniformly chosen language."
    )
    lines += [
        "",
        "## Training procedure",
        "",
        f"{total_steps} optimiser steps on {num_processes} process(es), global batch {global_batch}, mixed "
        f"precision `{mixed_precision}`.",
        "",
        "| hyper-parameter | value |",
        "|---|---|",
    ]
    values = config.to_dict()
    for name in CARD_HYPERPARAMETERS:
        if not config.lora and name.startswith("lora_"):
            continue
        if not config.distillation and name in DISTILLATION_HYPERPARAMETERS:
            continue
        lines.append(f"| {name} | {_fmt(values[name])} |")
    lines += ["", "## Results", ""]
    if results:
        ks = [key for key in next(iter(results.values())) if key.startswith(("i2t_R@", "t2i_R@"))]
        lines += [
            f"Retrieval on the validation split (`{config.validation_split}`), recall in percent:",
            "",
            "| language | " + " | ".join(ks) + " | mR |",
            "|---" * (len(ks) + 2) + "|",
        ]
        for lang, metrics in results.items():
            lines.append(
                f"| {lang} | " + " | ".join(f"{metrics[k]:.2f}" for k in ks) + f" | {metrics['mR']:.2f} |"
            )
    else:
        lines.append("No validation split was evaluated.")
    lines += [
        "",
        "## Usage",
        "",
        "```python",
        "import modeling_rsmclip  # registers the model type",
        "from transformers import AutoModel, AutoProcessor",
        "",
        'model = AutoModel.from_pretrained("path/or/hub-id")',
        'processor = AutoProcessor.from_pretrained("path/or/hub-id")',
        "```",
        "",
        "## Citation",
        "",
        "```bibtex",
        PAPER_CITATION,
        "```",
        "",
    ]
    content = f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines)
    return ModelCard(content)
