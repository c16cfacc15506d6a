"""Build the multilingual Hub dataset: read a public layout, check images, translate, write streamed Arrow."""

from __future__ import annotations

import hashlib
import json
import os
import random
import resource
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, Features, Image, List, Value
from datasets.utils.logging import disable_progress_bar, enable_progress_bar, is_progress_bar_enabled

from ..safe_io import atomic_output
from ..templates import (
    CLASS_NAMES,
    PROMPT_TEMPLATES,
    find_table,
    humanize_class_name,
    lookup_class,
    parse_language_list,
)
from .card import make_dataset_card
from .readers import LAYOUTS, SPLITS, SourceItem, check_images, read_imagefolder, read_karpathy
from .report import INCOMPLETE, BuildReport
from .translate import (
    SOURCE_LANGUAGE,
    HFTranslator,
    MissingTranslationsError,
    TranslationCache,
    Translator,
    translate_texts,
)

# Bump when the row format changes, so cached Arrow data from an older builder is not reused.
BUILDER_VERSION = "1"

FEATURES = Features(
    {
        "image": Image(),
        "image_id": Value("string"),
        "source": Value("string"),
        "label": Value("string"),
        "captions": List({"lang": Value("string"), "text": Value("string")}),
    }
)


class BuildError(RuntimeError):
    """The build was stopped (``strict=True`` and the report is not empty); ``report`` says why."""

    def __init__(self, message: str, report: BuildReport) -> None:
        super().__init__(message)
        self.report = report


def parse_languages(languages: str | Sequence[str]) -> list[str]:
    """``"all"``, ``"en,pt,zh"`` or a list -> a validated list starting with English (the source language)."""
    requested = parse_language_list(languages)
    return [SOURCE_LANGUAGE] + [lang for lang in requested if lang != SOURCE_LANGUAGE]


def _load_mapping(value: str | os.PathLike[str] | Mapping[str, Any] | None, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    path = Path(value)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} file not found: {path}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{what} file {path} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise ValueError(f"{what} file {path} must hold a JSON object")
    return data


def resolve_class_names(
    labels: Sequence[str],
    source: str,
    languages: Sequence[str],
    *,
    class_names: str | os.PathLike[str] | Mapping[str, Mapping[str, str]] | None = None,
    cache: TranslationCache | None = None,
    translator: Translator | None = None,
    batch_size: int = 32,
    progress: bool = True,
    report: BuildReport | None = None,
) -> dict[str, dict[str, str]]:
    """The name of every class in every language.

    Priority: the user's ``class_names`` (``{label: {lang: name}}``), then the hand-checked names of
    ``templates.CLASS_NAMES`` for a known source, then the English (humanised folder) name machine-translated
    through the translation cache/model (counted in ``report.translation`` when a report is given).
    """
    user = _load_mapping(class_names, "class names")
    table = find_table(source)
    names: dict[str, dict[str, str]] = {}
    for label in labels:
        entry = user.get(label, {})
        if not isinstance(entry, Mapping):
            raise ValueError(f"class names for {label!r} must be an object {{lang: name}}, got {entry!r}")
        key = lookup_class(table, label) if table else None  # folder aliases too, e.g. RSSCN7's "aGrass"
        known = CLASS_NAMES[table][key] if key is not None else {}
        merged = {**known, **entry}  # the user's names win, language by language
        names[label] = {lang: str(name) for lang, name in merged.items() if str(name).strip()}
        names[label].setdefault(SOURCE_LANGUAGE, humanize_class_name(label))
    cache = cache if cache is not None else TranslationCache(None)
    for lang in languages:
        needed = [names[label][SOURCE_LANGUAGE] for label in labels if lang not in names[label]]
        if not needed:
            continue
        try:
            stats = translate_texts(
                needed, [lang], cache, translator, batch_size=batch_size, progress=progress
            )
        except MissingTranslationsError as error:
            missing = [label for label in labels if lang not in names[label]]
            raise MissingTranslationsError(
                f"no {lang} name for class(es) {', '.join(missing)}: give --class-names JSON "
                f"({{label: {{lang: name}}}}) or a translation model. {error}"
            ) from error
        if report is not None:
            report.translation[lang] = stats[lang].as_counts()
        for label in labels:
            if lang not in names[label]:
                translated = cache.get(lang, names[label][SOURCE_LANGUAGE])
                if translated is None:
                    raise RuntimeError(
                        f"the translation model returned an empty {lang} name for class {label!r}"
                    )
                names[label][lang] = translated
    return names


