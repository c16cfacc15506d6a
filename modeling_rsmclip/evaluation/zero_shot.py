"""Zero-shot scene classification, per language, with averaged prompt embeddings.

For every language, each class name is put into that language's prompt templates, the normalised prompt embeddings
of a class are averaged and re-normalised into a class embedding, and an image is scored against every class by
cosine similarity. The name of each class, per language, comes from (first match wins): the user's class-name file
(``--class-names``), the names the dataset builder put in a builder dataset's captions (its ``build_report.json``),
the shipped tables `templates.CLASS_NAMES` (AID, EuroSAT, NWPU-RESISC45, UC Merced, WHU-RS19, RSSCN7, PatternNet,
OPTIMAL-31, RSI-CB256, folder-name aliases included), else the identifier split into words (``BareLand`` ->
"bare land"), which is flagged in the results (``unmapped_classes``) and in the CLI's summary.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..inference.classes import class_embeddings
from ..processing_rsmclip import content_free_texts
from ..templates import (
    CLASS_NAMES,
    DATASET_ALIASES,
    LANGUAGES,
    PROMPT_TEMPLATES,
    find_table,
    lookup_class,
    norm_key,
    split_identifier,
)
from .embed import DatasetImages, Embedder, ImageFiles, ImageSource
from .metrics import DEFAULT_ZERO_SHOT_KS, TIE_RULE, zero_shot_metrics
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
    skipped: dict[str, Any] = field(default_factory=dict)
    dataset_type: str | None = None
    # Builder datasets: {class: {language: name}} as the builder put them in the captions.
    builder_class_names: dict[str, dict[str, str]] = field(default_factory=dict)


def _image_extensions() -> set[str]:
    return {ext.lower() for ext in Image.registered_extensions()}


def load_image_folder(root: str | os.PathLike, name: str | None = None) -> ZeroShotData:
    """An ImageFolder layout: ``root/<class>/<image>``; classes are the sub-folders, sorted.

    Files that are not images (by extension) are skipped and counted.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ValueError(f"{root}: no class sub-folders")
    extensions = _image_extensions()
    found: dict[str, list[Path]] = {}
    skipped: dict[str, Any] = {}
    for cls in folders:
        files = [p for p in sorted((root / cls).rglob("*")) if p.is_file() and not p.name.startswith(".")]
        images = [p for p in files if p.suffix.lower() in extensions]
        if len(images) < len(files):
            skipped["non_image_files"] = skipped.get("non_image_files", 0) + len(files) - len(images)
        if images:
            found[cls] = images
        else:
            skipped.setdefault("empty_class_folders", []).append(cls)
    if not found:
        raise ValueError(f"{root}: no images in the class folders ({', '.join(folders)})")
    if skipped.get("non_image_files"):
        logger.warning("%s: skipped %d non-image file(s)", root, skipped["non_image_files"])
    if skipped.get("empty_class_folders"):
        # An empty class would still be scored as a distractor: it is left out of the classes, and reported.
        logger.warning(
            "%s: skipped %d class folder(s) without images: %s",
            root,
            len(skipped["empty_class_folders"]),
            ", ".join(skipped["empty_class_folders"]),
        )
    classes = list(found)
    paths = [p for cls in classes for p in found[cls]]
    labels = [label for label, cls in enumerate(classes) for _ in found[cls]]
    return ZeroShotData(name or root.name, None, str(root), ImageFiles(paths), labels, classes, skipped)


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
        builder_class_names=_builder_class_names(path_or_id),
    )


def _builder_class_names(path_or_id: str) -> dict[str, dict[str, str]]:
    """The per-language class names recorded by the dataset builder in ``build_report.json`` (a save_to_disk folder,
    or a Hub dataset pushed by the builder)."""
    report = Path(path_or_id) / "build_report.json"
    if not Path(path_or_id).exists():
        try:
            from huggingface_hub import hf_hub_download

            report = Path(hf_hub_download(path_or_id, "build_report.json", repo_type="dataset"))
        except Exception as err:  # no report in the repository, offline, ...: the other name sources apply
            logger.info("%s: no builder class names (%s)", path_or_id, err)
            return {}
    if not report.is_file():
        return {}
    try:
        names = json.loads(report.read_text(encoding="utf-8")).get("class_names") or {}
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read the class names of {report}: {err}") from err
    return {str(k): dict(v) for k, v in names.items() if isinstance(v, Mapping)}


