"""`rsmclip benchmark`: zero-shot classification and retrieval of several models on several datasets, per language.

Every model (any family of `inference.families`: RS-M-CLIP, CLIP, SigLIP, SigLIP 2, AltCLIP; a folder, a Hub id, a
known model's name or ``"demo"``, optionally ``NAME=MODEL`` to name it in the table) is run on every dataset in every language, and each cell of the table is what the
evaluation's own runners return for it (`zero_shot.evaluate_zero_shot`, `retrieval.evaluate_retrieval`): the
benchmark adds no metric of its own. Embeddings go through the `Embedder` cache, so a second run (or another
language, or the retrieval and zero-shot tasks of one image folder) embeds nothing twice.

A dataset is given as ``[NAME=]PATH`` (`resolve_dataset`):

- a folder of class sub-folders (an ImageFolder: RSSCN7, AID, EuroSAT, ...): zero-shot classification, with the
  class names of the shipped tables (`templates.CLASS_NAMES`) in each language;
- a Karpathy caption file (RSICD, RSITMD, UCM-Captions, Sydney; ``dataset_*.json``) or a folder holding
  ``dataset.json``, with its images in ``images/`` beside it and ``translations/<lang>.json`` caches for the other
  languages: retrieval; a ``labels.csv`` there (``filename,label[,split]``) adds zero-shot classification;
- a builder dataset (a ``save_to_disk`` folder, or a Hub dataset id): retrieval on its ``captions``, zero-shot
  classification on its ``label`` column.

Results: ``benchmark.md``, ``benchmark.csv`` (one row per model x dataset x task x language, metrics in percent, as
the evaluation reports them), ``benchmark.json`` (the same rows in LAION's CLIP_benchmark result format:
``dataset``, ``model``, ``pretrained``, ``task``, ``metrics`` as fractions with its metric names, ``language``) and
``benchmark.png`` (grouped bars per language). A model trained on English only (by the known-models table, or
named in ``english_only``) is marked: its other-language cells measure transfer, not its training.
"""

from __future__ import annotations

import csv
import gc
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

ZERO_SHOT = "zeroshot_classification"  # CLIP_benchmark's task names
RETRIEVAL = "zeroshot_retrieval"
TASK_TITLES = {ZERO_SHOT: "zero-shot classification", RETRIEVAL: "retrieval"}
PRIMARY_METRIC = {ZERO_SHOT: "top1", RETRIEVAL: "mR"}
ENGLISH_ONLY_MARK = "†"


# ------------------------------------------------------------------------------------------------------ datasets
@dataclass
class BenchmarkTask:
    """One task of one dataset: ``load(languages)`` returns its `ZeroShotData` or `RetrievalData` (loaded once and
    reused for every model), and which of ``languages`` it has (``languages_of``)."""

    dataset: str
    task: str
    source: str
    loader: Callable[[Sequence[str]], Any]
    _data: Any = None

    def load(self, languages: Sequence[str]) -> Any:
        if self._data is None:
            self._data = self.loader(languages)
        return self._data


def _karpathy_images(annotation: Path) -> Path:
    """The image folder of a Karpathy file: ``images/`` beside it, else the one sibling folder named ``*images*``."""
    folder = annotation.parent
    if (folder / "images").is_dir():
        return folder / "images"
    candidates = [p for p in folder.iterdir() if p.is_dir() and "image" in p.name.lower()]
    if len(candidates) == 1:
        return candidates[0]
    raise FileNotFoundError(
        f"{annotation}: no image folder beside it (expected {folder / 'images'}"
        + (f"; found several: {', '.join(p.name for p in candidates)}" if candidates else "")
        + ")"
    )