def _template_captions(
    item: SourceItem,
    names: Mapping[str, str],
    languages: Sequence[str],
    templates: Mapping[str, Sequence[str]],
    templates_per_image: int | None,
    seed: int,
) -> dict[str, list[str]]:
    count = min(len(templates[lang]) for lang in languages)
    indices = list(range(count))
    if templates_per_image is not None and templates_per_image < count:
        # Same template positions in every language: the captions of a row stay parallel translations.
        indices = sorted(random.Random(f"{seed}/{item.image_id}").sample(indices, templates_per_image))
    return {lang: [templates[lang][i].format(names[lang]) for i in indices] for lang in languages}


def _fingerprint(items: Sequence[SourceItem], source: str, languages: Sequence[str]) -> str:
    """A content hash of everything that goes into the rows (file identity by size and mtime)."""
    digest = hashlib.sha256()
    digest.update(json.dumps([BUILDER_VERSION, source, list(languages), FEATURES.to_dict()]).encode())
    for item in items:
        stat = item.image_path.stat()
        record = [str(item.image_path), stat.st_size, stat.st_mtime_ns, item.image_id, item.split, item.label]
        digest.update(json.dumps(record + [item.captions], ensure_ascii=False, sort_keys=True).encode())
    return "rsmclip-" + digest.hexdigest()[:32]


def _generate_rows(
    rows: list[dict[str, Any]], source: str, languages: Sequence[str]
) -> Iterator[dict[str, Any]]:
    """Yield one row at a time: only the current image's bytes are in memory (datasets writes in small batches)."""
    for row in rows:
        path = Path(row["image_path"])
        try:
            data = path.read_bytes()
        except OSError as error:
            raise RuntimeError(f"cannot read image {path} (it was readable when checked): {error}") from error
        yield {
            "image": {"bytes": data, "path": Path(row["image_id"]).name},
            "image_id": row["image_id"],
            "source": source,
            "label": row["label"],
            "captions": [
                {"lang": lang, "text": text} for lang in languages for text in row["captions"].get(lang, [])
            ],
        }


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def _fail_if_strict(strict: bool, report: BuildReport, stage: str) -> None:
    if strict and report.entries:
        shown = "\n".join(f"  - {entry}" for entry in report.entries[:20])
        more = f"\n  ... and {len(report.entries) - 20} more" if len(report.entries) > 20 else ""
        raise BuildError(
            f"strict build stopped {stage}: {len(report.entries)} reported item(s)\n{shown}{more}", report
        )


def _write_splits(
    by_split: Mapping[str, Sequence[SourceItem]],
    report: BuildReport,
    langs: Sequence[str],
    source: str,
    fingerprint: str,
    cache_dir: str | os.PathLike[str] | None,
    writer_batch_size: int,
) -> dict[str, Dataset]:
    """Stream each non-empty split into Arrow files (``Dataset.from_generator``) and count it in the report."""
    splits: dict[str, Dataset] = {}
    for split, split_items in by_split.items():
        if not split_items:
            continue
        report.rows[split] = len(split_items)
        counts: Counter[str] = Counter()
        for item in split_items:
            for lang in langs:
                counts[lang] += len(item.captions.get(lang, []))
        report.captions[split] = {lang: counts[lang] for lang in langs}
        rows = [
            {
                "image_path": str(item.image_path),
                "image_id": item.image_id,
                "label": item.label,
                "captions": item.captions,
            }
            for item in split_items
        ]
        splits[split] = Dataset.from_generator(
            _generate_rows,
            features=FEATURES,
            # Tuples, not lists: datasets treats list arguments as shards to split across processes.
            gen_kwargs={"rows": rows, "source": source, "languages": tuple(langs)},
            cache_dir=str(cache_dir) if cache_dir is not None else None,
            fingerprint=f"{fingerprint}-{split}",
            writer_batch_size=writer_batch_size,
        )
    return splits


