"""Configuration of RS-M-CLIP: a CLIP ViT image tower, a text tower and a DINO distillation head.

The text tower is XLM-RoBERTa (RS-M-CLIP itself: masked mean pooling, MLP projection) or OpenAI CLIP's causal text
transformer (`text_config` of model_type `clip_text_model`: pooling at the end-of-text token, the argmax of the ids,
and a linear projection without bias), the tower of the standard CLIP checkpoints (OpenAI CLIP, RemoteCLIP,
GeoRSCLIP, SkyCLIP). This file travels to the Hub with the model (``trust_remote_code``): it imports only transformers.
"""

from __future__ import annotations

import math
from typing import Any

from transformers import CLIPTextConfig, CLIPVisionConfig, PreTrainedConfig, XLMRobertaConfig

# The released RS-M-CLIP architecture: OpenCLIP ``xlm-roberta-base-ViT-B-32``.
_RS_M_CLIP_VISION = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "image_size": 224,
    "patch_size": 32,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
}
_RS_M_CLIP_TEXT = {
    "vocab_size": 250002,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "max_position_embeddings": 514,
    "type_vocab_size": 1,
    "layer_norm_eps": 1e-5,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
}


def _clip_preset(
    embed_dim: int,
    vision: tuple[int, int, int, int],
    text: tuple[int, int, int],
) -> dict[str, Any]:
    """An OpenCLIP standard CLIP architecture (`model_configs/ViT-*.json`): vision (width, layers, heads, patch) at
    224 px, text (width, layers, heads) on OpenAI's 49408-token BPE vocabulary, exact GELU (OpenCLIP's default; the
    OpenAI-trained weights use QuickGELU: override `hidden_act` in both towers)."""
    width, layers, heads, patch = vision
    text_width, text_layers, text_heads = text
    return {
        "vision_config": {
            "hidden_size": width,
            "intermediate_size": 4 * width,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "image_size": 224,
            "patch_size": patch,
            "hidden_act": "gelu",
            "layer_norm_eps": 1e-5,
        },
        "text_config": {
            "model_type": "clip_text_model",
            "vocab_size": 49408,
            "hidden_size": text_width,
            "intermediate_size": 4 * text_width,
            "num_hidden_layers": text_layers,
            "num_attention_heads": text_heads,
            "max_position_embeddings": 77,
            "hidden_act": "gelu",
            "layer_norm_eps": 1e-5,
            "pad_token_id": 0,
            "bos_token_id": 49406,
            "eos_token_id": 49407,
        },
        "projection_dim": embed_dim,
    }


PRESETS: dict[str, dict[str, Any]] = {
    "rs-m-clip": {
        "vision_config": _RS_M_CLIP_VISION,
        "text_config": _RS_M_CLIP_TEXT,
        "projection_dim": 512,
    },
    # A small model that trains from scratch on a CPU and ships inside the repository.
    "small": {
        "vision_config": {
            "hidden_size": 256,
            "intermediate_size": 1024,
            "num_hidden_layers": 6,
            "num_attention_heads": 4,
            "image_size": 128,
            "patch_size": 16,
            "hidden_act": "gelu",
            "layer_norm_eps": 1e-5,
        },
        "text_config": {
            "vocab_size": 8000,
            "hidden_size": 256,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "intermediate_size": 1024,
            "hidden_act": "gelu",
            "max_position_embeddings": 80,
            "type_vocab_size": 1,
            "layer_norm_eps": 1e-5,
            "pad_token_id": 1,
            "bos_token_id": 0,
            "eos_token_id": 2,
        },
        "projection_dim": 256,
        "dino_out_dim": 4096,
        "dino_hidden_dim": 512,
        "dino_bottleneck_dim": 128,
    },
    # The bundled demo model: small enough to ship in the repository (< 30 MB with its tokenizer) and to train
    # from scratch on a CPU; its tokenizer (a 4.4k-piece SentencePiece model) is trained on the training captions.
    "demo": {
        "vision_config": {
            "hidden_size": 192,
            "intermediate_size": 768,
            "num_hidden_layers": 6,
            "num_attention_heads": 3,
            "image_size": 128,
            "patch_size": 16,
            "hidden_act": "gelu",
            "layer_norm_eps": 1e-5,
        },
        "text_config": {
            "vocab_size": 4400,
            "hidden_size": 192,
            "num_hidden_layers": 4,
            "num_attention_heads": 3,
            "intermediate_size": 768,
            "hidden_act": "gelu",
            "max_position_embeddings": 80,
            "type_vocab_size": 1,
            "layer_norm_eps": 1e-5,
            "pad_token_id": 1,
            "bos_token_id": 0,
            "eos_token_id": 2,
        },
        "projection_dim": 192,
        "dino_out_dim": 2048,
        "dino_hidden_dim": 384,
        "dino_bottleneck_dim": 96,
    },
    # For unit tests: a few layers at 32 px, a ~1000-token vocabulary.
    "tiny": {
        "vision_config": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 8,
            "hidden_act": "gelu",
            "layer_norm_eps": 1e-5,
        },
        "text_config": {
            "vocab_size": 1000,
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 64,
            "hidden_act": "gelu",
            "max_position_embeddings": 80,
            "type_vocab_size": 1,
            "layer_norm_eps": 1e-5,
            "pad_token_id": 1,
            "bos_token_id": 0,
            "eos_token_id": 2,
            "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0,
        },
        "projection_dim": 16,
        "dino_out_dim": 64,
        "dino_hidden_dim": 48,
        "dino_bottleneck_dim": 16,
    },
    # The standard CLIP architectures (OpenCLIP's ViT-B-32, ViT-B-16, ViT-L-14, ViT-H-14), with a CLIP text tower.
    "clip-vit-b-32": _clip_preset(512, (768, 12, 12, 32), (512, 12, 8)),
    "clip-vit-b-16": _clip_preset(512, (768, 12, 12, 16), (512, 12, 8)),
    "clip-vit-l-14": _clip_preset(768, (1024, 24, 16, 14), (768, 12, 12)),
    "clip-vit-h-14": _clip_preset(1024, (1280, 32, 16, 14), (1024, 24, 16)),
}

