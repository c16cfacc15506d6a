"""Readers for the two public layouts of remote-sensing image-text data.

- Karpathy caption sets (RSICD, UCM-Captions, Sydney-Captions, RSITMD, and NWPU-Captions' per-class
  variant): one annotation JSON plus an image folder.
- ImageFolder classification sets (``<root>/<class>/<image>``, optionally ``<root>/<split>/<class>/<image>``):
  the label is the folder name; captions are made later from prompt templates.

Readers never drop anything silently: every entry they cannot use is added to the :class:`BuildReport`
with the file or JSON position it came from and the reason.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageFile
from tqdm.auto import tqdm

from .report import INCOMPLETE, REPAIRED, SKIPPED, BuildReport

LAYOUTS = ("karpathy", "imagefolder")  # the public layouts the dataset builder reads

SPLITS = ("train", "validation", "test")
# Karpathy split names (and common variants) -> dataset split. "restval" is COCO's extra training pool.
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "restval": "train",
    "val": "validation",
    "valid": "validation",
    "validation": "validation",
    "dev": "validation",
    "test": "test",
    "testing": "test",
}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif")
_RAW_KEY = re.compile(r"^raw(?:_(\d+))?$")


@dataclass
class SourceItem:
    """One image and what is known about it before captions are translated."""

    image_path: Path
    image_id: str
    split: str
    label: str | None
    origin: str  # where it came from, for messages: "dataset.json images[12]" or a file path
    captions: dict[str, list[str]] = field(default_factory=dict)  # language -> captions


def _load_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise FileNotFoundError(f"annotation file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"annotation file {path} is not valid JSON: {error}") from error


def read_labels_csv(path: str | os.PathLike[str]) -> dict[str, tuple[str, str | None]]:
    """Read ``filename,label[,split]`` (with a header row) into ``{filename: (label, split or None)}``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"labels file not found: {path}")
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        columns = set(reader.fieldnames or [])
        if not {"filename", "label"} <= columns:
            raise ValueError(
                f"{path}: expected a header with columns filename,label[,split]; got {sorted(columns)}"
            )
        labels: dict[str, tuple[str, str | None]] = {}
        for line, row in enumerate(reader, start=2):
            filename, label = (row.get("filename") or "").strip(), (row.get("label") or "").strip()
            if not filename or not label:
                raise ValueError(f"{path}, line {line}: empty filename or label")
            if filename in labels:
                raise ValueError(f"{path}, line {line}: {filename!r} is listed twice")
            split = (row.get("split") or "").strip() or None
            labels[filename] = (label, split)
    return labels


def _entry_captions(entry: dict[str, Any], origin: str, report: BuildReport, split: str) -> list[str]:
    """The English captions of one annotation entry: ``sentences[*].raw`` (Karpathy) or ``raw, raw_1, ...`` (NWPU)."""
    captions: list[str] = []
    if "sentences" in entry:
        sentences = entry["sentences"]
        if not isinstance(sentences, list):
            report.add(origin, f"'sentences' is a {type(sentences).__name__}, not a list", SKIPPED, split)
            return []
        for position, sentence in enumerate(sentences):
            where = f"{origin} sentence {position}"
            if isinstance(sentence, str):
                text: Any = sentence
            elif isinstance(sentence, dict):
                text = sentence.get("raw")
                if (not isinstance(text, str) or not text.strip()) and isinstance(
                    sentence.get("tokens"), list
                ):
                    tokens = [str(token) for token in sentence["tokens"]]
                    if tokens:
                        text = " ".join(tokens)
                        report.add(where, "no 'raw' text; caption rebuilt from its tokens", REPAIRED, split)
            else:
                text = None
            if not isinstance(text, str) or not text.strip():
                report.add(where, "empty caption", SKIPPED, split)
                continue
            captions.append(text.strip())
        return captions
    raw_keys = sorted(
        (int(match.group(1) or 0), key) for key in entry if (match := _RAW_KEY.match(key)) is not None
    )
    for _, key in raw_keys:
        text = entry[key]
        if not isinstance(text, str) or not text.strip():
            report.add(f"{origin} {key}", "empty caption", SKIPPED, split)
            continue
        captions.append(text.strip())
    return captions


def _find_image(images_dir: Path, relative: str, subfolders: Sequence[str]) -> tuple[Path | None, str | None]:
    """Locate an annotated image; returns (path, repair note) or (None, None).

    Tries ``images_dir/<sub>/<relative>`` for each candidate subfolder, then the same stem with another
    image extension (UCM-Captions is distributed with ``.tif`` names and often used as ``.jpg``).
    """
    folders = [images_dir / sub if sub else images_dir for sub in subfolders]
    for folder in folders:
        candidate = folder / relative
        if candidate.is_file():
            return candidate, None
    for folder in folders:
        candidate = folder / relative
        for extension in IMAGE_EXTENSIONS:
            for ext in (extension, extension.upper()):
                other = candidate.with_suffix(ext)
                if other != candidate and other.is_file():
                    return other, f"{relative} not found; used {other.name}"
    return None, None


