"""Export the two towers of a model as ONNX graphs, with int8 variants (`rsmclip export --to-onnx MODEL OUT_DIR`).

Any family of `families` whose towers a fixed graph holds: RS-M-CLIP, CLIP, SigLIP and AltCLIP (`get_image_features`
/ `get_text_features` as they are); SigLIP 2 is refused with the reason (`families.check_onnx_export`).

The folder holds:
- `image_encoder.onnx`: `pixel_values (batch, 3, H, W)` -> `image_embeds (batch, D)`;
- `text_encoder.onnx`: `input_ids, attention_mask (batch, sequence)` -> `text_embeds (batch, D)` (SigLIP: `input_ids`
  alone, padded to its text length, as it was trained); both outputs are the projected, un-normalised embeddings
  (`get_*_features(...).pooler_output`), batch and sequence axes are dynamic;
- `image_encoder.int8.onnx`, `text_encoder.int8.onnx`: the same graphs after ONNX Runtime's transformer fusions
  (attention, layer norm, GELU) and dynamic int8 quantisation of the weight matrices (int8 weights, activations
  quantised per call);
- the processor and tokenizer files (`processor_config.json`, `tokenizer.json`, ...), the model's `config.json`,
  `onnx_manifest.json` (the family, how texts are padded, the zero-shot scoring, files, SHA-256, the parity measured
  at export) and `rsmclip_onnx.py`, a runner that needs only onnxruntime, tokenizers, Pillow and numpy (see
  `modeling_rsmclip/inference/runtime.py`).

Graphs are traced with `torch.onnx.export(dynamo=True)` (opset 18) and checked against PyTorch at export time.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .families import ModelFamily, check_onnx_export, embedding_dim, text_rule
from .runtime import GRAPH_FILES, MANIFEST_FILE, file_sha256

logger = logging.getLogger(__name__)

OPSET = 18
RUNNER_FILE = "rsmclip_onnx.py"
# Protobuf cannot hold a model over 2 GiB in one file: larger graphs keep their weights beside them.
_SINGLE_FILE_LIMIT = 1_800_000_000


class ImageEncoder(nn.Module):
    """`pixel_values -> image_embeds`: the image tower and its projection, as `get_image_features` runs them."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.get_image_features(pixel_values=pixel_values).pooler_output


