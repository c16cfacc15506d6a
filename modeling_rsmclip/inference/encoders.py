"""CPU inference backends behind the model's own embedding interface.

`load_encoder(model, backend, precision)` returns an object that `evaluation.embed.Embedder` (and anything else
that calls `get_image_features(pixel_values=...)` / `get_text_features(input_ids=..., attention_mask=...)` and
reads `.pooler_output`) uses in place of the model, for every family of `families` (RS-M-CLIP, CLIP, SigLIP,
SigLIP 2, AltCLIP; ONNX for the families `families.check_onnx_export` allows). An encoder carries the model's
config (so it is of the model's family) and its `logit_scale` (and SigLIP's `logit_bias`) for zero-shot scores:

| backend | precision | what runs |
|---|---|---|
| torch | fp32, bf16, fp16 | the model itself (bf16/fp16: autocast, applied by the `Embedder`) |
| torch | int8 | a copy with every `nn.Linear` of both towers dynamically quantised (`torch.ao`, CPU only) |
| onnx | fp32 | the exported graphs in ONNX Runtime |
| onnx | int8 | the fused, dynamically quantised graphs in ONNX Runtime |

The encoders are `nn.Module`s whose `state_dict` is a fingerprint of what they compute (the source weights' or
graphs' SHA-256 and the backend/precision), so `Embedder`'s embedding cache never mixes backends.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from ..cache_dirs import user_cache_dir
from ..errors import UserError
from .families import check_onnx_export, patch_features
from .loading import load_model, portable_config_json
from .options import check_backend
from .runtime import MANIFEST_FILE

logger = logging.getLogger(__name__)


def default_onnx_cache_dir() -> Path:
    """``$RSMCLIP_ONNX_CACHE``, else ``$XDG_CACHE_HOME/rsmclip/onnx`` (``~/.cache/...``)."""
    return user_cache_dir("onnx", "RSMCLIP_ONNX_CACHE")


def weights_digest(model: nn.Module) -> bytes:
    """SHA-256 over the model's parameters and buffers (name, dtype, shape, bytes) and its config."""
    h = hashlib.sha256(b"rsmclip-weights-v2")
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_json_string"):
        h.update(portable_config_json(config).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().contiguous().cpu()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.digest()


class _Encoder(nn.Module):
    """Common part: `config`, a device anchor for `next(parameters())`, and a fingerprint buffer."""

    backend = ""
    precision = ""

    def __init__(self, config: Any, digest: bytes) -> None:
        super().__init__()
        self.config = config
        # Embedder reads the device from the first parameter; it holds no weight.
        self.device_anchor = nn.Parameter(torch.empty(0), requires_grad=False)
        marker = hashlib.sha256(digest + f"\0{self.backend}\0{self.precision}".encode()).digest()
        self.register_buffer("fingerprint", torch.frombuffer(bytearray(marker), dtype=torch.uint8).clone())

    def _check_cpu(self, tensor: torch.Tensor) -> None:
        if tensor.device.type != "cpu":
            raise ValueError(
                f"the {self.backend} {self.precision} backend runs on the CPU; got inputs on {tensor.device} "
                f"(use --backend torch --precision fp32 on GPUs)"
            )

    def extra_repr(self) -> str:
        return f"backend={self.backend}, precision={self.precision}"


def quantize_model(model: nn.Module, inplace: bool = False) -> nn.Module:
    """A copy of `model` (an `RSMCLIPModel`, or a model of another family: `families`) with every `nn.Linear` of
    both towers and projections dynamically quantised to int8 weights (`torch.ao`, CPU only); `model` itself is
    left as it is, unless `inplace=True` (then `model` is quantised and returned: no second copy in memory, for
    callers that no longer need fp32).

    The copy is still a model of its class: `get_image_features`, `get_text_features`, patch features (NACLIP
    included, `families.patch_features`), `forward` and the transformers pipelines (`zero-shot-image-classification`,
    the retrieval pipeline) take it as they take the fp32 model. It runs on the CPU in fp32 activations, and cannot be trained
    or saved with `save_pretrained` (keep the fp32 model for that and quantise again after loading).

    Dynamic quantisation picks one activation scale per call, so an embedding depends slightly on the other inputs
    of its batch (within the int8 bound of fp32; not bit-identical across batch sizes).
    """
    import copy

    try:
        from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic
    except (
        ImportError
    ) as error:  # PyTorch deprecates torch.ao quantisation: say what replaces it once it is gone
        raise UserError(
            f"this PyTorch ({torch.__version__}) has no torch.ao dynamic quantisation, which PyTorch int8 uses; "
            'run int8 with ONNX Runtime instead: --backend onnx --precision int8 (pip install "rsmclip[onnx]")'
        ) from error

    if not isinstance(model, nn.Module):
        raise TypeError(f"quantize_model takes a loaded model (nn.Module), got {type(model).__name__}")
    quantized = (model if inplace else copy.deepcopy(model)).cpu().float().eval()
    if hasattr(quantized, "distillation_head"):
        # The training-only DINO head (weight-normalised, unused at inference) is not quantisable: drop it.
        quantized.distillation_head = nn.Identity()
    # Every `nn.Linear` (exactly: not the subclass inside `nn.MultiheadAttention`, which it calls as a tensor) but
    # those of the embeddings: SigLIP 2 embeds its patches with a linear layer whose weight's dtype it reads.
    # RS-M-CLIP, CLIP, SigLIP and AltCLIP have no linear layer there: all of theirs are quantised.
    layers = {
        name: default_dynamic_qconfig
        for name, module in quantized.named_modules()
        if type(module) is nn.Linear and "embeddings" not in name.split(".")
    }
    quantize_dynamic(quantized, layers, dtype=torch.qint8, inplace=True)
    return quantized.requires_grad_(False).eval()


@functools.cache
def _note_maintained_int8_path() -> None:
    """Say once per process which int8 path is maintained (docs/inference.md, "Which int8 path")."""
    logger.info(
        "PyTorch int8 runs torch.ao dynamic quantisation, which PyTorch deprecates (torchao's eager int8 is slower "
        "than fp32 on x86 CPUs); --backend onnx --precision int8 is the maintained int8 path, as fast or faster"
    )


class TorchInt8Encoder(_Encoder):
    """Both towers with their `nn.Linear` layers dynamically quantised to int8 (PyTorch, CPU only)."""

    backend, precision = "torch", "int8"

    def __init__(self, model: nn.Module, inplace: bool = False) -> None:
        super().__init__(model.config, weights_digest(model))
        _note_maintained_int8_path()
        # Kept out of the module tree: the packed int8 weights are not tensors that a state_dict hash can read,
        # and `fingerprint` already names the source weights.
        self.__dict__["quantized"] = quantize_model(model, inplace=inplace)
        self.logit_scale = self.quantized.logit_scale.detach().clone()
        bias = getattr(self.quantized, "logit_bias", None)  # SigLIP
        self.logit_bias = None if bias is None else bias.detach().clone()

    @torch.inference_mode()
    def get_patch_features(self, pixel_values: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """Dense patch embeddings, as `families.patch_features` gives them for the fp32 model (NACLIP options
        included)."""
        self._check_cpu(pixel_values)
        return patch_features(self.quantized, pixel_values.float(), **kwargs)

    @torch.inference_mode()
    def get_image_features(self, pixel_values: torch.Tensor, **kwargs: Any) -> BaseModelOutputWithPooling:
        self._check_cpu(pixel_values)
        return self.quantized.get_image_features(pixel_values=pixel_values.float(), **kwargs)

    @torch.inference_mode()
    def get_text_features(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any
    ) -> BaseModelOutputWithPooling:
        self._check_cpu(input_ids)
        return self.quantized.get_text_features(input_ids=input_ids, attention_mask=attention_mask, **kwargs)


class OnnxEncoder(_Encoder):
    """The exported graphs in ONNX Runtime (CPU), with PyTorch tensors in and out."""

    backend = "onnx"

    def __init__(
        self,
        folder: str | os.PathLike,
        precision: str = "fp32",
        threads: int | None = None,
        logit_scale: float | None = None,
        logit_bias: float | None = None,
    ) -> None:
        from transformers import AutoConfig

        from .runtime import ONNXRSMCLIP

        folder = Path(folder)
        self.precision = precision
        runner = ONNXRSMCLIP(folder, precision=precision, threads=threads)
        digest = hashlib.sha256(b"rsmclip-onnx-v1")
        for name, sha in sorted(runner.manifest.get("files", {}).items()):
            if (precision == "int8") == (".int8." in name):
                digest.update(f"{name}\0{sha}\n".encode())
        config = AutoConfig.from_pretrained(str(folder))
        super().__init__(config, digest.digest())
        self.folder = folder
        self.__dict__["runner"] = runner
        # The trained temperature of zero-shot probabilities: given (from the source model), else the manifest's.
        if logit_scale is None:
            logit_scale = runner.logit_scale
        if logit_scale is None:
            logger.warning(
                "%s records no logit scale (exported by an older version): zero-shot probabilities use the "
                "config's initial value; export again to record the trained one",
                folder / MANIFEST_FILE,
            )
            logit_scale = math.exp(float(getattr(config, "logit_scale_init_value", math.log(100.0))))
        self.logit_scale = torch.tensor(math.log(float(logit_scale)))
        # SigLIP's bias of zero-shot scores: given (from the source model), else the manifest's (None otherwise).
        if logit_bias is None:
            logit_bias = runner.logit_bias
        self.logit_bias = None if logit_bias is None else torch.tensor(float(logit_bias))

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs: Any) -> BaseModelOutputWithPooling:
        self._check_cpu(pixel_values)
        embeds = self.runner.encode_image(pixel_values.detach().float().numpy())
        return BaseModelOutputWithPooling(pooler_output=torch.from_numpy(np.ascontiguousarray(embeds)))

    def get_text_features(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any
    ) -> BaseModelOutputWithPooling:
        """Text embeddings from the text graph; a graph exported without a mask input (SigLIP) is given the
        ids alone, as its PyTorch model is."""
        self._check_cpu(input_ids)
        mask = None if attention_mask is None else attention_mask.detach().numpy()
        embeds = self.runner.encode_text(input_ids.detach().numpy(), mask)
        return BaseModelOutputWithPooling(pooler_output=torch.from_numpy(np.ascontiguousarray(embeds)))


def is_onnx_folder(path: str | os.PathLike) -> bool:
    return (Path(path) / MANIFEST_FILE).is_file()


def _load_torch_model(model: Any, processor: Any = None) -> tuple[nn.Module, Any]:
    """The PyTorch model and its processor (a model object is returned with the processor given, maybe None)."""
    if isinstance(model, nn.Module):
        return model, processor
    return load_model(model, processor)


def onnx_folder_for(model: Any, processor: Any = None, cache_dir: str | os.PathLike | None = None) -> Path:
    """The ONNX export folder of `model`: the path itself when it is one, else an export made once and cached
    under `cache_dir` (default `default_onnx_cache_dir()`), keyed by the weights' SHA-256."""
    if not isinstance(model, nn.Module) and is_onnx_folder(model):
        return Path(model)
    from .onnx_export import export_onnx

    net, processor = _load_torch_model(model, processor)
    folder = Path(cache_dir or default_onnx_cache_dir()) / weights_digest(net).hex()[:24]
    if not is_onnx_folder(folder):
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        export_onnx(net, tmp, processor=processor)
        if folder.exists():  # a concurrent export finished first
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    return folder


def load_encoder(
    model: Any,
    backend: str = "torch",
    precision: str = "fp32",
    processor: Any = None,
    *,
    device: Any = None,
    threads: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    inplace: bool = False,
) -> nn.Module:
    """The one encoder factory: what embeds images and texts for a backend / precision / device choice, usable in
    place of the model by `evaluation.embed.Embedder` (``get_image_features`` / ``get_text_features``).

    Args:
        model: a loaded model, a name `load_model` resolves (folder, Hub id, ``"demo"``), or (backend "onnx") an
            `rsmclip export --to-onnx` folder.
        backend: "torch" or "onnx" (ONNX Runtime; a model that is not yet an ONNX folder is exported once and
            cached).
        precision: "fp32"; "bf16"/"fp16" (PyTorch autocast, applied by the `Embedder`: the model itself is
            returned); or "int8" (dynamic quantisation: PyTorch's for "torch", ONNX Runtime's for "onnx").
        processor: the model's processor, needed to export a model object that was not loaded from a folder.
        device: where a PyTorch model runs (moved there); the CPU encoders (ONNX, int8) refuse any other device.
        threads: ONNX Runtime intra-op threads (default: all cores).
        cache_dir: where ONNX exports of model folders are cached.
        inplace: torch int8 only: quantise the given model object itself instead of a copy (it is then int8 and
            no longer usable as the fp32 model; saves the copy's memory). A model loaded here from a path is
            always quantised in place.

    The choice is checked once, here (`options.check_backend`). The processor to use with the encoder is the
    model's own (an ONNX folder holds a copy).
    """
    cpu_encoder = check_backend(backend, precision, device)
    if isinstance(model, _Encoder) and (model.backend, model.precision) == (backend, precision):
        return model  # made once and shared (the web app's encoder)
    if backend == "onnx":
        if isinstance(model, nn.Module):
            check_onnx_export(model)  # before anything is exported (SigLIP 2 is refused with its reason)
        scale = getattr(model, "logit_scale", None) if isinstance(model, nn.Module) else None
        bias = getattr(model, "logit_bias", None) if isinstance(model, nn.Module) else None
        options = {
            "precision": precision,
            "threads": threads,
            "logit_scale": None if scale is None else float(scale.detach().exp().reshape(-1)[0]),
            "logit_bias": None if bias is None else float(bias.detach().reshape(-1)[0]),
        }
        folder = onnx_folder_for(model, processor, cache_dir)
        try:
            return OnnxEncoder(folder, **options)
        except ValueError as error:  # a damaged graph (SHA-256, ONNX Runtime)
            if not isinstance(model, nn.Module) and is_onnx_folder(model):
                raise  # the user's own export folder: reported
            logger.warning(
                "the cached ONNX export %s is damaged (%s): exporting the model again", folder, error
            )
            import shutil

            shutil.rmtree(folder, ignore_errors=True)
            return OnnxEncoder(onnx_folder_for(model, processor, cache_dir), **options)
    if not isinstance(model, nn.Module) and is_onnx_folder(model):
        raise ValueError(f"{model} is an ONNX export folder: use backend='onnx'")
    net, _ = _load_torch_model(model, processor)
    if cpu_encoder:
        if not isinstance(net, _Encoder) and next(net.parameters()).device.type != "cpu":
            raise ValueError(
                f"the {backend} {precision} backend runs on the CPU; the model is on {next(net.parameters()).device}"
            )
        if isinstance(net, TorchInt8Encoder):
            return net
        return TorchInt8Encoder(net, inplace=inplace or not isinstance(model, nn.Module))
    if isinstance(net, _Encoder):
        raise ValueError(f"{net.backend} {net.precision} encoder given where a PyTorch model is needed")
    if device is not None:
        net.to(device)
    return net.eval()


__all__ = [
    "OnnxEncoder",
    "TorchInt8Encoder",
    "default_onnx_cache_dir",
    "load_encoder",
    "onnx_folder_for",
    "quantize_model",
    "weights_digest",
]
