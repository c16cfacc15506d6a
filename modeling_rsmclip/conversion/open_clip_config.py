"""Configuration mapping between OpenCLIP (`open_clip_config.json`: `model_cfg`, `preprocess_cfg`) and RS-M-CLIP
(`RSMCLIPConfig`, `RSMCLIPImageProcessor`).

Only what RS-M-CLIP can represent exactly is accepted: a plain ViT image tower (class-token pooling, learnable
positions, pre- and post-layernorm, no layer scale / attentional pooling / custom attention) and either a Hugging
Face XLM-RoBERTa (or RoBERTa) text tower with mean or CLS pooling and an MLP or linear projection (`CustomTextCLIP`,
RS-M-CLIP's family), or OpenCLIP's own causal text transformer pooled at the end-of-text token with a linear
projection (the standard `CLIP` of OpenAI and of RemoteCLIP, GeoRSCLIP, SkyCLIP: ViT-B-32, ViT-B-16, ViT-L-14,
ViT-H-14, with or without QuickGELU). Anything else (a ModifiedResNet or timm image tower, a SigLIP or CoCa model) is
a `ConversionError` naming the field and the tower, never a silently different model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import AutoConfig, CLIPTextConfig, XLMRobertaConfig
from transformers.image_utils import PILImageResampling

from ..configuration_rsmclip import PRESETS, RSMCLIPConfig
from .open_clip_keys import ConversionError

# OpenCLIP's defaults (open_clip.model.CLIPVisionCfg / CLIPTextCfg, open_clip.transform.PreprocessCfg).
OPEN_CLIP_VISION_DEFAULTS: dict[str, Any] = {
    "layers": 12,
    "width": 768,
    "head_width": 64,
    "mlp_ratio": 4.0,
    "patch_size": 16,
    "image_size": 224,
}
OPEN_CLIP_TEXT_DEFAULTS: dict[str, Any] = {
    "context_length": 77,
    "hf_proj_type": "mlp",
    "hf_pooler_type": "mean_pooler",
}
# OpenCLIP's own text transformer (open_clip.model.CLIPTextCfg without hf_model_name): OpenAI CLIP's.
OPEN_CLIP_CLIP_TEXT_DEFAULTS: dict[str, Any] = {
    "context_length": 77,
    "vocab_size": 49408,
    "width": 512,
    "heads": 8,
    "layers": 12,
    "mlp_ratio": 4.0,
}
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
OPEN_CLIP_PREPROCESS_DEFAULTS: dict[str, Any] = {
    "size": 224,
    "mode": "RGB",
    "mean": OPENAI_CLIP_MEAN,
    "std": OPENAI_CLIP_STD,
    "interpolation": "bicubic",
    "resize_mode": "shortest",
    "fill_color": 0,
}
OPEN_CLIP_LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, used by OpenCLIP's ViT

# OpenCLIP text pooler -> RS-M-CLIP `text_pooler_type`. OpenCLIP's "cls_pooler" uses the transformer's pooling
# layer (dense + tanh), which RS-M-CLIP's text tower does not have; "cls_last_hidden_state_pooler" is the plain
# first-token state, RS-M-CLIP's "cls_pooler".
_POOLERS = {"mean_pooler": "mean_pooler", "cls_last_hidden_state_pooler": "cls_pooler"}
_POOLERS_BACK = {v: k for k, v in _POOLERS.items()}

# Vision-tower options with the only values RS-M-CLIP (transformers' CLIPVisionModel) can represent.
_VISION_FIXED_OPTIONS: dict[str, Any] = {
    "ls_init_value": None,
    "attentional_pool": False,
    "no_ln_pre": False,
    "pos_embed_type": "learnable",
    "final_ln_after_pool": False,
    "pool_type": "tok",
    "act_kwargs": None,
    "block_type": None,
    "qk_norm": False,
    "scaled_cosine_attn": False,
    "scale_heads": False,
    "scale_attn_inner": False,
    "scale_attn": False,
    "scale_fc": False,
    "timm_model_name": None,
    "output_tokens": False,
}
# Options that change nothing at inference time and are accepted as they are.
_VISION_IGNORED_OPTIONS = (
    "patch_dropout",
    "attn_pooler_queries",
    "attn_pooler_heads",
    "timm_model_pretrained",
    "timm_pool",
    "timm_proj",
    "timm_proj_bias",
    "timm_drop",
    "timm_drop_path",
)
_TEXT_IGNORED_OPTIONS = (
    "hf_model_pretrained",
    "tokenizer_kwargs",
    "tokenizer_mode",
    "output_tokens",
    "vocab_size",
    "width",
    "heads",
    "layers",
    "mlp_ratio",
    "pad_id",
    "eos_id",
    "proj_bias",
    "proj_type",
    "pool_type",
    "embed_cls",
    "no_causal_mask",
    "final_ln_after_pool",
    "act_kwargs",
    "norm_kwargs",
    "ls_init_value",
    "block_type",
    "qk_norm",
    "scaled_cosine_attn",
    "scale_heads",
    "scale_attn_inner",
    "scale_attn",
    "scale_fc",
)
_MODEL_IGNORED_OPTIONS = ("custom_text", "cast_dtype", "output_dict")
# OpenCLIP text-transformer options with the only values a CLIP text tower (transformers' CLIPTextModel, pooled at
# the end-of-text token, linear projection without bias) can represent, and OpenCLIP's own tokenizer.
_CLIP_TEXT_FIXED_OPTIONS: dict[str, Any] = {
    "ls_init_value": None,
    "embed_cls": False,
    "no_causal_mask": False,
    "final_ln_after_pool": False,
    "pool_type": "argmax",
    "proj_bias": False,
    "proj_type": "linear",
    "act_kwargs": None,
    "block_type": None,
    "qk_norm": False,
    "scaled_cosine_attn": False,
    "scale_heads": False,
    "scale_attn_inner": False,
    "scale_attn": False,
    "scale_fc": False,
    "hf_tokenizer_name": None,
    "tokenizer_mode": None,
    "tokenizer_kwargs": None,
}
# Options that change nothing for such a tower: pad_id / eos_id matter only to other poolings, the hf_* fields only
# to Hugging Face text towers.
_CLIP_TEXT_IGNORED_OPTIONS = (
    "pad_id",
    "eos_id",
    "output_tokens",
    "hf_model_name",
    "hf_model_pretrained",
    "hf_proj_type",
    "hf_pooler_type",
)

# Text-tower architectures known without downloading their config (OpenCLIP names them by Hub id).
_XLM_ROBERTA_BASE = {k: v for k, v in PRESETS["rs-m-clip"]["text_config"].items()}
_XLM_ROBERTA_LARGE = {
    **_XLM_ROBERTA_BASE,
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
}
KNOWN_TEXT_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "xlm-roberta-base": _XLM_ROBERTA_BASE,
    "FacebookAI/xlm-roberta-base": _XLM_ROBERTA_BASE,
    "xlm-roberta-large": _XLM_ROBERTA_LARGE,
    "FacebookAI/xlm-roberta-large": _XLM_ROBERTA_LARGE,
}
# The fields that define the text tower's computation (the rest, e.g. dropout, do not change outputs).
TEXT_ARCHITECTURE_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "max_position_embeddings",
    "type_vocab_size",
    "layer_norm_eps",
    "pad_token_id",
)

_INTERPOLATIONS = {
    "bicubic": PILImageResampling.BICUBIC,
    "random": PILImageResampling.BICUBIC,  # OpenCLIP uses bicubic at inference for "random"
    "bilinear": PILImageResampling.BILINEAR,
}
_INTERPOLATIONS_BACK = {PILImageResampling.BICUBIC: "bicubic", PILImageResampling.BILINEAR: "bilinear"}


def _single_int(value: Any, field: str) -> int:
    """OpenCLIP allows `(h, w)` sizes; RS-M-CLIP's ViT is square."""
    if isinstance(value, list | tuple):
        if len(value) != 2 or value[0] != value[1]:
            raise ConversionError(f"{field}={value!r}: only square sizes are supported")
        value = value[0]
    return int(value)