def _karpathy_tasks(name: str, annotation: Path, split: str | None) -> list[BenchmarkTask]:
    from .retrieval import load_karpathy

    images = _karpathy_images(annotation)
    translations = annotation.parent / "translations"
    available = ["en"] + (
        sorted(p.stem for p in translations.glob("*.json")) if translations.is_dir() else []
    )

    def retrieval(languages: Sequence[str]) -> Any:
        wanted = [lang for lang in languages if lang in available]
        if not wanted:
            raise ValueError(
                f"{annotation}: no captions in {', '.join(languages)} (it has {', '.join(available)})"
            )
        return load_karpathy(
            annotation, images, split, translations if translations.is_dir() else None, wanted, name
        )

    tasks = [BenchmarkTask(name, RETRIEVAL, str(annotation), retrieval)]
    labels = annotation.parent / "labels.csv"
    if labels.is_file():
        tasks.append(
            BenchmarkTask(name, ZERO_SHOT, str(labels), lambda _: _labels_csv(labels, images, split, name))
        )
    return tasks


def _labels_csv(path: Path, images: Path, split: str | None, name: str) -> Any:
    """A labels CSV, restricted to ``split`` when it has a split column that holds it."""
    from .zero_shot import load_labels_csv

    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    splits = {(row.get("split") or "").strip() for row in rows}
    return load_labels_csv(path, images, split if split in splits else None, name)


def _builder_tasks(name: str, source: str, split: str | None) -> list[BenchmarkTask]:
    from .retrieval import load_builder_dataset, load_split
    from .zero_shot import load_builder_labels

    columns = load_split(source, split).column_names
    tasks = []
    if "captions" in columns:

        def retrieval(languages: Sequence[str]) -> Any:
            found = load_builder_dataset(source, split, None, name)
            wanted = [lang for lang in languages if lang in found.captions]
            if not wanted:
                raise ValueError(
                    f"{source}: no captions in {', '.join(languages)} (it has {', '.join(found.captions)})"
                )
            found.captions = {lang: found.captions[lang] for lang in wanted}
            return found

        tasks.append(BenchmarkTask(name, RETRIEVAL, source, retrieval))
    if "label" in columns:
        tasks.append(
            BenchmarkTask(name, ZERO_SHOT, source, lambda _: load_builder_labels(source, split, name))
        )
    if not tasks:
        raise ValueError(
            f"{source}: a builder dataset needs a 'captions' or a 'label' column (has {columns})"
        )
    return tasks


def _is_saved_dataset(path: Path) -> bool:
    return any((path / name).is_file() for name in ("dataset_dict.json", "state.json", "dataset_info.json"))


def resolve_dataset(spec: str, split: str | None = "test") -> list[BenchmarkTask]:
    """The tasks of one ``[NAME=]PATH`` dataset (see the module doc). Raises an error naming the path when it is
    none of the layouts."""
    name, _, path_text = spec.partition("=")
    if not path_text or "/" in name:  # no NAME= prefix (a "=" inside a path is the path's)
        name, path_text = "", spec
    path = Path(path_text).expanduser()
    if path.is_file():
        if path.suffix.lower() == ".json":
            return _karpathy_tasks(name or path.parent.name, path, split)
        if path.suffix.lower() == ".csv":
            images = path.parent / "images"
            if not images.is_dir():
                raise FileNotFoundError(f"{path}: no images/ folder beside the labels CSV")
            return [
                BenchmarkTask(
                    name or path.parent.name,
                    ZERO_SHOT,
                    str(path),
                    lambda _: _labels_csv(path, images, split, name or path.parent.name),
                )
            ]
        raise ValueError(f"{path}: give a Karpathy caption file (.json), a labels CSV or a folder")
    if path.is_dir():
        name = name or path.name
        if _is_saved_dataset(path):
            return _builder_tasks(name, str(path), split)
        if (path / "dataset.json").is_file():
            return _karpathy_tasks(name, path / "dataset.json", split)
        if (path / "labels.csv").is_file() and (path / "images").is_dir():
            return [
                BenchmarkTask(
                    name,
                    ZERO_SHOT,
                    str(path),
                    lambda _: _labels_csv(path / "labels.csv", path / "images", split, name),
                )
            ]
        from .zero_shot import load_image_folder

        if any(p.is_dir() and not p.name.startswith(".") for p in path.iterdir()):
            return [BenchmarkTask(name, ZERO_SHOT, str(path), lambda _: load_image_folder(path, name))]
        raise ValueError(
            f"{path}: not a dataset folder (no class sub-folders, dataset.json, labels.csv + images/, or saved "
            "builder dataset)"
        )
    if path_text.count("/") == 1 and not path_text.startswith((".", "/", "~")):
        return _builder_tasks(name or path_text.split("/")[1], path_text, split)  # a Hub dataset id
    raise FileNotFoundError(
        f"dataset not found: {path_text} (give a folder, a caption file or a Hub dataset id)"
    )