def read_karpathy(
    annotations: str | os.PathLike[str],
    images_dir: str | os.PathLike[str],
    report: BuildReport,
    labels_csv: str | os.PathLike[str] | None = None,
) -> list[SourceItem]:
    """Read a Karpathy-format caption set: ``{"images": [{"filename", "split", "sentences": [{"raw"}]}]}``.

    Also accepted: a bare list of such entries, and the NWPU-Captions layout
    ``{"<class>": [{"filename", "split", "raw", "raw_1", ...}]}`` (the class becomes the label and images
    may sit in ``images_dir/<class>/``). Labels come from ``labels_csv`` (``filename,label[,split]``) when given.
    """
    annotations, images_dir = Path(annotations), Path(images_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"image folder not found: {images_dir}")
    data = _load_json(annotations)
    name = annotations.name
    if isinstance(data, dict) and isinstance(data.get("images"), list):
        entries = [(f"{name} images[{i}]", entry, None) for i, entry in enumerate(data["images"])]
    elif isinstance(data, list):
        entries = [(f"{name} [{i}]", entry, None) for i, entry in enumerate(data)]
    elif isinstance(data, dict) and data and all(isinstance(value, list) for value in data.values()):
        entries = [
            (f"{name} {category}[{i}]", entry, category)
            for category, values in data.items()
            for i, entry in enumerate(values)
        ]
    else:
        raise ValueError(
            f"{annotations}: not a Karpathy caption file: expected {{'images': [...]}}, a list of entries, "
            "or the NWPU-Captions {class: [...]} layout"
        )
    labels = read_labels_csv(labels_csv) if labels_csv is not None else None
    labels_by_stem = {Path(key).stem: value for key, value in labels.items()} if labels else {}

    items: list[SourceItem] = []
    first_seen: dict[str, str] = {}
    for origin, entry, category in entries:
        if not isinstance(entry, dict):
            report.add(origin, f"entry is a {type(entry).__name__}, not a JSON object", SKIPPED)
            continue
        filename = entry.get("filename")
        if not isinstance(filename, str) or not filename.strip():
            report.add(origin, "entry has no 'filename'", SKIPPED)
            continue
        raw_split = entry.get("split")
        split = SPLIT_ALIASES.get(str(raw_split).strip().lower()) if raw_split is not None else None
        if split is None:
            report.add(origin, f"unknown split {raw_split!r} (expected train, val, test or restval)", SKIPPED)
            continue
        filepath = entry.get("filepath") if isinstance(entry.get("filepath"), str) else ""
        relative = Path(filepath, filename).as_posix() if filepath else filename
        if Path(relative).is_absolute() or ".." in Path(relative).parts:
            report.add(origin, f"image path {relative!r} points outside the image folder", SKIPPED, split)
            continue
        captions = _entry_captions(entry, origin, report, split)
        if not captions:
            report.add(origin, f"no captions for {relative} ('sentences' missing or empty)", SKIPPED, split)
            continue
        path, repair = _find_image(images_dir, relative, ["", category] if category else [""])
        if path is None:
            report.add(origin, f"image file not found: {images_dir / relative}", SKIPPED, split)
            continue
        if repair:
            report.add(origin, repair, REPAIRED, split)
        image_id = relative
        if image_id in first_seen:
            report.add(
                origin, f"duplicate entry for {image_id} (first at {first_seen[image_id]})", SKIPPED, split
            )
            continue
        first_seen[image_id] = origin
        label = category
        if labels is not None and label is None:
            found = labels.get(filename) or labels.get(relative) or labels_by_stem.get(Path(filename).stem)
            if found is None:
                report.add(
                    origin, f"{filename} has no label in {labels_csv}; label left empty", INCOMPLETE, split
                )
            else:
                label, csv_split = found
                if csv_split is not None and SPLIT_ALIASES.get(csv_split.lower()) != split:
                    report.add(
                        origin,
                        f"split {csv_split!r} in {Path(labels_csv).name} differs from {raw_split!r} in {name}; "
                        "kept the annotation's split",
                        REPAIRED,
                        split,
                    )
        items.append(
            SourceItem(
                image_path=path,
                image_id=image_id,
                split=split,
                label=label,
                origin=origin,
                captions={"en": captions},
            )
        )
    return items


def _split_counts(total: int, ratios: Sequence[float]) -> tuple[int, int, int]:
    n_val = round(total * ratios[1])
    n_test = round(total * ratios[2])
    n_val = min(n_val, total)
    n_test = min(n_test, total - n_val)
    return total - n_val - n_test, n_val, n_test


def _scan_class_folder(
    folder: Path, label: str, root: Path, report: BuildReport, split: str | None
) -> list[tuple[Path, str]]:
    images: list[tuple[Path, str]] = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(root).as_posix()
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            report.add(relative, f"not an image file (extension {path.suffix or 'none'!r})", SKIPPED, split)
            continue
        images.append((path, relative))
    if not images:
        report.add(
            folder.relative_to(root).as_posix() or ".",
            f"class folder {label!r} has no images",
            SKIPPED,
            split,
        )
    return images