def resolve_text_config(hf_model_name: str) -> XLMRobertaConfig:
    """The text tower's architecture for OpenCLIP's `text_cfg.hf_model_name`.

    Known Hub names (XLM-RoBERTa base/large) are answered without the network; anything else (a local folder with
    a `config.json`, another Hub id) goes through `AutoConfig.from_pretrained`. The architecture must be
    XLM-RoBERTa or RoBERTa (same layout).
    """
    if hf_model_name in KNOWN_TEXT_ARCHITECTURES:
        return XLMRobertaConfig(**KNOWN_TEXT_ARCHITECTURES[hf_model_name])
    try:
        loaded = AutoConfig.from_pretrained(hf_model_name)
    except (OSError, ValueError) as error:
        raise ConversionError(
            f"cannot read the text tower's configuration from hf_model_name={hf_model_name!r}: {error}"
        ) from error
    if loaded.model_type not in ("xlm-roberta", "roberta"):
        raise ConversionError(
            f"the text tower {hf_model_name!r} is a {loaded.model_type!r} model; RS-M-CLIP's text tower is "
            f"XLM-RoBERTa (or RoBERTa, the same layout)"
        )
    fields = loaded.to_dict()
    fields.pop("model_type", None)
    fields.pop("architectures", None)
    fields.pop("transformers_version", None)
    return XLMRobertaConfig(**fields)


