"""The model card written next to a trained model: data, languages, hyper-parameters and validation results.

The card is huggingface_hub's `ModelCard.from_template`: `ModelCardData` for the metadata and the Jinja template
`MODEL_CARD_TEMPLATE` for the text; `build_model_card` only gathers the values the template shows."""

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

MODEL_CARD_TEMPLATE = """\
---
{{ card_data }}
---

# RS-M-CLIP

A multilingual CLIP for remote-sensing imagery (ViT image tower + XLM-RoBERTa text tower), \
{% if config.model_name_or_path %}fine-tuned from `{{ config.model_name_or_path }}`\
{% else %}trained from scratch (architecture preset `{{ config.preset }}`){% endif %} with \
the CLIP loss (symmetric InfoNCE, negatives gathered across processes)\
{% if config.distillation %} plus {{ "%g"|format(config.distillation_weight) }} x a DINO-style self-distillation \
loss on the image tower ({{ config.num_global_crops }} global + {{ config.num_local_crops }} local crops, EMA \
teacher){% endif %}.

## Training data

- Dataset: `{{ config.dataset }}`, split `{{ config.train_split }}` \
{% if train_rows is not none %}({{ train_rows }} images){% else %}(streamed){% endif %}
{% if sources %}- Sources: {% for name, count in sources %}{{ name }} ({{ count }} images)\
{% if not loop.last %}, {% endif %}{% endfor %}
{% endif -%}
- Caption languages: {% for code, name in caption_languages %}{{ name }} (`{{ code }}`)\
{% if not loop.last %}, {% endif %}{% endfor %}; at every step each image's caption is drawn from a uniformly \
chosen language.

## Training procedure

{{ total_steps }} optimiser steps on {{ num_processes }} process(es), global batch {{ global_batch }}, mixed \
precision `{{ mixed_precision }}`.

| hyper-parameter | value |
|---|---|
{% for name, value in hyperparameters -%}
| {{ name }} | {{ value }} |
{% endfor %}
## Results

{% if results -%}
Retrieval on the validation split (`{{ config.validation_split }}`), recall in percent:

| language | {{ recall_keys|join(" | ") }} | mR |
{{ "|---" * (recall_keys|length + 2) }}|
{% for lang, metrics in results.items() -%}
| {{ lang }} | {% for key in recall_keys %}{{ "%.2f"|format(metrics[key]) }} | {% endfor %}\
{{ "%.2f"|format(metrics["mR"]) }} |
{% endfor %}
{%- else -%}
No validation split was evaluated.
{% endif %}
## Usage

```python
import modeling_rsmclip  # registers the model type
from transformers import AutoModel, AutoProcessor

model = AutoModel.from_pretrained("path/or/hub-id")
processor = AutoProcessor.from_pretrained("path/or/hub-id")
```

## Citation

```bibtex
{{ citation }}
```

"""

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
    values = config.to_dict()
    hyperparameters = [
        (name, _fmt(values[name]))
        for name in CARD_HYPERPARAMETERS
        if (config.lora or not name.startswith("lora_"))
        and (config.distillation or name not in DISTILLATION_HYPERPARAMETERS)
    ]
    recall_keys = (
        [key for key in next(iter(results.values())) if key.startswith(("i2t_R@", "t2i_R@"))]
        if results
        else []
    )
    return ModelCard.from_template(
        card_data,
        template_str=MODEL_CARD_TEMPLATE,
        config=config,
        train_rows=train_rows,
        sources=sorted(sources.items()) if sources else [],
        caption_languages=[(lang, LANGUAGE_NAMES.get(lang, lang)) for lang in languages],
        total_steps=total_steps,
        num_processes=num_processes,
        global_batch=config.per_device_train_batch_size * config.gradient_accumulation_steps * num_processes,
        mixed_precision=mixed_precision,
        hyperparameters=hyperparameters,
        results=results or {},
        recall_keys=recall_keys,
        citation=PAPER_CITATION,
    )
