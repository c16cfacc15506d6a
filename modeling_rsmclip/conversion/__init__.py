"""Conversion between OpenCLIP checkpoints and RS-M-CLIP model folders, both directions.

- `convert_open_clip(source, output_dir)` (`rsmclip convert`): an OpenCLIP checkpoint folder, file, Hub id or known
  model name, e.g. the released `joaodaniel/RS-M-CLIP` or `remoteclip-vit-b-32`, as a transformers RS-M-CLIP model
  folder. RS-M-CLIP's family (ViT + XLM-RoBERTa) and the standard CLIP (ViT + CLIP text transformer) convert.
- `export_to_open_clip(model, output_dir)` (`rsmclip export --to-open-clip`): the reverse.

Names are imported on first use (`modeling_rsmclip._lazy`).
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "CheckpointNotFoundError": ".checkpoint",
    "OpenCLIPCheckpoint": ".checkpoint",
    "load_open_clip_checkpoint": ".checkpoint",
    "load_open_clip_weights": ".checkpoint",
    "clip_bpe_tokenizer": ".clip_tokenizer",
    "convert_open_clip": ".convert",
    "export_to_open_clip": ".export",
    "image_processor_kwargs_from_preprocess_cfg": ".open_clip_config",
    "open_clip_model_cfg_from_rsmclip": ".open_clip_config",
    "preprocess_cfg_from_image_processor": ".open_clip_config",
    "rsmclip_config_from_open_clip": ".open_clip_config",
    "ConversionError": ".open_clip_keys",
    "open_clip_to_rsmclip_state_dict": ".open_clip_keys",
    "rsmclip_to_open_clip_state_dict": ".open_clip_keys",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