def _check_fixed_options(section: Mapping[str, Any], fixed: Mapping[str, Any], where: str) -> None:
    # OpenCLIP's block_type "default" is its plain residual block, the same as None.
    section = {**section, "block_type": None} if section.get("block_type") == "default" else section
    bad = [
        f"{k}={section[k]!r} (supported: {v!r})" for k, v in fixed.items() if k in section and section[k] != v
    ]
    if bad:
        raise ConversionError(f"{where}: unsupported option(s) {', '.join(bad)}")


def image_tower_name(vision_cfg: Mapping[str, Any]) -> str:
    """What kind of image tower an OpenCLIP `vision_cfg` builds: "ViT", "ModifiedResNet" or "timm:<model>"."""
    if vision_cfg.get("timm_model_name"):
        return f"timm:{vision_cfg['timm_model_name']}"
    if isinstance(vision_cfg.get("layers"), list | tuple):
        return "ModifiedResNet"
    return "ViT"


def _refuse_other_image_towers(vision: Mapping[str, Any], where: str) -> None:
    """A `ConversionError` naming the tower for image towers that are not OpenCLIP's own ViT."""
    tower = image_tower_name(vision)
    if tower == "ModifiedResNet":
        raise ConversionError(
            f"{where}: the image tower is a ModifiedResNet (vision_cfg.layers={list(vision['layers'])!r}, the "
            f"ResNet of OpenAI's RN50/RN101 CLIP and of RemoteCLIP-RN50); it cannot be converted: RS-M-CLIP holds "
            f"ViT image towers only (ViT-B/32, ViT-B/16, ViT-L/14, ViT-H/14, ...)"
        )
    if tower.startswith("timm:"):
        raise ConversionError(
            f"{where}: the image tower is a timm model (vision_cfg.timm_model_name={vision['timm_model_name']!r}); "
            f"it cannot be converted: RS-M-CLIP holds OpenCLIP's own ViT image tower only"
        )


