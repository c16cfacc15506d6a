"""`rsmclip benchmark` on the bundled samples: the demo model and tiny random CLIP and SigLIP models on an image
folder, a Karpathy caption set with its labels CSV, and a builder dataset. Every cell of the table equals what
that model's own evaluation call gives (`evaluate_zero_shot` / `evaluate_retrieval`, run here separately)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from _family_fixtures import family_folder
from PIL import Image

from modeling_rsmclip.testing import sample_dir

LANGUAGES = ["en", "de"]


@pytest.fixture(scope="module")
def builder_dataset(tmp_path_factory) -> Path:
    """The UCM sample as a builder dataset (image, label, captions in en and pt), saved with save_to_disk."""
    import datasets

    ucm = sample_dir() / "ucm"
    entries = json.loads((ucm / "dataset.json").read_text())["images"]
    labels = {
        row["filename"]: row["label"] for row in csv.DictReader(open(ucm / "labels.csv", encoding="utf-8"))
    }
    pt = {
        row["en"].strip(): row["text"] for row in json.loads((ucm / "translations" / "pt.json").read_text())
    }
    rows = {"image": [], "image_id": [], "label": [], "captions": [], "source": []}
    for entry in entries:
        rows["image"].append(str(ucm / "images" / entry["filename"]))
        rows["image_id"].append(entry["filename"])
        rows["label"].append(labels[entry["filename"]])
        english = [s["raw"].strip() for s in entry["sentences"]]
        rows["captions"].append(
            [{"lang": "en", "text": t} for t in english] + [{"lang": "pt", "text": pt[t]} for t in english]
        )
        rows["source"].append("ucm-builder")
    dataset = datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image())
    out = tmp_path_factory.mktemp("builder") / "ucm-builder"
    datasets.DatasetDict({"test": dataset}).save_to_disk(str(out))
    return out


@pytest.fixture(scope="module")
def benchmark(builder_dataset, tmp_path_factory):
    from modeling_rsmclip.evaluation.benchmark import run_benchmark, write_outputs

    models = ["demo", f"clip={family_folder('clip')}", f"siglip={family_folder('siglip')}"]
    datasets = [str(sample_dir() / "rsscn7"), str(sample_dir() / "ucm"), f"builder={builder_dataset}"]
    out = tmp_path_factory.mktemp("benchmark")
    result = run_benchmark(
        models,
        datasets,
        LANGUAGES,
        english_only=["clip"],
        num_workers=0,
        cache_dir=out / "cache",
        show_progress=False,
    )
    write_outputs(result, out / "table")
    return result, out


def _expected(source: str, builder: Path) -> dict[tuple[str, str, str], dict]:
    """The evaluation's own calls, one per (dataset, task), for one model, without any cache."""
    from modeling_rsmclip.evaluation import (
        Embedder,
        evaluate_retrieval,
        evaluate_zero_shot,
        load_builder_dataset,
        load_builder_labels,
        load_image_folder,
        load_karpathy,
        load_labels_csv,
    )
    from modeling_rsmclip.inference import load_model

    model, processor = load_model(source)
    embedder = Embedder(model, processor, num_workers=0, cache_dir=None, show_progress=False)
    ucm = sample_dir() / "ucm"
    out = {}
    zero_shot = evaluate_zero_shot(embedder, load_image_folder(sample_dir() / "rsscn7"), LANGUAGES)
    out["rsscn7", "zeroshot_classification"] = zero_shot["languages"]
    data = load_karpathy(ucm / "dataset.json", ucm / "images", "test", ucm / "translations", LANGUAGES, "ucm")
    out["ucm", "zeroshot_retrieval"] = evaluate_retrieval(embedder, data).results["languages"]
    data = load_labels_csv(ucm / "labels.csv", ucm / "images", "test", "ucm")
    out["ucm", "zeroshot_classification"] = evaluate_zero_shot(embedder, data, LANGUAGES)["languages"]
    data = load_builder_dataset(str(builder), "test", ["en"], "builder")
    out["builder", "zeroshot_retrieval"] = evaluate_retrieval(embedder, data).results["languages"]
    data = load_builder_labels(str(builder), "test", "builder")
    out["builder", "zeroshot_classification"] = evaluate_zero_shot(embedder, data, LANGUAGES)["languages"]
    return out


def test_every_cell_equals_the_models_own_evaluation(benchmark, builder_dataset):
    result, out = benchmark
    sources = {"demo": "demo", "clip": str(family_folder("clip")), "siglip": str(family_folder("siglip"))}
    cells = 0
    for name, source in sources.items():
        expected = _expected(source, builder_dataset)
        rows = [row for row in result.rows if row.model == name]
        got = {(row.dataset, row.task, row.language): row for row in rows}
        wanted = {(d, t, lang) for (d, t), per_lang in expected.items() for lang in per_lang}
        assert set(got) == wanted, name
        for (dataset, task, lang), row in got.items():
            reference = expected[dataset, task][lang]
            for metric, value in row.metrics.items():
                assert value == reference[metric], (name, dataset, task, lang, metric)
                cells += 1
    assert cells == 3 * (3 * 2 * 3 + 1 * 2 * 7 + 1 * 7)  # 3 zero-shot tasks x 2 languages, 3 retrieval rows
    families = {row.model: row.family for row in result.rows}
    assert families == {"demo": "rsmclip", "clip": "clip", "siglip": "siglip"}
    assert {row.model for row in result.rows if row.english_only} == {"clip"}
    # The builder dataset has no German captions: that cell is skipped and said, for each model.
    skipped = [s for s in result.skipped if s["dataset"] == "builder"]
    assert [(s["model"], s["language"]) for s in skipped] == [
        ("demo", "de"),
        ("clip", "de"),
        ("siglip", "de"),
    ]


