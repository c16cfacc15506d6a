"""Conversion between OpenCLIP checkpoints and RS-M-CLIP model folders, both directions.

- `convert_open_clip(source, output_dir)` (`rsmclip convert`): an OpenCLIP checkpoint folder, file, Hub id or known
  model name, e.g. the released `joaodaniel/RS-M-CLIP` or `remoteclip-vit-b-32`, as a transformers RS-M-CLIP model
  folder. RS-M-CLIP's family (ViT + XLM-RoBERTa) and the standard CLIP (ViT + CLIP text transformer) convert.
- `export_to_open_clip(model, output_dir)` (`rsmclip export --to-open-clip`): the reverse.
"""

from .checkpoint import (
    CheckpointNotFoundError,
    OpenCLIPCheckpoint,
    load_open_clip_checkpoint,
    load_open_clip_weights,
)
from .clip_tokenizer import clip_bpe_tokenizer
from .convert import convert_open_clip
from .export import export_to_open_clip
from .open_clip_config import (
    image_processor_kwargs_from_preprocess_cfg,
    open_clip_model_cfg_from_rsmclip,
    preprocess_cfg_from_image_processor,
    rsmclip_config_from_open_clip,
)
from .open_clip_keys import ConversionError, open_clip_to_rsmclip_state_dict, rsmclip_to_open_clip_state_dict

__all__ = [
    "CheckpointNotFoundError",
    "ConversionError",
    "OpenCLIPCheckpoint",
    "clip_bpe_tokenizer",
    "convert_open_clip",
    "export_to_open_clip",
    "image_processor_kwargs_from_preprocess_cfg",
    "load_open_clip_checkpoint",
    "load_open_clip_weights",
    "open_clip_model_cfg_from_rsmclip",
    "open_clip_to_rsmclip_state_dict",
    "preprocess_cfg_from_image_processor",
    "rsmclip_config_from_open_clip",
    "rsmclip_to_open_clip_state_dict",
]