def _clip_text_config(
    text: Mapping[str, Any], quick_gelu: bool, embed_dim: int, where: str
) -> CLIPTextConfig:
    """The `CLIPTextConfig` of OpenCLIP's own text transformer (`text_cfg` without `hf_model_name`)."""
    _check_fixed_options(
        text,
        _CLIP_TEXT_FIXED_OPTIONS,
        f"{where} text_cfg (no hf_model_name: OpenCLIP's own CLIP text transformer)",
    )
    unknown = (
        set(text)
        - set(OPEN_CLIP_CLIP_TEXT_DEFAULTS)
        - set(_CLIP_TEXT_FIXED_OPTIONS)
        - {"norm_kwargs", *_CLIP_TEXT_IGNORED_OPTIONS}
    )
    if unknown:
        raise ConversionError(f"{where}: unsupported text_cfg field(s) {sorted(unknown)}")
    if int(text["context_length"]) != 77:
        raise ConversionError(
            f"{where}: text_cfg.context_length={text['context_length']} (RS-M-CLIP's processor truncates at 77)"
        )
    norm_kwargs = dict(text.get("norm_kwargs") or {})
    eps = norm_kwargs.pop("eps", OPEN_CLIP_LAYER_NORM_EPS)
    if norm_kwargs:
        raise ConversionError(f"{where}: unsupported text_cfg.norm_kwargs {norm_kwargs}")
    width, heads, vocab_size = int(text["width"]), int(text["heads"]), int(text["vocab_size"])
    if width % heads:
        raise ConversionError(f"{where}: text width {width} is not a multiple of its {heads} heads")
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=width,
        intermediate_size=int(width * float(text["mlp_ratio"])),
        num_hidden_layers=int(text["layers"]),
        num_attention_heads=heads,
        max_position_embeddings=int(text["context_length"]),
        hidden_act="quick_gelu" if quick_gelu else "gelu",
        layer_norm_eps=float(eps),
        # OpenCLIP's tokenizer: padding 0, start and end of text the last two ids of the vocabulary.
        pad_token_id=0,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        projection_dim=embed_dim,
    )