def test_table_files_hold_the_same_cells(benchmark):
    result, out = benchmark
    table = out / "table"
    with open(table / "benchmark.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(result.rows)
    for line, row in zip(rows, result.rows):
        assert (line["model"], line["dataset"], line["task"], line["language"]) == (
            row.model,
            row.dataset,
            row.task,
            row.language,
        )
        for metric, value in row.metrics.items():
            assert float(line[metric]) == value
    records = json.loads((table / "benchmark.json").read_text())["results"]
    assert len(records) == len(result.rows)
    for record, row in zip(records, result.rows):
        assert {"dataset", "model", "pretrained", "task", "metrics", "language"} <= set(record)
        m = record["metrics"]
        if row.task == "zeroshot_classification":
            assert m["acc1"] == pytest.approx(row.metrics["top1"] / 100, abs=1e-12)
            assert m["acc5"] == pytest.approx(row.metrics["top5"] / 100, abs=1e-12)
            assert m["mean_per_class_recall"] == pytest.approx(row.metrics["mean_per_class_accuracy"] / 100)
        else:  # CLIP_benchmark: image retrieval = text -> image
            assert m["image_retrieval_recall@5"] == pytest.approx(row.metrics["t2i_R@5"] / 100, abs=1e-12)
            assert m["text_retrieval_recall@5"] == pytest.approx(row.metrics["i2t_R@5"] / 100, abs=1e-12)
    markdown = (table / "benchmark.md").read_text()
    first = next(row for row in result.rows if row.model == "clip")
    assert f"| clip † | clip | {first.dataset} |" in markdown and "trained on English only" in markdown
    assert f"{first.score:.2f}" in markdown
    assert "skipped for demo: builder retrieval (de): no de captions" in markdown
    with Image.open(table / "benchmark.png") as image:
        assert image.format == "PNG" and image.size[0] > 600


def test_second_run_reads_every_embedding_from_the_cache(benchmark, builder_dataset, monkeypatch):
    """Nothing is embedded again: the model is never called, and the table is the same."""
    from modeling_rsmclip.evaluation import benchmark as bench
    from modeling_rsmclip.evaluation.embed import Embedder

    result, out = benchmark

    def fail(*args, **kwargs):
        raise AssertionError("embedded again although cached")

    monkeypatch.setattr(Embedder, "embed_texts", fail)
    monkeypatch.setattr(Embedder, "embed_pixels", fail)
    again = bench.run_benchmark(
        ["demo"],
        [str(sample_dir() / "rsscn7"), str(sample_dir() / "ucm"), f"builder={builder_dataset}"],
        LANGUAGES,
        num_workers=0,
        cache_dir=out / "cache",
        show_progress=False,
    )
    assert [r.metrics for r in again.rows] == [r.metrics for r in result.rows if r.model == "demo"]


def test_command_line_errors_name_the_value(tmp_path, capsys):
    from modeling_rsmclip.cli import main

    argv = ["benchmark", "--models", "demo", "--output", str(tmp_path), "--no-cache", "--quiet"]
    assert main(argv + ["--datasets", str(tmp_path / "missing")]) == 2
    assert "dataset not found" in capsys.readouterr().err
    assert main(argv + ["--datasets", str(sample_dir() / "rsscn7"), "--languages", "en,xx"]) == 2
    assert "'xx'" in capsys.readouterr().err
    assert main(argv + ["--datasets", str(sample_dir() / "rsscn7"), "--english-only", "clip"]) == 2
    assert "--english-only names model(s) not in --models: clip" in capsys.readouterr().err


def test_english_only_mark_comes_from_the_known_models_table():
    """A model the table lists as trained on English captions only is marked, by its short name or its source;
    a multilingual one, one without a fixed language list, and an unknown name are not (unless named by
    ``--english-only``)."""
    from modeling_rsmclip.evaluation.benchmark import is_english_only, model_languages

    assert model_languages("remoteclip-vit-b-32") == ["en"] and is_english_only("remoteclip-vit-b-32")
    assert is_english_only("mine", source="GeoRSCLIP-ViT-B-32")  # names are case-insensitive
    assert not is_english_only("rs-m-clip") and len(model_languages("rs-m-clip")) == 10
    assert model_languages("laion-clip-vit-b-32-xlm-roberta-base") is None
    assert not is_english_only("laion-clip-vit-b-32-xlm-roberta-base")
    assert not is_english_only("demo") and model_languages("org/other") is None
    assert is_english_only("x", english_only=["x"])