# -------------------------------------------------------------------------------------------------------- models
def model_languages(name: str) -> list[str] | None:
    """The languages a model was trained on, from the known-models table (`known_models`); None when the name is
    not in it or the table gives no fixed list."""
    from ..known_models import get_known_model, is_known_model

    if not is_known_model(name):
        return None
    languages = get_known_model(name).languages
    return list(languages) if languages else None


def is_english_only(name: str, english_only: Sequence[str] = (), source: str | None = None) -> bool:
    """Whether a model was trained on English only: its ``name`` (or ``source``) is in ``english_only``, else the
    known-models table says so."""
    if name in english_only or (source is not None and source in english_only):
        return True
    for key in dict.fromkeys([name, source or name]):
        languages = model_languages(key)
        if languages is not None:
            return [lang.lower() for lang in languages] == ["en"]
    return False


def parse_model_spec(spec: str) -> tuple[str, str]:
    """``"NAME=MODEL"`` -> (NAME, MODEL); a bare ``"MODEL"`` names itself."""
    name, _, source = spec.partition("=") if "=" in spec else ("", "", spec)
    name, source = name.strip(), source.strip()
    if not source:
        raise ValueError(f"model {spec!r}: give NAME=MODEL or MODEL")
    return name or source, source


# --------------------------------------------------------------------------------------------------------- rows
@dataclass
class BenchmarkRow:
    """One cell group: a model on one dataset task in one language, metrics in percent as the evaluation gives."""

    model: str
    source: str
    family: str
    english_only: bool
    dataset: str
    split: str | None
    task: str
    language: str
    metrics: dict[str, float]
    notes: list[str] = field(default_factory=list)

    @property
    def score(self) -> float:
        return self.metrics[PRIMARY_METRIC[self.task]]

    def clip_benchmark(self) -> dict[str, Any]:
        """The row in CLIP_benchmark's result format (metrics as fractions, with its metric names)."""
        m = self.metrics
        if self.task == ZERO_SHOT:
            metrics = {f"acc{k[3:]}": m[k] / 100.0 for k in m if k.startswith("top")} | {
                "mean_per_class_recall": m["mean_per_class_accuracy"] / 100.0
            }
        else:
            metrics = {f"image_retrieval_recall@{k[6:]}": m[k] / 100.0 for k in m if k.startswith("t2i_R@")}
            metrics |= {f"text_retrieval_recall@{k[6:]}": m[k] / 100.0 for k in m if k.startswith("i2t_R@")}
            metrics["mean_recall"] = m["mR"] / 100.0
        return {
            "dataset": self.dataset,
            "model": self.model,
            "pretrained": self.source,
            "task": self.task,
            "metrics": metrics,
            "language": self.language,
            "family": self.family,
            "english_only": self.english_only,
            "split": self.split,
            "notes": self.notes,
        }


ZERO_SHOT_COLUMNS = ("top1", "top5", "mean_per_class_accuracy")
RETRIEVAL_COLUMNS = ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "mR")


def _zero_shot_rows(results: dict[str, Any], base: dict[str, Any]) -> list[BenchmarkRow]:
    rows = []
    for lang, metrics in results["languages"].items():
        notes = []
        untranslated = (results.get("untranslated_class_names") or {}).get(lang)
        if untranslated:
            notes.append(f"{len(untranslated)} class name(s) untranslated")
        kept = {
            k: float(v) for k, v in metrics.items() if k.startswith("top") or k == "mean_per_class_accuracy"
        }
        rows.append(BenchmarkRow(**base, task=ZERO_SHOT, language=lang, metrics=kept, notes=notes))
    return rows