def load_class_names_file(path: str | os.PathLike) -> dict[str, dict[str, str] | str]:
    """A user's class names: JSON or YAML mapping ``folder -> name`` (one name for every language) or
    ``folder -> {language: name}``. Errors name the file and the entry."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"class-names file not found: {path}") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"class-names file {path} is not UTF-8 text (byte {err.start})") from None
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as err:  # json.JSONDecodeError, yaml.YAMLError
        raise ValueError(
            f"class-names file {path} is not valid {path.suffix.lstrip('.') or 'JSON'}: {err}"
        ) from err
    if not isinstance(data, Mapping) or not data:
        raise ValueError(
            f"class-names file {path} must hold a non-empty mapping folder -> name or {{language: name}}"
        )
    out: dict[str, dict[str, str] | str] = {}
    for folder, value in data.items():
        if isinstance(value, str) and value.strip():
            out[str(folder)] = value.strip()
        elif isinstance(value, Mapping) and value:
            unknown = [lang for lang in value if lang not in LANGUAGES]
            if unknown:
                raise ValueError(
                    f"{path}: class {folder!r} has unknown language code(s) {unknown}; use {', '.join(LANGUAGES)}"
                )
            bad = [lang for lang, name in value.items() if not isinstance(name, str) or not name.strip()]
            if bad:
                raise ValueError(f"{path}: class {folder!r} has an empty name for {bad}")
            out[str(folder)] = {lang: name.strip() for lang, name in value.items()}
        else:
            raise ValueError(
                f"{path}: class {folder!r} must map to a name or to {{language: name}}, got {value!r}"
            )
    return out


def _covered(table: str, classes: Sequence[str]) -> int:
    return sum(lookup_class(table, c) is not None for c in classes)


def find_class_names_dataset(classes: Sequence[str], hint: str | None = None) -> str | None:
    """The `CLASS_NAMES` table that knows ``classes`` (folder names in any spelling, or folder aliases).

    ``hint`` (e.g. the dataset's name, in any spelling) wins when its table knows at least one class; otherwise the
    table that knows the most classes, the smallest of those on a tie; None when no table knows any class.
    """
    hinted = find_table(hint)
    if hinted is not None and _covered(hinted, classes):
        return hinted
    scores = {key: _covered(key, classes) for key in CLASS_NAMES if key not in DATASET_ALIASES}
    best = max(scores.values(), default=0)
    if best == 0:
        return None
    return min((key for key, n in scores.items() if n == best), key=lambda key: (len(CLASS_NAMES[key]), key))


@dataclass
class ClassNames:
    """Per language, the name of every class, and where each name came from."""

    names: dict[str, list[str]]
    sources: dict[str, str]  # class -> "user", "builder", "templates.CLASS_NAMES[...]" or "identifier"
    unmapped: dict[str, str]  # class -> the words its identifier was split into
    untranslated: dict[str, list[str]]  # language -> classes that use their English/identifier name there
    unused_user_names: list[str] = field(default_factory=list)

    @property
    def source(self) -> str:
        kinds = set(self.sources.values())
        if kinds == {"identifier"}:
            return "identifiers"
        return kinds.pop() if len(kinds) == 1 else "mixed"


def resolve_class_names_detailed(
    classes: Sequence[str],
    languages: Sequence[str],
    dataset: str | None = None,
    hint: str | None = None,
    user_names: Mapping[str, Mapping[str, str] | str] | None = None,
    builder_names: Mapping[str, Mapping[str, str]] | None = None,
) -> ClassNames:
    """Resolve the prompt name of every class in every language (see the module doc for the order)."""
    table = None
    if dataset is not None:
        table = find_table(dataset)
        if table is None:
            raise ValueError(f"unknown class-name table {dataset!r}; known: {sorted(CLASS_NAMES)}")
    else:
        table = find_class_names_dataset(classes, hint)
    user = {norm_key(k): (k, v) for k, v in (user_names or {}).items()}
    builder = {norm_key(k): v for k, v in (builder_names or {}).items()}
    names: dict[str, list[str]] = {lang: [] for lang in languages}
    sources: dict[str, str] = {}
    unmapped: dict[str, str] = {}
    untranslated: dict[str, list[str]] = {}
    used_user: set[str] = set()
    for cls in classes:
        key = lookup_class(table, cls) if table is not None else None
        tabled = CLASS_NAMES[table][key] if key is not None else {}
        entry = user.get(norm_key(cls))
        if entry is not None:
            used_user.add(entry[0])
            given = entry[1]
            per_lang = {lang: given for lang in languages} if isinstance(given, str) else dict(given)
            sources[cls] = "user"
        elif norm_key(cls) in builder:
            per_lang, sources[cls] = dict(builder[norm_key(cls)]), "builder"
        elif tabled:
            per_lang, sources[cls] = dict(tabled), f"templates.CLASS_NAMES[{table!r}]"
        else:
            per_lang, sources[cls] = {}, "identifier"
            unmapped[cls] = split_identifier(cls) or cls
        english = per_lang.get("en") or tabled.get("en") or split_identifier(cls) or cls
        for lang in languages:
            name = per_lang.get(lang) or tabled.get(lang)
            if not name:
                name = english
                if lang != "en":
                    untranslated.setdefault(lang, []).append(cls)
            names[lang].append(name)
    for cls, words in unmapped.items():
        logger.warning("class %r is in no class-name table: using %r, untranslated", cls, words)
    unused = sorted(set(k for k, _ in user.values()) - used_user)
    if unused:
        logger.warning("class-names entries for folders that are not classes of the dataset: %s", unused)
    return ClassNames(names, sources, unmapped, untranslated, unused)


def resolve_class_names(
    classes: Sequence[str], languages: Sequence[str], dataset: str | None = None, hint: str | None = None
) -> tuple[dict[str, list[str]], str]:
    """Per language, the name of every class to put in the prompts, and where the names came from: a table
    (``"templates.CLASS_NAMES['aid']"``), ``"identifiers"`` (no class known) or ``"mixed"``. See
    `resolve_class_names_detailed` for the per-class sources."""
    resolved = resolve_class_names_detailed(classes, languages, dataset, hint)
    return resolved.names, resolved.source


def evaluate_zero_shot(
    embedder: Embedder,
    data: ZeroShotData,
    languages: Sequence[str],
    class_names_dataset: str | None = None,
    templates: Mapping[str, Sequence[str]] | None = None,
    ks: tuple[int, ...] = DEFAULT_ZERO_SHOT_KS,
    model_name: str | None = None,
    class_names: Mapping[str, Mapping[str, str] | str] | None = None,
) -> dict[str, Any]:
    """Zero-shot metrics for every language (images are embedded once, prompts once per language).

    ``class_names`` (a user's ``folder -> name`` or ``folder -> {language: name}``) wins over every other source;
    ``class_names_dataset`` forces one shipped table.
    """
    templates = dict(templates or PROMPT_TEMPLATES)
    missing = [lang for lang in languages if not templates.get(lang)]
    if missing:
        raise ValueError(f"no prompt templates for language(s) {missing}; available: {sorted(templates)}")
    for lang in languages:
        for template in templates[lang]:
            if template.count("{}") != 1:
                raise ValueError(f"{lang} template {template!r} must contain exactly one '{{}}'")
    resolved = resolve_class_names_detailed(
        data.classes,
        languages,
        class_names_dataset,
        hint=data.name,
        user_names=class_names,
        builder_names=data.builder_class_names,
    )
    # Names the tokenizer cannot read would score every image alike: flagged (warning and results), not fatal.
    content_free: dict[str, list[str]] = {}
    tokenizer = getattr(embedder, "tokenizer", None)
    for lang in languages if tokenizer is not None else ():
        empty = content_free_texts(tokenizer, resolved.names[lang])
        if empty:
            content_free[lang] = empty
            logger.warning("%s class name(s) with no content the tokenizer knows: %s", lang, empty)
    image_embeds = embedder.images(data.images, desc=f"{data.name}: images").numpy()
    labels = np.asarray(data.labels)
    per_language: dict[str, dict[str, Any]] = {}
    for lang in languages:
        class_embeds = class_embeddings(
            embedder.model,
            embedder.processor,
            resolved.names[lang],
            lang,
            templates=templates,
            embed=lambda texts, lang=lang: embedder.texts(texts, desc=f"{data.name}: {lang} prompts"),
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
        "class_names": resolved.names,
        "class_names_source": resolved.source,
        "class_name_sources": resolved.sources,
        "unmapped_classes": resolved.unmapped,
        "untranslated_class_names": resolved.untranslated,
        "unused_class_names": resolved.unused_user_names,
        "content_free_class_names": content_free,
        "templates": {lang: list(templates[lang]) for lang in languages},
        "ks": [int(k) for k in ks],
        "tie_rule": TIE_RULE,
        "units": "percent",
        "languages": per_language,
        "average": average,
        "skipped": data.skipped,
    }
