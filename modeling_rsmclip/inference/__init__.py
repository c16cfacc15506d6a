"""The model front door: load a model by name, choose how it runs, build zero-shot class embeddings.

- `load_model(name_or_model)`: the one resolver (a folder, a Hub id, ``"demo"``, or a loaded model).
- `load_encoder(model, backend, precision, device=...)`: the one encoder factory; `check_backend` is the one check
  of the backend / precision / device vocabulary (`options`), which the command-line options share.
- `class_embeddings(encoder, processor, labels, language)`: the one class-embedding builder.
- `families`: what differs between the model families it runs (RS-M-CLIP, CLIP, SigLIP, SigLIP 2, AltCLIP): text
  tokenization, zero-shot scoring (`zero_shot_probabilities`), embedding size, dense features, ONNX support.
- ONNX export (`rsmclip export --to-onnx`), ONNX Runtime and PyTorch int8 encoders.

Names are imported on first use; ONNX Runtime only when an ONNX backend is used (`pip install "rsmclip[onnx]"`).
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "AUTOCAST_PRECISIONS": ".options",
    "BACKENDS": ".options",
    "PRECISIONS": ".options",
    "add_backend_arguments": ".options",
    "autocast": ".options",
    "autocast_precision": ".options",
    "check_backend": ".options",
    "resolve_device": ".options",
    "DEMO_MODEL_DIR": ".loading",
    "load_model": ".loading",
    "local_model_folder": ".loading",
    "model_name": ".loading",
    "portable_config_json": ".loading",
    "resolve_model_source": ".loading",
    "average_prompt_embeddings": ".classes",
    "class_embeddings": ".classes",
    "class_prompts": ".classes",
    "FAMILIES": ".families",
    "ModelFamily": ".families",
    "embedding_dim": ".families",
    "model_family": ".families",
    "zero_shot_probabilities": ".families",
    "OnnxEncoder": ".encoders",
    "TorchInt8Encoder": ".encoders",
    "default_onnx_cache_dir": ".encoders",
    "load_encoder": ".encoders",
    "onnx_folder_for": ".encoders",
    "quantize_model": ".encoders",
    "weights_digest": ".encoders",
    "export_onnx": ".onnx_export",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
