"""Zero-shot scene classification, per language, with averaged prompt embeddings.

For every language, each class name is put into that language's prompt templates, the normalised prompt embeddings
of a class are averaged and re-normalised into a class embedding, and an image is scored against every class by
cosine similarity. Class names come from `templates.CLASS_NAMES` when the dataset's classes are known there
(UC Merced, RSSCN7), otherwise from the folder / label names, in English, for every language.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..templates import CLASS_NAMES, PROMPT_TEMPLATES
from .embed import DatasetImages, Embedder, ImageFiles, ImageSource
from .metrics import DEFAULT_ZERO_SHOT_KS, TIE_RULE, average_prompt_embeddings, zero_shot_metrics
from .retrieval import load_split

logger = logging.getLogger(__name__)

TASK_TYPE = "zero-shot-image-classification"


@dataclass
class ZeroShotData:
    """Labelled images: ``labels[i]`` indexes ``classes`` (the dataset's own class identifiers)."""

    name: str
    split: str | None
    source: str
    images: ImageSource
    labels: list[int]
    classes: list[str]
    skipped: dict[str, int] = field(default_factory=dict)
    dataset_type: str | None = None


def _image_extensions() -> set[str]:
    return {ext.lower() for ext in Image.registered_extensions()}


def load_image_folder(root: str | os.PathLike, name: str | None = None) -> ZeroShotData:
    """An ImageFolder layout: ``root/<class>/<image>``; classes are the sub-folders, sorted.

    Files that are not images (by extension) are skipped and counted.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"{root}: no class sub-folders")
    extensions = _image_extensions()
    paths: list[Path] = []
    labels: list[int] = []
    skipped: Counter[str] = Counter()
    for label, cls in enumerate(classes):
        for path in sorted((root / cls).rglob("*")):
            if not path.is_file() or path.name.startswith("."):
                continue
            if path.suffix.lower() not in extensions:
                skipped["non_image_files"] += 1
                continue
            paths.append(path)
            labels.append(label)
    if not paths:
        raise ValueError(f"{root}: no images in the class folders")
    if skipped:
        logger.warning("%s: skipped %d non-image file(s)", root, skipped["non_image_files"])
    return ZeroShotData(name or root.name, None, str(root), ImageFiles(paths), labels, classes, dict(skipped))


def load_labels_csv(
    csv_file: str | os.PathLike,
    image_dir: str | os.PathLike,
    split: str | None = None,
    name: str | None = None,
) -> ZeroShotData:
    """Images listed in a ``filename,label[,split]`` CSV (e.g. UCM's ``labels.csv``).

    The classes are every label of the file (all splits), so a split is scored against the full label set;
    ``split`` keeps only that split's rows.
    """
    csv_file = Path(csv_file)
    image_dir = Path(image_dir)
    try:
        with open(csv_file, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
            fields = rows[0].keys() if rows else []
    except FileNotFoundError as err:
        raise FileNotFoundError(f"labels CSV not found: {csv_file}") from err
    for column in ("filename", "label"):
        if column not in fields:
            raise ValueError(f"{csv_file}: no {column!r} column (columns: {list(fields)})")
    if split is not None and "split" not in fields:
        raise ValueError(f"{csv_file}: a split was requested ({split!r}) but the file has no 'split' column")
    for line, row in enumerate(rows, start=2):
        if not (row["filename"] or "").strip() or not (row["label"] or "").strip():
            raise ValueError(f"{csv_file}, line {line}: empty filename or label")
    classes = sorted({row["label"].strip() for row in rows})
    index = {cls: i for i, cls in enumerate(classes)}
    selected = [row for row in rows if split is None or (row.get("split") or "").strip() == split]
    if not selected:
        raise ValueError(f"{csv_file}: no rows with split {split!r}")
    paths = [image_dir / row["filename"].strip() for row in selected]
    labels = [index[row["label"].strip()] for row in selected]
    return ZeroShotData(
        name or csv_file.parent.name, split, str(csv_file), ImageFiles(paths), labels, classes
    )


def load_builder_labels(path_or_id: str, split: str | None = "test", name: str | None = None) -> ZeroShotData:
    """A builder dataset's ``image`` and ``label`` columns; rows without a label are skipped and counted."""
    ds = load_split(path_or_id, split)
    for column in ("image", "label"):
        if column not in ds.column_names:
            raise ValueError(
                f"{path_or_id}: split {split!r} has no {column!r} column (columns: {ds.column_names})"
            )
    raw = list(ds["label"])
    keep = [i for i, label in enumerate(raw) if isinstance(label, str) and label.strip()]
    skipped = {"rows_without_label": len(raw) - len(keep)} if len(keep) < len(raw) else {}
    if not keep:
        raise ValueError(f"{path_or_id}: split {split!r} has no labelled rows")
    classes = sorted({raw[i].strip() for i in keep})
    index = {cls: i for i, cls in enumerate(classes)}
    subset = ds.select(keep) if len(keep) < len(raw) else ds
    if name is None:
        sources = set(ds["source"]) if "source" in ds.column_names else set()
        name = next(iter(sources)) if len(sources) == 1 else Path(path_or_id).name
    return ZeroShotData(
        name,
        split,
        str(path_or_id),
        DatasetImages(subset),
        [index[raw[i].strip()] for i in keep],
        classes,
        skipped,
        dataset_type=None if Path(path_or_id).exists() else path_or_id,
    )


def _norm_key(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name).lower()


def find_class_names_dataset(classes: Sequence[str], hint: str | None = None) -> str | None:
    """The `CLASS_NAMES` dataset whose class identifiers cover ``classes`` (ignoring case, spaces, _ and -).

    ``hint`` (e.g. the dataset's name) wins when it is one of the covering tables.
    """
    wanted = {_norm_key(c) for c in classes}
    matches = [key for key, table in CLASS_NAMES.items() if wanted <= {_norm_key(c) for c in table}]
    if hint in matches:
        return hint
    # Prefer the smallest covering label set (the most specific dataset).
    return min(matches, key=lambda key: len(CLASS_NAMES[key])) if matches else None


def resolve_class_names(
    classes: Sequence[str], languages: Sequence[str], dataset: str | None = None, hint: str | None = None
) -> tuple[dict[str, list[str]], str]:
    """Per language, the name of every class to put in the prompts, and where the names came from.

    ``dataset`` names a `CLASS_NAMES` entry; ``None`` looks for one that covers the classes (preferring ``hint``,
    the dataset's name). Without one, the
    class identifiers themselves (``_`` and ``-`` read as spaces) are used in every language.
    """
    if dataset is not None and dataset not in CLASS_NAMES:
        raise ValueError(f"unknown class-name table {dataset!r}; known: {sorted(CLASS_NAMES)}")
    key = dataset or find_class_names_dataset(classes, hint)
    fallback = [re.sub(r"[_\-]+", " ", c).strip() for c in classes]
    if key is None:
        logger.warning("no translated class names for classes %s: using the class identifiers", list(classes))
        return {lang: list(fallback) for lang in languages}, "identifiers"
    table = {_norm_key(c): v for c, v in CLASS_NAMES[key].items()}
    names: dict[str, list[str]] = {}
    for lang in languages:
        names[lang] = []
        for cls, default in zip(classes, fallback):
            entry = table.get(_norm_key(cls))
            if entry is None:
                raise ValueError(f"class {cls!r} is not in the {key!r} class-name table")
            if lang not in entry:
                logger.warning("no %s name for class %r in %r: using %r", lang, cls, key, default)
            names[lang].append(entry.get(lang, default))
    return names, f"templates.CLASS_NAMES[{key!r}]"


def evaluate_zero_shot(
    embedder: Embedder,
    data: ZeroShotData,
    languages: Sequence[str],
    class_names_dataset: str | None = None,
    templates: Mapping[str, Sequence[str]] | None = None,
    ks: tuple[int, ...] = DEFAULT_ZERO_SHOT_KS,
    model_name: str | None = None,
) -> dict[str, Any]:
    """Zero-shot metrics for every language (images are embedded once, prompts once per language)."""
    templates = dict(templates or PROMPT_TEMPLATES)
    missing = [lang for lang in languages if not templates.get(lang)]
    if missing:
        raise ValueError(f"no prompt templates for language(s) {missing}; available: {sorted(templates)}")
    for lang in languages:
        for template in templates[lang]:
            if template.count("{}") != 1:
                raise ValueError(f"{lang} template {template!r} must contain exactly one '{{}}'")
    class_names, names_source = resolve_class_names(
        data.classes, languages, class_names_dataset, hint=data.name
    )
    image_embeds = embedder.images(data.images, desc=f"{data.name}: images").numpy()
    labels = np.asarray(data.labels)
    per_language: dict[str, dict[str, Any]] = {}
    for lang in languages:
        prompts = [template.format(name) for name in class_names[lang] for template in templates[lang]]
        prompt_embeds = embedder.texts(prompts, desc=f"{data.name}: {lang} prompts").numpy()
        class_embeds = average_prompt_embeddings(
            prompt_embeds.reshape(len(data.classes), len(templates[lang]), -1)
        )
        logits = image_embeds.astype(np.float64) @ class_embeds.T
        per_language[lang] = zero_shot_metrics(logits, labels, data.classes, ks)
        logger.info("%s %s: top-1 %.2f", data.name, lang, per_language[lang][f"top{ks[0]}"])
    summary_keys = [f"top{int(k)}" for k in ks] + ["mean_per_class_accuracy"]
    average = {k: float(np.mean([m[k] for m in per_language.values()])) for k in summary_keys}
    return {
        "task": TASK_TYPE,
        "model": {"name_or_path": model_name, "fingerprint": embedder.model_key},
        "dataset": {
            "name": data.name,
            "type": data.dataset_type or data.name,
            "split": data.split,
            "source": data.source,
            "num_images": len(data.labels),
        },
        "classes": list(data.classes),
        "class_names": class_names,
        "class_names_source": names_source,
        "templates": {lang: list(templates[lang]) for lang in languages},
        "ks": [int(k) for k in ks],
        "tie_rule": TIE_RULE,
        "units": "percent",
        "languages": per_language,
        "average": average,
        "skipped": data.skipped,
    }
