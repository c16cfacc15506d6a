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

Names are imported on first use (`modeling_rsmclip._lazy`).
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "FEATURES": ".builder",
    "BuildError": ".builder",
    "build_dataset": ".builder",
    "parse_languages": ".builder",
    "push_dataset": ".builder",
    "resolve_class_names": ".builder",
    "save_dataset": ".builder",
    "SOURCES": ".card",
    "make_dataset_card": ".card",
    "SourceItem": ".readers",
    "check_image": ".readers",
    "read_imagefolder": ".readers",
    "read_karpathy": ".readers",
    "read_labels_csv": ".readers",
    "BuildReport": ".report",
    "ReportEntry": ".report",
    "RECOMMENDED_MODELS": ".translate",
    "HFTranslator": ".translate",
    "MissingTranslationsError": ".translate",
    "TranslationCache": ".translate",
    "TranslationStats": ".translate",
    "Translator": ".translate",
    "translate_texts": ".translate",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
