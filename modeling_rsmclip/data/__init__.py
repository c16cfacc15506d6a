"""Dataset builder: public remote-sensing layouts -> a multilingual, Hub-ready ``DatasetDict``.

```python
from modeling_rsmclip.data import build_dataset, save_dataset

ds, report = build_dataset(
    "karpathy",
    source="ucm-captions",
    annotations="../shared/data/ucm-captions/dataset.json",
    images="../shared/data/ucm-captions/images",
    labels_csv="../shared/data/ucm-captions/labels.csv",
    translations_cache="../shared/data/ucm-captions/translations",
)
save_dataset(ds, report, "outputs/ucm-captions-multilingual")
```
"""

from .builder import (
    FEATURES,
    BuildError,
    build_dataset,
    parse_languages,
    push_dataset,
    resolve_class_names,
    save_dataset,
)
from .card import SOURCES, make_dataset_card
from .readers import SourceItem, check_image, read_imagefolder, read_karpathy, read_labels_csv
from .report import BuildReport, ReportEntry
from .translate import (
    RECOMMENDED_MODELS,
    HFTranslator,
    MissingTranslationsError,
    TranslationCache,
    TranslationStats,
    Translator,
    translate_texts,
)

__all__ = [
    "FEATURES",
    "RECOMMENDED_MODELS",
    "SOURCES",
    "BuildError",
    "BuildReport",
    "HFTranslator",
    "MissingTranslationsError",
    "ReportEntry",
    "SourceItem",
    "TranslationCache",
    "TranslationStats",
    "Translator",
    "build_dataset",
    "check_image",
    "make_dataset_card",
    "parse_languages",
    "push_dataset",
    "read_imagefolder",
    "read_karpathy",
    "read_labels_csv",
    "resolve_class_names",
    "save_dataset",
    "translate_texts",
]