def _retrieval_rows(results: dict[str, Any], base: dict[str, Any]) -> list[BenchmarkRow]:
    return [
        BenchmarkRow(
            **base,
            task=RETRIEVAL,
            language=lang,
            metrics={k: float(v) for k, v in metrics.items() if k.startswith(("i2t_", "t2i_")) or k == "mR"},
        )
        for lang, metrics in results["languages"].items()
    ]


@dataclass
class BenchmarkResult:
    rows: list[BenchmarkRow]
    skipped: list[dict[str, str]]
    files: dict[str, Path] = field(default_factory=dict)


def run_benchmark(
    models: Sequence[str],
    datasets: Sequence[str],
    languages: Sequence[str] = ("en",),
    *,
    english_only: Sequence[str] = (),
    split: str | None = "test",
    backend: str = "torch",
    precision: str = "fp32",
    device: str | None = None,
    batch_size: int = 64,
    num_workers: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    ties: str = "pessimistic",
    show_progress: bool = True,
) -> BenchmarkResult:
    """Evaluate every model on every dataset task in every language (see the module doc).

    Each model is loaded once (`inference.load_model`, `load_encoder` with ``backend`` / ``precision``) and released
    before the next. A language a dataset has no captions in is skipped for its retrieval task and listed in
    ``skipped``; so is a whole task that cannot run (the reason is recorded), and the others go on.
    """
    from ..inference import autocast_precision, check_backend, load_encoder, load_model, resolve_device
    from ..inference.families import model_family
    from ..templates import LANGUAGES
    from .embed import Embedder
    from .retrieval import evaluate_retrieval
    from .zero_shot import evaluate_zero_shot

    if not models:
        raise ValueError("no models to benchmark")
    unknown = [lang for lang in languages if lang not in LANGUAGES]
    if unknown or not languages:
        raise ValueError(
            f"unknown language(s) {unknown or '(none given)'}: choose from {', '.join(LANGUAGES)}"
        )
    tasks = [task for spec in datasets for task in resolve_dataset(spec, split)]
    if not tasks:
        raise ValueError("no datasets to benchmark")
    cpu_encoder = check_backend(backend, precision, device)
    run_device = "cpu" if cpu_encoder else resolve_device(device)
    rows: list[BenchmarkRow] = []
    skipped: list[dict[str, str]] = []
    specs = [parse_model_spec(spec) for spec in models]
    names = [name for name, _ in specs]
    if len(set(names)) < len(names):
        raise ValueError(f"two models have one name in {names}: name them with NAME=MODEL")
    for name, source in specs:
        model, processor = load_model(source, device=None if cpu_encoder else run_device)
        family = model_family(model).name
        encoder = load_encoder(model, backend, precision, processor, inplace=True)
        embedder = Embedder(
            encoder,
            processor,
            device=run_device,
            batch_size=batch_size,
            num_workers=num_workers,
            precision=autocast_precision(backend, precision),
            cache_dir=cache_dir,
            show_progress=show_progress,
        )
        marked = is_english_only(name, english_only, source)
        for task in tasks:
            try:
                data = task.load(languages)
            except (ValueError, FileNotFoundError) as error:
                skipped.append(
                    {"model": name, "dataset": task.dataset, "task": task.task, "reason": str(error)}
                )
                logger.warning("skipped %s %s: %s", task.dataset, TASK_TITLES[task.task], error)
                continue
            base = dict(
                model=name,
                source=source,
                family=family,
                english_only=marked,
                dataset=task.dataset,
                split=data.split,
            )
            if task.task == ZERO_SHOT:
                results = evaluate_zero_shot(embedder, data, list(languages), model_name=name)
                rows += _zero_shot_rows(results, base)
            else:
                results = evaluate_retrieval(embedder, data, model_name=name, ties=ties).results
                rows += _retrieval_rows(results, base)
                for lang in languages:
                    if lang not in results["languages"]:
                        skipped.append(
                            {
                                "model": name,
                                "dataset": task.dataset,
                                "task": task.task,
                                "language": lang,
                                "reason": f"no {lang} captions",
                            }
                        )
        del model, encoder, embedder
        gc.collect()
    return BenchmarkResult(rows, skipped)


