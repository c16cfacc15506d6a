"""Configuration mapping between OpenCLIP (`open_clip_config.json`: `model_cfg`, `preprocess_cfg`) and RS-M-CLIP
(`RSMCLIPConfig`, `RSMCLIPImageProcessor`).

Only what RS-M-CLIP can represent exactly is accepted: a plain ViT image tower (class-token pooling, learnable
positions, pre- and post-layernorm, no layer scale / attentional pooling / custom attention) and a Hugging Face
XLM-RoBERTa (or RoBERTa) text tower with mean or CLS pooling and an MLP or linear projection. Anything else is a
`ConversionError` naming the field, never a silently different model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import AutoConfig, XLMRobertaConfig
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
    bad = [
        f"{k}={section[k]!r} (supported: {v!r})" for k, v in fixed.items() if k in section and section[k] != v
    ]
    if bad:
        raise ConversionError(f"{where}: unsupported option(s) {', '.join(bad)}")


def rsmclip_config_from_open_clip(
    model_cfg: Mapping[str, Any],
    text_config: XLMRobertaConfig | None = None,
    where: str = "open_clip_config.json",
    **overrides: Any,
) -> RSMCLIPConfig:
    """Derive the `RSMCLIPConfig` of an OpenCLIP `model_cfg`.

    Vision: `width`, `layers`, `width // head_width` heads, `int(width * mlp_ratio)` MLP size, `patch_size`,
    `image_size`, layer-norm eps (`norm_kwargs.eps`, default 1e-5), and `hidden_act` = "quick_gelu" when
    `quick_gelu: true` else exact "gelu". Text: the architecture of `hf_model_name` (or `text_config`), the pooler
    and the projection type. `overrides` set other top-level fields (e.g. the distillation head's size).
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

    if isinstance(vision["layers"], list | tuple):
        raise ConversionError(
            f"{where}: vision_cfg.layers={vision['layers']!r} is a ResNet; only ViTs are supported"
        )
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

    if not text.get("hf_model_name"):
        raise ConversionError(
            f"{where}: text_cfg has no hf_model_name; only OpenCLIP models with a Hugging Face (XLM-RoBERTa) text "
            f"tower can be converted"
        )
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

    embed_dim = int(model_cfg["embed_dim"])
    vision_config = {
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
    }
    text_fields = text_config.to_dict()
    text_fields.pop("model_type", None)
    fields: dict[str, Any] = {
        "vision_config": vision_config,
        "text_config": text_fields,
        "projection_dim": embed_dim,
        "text_pooler_type": _POOLERS[pooler],
        "text_projection_type": proj_type,
        # OpenCLIP's MLP projection width, (text width + embed_dim) // 2, is also RSMCLIPConfig's default.
        "text_projection_hidden_dim": (text_config.hidden_size + embed_dim) // 2,
    }
    if "init_logit_scale" in model_cfg:
        fields["logit_scale_init_value"] = float(model_cfg["init_logit_scale"])
    fields.update(overrides)
    return RSMCLIPConfig(**fields)


def open_clip_model_cfg_from_rsmclip(
    config: RSMCLIPConfig, hf_model_name: str, hf_tokenizer_name: str
) -> dict[str, Any]:
    """The OpenCLIP `model_cfg` that rebuilds the architecture of `config` (`CustomTextCLIP` with an HF text tower)."""
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
    if config.text_projection_type == "mlp":
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
    model_cfg: dict[str, Any] = {
        "embed_dim": config.projection_dim,
        "vision_cfg": vision_cfg,
        "text_cfg": {
            "hf_model_name": hf_model_name,
            "hf_tokenizer_name": hf_tokenizer_name,
            "hf_proj_type": config.text_projection_type,
            "hf_pooler_type": _POOLERS_BACK[config.text_pooler_type],
            "context_length": 77,
        },
    }
    if vision.hidden_act == "quick_gelu":
        model_cfg["quick_gelu"] = True
    return model_cfg


def text_architecture(config: XLMRobertaConfig) -> dict[str, Any]:
    """The fields of a text config that determine its outputs (for comparing architectures)."""
    return {k: getattr(config, k) for k in TEXT_ARCHITECTURE_FIELDS}


def known_text_architecture_name(config: XLMRobertaConfig) -> str | None:
    """The Hub name of a standard text tower with exactly this architecture, if any (e.g. "xlm-roberta-base")."""
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
    "image_processor_kwargs_from_preprocess_cfg",
    "known_text_architecture_name",
    "open_clip_model_cfg_from_rsmclip",
    "preprocess_cfg_from_image_processor",
    "resolve_text_config",
    "rsmclip_config_from_open_clip",
    "text_architecture",
]
