"""Image-text retrieval evaluation, per language, on a Karpathy-format set or a builder dataset.

Per language the image gallery is the same (every image of the split) and the texts are that language's captions.
Image->text counts an image as correct when any of its captions is in the top K; text->image has one correct
image per caption. mR is the mean of the image->text and text->image recalls. See `metrics` for the tie rule.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..safe_io import raise_for_damaged_folder
from .embed import DatasetImages, Embedder, ImageFiles, ImageSource
from .metrics import DEFAULT_BLOCK_BYTES, DEFAULT_RETRIEVAL_KS, TIE_RULES, retrieval_metrics_chunked

logger = logging.getLogger(__name__)

TASK_TYPE = "image-text-retrieval"


@dataclass
class RetrievalData:
    """An evaluation split: an image gallery and, per language, the captions with the index of their image."""

    name: str
    split: str | None
    source: str
    images: ImageSource
    image_ids: list[str]
    captions: dict[str, list[tuple[int, str]]]
    skipped: dict[str, int] = field(default_factory=dict)
    dataset_type: str | None = None

    @property
    def languages(self) -> list[str]:
        return list(self.captions)


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"file not found: {path}") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err


def load_translation_cache(path: str | os.PathLike) -> dict[str, str]:
    """Read a ``[{"id", "en", "text"}]`` translation cache into an English -> translation map."""
    path = Path(path)
    entries = _read_json(path)
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list of {{'id', 'en', 'text'}} objects")
    table: dict[str, str] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("en"), str) or "text" not in entry:
            raise ValueError(
                f"{path}: entry {i} is not an object with string 'en' and 'text' fields: {entry!r}"
            )
        text = entry["text"]
        if isinstance(text, str) and text.strip():
            table[entry["en"].strip()] = text.strip()
    return table


def load_karpathy(
    annotation_file: str | os.PathLike,
    image_dir: str | os.PathLike,
    split: str | None = "test",
    translations_dir: str | os.PathLike | None = None,
    languages: list[str] | None = None,
    name: str | None = None,
) -> RetrievalData:
    """Read a Karpathy-format caption file (RSICD, RSITMD, UCM-Captions, Sydney-Captions) and its images.

    English captions are the ``raw`` sentences. With ``translations_dir``, the captions of every other language
    come from ``<translations_dir>/<lang>.json`` translation caches, looked up by the English caption; a caption
    without a translation is skipped for that language and counted in ``skipped``. ``languages`` selects the
    languages (default: English plus every cache found). ``split=None`` takes every image.
    """
    annotation_file = Path(annotation_file)
    image_dir = Path(image_dir)
    data = _read_json(annotation_file)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{annotation_file}: expected a Karpathy-format object with an 'images' list")

    available = {"en"}
    if translations_dir is not None:
        translations_dir = Path(translations_dir)
        if not translations_dir.is_dir():
            raise FileNotFoundError(f"translations directory not found: {translations_dir}")
        available |= {p.stem for p in translations_dir.glob("*.json")}
    if languages is None:
        languages = ["en"] + sorted(available - {"en"})
    unknown = [lang for lang in languages if lang not in available]
    if unknown:
        where = (
            f"in {translations_dir}" if translations_dir is not None else "(no translations directory given)"
        )
        raise ValueError(f"no captions for language(s) {unknown} {where}; available: {sorted(available)}")
    tables = {
        lang: load_translation_cache(translations_dir / f"{lang}.json") for lang in languages if lang != "en"
    }

    paths: list[Path] = []
    image_ids: list[str] = []
    captions: dict[str, list[tuple[int, str]]] = {lang: [] for lang in languages}
    skipped: Counter[str] = Counter()
    for row, entry in enumerate(data["images"]):
        if not isinstance(entry, dict) or "filename" not in entry or "sentences" not in entry:
            raise ValueError(f"{annotation_file}: images[{row}] lacks 'filename' or 'sentences'")
        if split is not None and entry.get("split") != split:
            continue
        index = len(paths)
        paths.append(image_dir / entry.get("filepath", "") / entry["filename"])
        image_ids.append(str(entry["filename"]))
        for sentence in entry["sentences"]:
            raw = sentence.get("raw") if isinstance(sentence, dict) else None
            if not isinstance(raw, str) or not raw.strip():
                skipped["empty_captions"] += 1
                continue
            raw = raw.strip()
            for lang in languages:
                text = raw if lang == "en" else tables[lang].get(raw)
                if text is None:
                    skipped[f"missing_translations_{lang}"] += 1
                    continue
                captions[lang].append((index, text))
    if not paths:
        raise ValueError(f"{annotation_file}: no images with split {split!r}")
    for key, count in sorted(skipped.items()):
        logger.warning("%s: skipped %d caption(s): %s", annotation_file, count, key)
    return RetrievalData(
        name=name or annotation_file.parent.name,
        split=split,
        source=str(annotation_file),
        images=ImageFiles(paths),
        image_ids=image_ids,
        captions=captions,
        skipped=dict(skipped),
    )


def load_split(path_or_id: str, split: str | None) -> Any:
    """A `datasets.Dataset` split from a ``save_to_disk`` folder or a Hub dataset id."""
    import datasets

    if Path(path_or_id).exists():
        try:
            loaded = datasets.load_from_disk(path_or_id)
        except Exception as error:  # datasets / Arrow name no file: find the damaged one
            raise_for_damaged_folder(path_or_id, error)
            raise
        if isinstance(loaded, datasets.DatasetDict):
            if split is None or split not in loaded:
                raise ValueError(f"{path_or_id}: split {split!r} not found; available: {list(loaded)}")
            return loaded[split]
        return loaded
    return datasets.load_dataset(path_or_id, split=split)


def load_builder_dataset(
    path_or_id: str, split: str | None = "test", languages: list[str] | None = None, name: str | None = None
) -> RetrievalData:
    """Read a builder dataset (columns ``image``, ``image_id``, ``captions`` = list of {lang, text}).

    ``languages`` defaults to every language found in the captions, in order of first appearance.
    Empty captions are skipped and counted.
    """
    ds = load_split(path_or_id, split)
    for column in ("image", "captions"):
        if column not in ds.column_names:
            raise ValueError(
                f"{path_or_id}: split {split!r} has no {column!r} column (columns: {ds.column_names})"
            )
    found: dict[str, list[tuple[int, str]]] = {}
    skipped: Counter[str] = Counter()
    for index, caps in enumerate(ds["captions"]):
        for j, cap in enumerate(caps or []):
            if not isinstance(cap, dict) or "lang" not in cap or "text" not in cap:
                raise ValueError(
                    f"{path_or_id}: row {index} caption {j} is not a {{lang, text}} object: {cap!r}"
                )
            text = cap["text"]
            if not isinstance(text, str) or not text.strip():
                skipped[f"empty_captions_{cap['lang']}"] += 1
                continue
            found.setdefault(cap["lang"], []).append((index, text.strip()))
    if languages is None:
        languages = list(found)
    missing = [lang for lang in languages if lang not in found]
    if missing:
        raise ValueError(f"{path_or_id}: no captions in language(s) {missing}; found: {list(found)}")
    image_ids = (
        [str(x) for x in ds["image_id"]]
        if "image_id" in ds.column_names
        else [str(i) for i in range(len(ds))]
    )
    if name is None:
        sources = set(ds["source"]) if "source" in ds.column_names else set()
        name = next(iter(sources)) if len(sources) == 1 else Path(path_or_id).name
    return RetrievalData(
        name=name,
        split=split,
        source=str(path_or_id),
        images=DatasetImages(ds),
        image_ids=image_ids,
        captions={lang: found[lang] for lang in languages},
        skipped=dict(skipped),
        dataset_type=None if Path(path_or_id).exists() else path_or_id,
    )


@dataclass
class RetrievalResult:
    """Metrics plus the embeddings they were computed from (for plots)."""

    results: dict[str, Any]
    image_embeds: torch.Tensor
    text_embeds: dict[str, torch.Tensor]
    text_to_image: dict[str, np.ndarray]
    texts: dict[str, list[str]]


def evaluate_retrieval(
    embedder: Embedder,
    data: RetrievalData,
    ks: tuple[int, ...] = DEFAULT_RETRIEVAL_KS,
    model_name: str | None = None,
    ties: str = "pessimistic",
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> RetrievalResult:
    """Embed the gallery once and the captions of every language, and compute the metrics per language
    (`ties`: the tie rule, see `metrics.TIE_RULES`).

    Ranking runs in blocks of about ``block_bytes`` of scores (`metrics.retrieval_metrics_chunked`), so memory
    stays bounded for any gallery size; the results equal those of the full similarity matrix."""
    image_embeds = embedder.images(data.images, desc=f"{data.name}: images")
    per_language: dict[str, dict[str, Any]] = {}
    text_embeds: dict[str, torch.Tensor] = {}
    text_to_image: dict[str, np.ndarray] = {}
    texts: dict[str, list[str]] = {}
    for lang, pairs in data.captions.items():
        if not pairs:
            raise ValueError(f"{data.source}: no {lang!r} captions in split {data.split!r}")
        texts[lang] = [text for _, text in pairs]
        text_to_image[lang] = np.array([index for index, _ in pairs], dtype=np.int64)
        text_embeds[lang] = embedder.texts(texts[lang], desc=f"{data.name}: {lang} captions")
        per_language[lang] = retrieval_metrics_chunked(
            image_embeds, text_embeds[lang], text_to_image[lang], ks, ties=ties, block_bytes=block_bytes
        )
        logger.info("%s %s: mR %.2f", data.name, lang, per_language[lang]["mR"])
    metric_keys = [
        k for k in next(iter(per_language.values())) if k.startswith(("i2t_", "t2i_")) or k == "mR"
    ]
    average = {k: float(np.mean([m[k] for m in per_language.values()])) for k in metric_keys}
    results = {
        "task": TASK_TYPE,
        "model": {"name_or_path": model_name, "fingerprint": embedder.model_key},
        "dataset": {
            "name": data.name,
            "type": data.dataset_type or data.name,
            "split": data.split,
            "source": data.source,
            "num_images": len(data.image_ids),
        },
        "ks": [int(k) for k in ks],
        "tie_rule": TIE_RULES[ties],
        "units": "percent",
        "languages": per_language,
        "average": average,
        "skipped": data.skipped,
    }
    return RetrievalResult(results, image_embeds, text_embeds, text_to_image, texts)


def grid_queries(
    result: RetrievalResult, languages: list[str], num_queries: int = 3, top_k: int = 5
) -> list[dict[str, Any]]:
    """Text->image queries for the top-K grid: the first caption of a few evenly spaced images, per language.

    Each query gives its language, text, the index of its correct image, and the top-K image indices and scores.
    """
    num_images = result.image_embeds.shape[0]
    langs = [lang for lang in languages if lang in result.texts]
    picks = np.unique(np.linspace(0, num_images - 1, num=min(num_queries, num_images)).round().astype(int))
    queries = []
    for image_index in picks:
        for lang in langs:
            hits = np.flatnonzero(result.text_to_image[lang] == image_index)
            if hits.size == 0:
                continue
            t = int(hits[0])
            scores = (result.text_embeds[lang][t] @ result.image_embeds.T).numpy()
            order = np.argsort(-scores, kind="stable")[:top_k]
            queries.append(
                {
                    "language": lang,
                    "text": result.texts[lang][t],
                    "target": int(image_index),
                    "top_indices": order.tolist(),
                    "top_scores": scores[order].tolist(),
                }
            )
    return queries