# ------------------------------------------------------------------------------------------------------ outputs
def table_columns(rows: Sequence[BenchmarkRow]) -> list[str]:
    """The metric columns of the table: zero-shot's then retrieval's, those the rows have."""
    tasks = {row.task for row in rows}
    return (list(ZERO_SHOT_COLUMNS) if ZERO_SHOT in tasks else []) + (
        list(RETRIEVAL_COLUMNS) if RETRIEVAL in tasks else []
    )


def _label(row: BenchmarkRow) -> str:
    return row.model + (f" {ENGLISH_ONLY_MARK}" if row.english_only else "")


def write_csv(rows: Sequence[BenchmarkRow], path: Path) -> Path:
    metrics = table_columns(rows)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["model", "family", "english_only", "dataset", "split", "task", "language", *metrics, "notes"]
        )
        for row in rows:
            values = [repr(row.metrics[m]) if m in row.metrics else "" for m in metrics]
            writer.writerow(
                [
                    row.model,
                    row.family,
                    row.english_only,
                    row.dataset,
                    row.split or "",
                    row.task,
                    row.language,
                ]
                + values
                + ["; ".join(row.notes)]
            )
    return path


def markdown_table(result: BenchmarkResult) -> str:
    rows = result.rows
    metrics = table_columns(rows)
    header = ["model", "family", "dataset", "task", "language", *metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [_label(row), row.family, row.dataset, TASK_TITLES[row.task], row.language]
        cells += [f"{row.metrics[m]:.2f}" if m in row.metrics else "" for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    notes = []
    if any(row.english_only for row in rows):
        notes.append(f"{ENGLISH_ONLY_MARK} trained on English only: its other languages measure transfer.")
    notes.append(
        "Percent. Zero-shot: top-K accuracy and mean per-class accuracy; retrieval: image->text (i2t) and "
        "text->image (t2i) recall@K, mR their mean; exact score ties count against the correct item."
    )
    for row in rows:
        for note in row.notes:
            notes.append(f"{row.model}, {row.dataset} ({row.language}): {note}")
    for item in result.skipped:
        where = f"{item['dataset']} {TASK_TITLES[item['task']]}" + (
            f" ({item['language']})" if "language" in item else ""
        )
        notes.append(f"skipped for {item['model']}: {where}: {item['reason']}")
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {note}" for note in notes) + "\n"


def write_outputs(result: BenchmarkResult, output: str | os.PathLike, plot: bool = True) -> dict[str, Path]:
    """``benchmark.md``, ``benchmark.csv``, ``benchmark.json`` and (``plot``) ``benchmark.png`` in ``output``."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    files = {"markdown": out / "benchmark.md", "csv": out / "benchmark.csv", "json": out / "benchmark.json"}
    files["markdown"].write_text(markdown_table(result), encoding="utf-8")
    write_csv(result.rows, files["csv"])
    records = [row.clip_benchmark() for row in result.rows]
    files["json"].write_text(
        json.dumps({"results": records, "skipped": result.skipped}, indent=1, ensure_ascii=False) + "\n",
        encoding="utf-8",
    )
    if plot and result.rows:
        from .plots import plot_benchmark

        panels: dict[str, dict[str, dict[str, float]]] = {}
        hatched = {_label(row) for row in result.rows if row.english_only}
        for row in result.rows:
            title = f"{row.dataset}: {TASK_TITLES[row.task]} ({PRIMARY_METRIC[row.task]})"
            panels.setdefault(title, {}).setdefault(_label(row), {})[row.language] = row.score
        files["plot"] = plot_benchmark(panels, out / "benchmark.png", hatched=hatched)
    result.files = files
    return files


__all__ = [
    "BenchmarkResult",
    "BenchmarkRow",
    "BenchmarkTask",
    "is_english_only",
    "markdown_table",
    "model_languages",
    "parse_model_spec",
    "resolve_dataset",
    "run_benchmark",
    "write_outputs",
]