TEXT_POOLER_TYPES = ("mean_pooler", "cls_pooler", "argmax_pooler")
TEXT_PROJECTION_TYPES = ("mlp", "linear")
# The text towers, by `text_config.model_type`, and the poolings that each one supports (the first is the default).
TEXT_TOWERS = {"xlm-roberta": XLMRobertaConfig, "clip_text_model": CLIPTextConfig}
_TEXT_POOLERS = {"xlm-roberta": ("mean_pooler", "cls_pooler"), "clip_text_model": ("argmax_pooler",)}
_TEXT_PROJECTIONS = {"xlm-roberta": "mlp", "clip_text_model": "linear"}

# The text sub-config defaults to XLM-RoBERTa; a `text_config` of model_type "clip_text_model" is a CLIPTextConfig.
_SUB_CONFIG_CLASSES = {"vision_config": CLIPVisionConfig, "text_config": XLMRobertaConfig}


class RSMCLIPConfig(PreTrainedConfig):
    r"""Configuration of [`RSMCLIPModel`].

    Args:
        vision_config (`dict` or `CLIPVisionConfig`): the image tower (a CLIP ViT). RS-M-CLIP uses exact GELU
            (`hidden_act="gelu"`), not CLIP's quick_gelu.
        text_config (`dict`, `XLMRobertaConfig` or `CLIPTextConfig`): the text tower. XLM-RoBERTa (the default, used
            without its pooling layer), or CLIP's causal text transformer when `text_config` is a `CLIPTextConfig`
            or a dict with `"model_type": "clip_text_model"` (CLIP's own defaults fill the missing fields).
        projection_dim (`int`): size of the joint embedding space.
        text_pooler_type (`str`, *optional*): for XLM-RoBERTa `"mean_pooler"` (mean over non-padding tokens,
            RS-M-CLIP, the default) or `"cls_pooler"` (the first token); for CLIP `"argmax_pooler"` (the end-of-text
            token, at the argmax of the ids, as OpenAI CLIP and OpenCLIP pool).
        text_projection_type (`str`, *optional*): `"mlp"` (Linear -> GELU -> Linear, no biases; XLM-RoBERTa's
            default, RS-M-CLIP) or `"linear"` (no bias; CLIP's default).
        text_projection_hidden_dim (`int`, optional): hidden width of the MLP projection; defaults to
            `(text hidden + projection_dim) // 2` as in OpenCLIP.
        dino_out_dim, dino_hidden_dim, dino_bottleneck_dim, dino_num_layers, dino_norm_last_layer: the
            self-distillation head (DINO defaults: 65536, 2048, 256, 3, True).
        logit_scale_init_value (`float`): initial log of the contrastive temperature's inverse, ln(1/0.07).
        logit_scale_max (`float`): the clamp applied to `logit_scale` during training, ln(100).
    """

    model_type = "rsmclip"
    # Newer 5.x releases (5.23) declare sub-configs with `sub_configs_defaults`; older ones (5.17) with `sub_configs`.
    if hasattr(PreTrainedConfig, "sub_configs_defaults"):
        sub_configs_defaults = dict(_SUB_CONFIG_CLASSES)
    else:  # pragma: no cover - depends on the installed transformers
        sub_configs = dict(_SUB_CONFIG_CLASSES)

    vision_config: dict | CLIPVisionConfig | None = None
    text_config: dict | XLMRobertaConfig | CLIPTextConfig | None = None
    projection_dim: int = 512
    text_pooler_type: str | None = None
    text_projection_type: str | None = None
    text_projection_hidden_dim: int | None = None
    dino_out_dim: int = 65536
    dino_hidden_dim: int = 2048
    dino_bottleneck_dim: int = 256
    dino_num_layers: int = 3
    dino_norm_last_layer: bool = True
    logit_scale_init_value: float = math.log(1 / 0.07)
    logit_scale_max: float = math.log(100.0)
    initializer_factor: float = 1.0
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        if isinstance(self.vision_config, dict):
            self.vision_config = {**_RS_M_CLIP_VISION, **self.vision_config}
        elif self.vision_config is None:
            self.vision_config = dict(_RS_M_CLIP_VISION)
        if isinstance(self.text_config, dict):
            if self.text_config.get("model_type") == "clip_text_model":
                self.text_config = dict(self.text_config)
            else:
                self.text_config = {**_RS_M_CLIP_TEXT, **self.text_config}
        elif self.text_config is None:
            self.text_config = dict(_RS_M_CLIP_TEXT)
        for sub, config_class in _SUB_CONFIG_CLASSES.items():
            value = getattr(self, sub)
            if isinstance(value, dict):
                model_type = value.pop("model_type", None)
                if sub == "text_config" and model_type in TEXT_TOWERS:
                    config_class = TEXT_TOWERS[model_type]
                # Built here rather than left to the base class, whose handling of dicts differs across 5.x.
                setattr(self, sub, config_class(**value))
        super().__post_init__(**kwargs)
        tower = self.text_tower_type
        if tower not in TEXT_TOWERS:
            raise ValueError(
                f"text_config is a {type(self.text_config).__name__} (model_type {tower!r}); the text tower must be "
                f"one of {sorted(TEXT_TOWERS)}"
            )
        if self.text_pooler_type is None:
            self.text_pooler_type = _TEXT_POOLERS[tower][0]
        if self.text_projection_type is None:
            self.text_projection_type = _TEXT_PROJECTIONS[tower]
        if self.text_pooler_type not in TEXT_POOLER_TYPES:
            raise ValueError(
                f"text_pooler_type must be one of {TEXT_POOLER_TYPES}, got {self.text_pooler_type!r}"
            )
        if self.text_pooler_type not in _TEXT_POOLERS[tower]:
            raise ValueError(
                f"text_pooler_type {self.text_pooler_type!r} does not apply to a {tower!r} text tower; choose one of "
                f"{_TEXT_POOLERS[tower]}"
            )
        if self.text_projection_type not in TEXT_PROJECTION_TYPES:
            raise ValueError(
                f"text_projection_type must be one of {TEXT_PROJECTION_TYPES}, got {self.text_projection_type!r}"
            )
        if self.text_projection_hidden_dim is None:
            self.text_projection_hidden_dim = (self.text_config.hidden_size + self.projection_dim) // 2

    @property
    def text_tower_type(self) -> str:
        """The text tower's `model_type`: `"xlm-roberta"` or `"clip_text_model"`."""
        return self.text_config.model_type

    @property
    def is_clip_text(self) -> bool:
        """Whether the text tower is CLIP's causal text transformer (rather than XLM-RoBERTa)."""
        return self.text_tower_type == "clip_text_model"

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> RSMCLIPConfig:
        """A named architecture: `"rs-m-clip"` (the released model), `"small"`, `"demo"` (the bundled demo model),
        `"tiny"` (tests), or a standard CLIP architecture with a CLIP text tower: `"clip-vit-b-32"`,
        `"clip-vit-b-16"`, `"clip-vit-l-14"`, `"clip-vit-h-14"` (OpenCLIP's ViT-B-32, ..., with exact GELU).

        Keyword arguments override top-level fields; `vision_config` / `text_config` dicts are merged into the
        preset's.
        """
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        preset = {k: (dict(v) if isinstance(v, dict) else v) for k, v in PRESETS[name].items()}
        for key in ("vision_config", "text_config"):
            if key in overrides:
                preset[key] = {**preset.get(key, {}), **overrides.pop(key)}
        preset.update(overrides)
        return cls(**preset)


RSMCLIPConfig.register_for_auto_class()

__all__ = ["RSMCLIPConfig", "PRESETS"]
