"""CPU inference backends: ONNX export (`rsmclip export --to-onnx`), ONNX Runtime and PyTorch int8 encoders.

`load_encoder(model, backend="torch"|"onnx", precision="fp32"|"int8")` returns an object used in place of the
model by `evaluation.embed.Embedder`. ONNX Runtime is imported only when an ONNX backend is used
(`pip install "rsmclip[onnx]"`).
"""

from .encoders import (
    BACKENDS,
    PRECISIONS,
    OnnxEncoder,
    TorchInt8Encoder,
    add_backend_arguments,
    default_onnx_cache_dir,
    load_encoder,
    onnx_folder_for,
    quantize_model,
)


def export_onnx(*args, **kwargs):
    """See `modeling_rsmclip.inference.onnx_export.export_onnx` (imported on first use: it needs onnx)."""
    from .onnx_export import export_onnx as _export_onnx

    return _export_onnx(*args, **kwargs)


__all__ = [
    "BACKENDS",
    "PRECISIONS",
    "OnnxEncoder",
    "TorchInt8Encoder",
    "add_backend_arguments",
    "default_onnx_cache_dir",
    "export_onnx",
    "load_encoder",
    "onnx_folder_for",
    "quantize_model",
]