class TextEncoder(nn.Module):
    """`input_ids, attention_mask -> text_embeds`: the text tower, its pooling and the projection (SigLIP:
    `input_ids -> text_embeds`, no mask)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output


def _import_onnx() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
    except ImportError as error:
        raise ImportError('ONNX export needs onnx and onnxruntime: pip install "rsmclip[onnx]"') from error
    return onnx, onnxruntime


def _save_graph(onnx: Any, source: Path, target: Path) -> None:
    """Re-save an exported graph as one file (or with one external weight file when it is over ~1.8 GB)."""
    proto = onnx.load(str(source), load_external_data=True)
    large = proto.ByteSize() > _SINGLE_FILE_LIMIT
    for stale in (target, target.with_name(target.name + ".data")):
        if stale.exists():
            stale.unlink()
    onnx.save(
        proto,
        str(target),
        save_as_external_data=large,
        all_tensors_to_one_file=True,
        location=target.name + ".data" if large else None,
    )


def _special_ids(config: Any) -> tuple[int, int, int]:
    """(start, end, pad) token ids of the text tower (XLM-R's 0, 2, 1 when the config does not say)."""
    text = config.text_config

    def first(*values: Any) -> int:
        return next(int(v) for v in values if isinstance(v, int))

    return (
        first(getattr(text, "bos_token_id", None), 0),
        first(getattr(text, "eos_token_id", None), 2),
        first(getattr(text, "pad_token_id", None), 1),
    )


def _tokenizer_pad_id(tokenizer: Any, config: Any) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    return int(pad) if pad is not None else _special_ids(config)[2]


def _example_inputs(
    model: nn.Module, batch: int = 2, length: int = 7
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Random pixel values and texts that exercise what the graph must hold: texts of two lengths (padding, and the
    mask where the family reads one); SigLIP's texts padded to its fixed length."""
    config = model.config
    rule = text_rule(model)
    size = config.vision_config.image_size
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(batch, 3, size, size, generator=generator)
    bos, eos, pad = _special_ids(config)
    vocab = config.text_config.vocab_size
    length = rule.max_length if rule.fixed_length else min(length, rule.max_length)
    input_ids = torch.randint(0, vocab, (batch, length), generator=generator)
    # Content tokens avoid the special ids: the end token's position decides CLIP's pooling.
    input_ids = torch.where(
        torch.isin(input_ids, torch.tensor([bos, eos, pad])), (input_ids + 7) % vocab, input_ids
    )
    input_ids[:, 0] = bos
    input_ids[:-1, -1] = eos
    attention_mask = torch.ones_like(input_ids)
    # One shorter text: padding (and the mask) are part of the traced graph.
    short = max(2, min(length // 2, 5))
    input_ids[-1, short - 1] = eos
    input_ids[-1, short:] = pad
    attention_mask[-1, short:] = 0
    texts = {"input_ids": input_ids}
    if rule.attention_mask:
        texts["attention_mask"] = attention_mask
    return pixel_values, texts


def _export_towers(model: nn.Module, workdir: Path) -> tuple[Path, Path]:
    pixel_values, texts = _example_inputs(model)
    batch = torch.export.Dim("batch")
    sequence = torch.export.Dim("sequence", min=1, max=max(2, text_rule(model).max_length))
    image_path, text_path = workdir / "image.onnx", workdir / "text.onnx"
    torch.onnx.export(
        ImageEncoder(model).eval(),
        (pixel_values,),
        str(image_path),
        input_names=["pixel_values"],
        output_names=["image_embeds"],
        dynamic_shapes={"pixel_values": {0: batch}},
        dynamo=True,
        opset_version=OPSET,
        verbose=False,
    )
    torch.onnx.export(
        TextEncoder(model).eval(),
        tuple(texts.values()),
        str(text_path),
        input_names=list(texts),
        output_names=["text_embeds"],
        dynamic_shapes={name: {0: batch, 1: sequence} for name in texts},
        dynamo=True,
        opset_version=OPSET,
        verbose=False,
    )
    return image_path, text_path


def _fuse(source: Path, target: Path, model_type: str, num_heads: int, hidden_size: int) -> bool:
    """ONNX Runtime's transformer fusions (attention, layer norm, GELU); False (and a copy) when they fail."""
    try:
        from onnxruntime.transformers.optimizer import optimize_model

        optimized = optimize_model(
            str(source), model_type=model_type, num_heads=num_heads, hidden_size=hidden_size, opt_level=1
        )
        optimized.save_model_to_file(str(target))
        return True
    except Exception as error:  # fusion is an optimisation: quantise the plain graph instead
        logger.warning("transformer fusions failed for %s (%s): quantising the plain graph", source, error)
        shutil.copyfile(source, target)
        return False


def quantize_graph(
    source: Path,
    target: Path,
    model_type: str,
    num_heads: int,
    hidden_size: int,
    embedding_table: bool = False,
) -> dict[str, Any]:
    """Fuse and dynamically quantise one fp32 graph to int8 (weights int8 per tensor, activations per call);
    with `embedding_table`, the token-embedding table too (int8 rows dequantised after the lookup: XLM-R's
    250k x 768 table goes from 768 MB to 192 MB)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        fused = Path(tmp) / "fused.onnx"
        did_fuse = _fuse(source, fused, model_type, num_heads, hidden_size)
        quantize_dynamic(
            str(fused),
            str(target),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gemm", "Attention"] + (["Gather"] if embedding_table else []),
            extra_options={"MatMulConstBOnly": True},
        )
    return {
        "fused": did_fuse,
        "weight_type": "int8",
        "activations": "uint8, dynamic",
        "embedding_table": "int8" if embedding_table else "fp32",
    }


def _check(model: nn.Module, folder: Path, quantized: bool, threads: int | None = None) -> dict[str, float]:
    """Max |ONNX - PyTorch| of the fp32 graphs and min cosine of the int8 graphs on random inputs (3 texts of
    different lengths, so padding is exercised)."""
    from .runtime import ONNXRSMCLIP

    pixel_values, texts = _example_inputs(model, batch=3, length=11)
    mask = texts.get("attention_mask")
    with torch.inference_mode():
        image_ref = model.get_image_features(pixel_values=pixel_values).pooler_output.numpy()
        text_ref = model.get_text_features(**texts).pooler_output.numpy()
    report: dict[str, float] = {}
    for precision in ("fp32", "int8") if quantized else ("fp32",):
        runner = ONNXRSMCLIP(folder, precision=precision, threads=threads)
        image = runner.encode_image(pixel_values.numpy())
        text = runner.encode_text(texts["input_ids"].numpy(), None if mask is None else mask.numpy())
        if precision == "fp32":
            report["image_max_abs_diff"] = float(np.abs(image - image_ref).max())
            report["text_max_abs_diff"] = float(np.abs(text - text_ref).max())
        else:
            report["int8_image_min_cosine"] = float(_cosines(image, image_ref).min())
            report["int8_text_min_cosine"] = float(_cosines(text, text_ref).min())
    return report


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def export_onnx(
    model: Any,
    output_dir: str | os.PathLike,
    *,
    processor: Any = None,
    quantize: bool = True,
    verify: bool = True,
) -> Path:
    """Write the ONNX export folder of `model` (a model of a family `families.check_onnx_export` allows, or a model
    folder / Hub id) to `output_dir`.

    Args:
        model: the model, or where to load it (and its processor) from.
        output_dir: the folder to write (created; existing graphs are replaced).
        processor: the model's processor; loaded with the model when not given.
        quantize: also write the int8 graphs.
        verify: run the graphs in ONNX Runtime against PyTorch and record the differences in the manifest.

    Returns the folder. Raises `ValueError` when a fp32 graph differs from PyTorch by more than 1e-3, or for a family
    whose towers ONNX does not hold (SigLIP 2), before anything is written.
    """
    onnx, _ = _import_onnx()
    from ..safe_io import atomic_folder, check_outputs_not_inputs
    from .loading import load_model, local_model_folder, model_name

    out = Path(output_dir)
    check_outputs_not_inputs([], [local_model_folder(model)], owned=[out])
    source = model_name(model) if isinstance(model, nn.Module) else str(model)
    net, processor = load_model(model, processor)
    family = check_onnx_export(net)
    net = net.float().eval()
    with atomic_folder(out) as tmp:  # the files reach `out` once all are written (and checked)
        _write_export(onnx, net, family, processor, tmp, source, quantize, verify, out)
    return out


def _write_export(
    onnx: Any,
    net: nn.Module,
    family: ModelFamily,
    processor: Any,
    folder: Path,
    source: str,
    quantize: bool,
    verify: bool,
    out: Path,
) -> None:
    """The export's files in ``folder`` (`export_onnx` renames them into ``out``)."""
    config = net.config
    with tempfile.TemporaryDirectory() as tmp:
        image_tmp, text_tmp = _export_towers(net, Path(tmp))
        _save_graph(onnx, image_tmp, folder / GRAPH_FILES[("image", "fp32")])
        _save_graph(onnx, text_tmp, folder / GRAPH_FILES[("text", "fp32")])
    quantization: dict[str, Any] = {}
    if quantize:
        vision, text = config.vision_config, config.text_config
        quantization["image"] = quantize_graph(
            folder / GRAPH_FILES[("image", "fp32")],
            folder / GRAPH_FILES[("image", "int8")],
            "vit",
            vision.num_attention_heads,
            vision.hidden_size,
        )
        quantization["text"] = quantize_graph(
            folder / GRAPH_FILES[("text", "fp32")],
            folder / GRAPH_FILES[("text", "int8")],
            "bert",
            text.num_attention_heads,
            text.hidden_size,
            embedding_table=True,
        )
    processor.save_pretrained(str(folder))
    config.to_json_file(str(folder / "config.json"))
    shutil.copyfile(Path(__file__).with_name("runtime.py"), folder / RUNNER_FILE)
    files = {
        name: file_sha256(folder / name)
        for name in sorted(GRAPH_FILES.values())
        if (folder / name).is_file() and (quantize or ".int8." not in name)
    }
    rule = text_rule(net)
    tokenizer = getattr(processor, "tokenizer", processor)
    manifest: dict[str, Any] = {
        "format": "rsmclip-onnx-v1",
        "source": source,
        "family": family.name,
        "model_class": family.model_class,
        "opset": OPSET,
        "projection_dim": embedding_dim(net),
        "logit_scale": float(net.logit_scale.detach().exp().reshape(-1)[0]),
        **_scoring(net, family),
        "image_size": int(config.vision_config.image_size),
        # The id the export's tokenizer pads with (CLIP's pads with its end token, whatever its config says).
        "pad_token_id": int(_tokenizer_pad_id(tokenizer, config)),
        "max_text_length": rule.max_length,
        "text": {
            "padding": "max_length" if rule.fixed_length else "longest",
            "padding_side": getattr(tokenizer, "padding_side", "right"),
            "pad_token": str(getattr(tokenizer, "pad_token", "<pad>")),
            "attention_mask": rule.attention_mask,
        },
        "inputs": {
            "image": ["pixel_values"],
            "text": ["input_ids", "attention_mask"] if rule.attention_mask else ["input_ids"],
        },
        "outputs": {"image": "image_embeds", "text": "text_embeds"},
        "files": files,
        "quantization": quantization,
        "torch_version": torch.__version__,
    }
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    if verify:
        manifest["verification"] = _check(net, folder, quantize)
        (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        worst = max(
            manifest["verification"]["image_max_abs_diff"], manifest["verification"]["text_max_abs_diff"]
        )
        if worst > 1e-3:
            raise ValueError(
                f"the ONNX graphs of {source} differ from PyTorch by up to {worst:.2e}; nothing written to {out}"
            )


def _scoring(model: nn.Module, family: ModelFamily) -> dict[str, Any]:
    """How zero-shot scores are made (`families.zero_shot_probabilities`): softmax, or sigmoid with the bias."""
    if family.scoring == "sigmoid":
        return {"scoring": "sigmoid", "logit_bias": float(model.logit_bias.detach().reshape(-1)[0])}
    return {"scoring": "softmax"}


__all__ = ["ImageEncoder", "TextEncoder", "export_onnx", "quantize_graph"]
