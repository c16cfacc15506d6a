"""RS-M-CLIP: a Transformers-native multilingual CLIP for remote-sensing imagery.

Importing the package registers the `"rsmclip"` model type with `AutoConfig`, `AutoModel`,
`AutoModelForZeroShotImageClassification`, `AutoImageProcessor`, `AutoProcessor` and `AutoTokenizer`, and the
`"rsmclip-retrieval"` pipeline task. The import itself is light (no torch, no transformers): the registration runs
when transformers' Auto classes (or its pipelines) are first imported, by whichever code imports them, and every
public name is imported on first use (`_lazy`).
"""

from __future__ import annotations

import threading

from ._lazy import after_import, lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "PRESETS": ".configuration_rsmclip",
    "RSMCLIPConfig": ".configuration_rsmclip",
    "RSMCLIPDistillationHead": ".modeling_rsmclip",
    "RSMCLIPModel": ".modeling_rsmclip",
    "RSMCLIPOutput": ".modeling_rsmclip",
    "RSMCLIPPreTrainedModel": ".modeling_rsmclip",
    "RETRIEVAL_TASK": ".pipeline_rsmclip",
    "RSMCLIPRetrievalPipeline": ".pipeline_rsmclip",
    "RSMCLIPZeroShotImageClassificationPipeline": ".pipeline_rsmclip",
    "register_retrieval_pipeline": ".pipeline_rsmclip",
    "RSMCLIPBPETokenizer": ".processing_rsmclip",
    "RSMCLIPImageProcessor": ".processing_rsmclip",
    "RSMCLIPProcessor": ".processing_rsmclip",
    "RSMCLIPTokenizer": ".processing_rsmclip",
    "array_to_rgb": ".processing_rsmclip",
    "to_rgb": ".processing_rsmclip",
    "LANGUAGES": ".templates",
    "PROMPT_TEMPLATES": ".templates",
    "RSMCLIPIndex": ".index",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

_registered: set[str] = set()
_lock = threading.RLock()


def _register_auto_classes(_module: object = None) -> None:
    """Register the model type with transformers' Auto classes (once)."""
    with _lock:
        if "auto" in _registered:
            return
        _registered.add("auto")
        from transformers import (
            AutoConfig,
            AutoImageProcessor,
            AutoModel,
            AutoModelForZeroShotImageClassification,
            AutoProcessor,
            AutoTokenizer,
        )

        from .configuration_rsmclip import RSMCLIPConfig
        from .modeling_rsmclip import RSMCLIPModel
        from .processing_rsmclip import (
            RSMCLIPBPETokenizer,
            RSMCLIPImageProcessor,
            RSMCLIPProcessor,
            RSMCLIPTokenizer,
        )

        AutoConfig.register("rsmclip", RSMCLIPConfig, exist_ok=True)
        AutoModel.register(RSMCLIPConfig, RSMCLIPModel, exist_ok=True)
        AutoModelForZeroShotImageClassification.register(RSMCLIPConfig, RSMCLIPModel, exist_ok=True)
        AutoImageProcessor.register(
            RSMCLIPConfig, fast_image_processor_class=RSMCLIPImageProcessor, exist_ok=True
        )
        AutoProcessor.register(RSMCLIPConfig, RSMCLIPProcessor, exist_ok=True)
        # Both tokenizers are found by the class name in tokenizer_config.json; a config maps to one, XLM-RoBERTa's
        # (the last registered), and a CLIP text tower's folder names RSMCLIPBPETokenizer.
        AutoTokenizer.register(RSMCLIPConfig, tokenizer_class=RSMCLIPBPETokenizer, exist_ok=True)
        AutoTokenizer.register(RSMCLIPConfig, fast_tokenizer_class=RSMCLIPTokenizer, exist_ok=True)


def _register_pipeline(_module: object = None) -> None:
    """Register the `"rsmclip-retrieval"` task with transformers' pipelines (once)."""
    with _lock:
        if "pipeline" in _registered:
            return
        _registered.add("pipeline")
        from .pipeline_rsmclip import register_retrieval_pipeline

        register_retrieval_pipeline()


# The callbacks import this package's flat files: they wait until no import of transformers or of this package is
# still executing (see `_lazy.after_import`).
after_import("transformers.models.auto", _register_auto_classes, settle=(__name__,))
after_import("transformers.pipelines", _register_pipeline, settle=(__name__,))