def rsmclip_config_from_open_clip(
    model_cfg: Mapping[str, Any],
    text_config: XLMRobertaConfig | None = None,
    where: str = "open_clip_config.json",
    **overrides: Any,
) -> RSMCLIPConfig:
    """Derive the `RSMCLIPConfig` of an OpenCLIP `model_cfg`.

    Vision: `width`, `layers`, `width // head_width` heads, `int(width * mlp_ratio)` MLP size, `patch_size`,
    `image_size`, layer-norm eps (`norm_kwargs.eps`, default 1e-5), and `hidden_act` = "quick_gelu" when
    `quick_gelu: true` else exact "gelu". Text, for a Hugging Face text tower (`text_cfg.hf_model_name`): the
    architecture of `hf_model_name` (or `text_config`), the pooler and the projection type. For OpenCLIP's own text
    transformer (no `hf_model_name`: the standard CLIP): a `CLIPTextConfig` of its width, heads, layers, MLP ratio,
    context length and vocabulary, with the same activation as the image tower (OpenCLIP's `quick_gelu` applies to
    both), pooled at the end-of-text token with a linear projection. `overrides` set other top-level fields (e.g.
    the distillation head's size).
    """
    unknown_top = set(model_cfg) - {
        "embed_dim",
        "vision_cfg",
        "text_cfg",
        "quick_gelu",
        "init_logit_scale",
        "init_logit_bias",
        "nonscalar_logit_scale",
        *_MODEL_IGNORED_OPTIONS,
    }
    if unknown_top:
        raise ConversionError(f"{where}: unsupported model_cfg field(s) {sorted(unknown_top)}")
    if model_cfg.get("init_logit_bias") is not None:
        raise ConversionError(
            f"{where}: init_logit_bias is set (a SigLIP-style sigmoid model); RS-M-CLIP is softmax"
        )
    if "multimodal_cfg" in model_cfg:
        raise ConversionError(f"{where}: a CoCa model (multimodal_cfg) cannot be converted")
    if "embed_dim" not in model_cfg:
        raise ConversionError(f"{where}: model_cfg has no embed_dim")
    vision = {**OPEN_CLIP_VISION_DEFAULTS, **model_cfg.get("vision_cfg", {})}
    text = {**OPEN_CLIP_TEXT_DEFAULTS, **model_cfg.get("text_cfg", {})}

    _refuse_other_image_towers(vision, where)
    _check_fixed_options(vision, _VISION_FIXED_OPTIONS, f"{where} vision_cfg")
    unknown_vision = (
        set(vision)
        - set(OPEN_CLIP_VISION_DEFAULTS)
        - set(_VISION_FIXED_OPTIONS)
        - {"norm_kwargs", *_VISION_IGNORED_OPTIONS}
    )
    if unknown_vision:
        raise ConversionError(f"{where}: unsupported vision_cfg field(s) {sorted(unknown_vision)}")
    norm_kwargs = dict(vision.get("norm_kwargs") or {})
    eps = norm_kwargs.pop("eps", OPEN_CLIP_LAYER_NORM_EPS)
    if norm_kwargs:
        raise ConversionError(f"{where}: unsupported vision_cfg.norm_kwargs {norm_kwargs}")
    width = int(vision["width"])
    head_width = int(vision["head_width"])
    if width % head_width:
        raise ConversionError(f"{where}: vision width {width} is not a multiple of head_width {head_width}")

    embed_dim = int(model_cfg["embed_dim"])
    quick_gelu = bool(model_cfg.get("quick_gelu", False))
    if not text.get("hf_model_name"):
        # OpenCLIP's own text transformer: the standard CLIP.
        clip_text = _clip_text_config(
            {**OPEN_CLIP_CLIP_TEXT_DEFAULTS, **model_cfg.get("text_cfg", {})}, quick_gelu, embed_dim, where
        )
        fields = {
            "text_config": clip_text,
            "text_pooler_type": "argmax_pooler",
            "text_projection_type": "linear",
        }
        return _rsmclip_config(model_cfg, vision, eps, width, head_width, fields, overrides)
    pooler = text["hf_pooler_type"]
    if pooler not in _POOLERS:
        detail = (
            " (it uses the transformer's pooling layer, dense + tanh, which RS-M-CLIP's text tower does not have)"
            if pooler == "cls_pooler"
            else ""
        )
        raise ConversionError(
            f"{where}: text_cfg.hf_pooler_type={pooler!r} is not supported{detail}; supported: {sorted(_POOLERS)}"
        )
    proj_type = text["hf_proj_type"]
    if proj_type not in ("mlp", "linear"):
        raise ConversionError(
            f"{where}: text_cfg.hf_proj_type={proj_type!r} is not supported (mlp or linear)"
        )
    if int(text["context_length"]) != 77:
        raise ConversionError(
            f"{where}: text_cfg.context_length={text['context_length']} (RS-M-CLIP's processor truncates at 77)"
        )
    unknown_text = (
        set(text)
        - set(OPEN_CLIP_TEXT_DEFAULTS)
        - {"hf_model_name", "hf_tokenizer_name", *_TEXT_IGNORED_OPTIONS}
    )
    if unknown_text:
        raise ConversionError(f"{where}: unsupported text_cfg field(s) {sorted(unknown_text)}")
    if text_config is None:
        text_config = resolve_text_config(text["hf_model_name"])

    text_fields = text_config.to_dict()
    text_fields.pop("model_type", None)
    fields: dict[str, Any] = {
        "text_config": text_fields,
        "text_pooler_type": _POOLERS[pooler],
        "text_projection_type": proj_type,
        # OpenCLIP's MLP projection width, (text width + embed_dim) // 2, is also RSMCLIPConfig's default.
        "text_projection_hidden_dim": (text_config.hidden_size + embed_dim) // 2,
    }
    return _rsmclip_config(model_cfg, vision, eps, width, head_width, fields, overrides)


