"""Tiny random models of every family (an OpenCLIP CLIP converted by `rsmclip convert`, and the Hub-native CLIP,
SigLIP, SigLIP 2, AltCLIP), made once per test process, and references computed with each model's own forward pass
(the way its model card says to call it), independent of the package's embedding code."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

HUB_FAMILIES = ("clip", "siglip", "siglip2", "altclip")
# "openclip": an OpenCLIP CLIP (OpenAI CLIP / RemoteCLIP / GeoRSCLIP architecture) made by open_clip with random
# weights and converted into an `RSMCLIPModel` with the CLIP text tower (family "rsmclip" in `inference.families`).
ALL_FAMILIES = ("openclip", *HUB_FAMILIES)
SIGMOID = ("siglip", "siglip2")


@functools.cache
def family_folder(family: str) -> Path:
    """The tiny model of ``family`` saved with `save_pretrained` (model + processor), once per process; for
    ``"openclip"`` the folder `rsmclip convert` writes from a random OpenCLIP CLIP."""
    from modeling_rsmclip.testing import make_tiny_converted_clip, make_tiny_family_model

    root = Path(tempfile.mkdtemp(prefix=f"rsmclip-{family}-"))
    atexit.register(shutil.rmtree, root, True)
    if family == "openclip":
        return make_tiny_converted_clip(root)
    return make_tiny_family_model(family, root)


@functools.cache
def family_model(family: str):
    """``(model, processor)`` of `family_folder`, loaded with the Auto classes (not the package's loader)."""
    from transformers import AutoModel, AutoProcessor

    folder = family_folder(family)
    return AutoModel.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)


@functools.cache
def onnx_cache_root() -> Path:
    """A per-process folder laid out as `inference.encoders.default_onnx_cache_dir()` (one export per weights'
    SHA-256): with ``$RSMCLIP_ONNX_CACHE`` pointing here, ``--backend onnx`` runs the graphs of `family_onnx_export`
    instead of exporting the model again."""
    root = Path(tempfile.mkdtemp(prefix="rsmclip-onnx-cache-"))
    atexit.register(shutil.rmtree, root, True)
    return root


# Families whose export also carries the int8 graphs (the fusion and quantisation path, checked once).
ONNX_INT8 = ("clip",)


@functools.cache
def family_onnx_export(family: str) -> tuple[int, Path]:
    """``(exit status, folder)`` of ``rsmclip export --to-onnx`` run once per process (the command's entry point) on
    `family_folder`, into `onnx_cache_root` under the model's weights digest; int8 graphs for `ONNX_INT8` only."""
    from modeling_rsmclip.cli import main
    from modeling_rsmclip.inference import weights_digest

    model, _ = family_model(family)
    out = onnx_cache_root() / weights_digest(model).hex()[:24]
    argv = ["export", "--to-onnx", str(family_folder(family)), str(out)]
    return main(argv + ([] if family in ONNX_INT8 else ["--no-int8"])), out


def family_of_folder(folder: Path) -> str:
    import json

    return json.loads((Path(folder) / "config.json").read_text())["model_type"]


def reference_text_inputs(family: str, tokenizer, texts: list[str]) -> dict[str, torch.Tensor]:
    """Texts as the model cards call the models: SigLIP padded to max length 64 and no attention mask (as in
    big_vision and OpenCLIP); CLIP and AltCLIP padded to the longest, with the mask."""
    if family in SIGMOID:
        batch = tokenizer(texts, padding="max_length", max_length=64, truncation=True, return_tensors="pt")
        return {"input_ids": batch["input_ids"]}
    batch = tokenizer(texts, padding=True, truncation=True, max_length=77, return_tensors="pt")
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


@torch.inference_mode()
def reference_forward(family: str, model, processor, texts: list[str], images: list) -> dict[str, np.ndarray]:
    """The model's own forward pass: normalised ``image_embeds`` / ``text_embeds``, ``logits_per_image`` and the
    probabilities its card defines (softmax over the texts; SigLIP: sigmoid of each)."""
    text = reference_text_inputs(family, processor.tokenizer, texts)
    pixels = processor.image_processor(images=images, return_tensors="pt")
    out = model(**text, **pixels)
    logits = out.logits_per_image
    probs = torch.sigmoid(logits) if family in SIGMOID else logits.softmax(-1)
    return {
        "image_embeds": out.image_embeds.numpy().astype(np.float64),
        "text_embeds": out.text_embeds.numpy().astype(np.float64),
        "logits_per_image": logits.numpy().astype(np.float64),
        "probabilities": probs.numpy().astype(np.float64),
    }


def scale_and_bias(family: str, model) -> tuple[float, float]:
    scale = float(model.logit_scale.detach().exp().reshape(-1)[0])
    bias = float(model.logit_bias.detach().reshape(-1)[0]) if family in SIGMOID else 0.0
    return scale, bias


def reference_class_scores(family: str, model, image_embeds, class_embeds) -> np.ndarray:
    """Zero-shot probabilities by hand: softmax over the classes of exp(logit_scale) * cos, or SigLIP's sigmoid of
    exp(logit_scale) * cos + logit_bias."""
    scale, bias = scale_and_bias(family, model)
    logits = scale * (np.asarray(image_embeds, np.float64) @ np.asarray(class_embeds, np.float64).T) + bias
    if family in SIGMOID:
        return 1.0 / (1.0 + np.exp(-logits))
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


def reference_class_embeddings(
    family: str, model, processor, names: list[str], templates: list[str]
) -> np.ndarray:
    """Prompt-averaged class embeddings from the forward pass's normalised text embeddings (CLIP's recipe)."""
    prompts = [template.format(name) for name in names for template in templates]
    with torch.inference_mode():
        text = reference_text_inputs(family, processor.tokenizer, prompts)
        embeds = model.get_text_features(**text).pooler_output.double()
    embeds = torch.nn.functional.normalize(embeds, dim=-1).reshape(len(names), len(templates), -1).mean(1)
    return torch.nn.functional.normalize(embeds, dim=-1).numpy()


def reference_recalls(image_embeds: np.ndarray, text_embeds: np.ndarray, owner: np.ndarray, ks=(1, 5, 10)):
    """Retrieval recall@K (percent) by hand, exact ties counted against the correct item."""
    scores = image_embeds @ text_embeds.T  # images x texts
    out = {}
    correct_t2i = scores[owner, np.arange(len(owner))]
    t2i_rank = (scores >= correct_t2i[None, :]).sum(0) - 1
    i2t_rank = np.empty(len(image_embeds), dtype=int)
    for i in range(len(image_embeds)):
        best = scores[i, owner == i].max()
        i2t_rank[i] = (scores[i, owner != i] >= best).sum()
    for k in ks:
        out[f"i2t_R@{k}"] = 100.0 * float(np.mean(i2t_rank < k))
    for k in ks:
        out[f"t2i_R@{k}"] = 100.0 * float(np.mean(t2i_rank < k))
    out["mR"] = float(np.mean([out[f"i2t_R@{k}"] for k in ks] + [out[f"t2i_R@{k}"] for k in ks]))
    return out