def read_imagefolder(
    root: str | os.PathLike[str],
    report: BuildReport,
    split_ratios: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> list[SourceItem]:
    """Read ``<root>/<class>/<image>`` (or ``<root>/<split>/<class>/<image>``); the label is the class folder name.

    Without split folders, each class is split on its own (stratified) by ``split_ratios`` (train,
    validation, test), after a shuffle seeded by ``seed`` and the class name, so a rebuild or a dataset
    with more classes assigns the same images to the same splits.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    if len(split_ratios) != 3 or any(r < 0 for r in split_ratios) or abs(sum(split_ratios) - 1.0) > 1e-6:
        raise ValueError(
            f"split_ratios must be three non-negative numbers summing to 1, got {tuple(split_ratios)}"
        )
    subfolders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    for path in sorted(p for p in root.iterdir() if p.is_file()):
        report.add(path.name, "file outside a class folder", SKIPPED)
    split_folders = [p for p in subfolders if p.name.lower() in SPLIT_ALIASES]
    items: list[SourceItem] = []
    if split_folders:
        if len(split_folders) != len(subfolders):
            others = [p.name for p in subfolders if p not in split_folders]
            raise ValueError(
                f"{root}: mixes split folders ({', '.join(p.name for p in split_folders)}) with other folders "
                f"({', '.join(others)}); use either <root>/<class>/ or <root>/<split>/<class>/"
            )
        for split_folder in split_folders:
            split = SPLIT_ALIASES[split_folder.name.lower()]
            for path in sorted(p for p in split_folder.iterdir() if p.is_file()):
                report.add(path.relative_to(root).as_posix(), "file outside a class folder", SKIPPED, split)
            for class_folder in sorted(p for p in split_folder.iterdir() if p.is_dir()):
                label = class_folder.name
                for path, relative in _scan_class_folder(class_folder, label, root, report, split):
                    items.append(SourceItem(path, relative, split, label, origin=str(path)))
        return items
    for class_folder in subfolders:
        label = class_folder.name
        images = _scan_class_folder(class_folder, label, root, report, None)
        order = list(range(len(images)))
        random.Random(f"{seed}/{label}").shuffle(order)
        n_train, n_val, _ = _split_counts(len(images), split_ratios)
        # Shuffled ranks [0, n_val) go to validation, the next n_train to train, the rest to test.
        split_of = {}
        for rank, index in enumerate(order):
            split_of[index] = "validation" if rank < n_val else "test" if rank >= n_val + n_train else "train"
        for index, (path, relative) in enumerate(images):
            items.append(SourceItem(path, relative, split_of[index], label, origin=str(path)))
    return items


def check_image(path: str | os.PathLike[str]) -> str | None:
    """Return None if ``path`` is a fully decodable image, else the reason it is not.

    ``verify()`` catches corrupt headers and checksums, a full ``load()`` catches truncated pixel data
    (with ``ImageFile.LOAD_TRUNCATED_IMAGES`` off, which :func:`check_images` guarantees).
    """
    from ..processing_rsmclip import load_image_file  # here: `rsmclip build-dataset --help` stays light

    path = Path(path)
    try:
        if path.stat().st_size == 0:
            return "empty file"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # The project's one decoder and pixel limit (`load_image_file`), then the format's own checksums.
            image = load_image_file(path)
            if image.width < 1 or image.height < 1:
                return f"image has no pixels ({image.width}x{image.height})"
            if (
                image.width * image.height <= 2 * (Image.MAX_IMAGE_PIXELS or 0)
                or Image.MAX_IMAGE_PIXELS is None
            ):
                with Image.open(path) as raw:
                    raw.verify()
    except FileNotFoundError:
        return "image file not found"
    except ValueError as error:  # load_image_file: names the file and what is wrong
        return f"unreadable image ({str(error).replace(f'cannot read image file {path}: ', '')})"
    except Exception as error:  # PIL raises OSError, SyntaxError, struct.error, ... on bad files
        return f"unreadable image ({type(error).__name__}: {error})"
    return None


def check_images(
    items: list[SourceItem], report: BuildReport, num_workers: int | None = None, progress: bool = True
) -> list[SourceItem]:
    """Decode every image once (in a thread pool: PIL releases the GIL) and drop the unreadable ones."""
    workers = num_workers or min(8, os.cpu_count() or 1)
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file must fail here, whatever other code set
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            reasons = list(
                tqdm(
                    pool.map(check_image, [item.image_path for item in items]),
                    total=len(items),
                    desc="checking images",
                    unit="image",
                    disable=not progress,
                    dynamic_ncols=True,
                )
            )
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous
    kept = []
    for item, reason in zip(items, reasons):
        if reason is None:
            kept.append(item)
        else:
            where = "" if item.origin == str(item.image_path) else f" (from {item.origin})"
            report.add(str(item.image_path), reason + where, SKIPPED, item.split)
    return kept