def _rsmclip_config(
    model_cfg: Mapping[str, Any],
    vision: Mapping[str, Any],
    eps: float,
    width: int,
    head_width: int,
    fields: dict[str, Any],
    overrides: Mapping[str, Any],
) -> RSMCLIPConfig:
    """The `RSMCLIPConfig` of a checked `model_cfg`: the image tower and temperature from it, the text tower's
    fields as derived by the caller, then `overrides`."""
    embed_dim = int(model_cfg["embed_dim"])
    fields = {
        "vision_config": {
            "hidden_size": width,
            "intermediate_size": int(width * float(vision["mlp_ratio"])),
            "num_hidden_layers": int(vision["layers"]),
            "num_attention_heads": width // head_width,
            "image_size": _single_int(vision["image_size"], "vision_cfg.image_size"),
            "patch_size": _single_int(vision["patch_size"], "vision_cfg.patch_size"),
            "hidden_act": "quick_gelu" if model_cfg.get("quick_gelu", False) else "gelu",
            "layer_norm_eps": float(eps),
            "num_channels": 3,
            "projection_dim": embed_dim,
        },
        "projection_dim": embed_dim,
        **fields,
    }
    if "init_logit_scale" in model_cfg:
        fields["logit_scale_init_value"] = float(model_cfg["init_logit_scale"])
    fields.update(overrides)
    return RSMCLIPConfig(**fields)


def _open_clip_clip_text_cfg(config: RSMCLIPConfig) -> dict[str, Any]:
    """OpenCLIP's `text_cfg` of a CLIP text tower (OpenCLIP's own text transformer)."""
    text = config.text_config
    if config.text_pooler_type != "argmax_pooler" or config.text_projection_type != "linear":
        raise ConversionError(
            f"text_pooler_type={config.text_pooler_type!r}, text_projection_type={config.text_projection_type!r}: "
            f"OpenCLIP's text transformer pools at the end-of-text token (argmax_pooler) with a linear projection"
        )
    if text.hidden_act != config.vision_config.hidden_act:
        raise ConversionError(
            f"text hidden_act={text.hidden_act!r}, vision hidden_act={config.vision_config.hidden_act!r}: OpenCLIP's "
            f"quick_gelu flag sets one activation for both towers"
        )
    if text.hidden_size % text.num_attention_heads:
        raise ConversionError("text hidden_size is not a multiple of num_attention_heads")
    mlp_ratio = text.intermediate_size / text.hidden_size
    if int(text.hidden_size * mlp_ratio) != text.intermediate_size:
        raise ConversionError(
            f"text intermediate_size={text.intermediate_size} is not expressible as mlp_ratio"
        )
    if text.max_position_embeddings != 77:
        raise ConversionError(
            f"text max_position_embeddings={text.max_position_embeddings}: OpenCLIP's is 77"
        )
    text_cfg: dict[str, Any] = {
        "context_length": text.max_position_embeddings,
        "vocab_size": text.vocab_size,
        "width": text.hidden_size,
        "heads": text.num_attention_heads,
        "layers": text.num_hidden_layers,
    }
    if mlp_ratio != 4.0:
        text_cfg["mlp_ratio"] = mlp_ratio
    if text.layer_norm_eps != OPEN_CLIP_LAYER_NORM_EPS:
        text_cfg["norm_kwargs"] = {"eps": text.layer_norm_eps}
    return text_cfg


