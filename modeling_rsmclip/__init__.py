"""RS-M-CLIP: a Transformers-native multilingual CLIP for remote-sensing imagery.

Importing the package registers the `"rsmclip"` model type with `AutoConfig`, `AutoModel`,
`AutoModelForZeroShotImageClassification`, `AutoImageProcessor` and `AutoProcessor`, and the
`"rsmclip-retrieval"` pipeline task.
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForZeroShotImageClassification,
    AutoProcessor,
    AutoTokenizer,
)

from .configuration_rsmclip import PRESETS, RSMCLIPConfig
from .modeling_rsmclip import RSMCLIPDistillationHead, RSMCLIPModel, RSMCLIPOutput, RSMCLIPPreTrainedModel
from .pipeline_rsmclip import (
    RETRIEVAL_TASK,
    RSMCLIPRetrievalPipeline,
    RSMCLIPZeroShotImageClassificationPipeline,
    register_retrieval_pipeline,
)
from .processing_rsmclip import (
    RSMCLIPBPETokenizer,
    RSMCLIPImageProcessor,
    RSMCLIPProcessor,
    RSMCLIPTokenizer,
    array_to_rgb,
    to_rgb,
)
from .templates import LANGUAGES, PROMPT_TEMPLATES

__version__ = "0.1.0"

AutoConfig.register("rsmclip", RSMCLIPConfig, exist_ok=True)
AutoModel.register(RSMCLIPConfig, RSMCLIPModel, exist_ok=True)
AutoModelForZeroShotImageClassification.register(RSMCLIPConfig, RSMCLIPModel, exist_ok=True)
AutoImageProcessor.register(RSMCLIPConfig, fast_image_processor_class=RSMCLIPImageProcessor, exist_ok=True)
AutoProcessor.register(RSMCLIPConfig, RSMCLIPProcessor, exist_ok=True)
# Both tokenizers are found by the class name in tokenizer_config.json; a config maps to one, XLM-RoBERTa's (the
# last registered), and a CLIP text tower's folder names RSMCLIPBPETokenizer.
AutoTokenizer.register(RSMCLIPConfig, tokenizer_class=RSMCLIPBPETokenizer, exist_ok=True)
AutoTokenizer.register(RSMCLIPConfig, fast_tokenizer_class=RSMCLIPTokenizer, exist_ok=True)
register_retrieval_pipeline()

__all__ = [
    "LANGUAGES",
    "PRESETS",
    "PROMPT_TEMPLATES",
    "RETRIEVAL_TASK",
    "RSMCLIPBPETokenizer",
    "RSMCLIPConfig",
    "RSMCLIPDistillationHead",
    "RSMCLIPImageProcessor",
    "RSMCLIPModel",
    "RSMCLIPOutput",
    "RSMCLIPPreTrainedModel",
    "RSMCLIPProcessor",
    "RSMCLIPTokenizer",
    "RSMCLIPRetrievalPipeline",
    "RSMCLIPZeroShotImageClassificationPipeline",
    "array_to_rgb",
    "to_rgb",
]


def __getattr__(name: str):
    # Optional capabilities load on first use, so importing the package needs none of their extras.
    if name == "RSMCLIPIndex":
        from .index import RSMCLIPIndex

        return RSMCLIPIndex
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