def _add_translated_captions(
    items: Sequence[SourceItem],
    langs: Sequence[str],
    cache: TranslationCache,
    translator: Translator | None,
    batch_size: int,
    progress: bool,
    report: BuildReport,
) -> None:
    """Karpathy sets: translate the distinct English captions (cache first), then fill every language."""
    english = [text for item in items for text in item.captions[SOURCE_LANGUAGE]]
    stats = translate_texts(english, langs, cache, translator, batch_size=batch_size, progress=progress)
    report.distinct_english_texts = len(set(english))
    report.translation = {lang: stat.as_counts() for lang, stat in stats.items()}
    for item in items:
        for lang in langs[1:]:
            translated = []
            for text in item.captions[SOURCE_LANGUAGE]:
                target = cache.get(lang, text)
                if target is None:
                    report.add(item.image_id, f"no {lang} translation of {text!r}", INCOMPLETE, item.split)
                else:
                    translated.append(target)
            item.captions[lang] = translated


def _add_template_captions(
    items: Sequence[SourceItem],
    source: str,
    langs: Sequence[str],
    templates: str | os.PathLike[str] | Mapping[str, Sequence[str]] | None,
    templates_per_image: int | None,
    seed: int,
    class_names: str | os.PathLike[str] | Mapping[str, Mapping[str, str]] | None,
    cache: TranslationCache,
    translator: Translator | None,
    batch_size: int,
    progress: bool,
    report: BuildReport,
) -> None:
    """ImageFolder sets: captions are the prompt templates of each language filled with the class name."""
    prompt_templates = {
        lang: list(values) for lang, values in _load_mapping(templates, "templates").items()
    } or PROMPT_TEMPLATES
    for lang in langs:
        if not prompt_templates.get(lang):
            raise ValueError(f"no prompt templates for language {lang!r}")
        bad = [t for t in prompt_templates[lang] if t.count("{}") != 1]
        if bad:
            raise ValueError(f"{lang} templates must contain exactly one '{{}}': {bad}")
    labels = sorted({item.label for item in items if item.label is not None})
    names = resolve_class_names(
        labels,
        source,
        langs,
        class_names=class_names,
        cache=cache,
        translator=translator,
        batch_size=batch_size,
        progress=progress,
        report=report,
    )
    report.class_names = {label: {lang: names[label][lang] for lang in langs} for label in labels}
    for item in items:
        item.captions = _template_captions(
            item, names[item.label], langs, prompt_templates, templates_per_image, seed
        )