def open_clip_model_cfg_from_rsmclip(
    config: RSMCLIPConfig, hf_model_name: str | None = None, hf_tokenizer_name: str | None = None
) -> dict[str, Any]:
    """The OpenCLIP `model_cfg` that rebuilds the architecture of `config`: a `CustomTextCLIP` with a Hugging Face
    text tower named `hf_model_name` / `hf_tokenizer_name` (XLM-RoBERTa), or for a CLIP text tower the standard
    `CLIP` (OpenCLIP's own text transformer and tokenizer; the two names are not used)."""
    vision = config.vision_config
    text = config.text_config
    if vision.hidden_act not in ("gelu", "quick_gelu"):
        raise ConversionError(
            f"vision hidden_act={vision.hidden_act!r}: OpenCLIP has only gelu and quick_gelu"
        )
    if vision.hidden_size % vision.num_attention_heads:
        raise ConversionError("vision hidden_size is not a multiple of num_attention_heads")
    if vision.num_channels != 3:
        raise ConversionError(f"vision num_channels={vision.num_channels}: OpenCLIP's ViT takes RGB (3)")
    mlp_ratio = vision.intermediate_size / vision.hidden_size
    if int(vision.hidden_size * mlp_ratio) != vision.intermediate_size:
        raise ConversionError(
            f"vision intermediate_size={vision.intermediate_size} is not expressible as mlp_ratio"
        )
    if not config.is_clip_text and config.text_projection_type == "mlp":
        open_clip_hidden = (text.hidden_size + config.projection_dim) // 2
        if config.text_projection_hidden_dim != open_clip_hidden:
            raise ConversionError(
                f"text_projection_hidden_dim={config.text_projection_hidden_dim}: OpenCLIP's MLP projection has "
                f"hidden width (text hidden + projection_dim) // 2 = {open_clip_hidden}"
            )
    vision_cfg: dict[str, Any] = {
        "image_size": vision.image_size,
        "layers": vision.num_hidden_layers,
        "width": vision.hidden_size,
        "head_width": vision.hidden_size // vision.num_attention_heads,
        "mlp_ratio": mlp_ratio,
        "patch_size": vision.patch_size,
    }
    if vision.layer_norm_eps != OPEN_CLIP_LAYER_NORM_EPS:
        vision_cfg["norm_kwargs"] = {"eps": vision.layer_norm_eps}
    if config.is_clip_text:
        text_cfg = _open_clip_clip_text_cfg(config)
    else:
        if not hf_model_name:
            raise ConversionError("an XLM-RoBERTa text tower needs OpenCLIP's hf_model_name")
        text_cfg = {
            "hf_model_name": hf_model_name,
            "hf_tokenizer_name": hf_tokenizer_name,
            "hf_proj_type": config.text_projection_type,
            "hf_pooler_type": _POOLERS_BACK[config.text_pooler_type],
            "context_length": 77,
        }
    model_cfg: dict[str, Any] = {
        "embed_dim": config.projection_dim,
        "vision_cfg": vision_cfg,
        "text_cfg": text_cfg,
    }
    if vision.hidden_act == "quick_gelu":
        model_cfg["quick_gelu"] = True
    return model_cfg


def text_architecture(config: XLMRobertaConfig) -> dict[str, Any]:
    """The fields of a text config that determine its outputs (for comparing architectures)."""
    return {k: getattr(config, k) for k in TEXT_ARCHITECTURE_FIELDS}


def known_text_architecture_name(config: XLMRobertaConfig) -> str | None:
    """The Hub name of a standard text tower with exactly this architecture, if any (e.g. "xlm-roberta-base")."""
    if not isinstance(config, XLMRobertaConfig):
        return None
    ours = text_architecture(config)
    for name in ("xlm-roberta-base", "xlm-roberta-large"):
        if text_architecture(XLMRobertaConfig(**KNOWN_TEXT_ARCHITECTURES[name])) == ours:
            return name
    return None


