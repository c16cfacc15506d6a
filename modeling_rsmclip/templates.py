"""Prompt templates and class-name translations for remote-sensing zero-shot classification.

RS-M-CLIP is trained on captions in ten languages, so zero-shot prompts can be written in any of them. Each
template has exactly one ``{}`` where the class name goes. ``CLASS_NAMES`` holds hand-checked translations of the
class names of the standard scene datasets (AID, EuroSAT, NWPU-RESISC45, UC Merced, WHU-RS19, RSSCN7, PatternNet,
OPTIMAL-31, RSI-CB256; data file ``class_names.json``), keyed by their class folders as distributed, with folder-name
aliases; other classes fall back to names given by the user or translated by the dataset builder, or to their
identifiers split into words.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

LANGUAGES: tuple[str, ...] = ("en", "pt", "es", "fr", "de", "nl", "it", "zh", "ko", "ru")

LANGUAGE_NAMES: dict[str, str] = {
    "en": "English",
    "pt": "Portuguese",
    "es": "Spanish",
    "fr": "French",
    "de": "German",
    "nl": "Dutch",
    "it": "Italian",
    "zh": "Chinese",
    "ko": "Korean",
    "ru": "Russian",
}

PROMPT_TEMPLATES: dict[str, list[str]] = {
    "en": [
        "a satellite image of {}.",
        "an aerial image of {}.",
        "a remote sensing image of {}.",
        "an aerial photo of {}.",
    ],
    "pt": [
        "uma imagem de satélite de {}.",
        "uma imagem aérea de {}.",
        "uma imagem de deteção remota de {}.",
        "uma fotografia aérea de {}.",
    ],
    "es": [
        "una imagen de satélite de {}.",
        "una imagen aérea de {}.",
        "una imagen de teledetección de {}.",
        "una fotografía aérea de {}.",
    ],
    "fr": [
        "une image satellite de {}.",
        "une image aérienne de {}.",
        "une image de télédétection de {}.",
        "une photo aérienne de {}.",
    ],
    "de": [
        "ein Satellitenbild von {}.",
        "ein Luftbild von {}.",
        "ein Fernerkundungsbild von {}.",
        "eine Luftaufnahme von {}.",
    ],
    "nl": [
        "een satellietbeeld van {}.",
        "een luchtfoto van {}.",
        "een teledetectiebeeld van {}.",
        "een luchtopname van {}.",
    ],
    "it": [
        "un'immagine satellitare di {}.",
        "un'immagine aerea di {}.",
        "un'immagine telerilevata di {}.",
        "una foto aerea di {}.",
    ],
    "zh": [
        "{}的卫星图像。",
        "{}的航空图像。",
        "{}的遥感图像。",
        "{}的航拍照片。",
    ],
    "ko": [
        "{}의 위성 이미지.",
        "{}의 항공 이미지.",
        "{}의 원격 탐사 이미지.",
        "{}의 항공 사진.",
    ],
    "ru": [
        "спутниковый снимок: {}.",
        "аэрофотоснимок: {}.",
        "снимок дистанционного зондирования: {}.",
        "аэрофотография: {}.",
    ],
}


_CLASS_NAMES_FILE = Path(__file__).with_name("class_names.json")


def parse_language_list(value: str | Sequence[str]) -> list[str]:
    """``"all"``, ``"en,pt,zh"`` or a list -> language codes of `LANGUAGES` in the order given, each once (case and
    spaces ignored). No code, or an unknown one, raises `ValueError` naming it."""
    if isinstance(value, str):
        items = list(LANGUAGES) if value.strip().lower() == "all" else value.split(",")
    else:
        items = [str(item) for item in value]
    codes = [item.strip().lower() for item in items if item.strip()]
    unknown = [code for code in codes if code not in LANGUAGES]
    if unknown:
        raise ValueError(
            f"unsupported language(s) {', '.join(map(repr, unknown))}; choose from {', '.join(LANGUAGES)} or 'all'"
        )
    if not codes:
        raise ValueError(f"no language given ({value!r}); choose from {', '.join(LANGUAGES)} or 'all'")
    return list(dict.fromkeys(codes))


def norm_key(name: str) -> str:
    """How class folders and dataset names are compared: case, spaces, ``_`` and ``-`` ignored."""
    return re.sub(r"[\s_\-]+", "", name).lower()


def _load_class_name_tables() -> tuple[
    dict[str, dict[str, dict[str, str]]], dict[str, str], dict[str, dict[str, str]]
]:
    data = json.loads(_CLASS_NAMES_FILE.read_text(encoding="utf-8"))
    names = data["names"]
    tables: dict[str, dict[str, dict[str, str]]] = {}
    dataset_aliases: dict[str, str] = {}
    folder_aliases: dict[str, dict[str, str]] = {}
    for key, dataset in data["datasets"].items():
        tables[key] = {folder: dict(names[concept]) for folder, concept in dataset["classes"].items()}
        folder_aliases[key] = dict(dataset.get("folder_aliases", {}))
        for alias in dataset.get("aliases", []):
            dataset_aliases[alias] = key
    return tables, dataset_aliases, folder_aliases


# CLASS_NAMES[dataset][class folder][language] -> name, for AID, EuroSAT, NWPU-RESISC45, UC Merced, WHU-RS19, RSSCN7,
# PatternNet, OPTIMAL-31 and RSI-CB256 (data: class_names.json). Keys are each dataset's class folders as
# distributed (UC Merced and RSSCN7: the folder names of this project's samples; RSSCN7's distributed `aGrass`,
# `bField`, ... are folder aliases). Other names of a dataset (e.g. "ucm-captions") are keys to the same table.
_TABLES, DATASET_ALIASES, CLASS_FOLDER_ALIASES = _load_class_name_tables()
CLASS_NAMES: dict[str, dict[str, dict[str, str]]] = dict(_TABLES)
for _alias, _key in DATASET_ALIASES.items():
    CLASS_NAMES[_alias] = _TABLES[_key]
    CLASS_FOLDER_ALIASES[_alias] = CLASS_FOLDER_ALIASES[_key]


def find_table(dataset: str | None) -> str | None:
    """The `CLASS_NAMES` key of a dataset name given in any spelling (``"NWPU_RESISC45"``, ``"UCMerced"``)."""
    if not dataset:
        return None
    if dataset in CLASS_NAMES:
        return dataset
    wanted = norm_key(dataset)
    return next((key for key in CLASS_NAMES if norm_key(key) == wanted), None)


def lookup_class(table: str, label: str) -> str | None:
    """The class key of ``label`` (a folder name in any spelling, or a folder alias) in ``CLASS_NAMES[table]``."""
    classes = CLASS_NAMES[table]
    if label in classes:
        return label
    wanted = norm_key(label)
    for key in classes:
        if norm_key(key) == wanted:
            return key
    for alias, key in CLASS_FOLDER_ALIASES.get(table, {}).items():
        if norm_key(alias) == wanted:
            return key
    return None


def split_identifier(name: str) -> str:
    """Turn a class identifier into lower-case words: ``"BareLand"`` -> ``"bare land"``, ``"river_lake"`` ->
    ``"river lake"``, ``"NIRBand2"`` -> ``"nir band 2"`` (the fallback for classes no table knows)."""
    text = re.sub(r"[_\-\s]+", " ", name)
    text = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", text)
    text = re.sub(r"(?<=[A-Z])(?=[A-Z][a-z])", " ", text)
    text = re.sub(r"(?<=[A-Za-z])(?=[0-9])|(?<=[0-9])(?=[A-Za-z])", " ", text)
    return " ".join(text.split()).lower()


def humanize_class_name(name: str) -> str:
    """Kept name of `split_identifier`."""
    return split_identifier(name)


def class_name(dataset: str | None, label: str, lang: str = "en") -> str:
    """The class name of ``label`` in ``lang``: a known translation, else the identifier split into words.

    Raises ValueError for an unknown language code, naming the supported ones.
    """
    if lang not in LANGUAGES:
        raise ValueError(f"unsupported language {lang!r}; choose one of {', '.join(LANGUAGES)}")
    table = find_table(dataset)
    key = lookup_class(table, label) if table else None
    if key is not None and lang in CLASS_NAMES[table][key]:
        return CLASS_NAMES[table][key][lang]
    return split_identifier(label)


def prompts_for(label_text: str, lang: str = "en") -> list[str]:
    """All prompt templates of ``lang`` filled with ``label_text``."""
    if lang not in PROMPT_TEMPLATES:
        raise ValueError(f"no prompt templates for language {lang!r}; choose one of {', '.join(LANGUAGES)}")
    return [template.format(label_text) for template in PROMPT_TEMPLATES[lang]]
