"""How a command runs a model: backend, precision and device, one vocabulary checked in one place.

This module imports neither torch nor transformers, so command-line parsers can use it to build their options.

| backend | precision | what runs | where |
|---|---|---|---|
| torch | fp32 | the PyTorch model | any device |
| torch | bf16, fp16 | the PyTorch model under autocast | any device (a GPU for speed) |
| torch | int8 | its `nn.Linear` layers dynamically quantised | CPU |
| onnx | fp32, int8 | the exported graphs in ONNX Runtime | CPU |
"""

from __future__ import annotations

from typing import Any

BACKENDS = ("torch", "onnx")
PRECISIONS = ("fp32", "bf16", "fp16", "int8")
AUTOCAST_PRECISIONS = ("bf16", "fp16")


def check_backend(backend: str, precision: str, device: Any = None) -> bool:
    """Validate a ``backend`` / ``precision`` / ``device`` choice; True when it runs through a CPU inference
    encoder (ONNX Runtime, or int8 weights), which computes in fp32 on the CPU.

    Raises `ValueError` naming the value that cannot be used.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    cpu_encoder = backend == "onnx" or precision == "int8"
    if cpu_encoder and precision in AUTOCAST_PRECISIONS:
        raise ValueError(
            f"precision {precision} is autocast for the PyTorch backend; use fp32 or int8 with the {backend} backend"
        )
    if cpu_encoder and device is not None and str(device) != "cpu":
        raise ValueError(
            f"the {backend} {precision} backend runs on the CPU, not on device {device} "
            "(use --backend torch with fp32, bf16 or fp16 on accelerators)"
        )
    return cpu_encoder


def autocast_precision(backend: str, precision: str) -> str:
    """The arithmetic an `evaluation.embed.Embedder` applies around an encoder of this (checked) choice: the
    autocast precision of the PyTorch backend, else fp32 (CPU encoders compute on their own)."""
    return precision if backend == "torch" and precision in AUTOCAST_PRECISIONS else "fp32"


def autocast(precision: str, device: Any) -> Any:
    """The context the PyTorch backend runs a forward pass in: ``torch.autocast`` to bf16/fp16 on ``device`` for
    those precisions, else a no-op context."""
    import contextlib

    if precision not in AUTOCAST_PRECISIONS:
        return contextlib.nullcontext()
    import torch

    device_type = getattr(device, "type", None) or str(device).split(":")[0]
    return torch.autocast(
        device_type=device_type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16
    )


def resolve_device(device: Any = None) -> str:
    """``device`` as given, else ``"cuda"`` when a GPU is available, else ``"cpu"``: the one default of every
    command's ``--device``."""
    if device is not None and str(device) != "":
        return str(device)
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def add_backend_arguments(parser: Any, *, device: bool = True) -> None:
    """Add ``--backend``, ``--precision`` and (with ``device=True``) ``--device`` to an argparse parser or group,
    with the one vocabulary above; `check_backend` validates the combination when the command runs."""
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="torch",
        help="inference backend: PyTorch, or ONNX Runtime (CPU; the model is exported once and cached)",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="fp32; bf16/fp16 autocast (PyTorch); or int8 weights (dynamic quantisation, CPU)",
    )
    if device:
        parser.add_argument(
            "--device", default=None, help="torch device (default: cuda when available, else cpu)"
        )


__all__ = [
    "AUTOCAST_PRECISIONS",
    "BACKENDS",
    "PRECISIONS",
    "add_backend_arguments",
    "autocast",
    "autocast_precision",
    "check_backend",
    "resolve_device",
]