def image_processor_kwargs_from_preprocess_cfg(
    preprocess_cfg: Mapping[str, Any], image_size: int
) -> dict[str, Any]:
    """`RSMCLIPImageProcessor` arguments reproducing OpenCLIP's inference transform for `preprocess_cfg`.

    OpenCLIP sets the transform's size to the image tower's input size, whatever `preprocess_cfg.size` says;
    "shortest" resizing becomes resize-shortest-edge + center crop, "squash" a plain resize. "longest" (resize
    the longest side and pad) has no CLIP image processor equivalent and is refused.
    """
    cfg = {**OPEN_CLIP_PREPROCESS_DEFAULTS, **{k: v for k, v in preprocess_cfg.items() if v is not None}}
    if cfg["mode"] != "RGB":
        raise ConversionError(f"preprocess_cfg.mode={cfg['mode']!r}: only RGB is supported")
    interpolation = cfg["interpolation"]
    if interpolation not in _INTERPOLATIONS:
        raise ConversionError(f"preprocess_cfg.interpolation={interpolation!r} is not supported")
    mean, std = list(cfg["mean"]), list(cfg["std"])
    if len(mean) == 1:
        mean = mean * 3
    if len(std) == 1:
        std = std * 3
    kwargs: dict[str, Any] = {
        "do_resize": True,
        "resample": _INTERPOLATIONS[interpolation],
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [float(x) for x in mean],
        "image_std": [float(x) for x in std],
        "do_convert_rgb": True,
    }
    resize_mode = cfg["resize_mode"]
    if resize_mode == "shortest":
        kwargs.update(
            size={"shortest_edge": image_size},
            do_center_crop=True,
            crop_size={"height": image_size, "width": image_size},
        )
    elif resize_mode == "squash":
        kwargs.update(size={"height": image_size, "width": image_size}, do_center_crop=False)
    else:
        raise ConversionError(
            f"preprocess_cfg.resize_mode={resize_mode!r} is not supported (shortest or squash); the CLIP image "
            f"processor cannot pad"
        )
    return kwargs


def preprocess_cfg_from_image_processor(image_processor: Any) -> dict[str, Any]:
    """OpenCLIP `preprocess_cfg` equivalent to a CLIP image processor (resize + center crop, or squash)."""
    size = dict(image_processor.size or {})
    resample = PILImageResampling(image_processor.resample)
    if resample not in _INTERPOLATIONS_BACK:
        raise ConversionError(
            f"image processor resample={resample.name}: OpenCLIP has bicubic and bilinear only"
        )
    if not (image_processor.do_resize and image_processor.do_rescale and image_processor.do_normalize):
        raise ConversionError("the image processor must resize, rescale and normalise (as OpenCLIP does)")
    if abs(float(image_processor.rescale_factor) - 1 / 255) > 1e-12:
        raise ConversionError(
            f"image processor rescale_factor={image_processor.rescale_factor}, OpenCLIP uses 1/255"
        )
    if image_processor.do_center_crop and "shortest_edge" in size:
        crop = dict(image_processor.crop_size)
        if crop.get("height") != crop.get("width") or crop.get("height") != size["shortest_edge"]:
            raise ConversionError(
                f"image processor size={size}, crop_size={crop}: OpenCLIP resizes the shortest edge to the crop size"
            )
        out_size, resize_mode = size["shortest_edge"], "shortest"
    elif not image_processor.do_center_crop and size.get("height") == size.get("width") is not None:
        out_size, resize_mode = size["height"], "squash"
    else:
        raise ConversionError(f"image processor resizing (size={size}) has no OpenCLIP equivalent")
    return {
        "size": int(out_size),
        "mode": "RGB",
        "mean": [float(x) for x in image_processor.image_mean],
        "std": [float(x) for x in image_processor.image_std],
        "interpolation": _INTERPOLATIONS_BACK[resample],
        "resize_mode": resize_mode,
    }


__all__ = [
    "KNOWN_TEXT_ARCHITECTURES",
    "image_tower_name",
    "image_processor_kwargs_from_preprocess_cfg",
    "known_text_architecture_name",
    "open_clip_model_cfg_from_rsmclip",
    "preprocess_cfg_from_image_processor",
    "resolve_text_config",
    "rsmclip_config_from_open_clip",
    "text_architecture",
]