def build_dataset(
    layout: str,
    *,
    source: str,
    annotations: str | os.PathLike[str] | None = None,
    images: str | os.PathLike[str] | None = None,
    labels_csv: str | os.PathLike[str] | None = None,
    languages: str | Sequence[str] = "all",
    translations_cache: str | os.PathLike[str] | None = None,
    translator: Translator | str | None = None,
    translation_batch_size: int = 32,
    class_names: str | os.PathLike[str] | Mapping[str, Mapping[str, str]] | None = None,
    templates: str | os.PathLike[str] | Mapping[str, Sequence[str]] | None = None,
    templates_per_image: int | None = None,
    split_ratios: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    strict: bool = False,
    num_workers: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    writer_batch_size: int = 100,
    progress: bool = True,
) -> tuple[DatasetDict, BuildReport]:
    """Build a ``DatasetDict`` (train/validation/test) of images with captions in every requested language.

    Args:
        layout: ``"karpathy"`` (``annotations`` JSON + ``images`` folder) or ``"imagefolder"`` (``images``
            is ``<root>/<class>/...``; captions come from ``templates`` and per-language class names).
        source: the dataset name stored in the ``source`` column (``"ucm-captions"``, ``"rsscn7"``, ...);
            also selects the known class-name translations and the card's citations.
        labels_csv: ``filename,label[,split]`` for Karpathy sets (UCM-Captions ships one).
        languages: ``"all"`` (the ten RS-M-CLIP languages), ``"en,pt,..."`` or a list; English always included.
        translations_cache: folder of ``<lang>.json`` translation files, read and extended in place.
        translator: a :class:`Translator` or a transformers model name (loaded with :class:`HFTranslator`
            defaults); needed only for captions/class names missing from the cache.
        class_names: ``{label: {lang: name}}`` (or a JSON file) for ImageFolder classes.
        templates: ``{lang: ["... {} ..."]}`` (or a JSON file); default ``templates.PROMPT_TEMPLATES``.
        templates_per_image: how many templates each image gets (seeded choice); default all.
        split_ratios: (train, validation, test) for ImageFolder sets without split folders.
        strict: raise :class:`BuildError` if anything is skipped, repaired or incomplete.
        cache_dir: where datasets writes the Arrow files (default: the datasets cache). A rebuild with
            unchanged inputs reuses them.

    Returns the dataset and its :class:`BuildReport`. Images are streamed into Arrow files on disk one
    row at a time; the returned dataset is memory-mapped from them.
    """
    started = time.perf_counter()
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    if images is None:
        raise ValueError("images (the image folder) is required")
    langs = parse_languages(languages)
    report = BuildReport(source=source, layout=layout, languages=langs)
    if isinstance(translator, str):
        translator = HFTranslator(translator)
    cache = TranslationCache(translations_cache)
    report.translations_cache = str(translations_cache) if translations_cache is not None else None

    if layout == "karpathy":
        if annotations is None:
            raise ValueError("the karpathy layout needs annotations (the caption JSON file)")
        items = read_karpathy(annotations, images, report, labels_csv=labels_csv)
    else:
        if annotations is not None or labels_csv is not None:
            raise ValueError(
                "the imagefolder layout takes its labels from folder names: drop annotations/labels_csv"
            )
        items = read_imagefolder(images, report, split_ratios=split_ratios, seed=seed)
    if not items:
        raise BuildError(f"no usable items in {annotations or images}", report)
    items = check_images(items, report, num_workers=num_workers, progress=progress)
    _fail_if_strict(strict, report, "after reading the inputs")
    if not items:
        raise BuildError(f"no readable images in {images}", report)

    if layout == "karpathy":
        _add_translated_captions(items, langs, cache, translator, translation_batch_size, progress, report)
    else:
        _add_template_captions(
            items,
            source,
            langs,
            templates,
            templates_per_image,
            seed,
            class_names,
            cache,
            translator,
            translation_batch_size,
            progress,
            report,
        )
    if translator is not None and any(counts.get("translated") for counts in report.translation.values()):
        report.translation_model = translator.name
    _fail_if_strict(strict, report, "after translation")

    by_split: dict[str, list[SourceItem]] = {split: [] for split in SPLITS}
    for item in items:
        by_split[item.split].append(item)
    fingerprint = _fingerprint(items, source, langs)
    bars_were_enabled = is_progress_bar_enabled()
    if not progress:
        disable_progress_bar()
    try:
        splits = _write_splits(by_split, report, langs, source, fingerprint, cache_dir, writer_batch_size)
    finally:
        if bars_were_enabled and not progress:
            enable_progress_bar()
    report.labels = dict(sorted(Counter(item.label for item in items if item.label is not None).items()))
    report.peak_rss_mb = round(_peak_rss_mb(), 1)
    report.elapsed_s = round(time.perf_counter() - started, 2)
    return DatasetDict(splits), report


def save_dataset(
    dataset: DatasetDict,
    report: BuildReport,
    output_dir: str | os.PathLike[str],
    *,
    translation_model: str | None = None,
    max_shard_size: str | int | None = None,
) -> Path:
    """``save_to_disk`` plus the dataset card (README.md) and ``build_report.json`` in the same folder."""
    output_dir = Path(output_dir)
    dataset.save_to_disk(str(output_dir), max_shard_size=max_shard_size)
    with atomic_output(output_dir / "README.md") as tmp:
        make_dataset_card(report, translation_model=translation_model).save(tmp)
    report.save(output_dir / "build_report.json")
    return output_dir


def push_dataset(
    dataset: DatasetDict,
    report: BuildReport,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    translation_model: str | None = None,
    max_shard_size: str | int | None = "500MB",
) -> str:
    """Push the splits as parquet shards, the dataset card and the build report to a Hub dataset repository.

    The card is uploaded first; ``push_to_hub`` then adds its ``dataset_info``/``configs`` metadata to
    that card instead of writing a bare one.
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    card = make_dataset_card(report, translation_model=translation_model)
    api.upload_file(
        path_or_fileobj=str(card).encode("utf-8"),
        path_in_repo="README.md",
        repo_id=repo_id,
        repo_type="dataset",
        commit_message="Add dataset card",
    )
    api.upload_file(
        path_or_fileobj=(json.dumps(report.to_dict(), ensure_ascii=False, indent=2) + "\n").encode("utf-8"),
        path_in_repo="build_report.json",
        repo_id=repo_id,
        repo_type="dataset",
        commit_message="Add build report",
    )
    dataset.push_to_hub(repo_id, private=private, token=token, max_shard_size=max_shard_size)
    return str(url)
