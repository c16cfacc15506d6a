"""Tensor-by-tensor mapping between an OpenCLIP state dict (`CustomTextCLIP` or the standard `CLIP`) and an
`RSMCLIPModel` state dict.

OpenCLIP layout, ViT image tower (both kinds):

- `visual.conv1.weight`, `visual.class_embedding`, `visual.positional_embedding`, `visual.ln_pre.*`,
  `visual.transformer.resblocks.N.{ln_1, attn.in_proj_weight, attn.in_proj_bias, attn.out_proj, ln_2, mlp.c_fc,
  mlp.c_proj}.*`, `visual.ln_post.*`, `visual.proj` (width x embed_dim, applied as `x @ proj`);
- `logit_scale`.

Text, `CustomTextCLIP` (Hugging Face text tower, RS-M-CLIP's family):

- `text.transformer.*`: the state dict of a transformers `XLMRobertaModel` without pooler;
- `text.proj.0.weight`, `text.proj.2.weight` (MLP projection) or `text.proj.weight` (linear projection).

Text, standard `CLIP` (OpenCLIP's own causal text transformer; OpenAI CLIP, RemoteCLIP, GeoRSCLIP, SkyCLIP):

- `token_embedding.weight`, `positional_embedding`, `transformer.resblocks.N.*` (the same block layout as the image
  tower's), `ln_final.*`, `text_projection` (width x embed_dim, applied as `x @ text_projection`).

RS-M-CLIP layout: `vision_model.*` (transformers `CLIPVisionModel`), `visual_projection.weight` (= `proj.T`),
`text_model.*` (`XLMRobertaModel`, or `CLIPTextModel`: `embeddings.token_embedding`, `embeddings.position_embedding`,
`encoder.layers.N.*`, `final_layer_norm`), `text_projection.*`, `logit_scale`, plus `distillation_head.*`, which has
no OpenCLIP counterpart.

Both directions are strict: a key that is not mapped, a key that is missing, or a tensor of the wrong shape is an
error that lists every offending key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from ..configuration_rsmclip import RSMCLIPConfig


class ConversionError(ValueError):
    """A checkpoint or configuration that cannot be converted exactly."""


# Position ids of the text embeddings: a buffer, not a weight. Checkpoints made with transformers < 4.31 saved it.
# OpenAI's own checkpoints carry three scalars of metadata, which OpenCLIP drops too (build_model_from_openai_state_dict).
_IGNORED_OPEN_CLIP_KEYS = (
    "text.transformer.embeddings.position_ids",
    "input_resolution",
    "context_length",
    "vocab_size",
)

# The standard CLIP's text transformer, outside its blocks (`text_projection` is transposed separately).
_CLIP_TEXT_FIXED = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
}

_VISION_FIXED = {
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
}

# Per-block renames, both towers (everything except the fused q/k/v projection, handled separately).
_BLOCK = {
    "ln_1.weight": "layer_norm1.weight",
    "ln_1.bias": "layer_norm1.bias",
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "ln_2.weight": "layer_norm2.weight",
    "ln_2.bias": "layer_norm2.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
}
_IN_PROJ = {"attn.in_proj_weight": "weight", "attn.in_proj_bias": "bias"}

# The blocks of OpenCLIP's transformers (image tower; text tower of the standard CLIP) and of transformers' CLIP
# encoders: `(OpenCLIP prefix, RS-M-CLIP prefix)` of block N, per tower.
_OPEN_CLIP_BLOCK_RE = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")
_RSMCLIP_LAYER_RE = re.compile(r"^(vision|text)_model\.encoder\.layers\.(\d+)\.(.+)$")
_BLOCK_PREFIXES = {"visual.": "vision_model.", "": "text_model."}

_OPEN_CLIP_TEXT_PREFIX = "text.transformer."
_RSMCLIP_TEXT_PREFIX = "text_model."
_RSMCLIP_DISTILLATION_PREFIX = "distillation_head."


def _text_projection_keys(config: RSMCLIPConfig) -> dict[str, str]:
    if config.is_clip_text:
        return {}  # `text_projection`, a transposed matrix (see the callers)
    if config.text_projection_type == "mlp":
        return {
            "text.proj.0.weight": "text_projection.0.weight",
            "text.proj.2.weight": "text_projection.2.weight",
        }
    return {"text.proj.weight": "text_projection.weight"}


def _format_keys(keys: list[str], limit: int = 50) -> str:
    shown = ", ".join(sorted(keys)[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def expected_rsmclip_shapes(config: RSMCLIPConfig) -> dict[str, tuple[int, ...]]:
    """Shapes of every tensor of an `RSMCLIPModel` built from `config` except the distillation head.

    Built on the meta device, so it costs no memory even for the full-size model.
    """
    from ..modeling_rsmclip import RSMCLIPModel

    with torch.device("meta"):
        model = RSMCLIPModel(config)
    return {
        key: tuple(value.shape)
        for key, value in model.state_dict().items()
        if not key.startswith(_RSMCLIP_DISTILLATION_PREFIX)
    }


def open_clip_to_rsmclip_state_dict(
    state_dict: Mapping[str, torch.Tensor], config: RSMCLIPConfig, source: str = "the checkpoint"
) -> dict[str, torch.Tensor]:
    """Map an OpenCLIP state dict to `RSMCLIPModel` keys (without the distillation head).

    The fused attention input projection `in_proj_weight` (3*width x width, rows q, k, v) is split into `q_proj`,
    `k_proj` and `v_proj`; `visual.proj` (and a standard CLIP's `text_projection`) is transposed into
    `visual_projection.weight` (`text_projection.weight`); `logit_scale` becomes a scalar. Raises `ConversionError` naming every unmapped key, missing key and shape mismatch.
    """
    projection_keys = _text_projection_keys(config)
    clip_text = config.is_clip_text
    converted: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    for key, tensor in state_dict.items():
        if key in _IGNORED_OPEN_CLIP_KEYS:
            continue
        if key in _VISION_FIXED:
            converted[_VISION_FIXED[key]] = tensor
        elif key == "visual.proj":
            converted["visual_projection.weight"] = tensor.t().contiguous()
        elif key == "logit_scale":
            if tensor.numel() != 1:
                raise ConversionError(
                    f"{source}: logit_scale has shape {tuple(tensor.shape)}, expected a scalar"
                )
            converted["logit_scale"] = tensor.reshape(())
        elif key in projection_keys:
            converted[projection_keys[key]] = tensor
        elif clip_text and key in _CLIP_TEXT_FIXED:
            converted[_CLIP_TEXT_FIXED[key]] = tensor
        elif clip_text and key == "text_projection":
            converted["text_projection.weight"] = tensor.t().contiguous()
        elif not clip_text and key.startswith(_OPEN_CLIP_TEXT_PREFIX):
            converted[_RSMCLIP_TEXT_PREFIX + key[len(_OPEN_CLIP_TEXT_PREFIX) :]] = tensor
        elif (match := _OPEN_CLIP_BLOCK_RE.match(key)) and (match.group(1) or clip_text):
            tower, layer, rest = match.groups()
            prefix = f"{_BLOCK_PREFIXES[tower or '']}encoder.layers.{layer}."
            if rest in _BLOCK:
                converted[prefix + _BLOCK[rest]] = tensor
            elif rest in _IN_PROJ:
                if tensor.shape[0] % 3:
                    raise ConversionError(
                        f"{source}: {key} has shape {tuple(tensor.shape)}; its first dimension must be 3 x width"
                    )
                for name, part in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0)):
                    converted[f"{prefix}self_attn.{name}.{_IN_PROJ[rest]}"] = part.contiguous()
            else:
                unmapped.append(key)
        else:
            unmapped.append(key)
    if unmapped:
        expected = "a ViT + CLIP text transformer" if clip_text else "a ViT + XLM-RoBERTa"
        raise ConversionError(
            f"{source}: {len(unmapped)} tensor(s) have no RS-M-CLIP counterpart (the architecture differs from "
            f"{expected} OpenCLIP model): {_format_keys(unmapped)}"
        )
    _check_against_model(converted, config, source)
    return converted


def _check_against_model(converted: Mapping[str, torch.Tensor], config: RSMCLIPConfig, source: str) -> None:
    expected = expected_rsmclip_shapes(config)
    missing = [k for k in expected if k not in converted]
    unexpected = [k for k in converted if k not in expected]
    mismatched = [
        f"{k} {tuple(converted[k].shape)} != {expected[k]}"
        for k in expected
        if k in converted and tuple(converted[k].shape) != expected[k]
    ]
    problems = []
    if missing:
        problems.append(f"missing from the checkpoint ({len(missing)}): {_format_keys(missing)}")
    if unexpected:
        problems.append(f"not in the RS-M-CLIP model ({len(unexpected)}): {_format_keys(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch ({len(mismatched)}): {_format_keys(mismatched)}")
    if problems:
        raise ConversionError(
            f"{source} does not match the derived RS-M-CLIP configuration; " + "; ".join(problems)
        )


def rsmclip_to_open_clip_state_dict(
    state_dict: Mapping[str, torch.Tensor], config: RSMCLIPConfig, source: str = "the model"
) -> dict[str, torch.Tensor]:
    """Map an `RSMCLIPModel` state dict to OpenCLIP keys (`CustomTextCLIP`, or the standard `CLIP` for a CLIP text
    tower).

    The distillation head (`distillation_head.*`) is dropped: OpenCLIP has no place for it. The q/k/v projections
    of each vision block are concatenated into `in_proj_weight` / `in_proj_bias`. Raises `ConversionError` naming
    every key that cannot be mapped or is missing.
    """
    clip_text = config.is_clip_text
    reverse_fixed = {v: k for k, v in _VISION_FIXED.items()}
    if clip_text:
        reverse_fixed.update({v: k for k, v in _CLIP_TEXT_FIXED.items()})
    reverse_block = {v: k for k, v in _BLOCK.items()}
    reverse_projection = {v: k for k, v in _text_projection_keys(config).items()}
    open_clip_prefixes = {v: k for k, v in _BLOCK_PREFIXES.items()}
    _check_against_model(
        {k: v for k, v in state_dict.items() if not k.startswith(_RSMCLIP_DISTILLATION_PREFIX)},
        config,
        source,
    )

    converted: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    unmapped: list[str] = []
    for key, tensor in state_dict.items():
        if key.startswith(_RSMCLIP_DISTILLATION_PREFIX):
            continue
        if key in reverse_fixed:
            converted[reverse_fixed[key]] = tensor
        elif key == "visual_projection.weight":
            converted["visual.proj"] = tensor.t().contiguous()
        elif key == "logit_scale":
            converted["logit_scale"] = tensor.reshape(())
        elif key in reverse_projection:
            converted[reverse_projection[key]] = tensor
        elif clip_text and key == "text_projection.weight":
            converted["text_projection"] = tensor.t().contiguous()
        elif (match := _RSMCLIP_LAYER_RE.match(key)) and (match.group(1) == "vision" or clip_text):
            tower, layer, rest = match.groups()
            prefix = f"{open_clip_prefixes[tower + '_model.']}transformer.resblocks.{layer}."
            attn = re.fullmatch(r"self_attn\.(q_proj|k_proj|v_proj)\.(weight|bias)", rest)
            if rest in reverse_block:
                converted[prefix + reverse_block[rest]] = tensor
            elif attn:
                qkv.setdefault((prefix, attn.group(2)), {})[attn.group(1)] = tensor
            else:
                unmapped.append(key)
        elif not clip_text and key.startswith(_RSMCLIP_TEXT_PREFIX):
            converted[_OPEN_CLIP_TEXT_PREFIX + key[len(_RSMCLIP_TEXT_PREFIX) :]] = tensor
        else:
            unmapped.append(key)
    if unmapped:
        raise ConversionError(
            f"{source}: {len(unmapped)} tensor(s) have no OpenCLIP counterpart: {_format_keys(unmapped)}"
        )
    for (prefix, kind), parts in sorted(qkv.items()):
        name = "in_proj_weight" if kind == "weight" else "in_proj_bias"
        converted[f"{prefix}attn.{name}"] = torch.cat(
            [parts["q_proj"], parts["k_proj"], parts["v_proj"]], dim=0
        )
    return converted


__all__ = [
    "ConversionError",
    "expected_rsmclip_shapes",
    "open_clip_to_rsmclip_state_dict",
    "rsmclip_to_open_clip_state_dict",
]
