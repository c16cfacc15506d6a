"""Export the two RS-M-CLIP towers as ONNX graphs, with int8 variants (`rsmclip export --to-onnx MODEL OUT_DIR`).

The folder holds:
- `image_encoder.onnx`: `pixel_values (batch, 3, H, W)` -> `image_embeds (batch, D)`;
- `text_encoder.onnx`: `input_ids, attention_mask (batch, sequence)` -> `text_embeds (batch, D)`;
  both outputs are the projected, un-normalised embeddings (`get_*_features(...).pooler_output`), batch and
  sequence axes are dynamic;
- `image_encoder.int8.onnx`, `text_encoder.int8.onnx`: the same graphs after ONNX Runtime's transformer fusions
  (attention, layer norm, GELU) and dynamic int8 quantisation of the weight matrices (int8 weights, activations
  quantised per call);
- the processor and tokenizer files (`processor_config.json`, `tokenizer.json`, ...), the model's `config.json`,
  `onnx_manifest.json` (files, SHA-256, the parity measured at export) and `rsmclip_onnx.py`, a runner that needs
  only onnxruntime, tokenizers, Pillow and numpy (see `modeling_rsmclip/inference/runtime.py`).

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
    """`input_ids, attention_mask -> text_embeds`: the text tower, masked mean pooling and the projection."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
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


def _example_inputs(
    model: nn.Module, batch: int = 2, length: int = 7
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    config = model.config
    size = config.vision_config.image_size
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(batch, 3, size, size, generator=generator)
    vocab = config.text_config.vocab_size
    input_ids = torch.randint(5, vocab, (batch, length), generator=generator)
    input_ids[:, 0] = 0
    attention_mask = torch.ones_like(input_ids)
    # One shorter text: padding and the mask are part of the traced graph.
    input_ids[-1, length // 2 :] = config.text_config.pad_token_id
    attention_mask[-1, length // 2 :] = 0
    input_ids[-1, length // 2 - 1] = 2
    input_ids[:-1, -1] = 2
    return pixel_values, input_ids, attention_mask


def _export_towers(model: nn.Module, workdir: Path) -> tuple[Path, Path]:
    pixel_values, input_ids, attention_mask = _example_inputs(model)
    batch = torch.export.Dim("batch")
    max_length = int(model.config.text_config.max_position_embeddings) - 3
    sequence = torch.export.Dim("sequence", min=1, max=max(2, max_length))
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
        (input_ids, attention_mask),
        str(text_path),
        input_names=["input_ids", "attention_mask"],
        output_names=["text_embeds"],
        dynamic_shapes={"input_ids": {0: batch, 1: sequence}, "attention_mask": {0: batch, 1: sequence}},
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

    pixel_values, input_ids, attention_mask = _example_inputs(model, batch=3, length=11)
    with torch.inference_mode():
        image_ref = model.get_image_features(pixel_values=pixel_values).pooler_output.numpy()
        text_ref = model.get_text_features(
            input_ids=input_ids, attention_mask=attention_mask
        ).pooler_output.numpy()
    report: dict[str, float] = {}
    for precision in ("fp32", "int8") if quantized else ("fp32",):
        runner = ONNXRSMCLIP(folder, precision=precision, threads=threads)
        image = runner.encode_image(pixel_values.numpy())
        text = runner.encode_text(input_ids.numpy(), attention_mask.numpy())
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
    """Write the ONNX export folder of `model` (an `RSMCLIPModel`, or a model folder / Hub id) to `output_dir`.

    Args:
        model: the model, or where to load it (and its processor) from.
        output_dir: the folder to write (created; existing graphs are replaced).
        processor: the model's processor; loaded with the model when not given.
        quantize: also write the int8 graphs.
        verify: run the graphs in ONNX Runtime against PyTorch and record the differences in the manifest.

    Returns the folder. Raises `ValueError` when a fp32 graph differs from PyTorch by more than 1e-3.
    """
    onnx, _ = _import_onnx()
    from ..safe_io import atomic_folder, check_outputs_not_inputs
    from .loading import load_model, local_model_folder, model_name

    out = Path(output_dir)
    check_outputs_not_inputs([], [local_model_folder(model)], owned=[out])
    source = model_name(model) if isinstance(model, nn.Module) else str(model)
    net, processor = load_model(model, processor)
    net = net.float().eval()
    with atomic_folder(out) as tmp:  # the files reach `out` once all are written (and checked)
        _write_export(onnx, net, processor, tmp, source, quantize, verify, out)
    return out


def _write_export(
    onnx: Any,
    net: nn.Module,
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
    manifest: dict[str, Any] = {
        "format": "rsmclip-onnx-v1",
        "source": source,
        "opset": OPSET,
        "projection_dim": int(config.projection_dim),
        "logit_scale": float(net.logit_scale.detach().exp()),
        "image_size": int(config.vision_config.image_size),
        "pad_token_id": int(config.text_config.pad_token_id),
        "max_text_length": int(min(77, config.text_config.max_position_embeddings - 3)),
        "inputs": {"image": ["pixel_values"], "text": ["input_ids", "attention_mask"]},
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


__all__ = ["ImageEncoder", "TextEncoder", "export_onnx", "quantize_graph"]
