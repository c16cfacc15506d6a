"""Building what the loop trains: the student model (pretrained or from a preset), its processor, LoRA adapters,
frozen towers, the optimiser's parameter groups, and the module whose forward DDP wraps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoProcessor, AutoTokenizer

from ..configuration_rsmclip import RSMCLIPConfig
from ..modeling_rsmclip import RSMCLIPModel
from ..processing_rsmclip import RSMCLIPImageProcessor, RSMCLIPProcessor
from .config import TrainingConfig

HEAD_OVERRIDES = ("dino_out_dim", "dino_hidden_dim", "dino_bottleneck_dim", "dino_num_layers")


def _head_overrides(config: TrainingConfig) -> dict[str, int]:
    return {name: getattr(config, name) for name in HEAD_OVERRIDES if getattr(config, name) is not None}


def _processor_from_tokenizer(path: str, image_size: int) -> RSMCLIPProcessor:
    if (Path(path) / "preprocessor_config.json").exists() or (Path(path) / "processor_config.json").exists():
        return AutoProcessor.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    image_processor = RSMCLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    return RSMCLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def load_model_and_processor(config: TrainingConfig) -> tuple[RSMCLIPModel, Any]:
    """The student model and its processor, from a pretrained folder/Hub id or from an architecture preset."""
    overrides = _head_overrides(config)
    extra: dict[str, Any] = {}
    if config.attn_implementation:
        extra["attn_implementation"] = config.attn_implementation
    if config.model_name_or_path:
        model = RSMCLIPModel.from_pretrained(
            config.model_name_or_path, ignore_mismatched_sizes=bool(overrides), **overrides, **extra
        )
        source = config.tokenizer_name_or_path or config.model_name_or_path
        image_size = model.config.vision_config.image_size
        processor = (
            _processor_from_tokenizer(config.tokenizer_name_or_path, image_size)
            if config.tokenizer_name_or_path
            else AutoProcessor.from_pretrained(source)
        )
    else:
        model_config = RSMCLIPConfig.from_preset(config.preset, **overrides)
        model = RSMCLIPModel._from_config(model_config, **extra)
        processor = _processor_from_tokenizer(
            config.tokenizer_name_or_path, model_config.vision_config.image_size
        )
    tokenizer = processor.tokenizer
    vocab = model.config.text_config.vocab_size
    if len(tokenizer) > vocab:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but the text tower's vocabulary has {vocab}: token ids "
            f"would fall outside the embedding table"
        )
    return model, processor


def freeze_towers(model: RSMCLIPModel, config: TrainingConfig) -> None:
    """Freeze the towers the configuration asks for; the distillation head (frozen when the model is built or
    loaded) trains only with distillation."""
    if config.freeze_vision_tower:
        model.vision_model.requires_grad_(False)
        model.visual_projection.requires_grad_(False)
    if config.freeze_text_tower:
        model.text_model.requires_grad_(False)
        model.text_projection.requires_grad_(False)
    if config.freeze_token_embeddings:
        model.text_model.get_input_embeddings().requires_grad_(False)
    model.distillation_head.requires_grad_(config.distillation)


def apply_lora(model: RSMCLIPModel, config: TrainingConfig) -> nn.Module:
    """Wrap `model` with peft LoRA adapters; the base weights are frozen, `lora_modules_to_save` train in full
    (plus the distillation head when distillation is on). `logit_scale` stays fixed."""
    from peft import LoraConfig, get_peft_model

    modules_to_save = list(config.lora_modules_to_save)
    if config.distillation and "distillation_head" not in modules_to_save:
        modules_to_save.append("distillation_head")
    lora_config = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.lora_target_modules),
        modules_to_save=modules_to_save or None,
        bias="none",
    )
    peft_model = get_peft_model(model, lora_config)
    # The weight-norm magnitude of the head's last layer stays fixed, as in the full model (DINO's
    # norm_last_layer); peft's copy of the head would otherwise train it.
    if model.config.dino_norm_last_layer:
        for name, param in peft_model.named_parameters():
            if "distillation_head" in name and name.endswith("last_layer.parametrizations.weight.original0"):
                param.requires_grad_(False)
    return peft_model


def core_model(model: nn.Module) -> RSMCLIPModel:
    """The `RSMCLIPModel` inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def is_no_decay(name: str, param: torch.Tensor) -> bool:
    """Norms, biases, 1-D parameters, `logit_scale` and weight-norm magnitudes get no weight decay."""
    lowered = name.lower()
    return (
        param.ndim < 2
        or lowered.endswith("bias")
        or "norm" in lowered.replace("weight_norm", "")
        or "logit_scale" in lowered
        or lowered.endswith("original0")
    )


def parameter_groups(model: nn.Module, config: TrainingConfig) -> list[dict[str, Any]]:
    """AdamW groups: (decay, no decay) x (towers, distillation head), trainable parameters only."""
    head_lr = config.head_learning_rate if config.head_learning_rate is not None else config.learning_rate
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        key = ("distillation_head" in name, is_no_decay(name, param))
        groups.setdefault(key, []).append(param)
    result = []
    for (is_head, no_decay), params in sorted(groups.items()):
        result.append(
            {
                "params": params,
                "weight_decay": 0.0 if no_decay else config.weight_decay,
                "lr": head_lr if is_head else config.learning_rate,
                "name": f"{'head' if is_head else 'towers'}/{'no_decay' if no_decay else 'decay'}",
            }
        )
    if not result:
        raise ValueError("no trainable parameters: check the freeze/LoRA options")
    return result


class TrainingModule(nn.Module):
    """Everything of a training step that needs gradients, in one `forward` (the call DDP wraps and syncs).

    Returns the L2-normalised image and text embeddings of the pairs, the exponentiated `logit_scale`, and, with
    distillation, the student's head logits of all crops (global views first, view-major).
    """

    def __init__(self, model: nn.Module, clip_view: str = "center", distillation: bool = True) -> None:
        super().__init__()
        self.model = model
        self.clip_view = clip_view
        self.distillation = distillation

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        global_crops: torch.Tensor | None = None,
        local_crops: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        model = self.model
        batch = input_ids.shape[0]
        text = model.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        out: dict[str, torch.Tensor] = {}
        global_features = None
        if self.distillation:
            global_features = model.get_image_backbone_features(global_crops, interpolate_pos_encoding=True)
            features = [global_features]
            if local_crops is not None:
                features.append(model.get_image_backbone_features(local_crops, interpolate_pos_encoding=True))
            out["student_logits"] = model.distillation_head(torch.cat(features))
        if self.clip_view == "global":
            if global_features is None:
                global_features = model.get_image_backbone_features(
                    global_crops[:batch], interpolate_pos_encoding=True
                )
            image = model.visual_projection(global_features[:batch])
        else:
            image = model.get_image_features(pixel_values=pixel_values).pooler_output
        out["image_embeds"] = F.normalize(image.float(), dim=-1)
        out["text_embeds"] = F.normalize(text.float(), dim=-1)
        out["logit_scale"] = model.logit_scale.float().exp()
        return out
