"""Model families: the one place that knows how each kind of image-text dual encoder is run.

Evaluation, the archive index, scene maps, the web app, the pipelines and the ONNX export run any of these models as
they are, with their own processors, and ask this module what differs between them:

| family | model class | texts | zero-shot scores | dense features (`map segment`) | ONNX export |
|---|---|---|---|---|---|
| rsmclip | `RSMCLIPModel` | padded to the batch's longest, attention mask, 77 tokens at most | softmax over the labels of `exp(logit_scale) * cos` | NACLIP (`get_patch_features`) | yes |
| clip | `CLIPModel` | as RS-M-CLIP, up to the text tower's length (77) | softmax, as RS-M-CLIP | NACLIP on its CLIP ViT | yes |
| altclip | `AltCLIPModel` | as RS-M-CLIP (XLM-R tokenizer, CLS pooling) | softmax | NACLIP on its CLIP ViT | yes |
| siglip | `SiglipModel` | padded to the text tower's length (64), no attention mask: as trained | `sigmoid(exp(logit_scale) * cos + logit_bias)`, each label on its own | none: an attention-pooling head | yes |
| siglip2 | `Siglip2Model` | as SigLIP | as SigLIP | none | no: variable patch grids (NaFlex) |

A family is found from the model's or encoder's ``config.model_type`` (`model_family`), so the PyTorch model, its int8
copy and its ONNX Runtime encoder (which carry the same config) are one family. Everything else that differs (the image
processor's resizing, SigLIP 2's patch inputs, the tokenizer) comes with the model's own processor: `image_inputs`
passes on whatever model inputs the image processor makes.

Imports torch only inside the functions that compute.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# What RS-M-CLIP and AltCLIP (XLM-R tokenizers, trained on 77 tokens) read at most: the context length of
# `processing_rsmclip.CONTEXT_LENGTH`, repeated here so that this module stays light.
CONTEXT_LENGTH = 77

# The model inputs an image processor may make (SigLIP 2's NaFlex processor makes all three).
IMAGE_INPUT_NAMES = ("pixel_values", "pixel_attention_mask", "spatial_shapes")


@dataclass(frozen=True)
class ModelFamily:
    """What differs between the dual encoders the toolkit runs (see the module's table).

    Attributes:
        name: short name (``"siglip"``), recorded in index manifests, ONNX exports and benchmark tables.
        title: how messages name it (``"SigLIP"``).
        model_class: the transformers class (``"SiglipModel"``).
        model_types: the ``config.model_type`` values of the family.
        scoring: ``"softmax"`` (probabilities over the labels) or ``"sigmoid"`` (each label scored on its own, with
            the model's ``logit_bias``).
        text_padding: ``"longest"`` (pad a batch to its longest text) or ``"max_length"`` (every text padded to
            the text length, as SigLIP was trained).
        text_attention_mask: whether the text tower is given the attention mask.
        context_length: the text length in tokens; None = the text tower's ``max_position_embeddings``.
        dense_features: whether patch features for NACLIP segmentation exist (a CLIP ViT: class token, patch
            tokens sharing its post-layernorm and projection).
        dense_note: why not, when they do not.
        onnx_note: why the towers cannot be exported to ONNX (empty when they can).
    """

    name: str
    title: str
    model_class: str
    model_types: tuple[str, ...]
    scoring: str
    text_padding: str
    text_attention_mask: bool
    context_length: int | None
    dense_features: bool
    dense_note: str = ""
    onnx_note: str = ""

    @property
    def onnx_export(self) -> bool:
        return not self.onnx_note


_ATTENTION_POOLING = (
    "its image tower pools with an attention head instead of a class token, so its patch tokens are not in the "
    "space of the text embeddings"
)

FAMILIES: dict[str, ModelFamily] = {
    family.name: family
    for family in (
        ModelFamily(
            "rsmclip",
            "RS-M-CLIP",
            "RSMCLIPModel",
            ("rsmclip",),
            "softmax",
            "longest",
            True,
            CONTEXT_LENGTH,
            True,
        ),
        ModelFamily("clip", "CLIP", "CLIPModel", ("clip",), "softmax", "longest", True, None, True),
        ModelFamily(
            "altclip",
            "AltCLIP",
            "AltCLIPModel",
            ("altclip",),
            "softmax",
            "longest",
            True,
            CONTEXT_LENGTH,
            True,
        ),
        ModelFamily(
            "siglip",
            "SigLIP",
            "SiglipModel",
            ("siglip",),
            "sigmoid",
            "max_length",
            False,
            None,
            False,
            dense_note=_ATTENTION_POOLING,
        ),
        ModelFamily(
            "siglip2",
            "SigLIP 2",
            "Siglip2Model",
            ("siglip2",),
            "sigmoid",
            "max_length",
            False,
            None,
            False,
            dense_note=_ATTENTION_POOLING,
            onnx_note="its image tower takes a variable grid of patches per image (NaFlex), which a fixed ONNX graph "
            "does not hold",
        ),
    )
}


def supported_model_types() -> list[str]:
    return sorted(t for family in FAMILIES.values() for t in family.model_types)


def _config(model: Any) -> Any:
    """The config of a model, an inference encoder or a config."""
    if hasattr(model, "model_type") and hasattr(model, "to_dict"):
        return model
    config = getattr(model, "config", None)
    if config is None:
        raise TypeError(
            f"{type(model).__name__} has no config: give a transformers model or an inference encoder"
        )
    return config


def model_family(model: Any) -> ModelFamily:
    """The family of a model, an `inference.load_encoder` encoder, a config, or a family name / model type.

    Raises `ValueError` naming the model type when the toolkit does not run it."""
    model_type = model if isinstance(model, str) else getattr(_config(model), "model_type", "")
    if isinstance(model, str) and model in FAMILIES:
        return FAMILIES[model]
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    names = ", ".join(f"{f.title} ({f.model_class})" for f in FAMILIES.values())
    raise ValueError(
        f"models of type {model_type!r} are not supported: the toolkit runs {names} checkpoints "
        f"(config model_type one of {', '.join(supported_model_types())})"
    )


def embedding_dim(model: Any) -> int:
    """The dimension of the image and text embeddings (``projection_dim``; SigLIP: the vision width, which its
    heads keep)."""
    config = _config(model)
    dim = getattr(config, "projection_dim", None)
    if dim is None:
        dim = config.vision_config.hidden_size
    return int(dim)


# ------------------------------------------------------------------------------------------------------- texts
@dataclass(frozen=True)
class TextRule:
    """How texts become the text tower's inputs: truncated to ``max_length`` tokens, padded to the batch's longest
    or (``fixed_length``) to ``max_length``, with or without the attention mask."""

    max_length: int
    fixed_length: bool
    attention_mask: bool


def text_rule(model: Any, max_length: int | None = None) -> TextRule:
    """The family's `TextRule` for ``model``; ``max_length`` truncates earlier (a fixed-length family still pads to
    its own length)."""
    family = model_family(model)
    limit = family.context_length or int(_config(model).text_config.max_position_embeddings)
    if family.text_padding == "max_length":
        return TextRule(limit, True, family.text_attention_mask)
    length = limit if max_length is None else min(int(max_length), limit)
    return TextRule(length, False, family.text_attention_mask)


def pad_token_id(tokenizer: Any) -> int:
    """The tokenizer's padding id (0 when it has none)."""
    pad = getattr(tokenizer, "pad_token_id", None)
    return int(pad) if pad is not None else 0


def text_inputs(
    model: Any, tokenizer: Any, texts: Sequence[str], max_length: int | None = None
) -> dict[str, Any]:
    """The text tower's inputs for ``texts`` (``input_ids`` and, where the family uses it, ``attention_mask``;
    int64 tensors), tokenized by the family's rule (`text_rule`)."""
    rule = text_rule(model, max_length)
    batch = tokenizer(
        list(texts),
        padding="max_length" if rule.fixed_length else True,
        truncation=True,
        max_length=rule.max_length,
        return_attention_mask=True,
        return_tensors="pt",
    )
    out = {"input_ids": batch["input_ids"]}
    if rule.attention_mask:
        out["attention_mask"] = batch["attention_mask"]
    return out


def pad_token_rows(
    rule: TextRule, rows: Sequence[Sequence[int]], pad_id: int, side: str = "right"
) -> dict[str, Any]:
    """Token-id rows (already truncated) padded into the text tower's inputs by ``rule``, on ``side`` (the
    tokenizer's ``padding_side``: SigLIP 2's pads on the left), as the tokenizer itself would pad them."""
    import torch

    width = rule.max_length if rule.fixed_length else max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for j, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        input_ids[j, span] = torch.tensor(list(row), dtype=torch.long)
        attention_mask[j, span] = 1
    out = {"input_ids": input_ids}
    if rule.attention_mask:
        out["attention_mask"] = attention_mask
    return out


def text_features(model: Any, inputs: Mapping[str, Any], device: Any = None) -> Any:
    """Projected, un-normalised text embeddings ``(batch, dim)`` (``get_text_features(...).pooler_output``)."""
    moved = {k: v.to(device) if device is not None else v for k, v in inputs.items()}
    return model.get_text_features(**moved).pooler_output


# ------------------------------------------------------------------------------------------------------ images
def image_inputs(processor: Any, images: Sequence[Any]) -> dict[str, Any]:
    """The image tower's inputs for ``images`` made by the model's own image processor (``pixel_values``, and
    SigLIP 2's ``pixel_attention_mask`` / ``spatial_shapes``)."""
    image_processor = getattr(processor, "image_processor", processor)
    batch = image_processor(images=list(images), return_tensors="pt")
    return {name: batch[name] for name in IMAGE_INPUT_NAMES if name in batch}


def as_image_inputs(inputs: Any) -> dict[str, Any]:
    """``inputs`` as a dict of image-tower inputs: a bare tensor is ``pixel_values``."""
    if isinstance(inputs, Mapping):
        return dict(inputs)
    return {"pixel_values": inputs}


def image_batch_size(inputs: Any) -> int:
    return int(as_image_inputs(inputs)["pixel_values"].shape[0])


def select_images(inputs: Any, rows: Sequence[int]) -> dict[str, Any]:
    """The rows ``rows`` of a batch of image inputs (every tensor indexed along its first axis)."""
    import torch

    index = torch.as_tensor(list(rows), dtype=torch.long)
    return {name: value[index] for name, value in as_image_inputs(inputs).items()}


def image_features(model: Any, inputs: Any, device: Any = None, dtype: Any = None) -> Any:
    """Projected, un-normalised image embeddings ``(batch, dim)`` (``get_image_features(...).pooler_output``) of
    image inputs (`image_inputs`, or a ``pixel_values`` tensor), moved to ``device``; floating inputs are cast to
    ``dtype`` when given."""
    moved = {}
    for name, value in as_image_inputs(inputs).items():
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        moved[name] = value.to(device, non_blocking=True) if device is not None else value
    return model.get_image_features(**moved).pooler_output


# ------------------------------------------------------------------------------------------------------ scores
def score_parameters(model: Any) -> tuple[float, float]:
    """``(scale, bias)`` of the family's zero-shot scores: ``exp(logit_scale)`` and ``logit_bias`` (0 for the
    softmax families). A model without a recorded temperature uses CLIP's usual 100."""
    family = model_family(model)
    scale = getattr(model, "logit_scale", None)
    scale_value = 100.0 if scale is None else float(np.exp(_as_float(scale)))
    bias = getattr(model, "logit_bias", None) if family.scoring == "sigmoid" else None
    return scale_value, 0.0 if bias is None else _as_float(bias)


def _as_float(value: Any) -> float:
    if hasattr(value, "detach"):
        value = value.detach().float().cpu().reshape(-1)[0].item()
    return float(np.asarray(value, dtype=np.float64).reshape(-1)[0])


def _as_matrix(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    return x[None] if x.ndim == 1 else x


def zero_shot_logits(model: Any, image_embeds: Any, class_embeds: Any) -> np.ndarray:
    """``(images, classes)`` scores before the family's activation: ``scale * cos + bias`` of normalised
    embeddings (float64). They rank the classes as the probabilities do."""
    scale, bias = score_parameters(model)
    return scale * (_as_matrix(image_embeds) @ _as_matrix(class_embeds).T) + bias


def zero_shot_probabilities(model: Any, image_embeds: Any, class_embeds: Any) -> np.ndarray:
    """``(images, classes)`` zero-shot probabilities (float64) of L2-normalised image and class embeddings, by the
    family's rule: softmax over the classes of ``exp(logit_scale) * cos`` (CLIP-like models: rows sum to 1), or
    SigLIP's ``sigmoid(exp(logit_scale) * cos + logit_bias)`` (each class scored on its own). The same numbers as
    the model's ``logits_per_image`` through softmax / sigmoid."""
    logits = zero_shot_logits(model, image_embeds, class_embeds)
    if model_family(model).scoring == "sigmoid":
        return 0.5 * (1.0 + np.tanh(0.5 * logits))  # the logistic function without overflow
    logits = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=-1, keepdims=True)


# ---------------------------------------------------------------------------------------------- dense features
def supports_dense_features(model: Any) -> bool:
    """True when `patch_features` can run ``model`` (a PyTorch model of a family with a CLIP ViT image tower)."""
    return getattr(model, "backend", "torch") == "torch" and model_family(model).dense_features


def check_dense_features(model: Any) -> None:
    """Raise `ValueError` saying why ``model`` gives no patch features (segmentation needs them)."""
    if getattr(model, "backend", "torch") != "torch":
        raise ValueError(
            f"dense patch features need the PyTorch backend, not {model.backend!r}: the ONNX graphs give pooled "
            "embeddings (use --backend torch, with --precision int8 for a smaller, faster CPU model)"
        )
    family = model_family(model)
    if not family.dense_features:
        raise ValueError(
            f"{family.title} ({family.model_class}) has no dense patch features: {family.dense_note}. "
            "Open-vocabulary segmentation (map segment) cannot run it; tile classification (map classify) can"
        )


def patch_features(
    model: Any, pixel_values: Any, *, naclip: bool = False, naclip_gaussian_std: float = 5.0
) -> Any:
    """Dense image features ``(batch, h, w, dim)``: one projected, un-normalised embedding per patch, as
    `RSMCLIPModel.get_patch_features` computes them (its own method for RS-M-CLIP and its int8 encoder; the same
    computation on the CLIP ViT of CLIP and AltCLIP models, see `vit_patch_features`). Raises `ValueError` for a
    model without them (`check_dense_features`)."""
    check_dense_features(model)
    own = getattr(model, "get_patch_features", None)
    if callable(own):
        return own(pixel_values, naclip=naclip, naclip_gaussian_std=naclip_gaussian_std)
    return vit_patch_features(model, pixel_values, naclip=naclip, naclip_gaussian_std=naclip_gaussian_std)


def vit_patch_features(
    model: Any, pixel_values: Any, *, naclip: bool = False, naclip_gaussian_std: float = 5.0
) -> Any:
    """Patch features of a model whose ``vision_model`` is a CLIP vision transformer (``embeddings``,
    ``pre_layrnorm``, ``encoder.layers``, ``post_layernorm``) with a ``visual_projection``: the last layer's patch
    tokens through the post-layernorm and the projection, as the class token goes in ``get_image_features``;
    with ``naclip``, the last layer replaced by NACLIP's neighbourhood attention (`naclip_attention`). Nothing of
    the model is changed."""
    from ..modeling_rsmclip import naclip_attention

    vision = model.vision_model
    patch = int(_config(model).vision_config.patch_size)
    grid = (pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch)
    hidden = vision.pre_layrnorm(vision.embeddings(pixel_values))
    layers = vision.encoder.layers
    for layer in layers[:-1] if naclip else layers:
        hidden = layer(hidden, None)
    if naclip:
        hidden = naclip_attention(layers[-1], hidden, grid, naclip_gaussian_std)
    patches = model.visual_projection(vision.post_layernorm(hidden[:, 1:]))
    return patches.reshape(patches.shape[0], grid[0], grid[1], patches.shape[-1])


# -------------------------------------------------------------------------------------------------------- ONNX
def check_onnx_export(model: Any) -> ModelFamily:
    """The family of ``model`` when its towers can be exported to ONNX; else `ValueError` saying why not."""
    family = model_family(model)
    if not family.onnx_export:
        raise ValueError(
            f"ONNX export of {family.title} ({family.model_class}) is not supported: {family.onnx_note}. Run it "
            "with --backend torch (fp32, bf16, fp16, or int8 on the CPU)"
        )
    return family


__all__ = [
    "FAMILIES",
    "IMAGE_INPUT_NAMES",
    "ModelFamily",
    "TextRule",
    "as_image_inputs",
    "check_dense_features",
    "check_onnx_export",
    "embedding_dim",
    "image_batch_size",
    "image_features",
    "image_inputs",
    "model_family",
    "pad_token_id",
    "pad_token_rows",
    "patch_features",
    "score_parameters",
    "select_images",
    "supported_model_types",
    "supports_dense_features",
    "text_features",
    "text_inputs",
    "text_rule",
    "vit_patch_features",
    "zero_shot_logits",
    "zero_shot_probabilities",
]
