"""The evaluation commands end to end (results JSON, PNG plots), the model-index writer and the plot fonts."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results
from PIL import Image

from modeling_rsmclip.evaluation.cli import add_subparser
from modeling_rsmclip.evaluation.model_index import eval_results_from_results, update_model_card
from modeling_rsmclip.evaluation.plots import PLACEHOLDER, displayable, font_plan, plot_confusion_matrix
from modeling_rsmclip.testing import sample_dir

REPO = Path(__file__).resolve().parents[1]


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="rsmclip")
    add_subparser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def _assert_png(path: Path) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 100 and image.size[1] > 100


@pytest.fixture(scope="module")
def retrieval_run(tiny_saved, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval-out")
    ucm = sample_dir() / "ucm"
    argv = ["eval-retrieval", "--model", str(tiny_saved), "--karpathy-json", str(ucm / "dataset.json")]
    argv += [
        "--images",
        str(ucm / "images"),
        "--translations",
        str(ucm / "translations"),
        "--languages",
        "en,zh,ru",
    ]
    argv += ["--output-dir", str(out), "--no-cache", "--num-workers", "0", "--batch-size", "32", "--quiet"]
    assert _run(argv) == 0
    return out


def test_eval_retrieval_command(retrieval_run: Path) -> None:
    results = json.loads((retrieval_run / "retrieval_ucm_test.json").read_text())
    assert list(results["languages"]) == ["en", "zh", "ru"]
    assert results["units"] == "percent" and results["ks"] == [1, 5, 10]
    for metrics in results["languages"].values():
        assert 0.0 <= metrics["mR"] <= 100.0 and metrics["num_images"] == 42
    _assert_png(retrieval_run / "retrieval_ucm_test_languages.png")
    _assert_png(retrieval_run / "retrieval_ucm_test_top5_grid.png")
    queries = json.loads((retrieval_run / "retrieval_ucm_test_grid_queries.json").read_text())
    assert {q["language"] for q in queries} == {"en", "zh", "ru"} and len(queries) == 9
    assert all(
        len(q["top_indices"]) == 5 and q["top_scores"] == sorted(q["top_scores"])[::-1] for q in queries
    )


def test_eval_zero_shot_script(tiny_saved, tmp_path) -> None:
    spec = importlib.util.spec_from_file_location("eval_zero_shot_script", REPO / "eval" / "zero_shot.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    folder = sample_dir() / "rsscn7"
    argv = ["--model", str(tiny_saved), "--image-folder", str(folder), "--languages", "en,ko", "--output-dir"]
    argv += [str(tmp_path), "--cache-dir", str(tmp_path / "cache"), "--num-workers", "0", "--quiet"]
    assert script.main(argv) == 0
    results = json.loads((tmp_path / "zero_shot_rsscn7.json").read_text())
    assert results["class_names_source"] == "templates.CLASS_NAMES['rsscn7']"
    assert results["classes"] == [
        "field",
        "forest",
        "grass",
        "industry",
        "parking",
        "residential",
        "river_lake",
    ]
    for lang in ("en", "ko"):
        metrics = results["languages"][lang]
        assert sum(map(sum, metrics["confusion_matrix"])) == metrics["num_images"] == 7
        _assert_png(tmp_path / f"zero_shot_rsscn7_confusion_{lang}.png")
    _assert_png(tmp_path / "zero_shot_rsscn7_languages.png")
    assert list((tmp_path / "cache").rglob("*.safetensors"))  # embeddings cached for the next run


def test_model_index_command_is_idempotent(retrieval_run: Path, tmp_path) -> None:
    card = tmp_path / "README.md"
    card.write_text("---\nlicense: mit\ntags:\n- remote-sensing\n---\n\n# Demo model\n\nSome text.\n")
    results_file = retrieval_run / "retrieval_ucm_test.json"
    argv = ["model-index", str(results_file), "--card", str(card), "--model-name", "rs-m-clip-demo"]
    assert _run(argv) == 0
    first = card.read_text()
    assert _run(argv) == 0
    assert card.read_text() == first  # re-running replaces the same entries

    meta = yaml.safe_load(first.split("---")[1])
    assert meta["license"] == "mit" and meta["tags"] == ["remote-sensing"]
    assert first.rstrip().endswith("Some text.")
    name, entries = model_index_to_eval_results(meta["model-index"])
    assert name == "rs-m-clip-demo"
    assert len(entries) == 3 * 7  # 3 languages x (6 recalls + mR)
    results = json.loads(results_file.read_text())
    by_key = {(e.dataset_config, e.metric_type, e.metric_config): e for e in entries}
    zh = by_key[("zh", "recall@5", "text-to-image")]
    assert zh.task_type == "image-text-retrieval" and zh.dataset_split == "test" and zh.dataset_name == "ucm"
    assert zh.metric_value == round(results["languages"]["zh"]["t2i_R@5"], 2)
    assert by_key[("en", "mean_recall", None)].metric_value == round(results["languages"]["en"]["mR"], 2)

    # New values for the same metrics replace the old ones; other results are kept.
    results["languages"]["zh"]["t2i_R@5"] = 99.5
    zero_shot = {
        "task": "zero-shot-image-classification",
        "dataset": {"name": "RSSCN7", "type": "rsscn7", "split": None},
        "ks": [1, 5],
        "languages": {"en": {"top1": 61.234, "top5": 95.0, "mean_per_class_accuracy": 60.0}},
    }
    card_obj = update_model_card(card, [results, zero_shot])
    entries = card_obj.data.eval_results
    assert len(entries) == 3 * 7 + 3
    assert [
        e.metric_value
        for e in entries
        if e.dataset_config == "zh" and e.metric_name.startswith("Text-to-image R@5")
    ] == [99.5]
    top1 = next(e for e in ModelCard.load(card).data.eval_results if e.metric_config == "top-1")
    assert (top1.task_type, top1.metric_type, top1.metric_value) == (
        "zero-shot-image-classification",
        "accuracy",
        61.23,
    )


def test_model_index_creates_a_missing_card_and_rejects_other_json(tmp_path) -> None:
    results = {
        "task": "zero-shot-image-classification",
        "dataset": {"name": "UCM", "type": "ucm", "split": "test"},
        "ks": [1],
        "languages": {"pt": {"top1": 50.0, "mean_per_class_accuracy": 48.0}},
    }
    card = update_model_card(tmp_path / "model" / "README.md", [results])
    assert card.data.model_name == "model"
    titled = tmp_path / "titled.md"
    titled.write_text("---\nlicense: mit\n---\n\n# Demo model\n\n## Use\n")
    assert update_model_card(titled, [results]).data.model_name == "Demo model"  # the card's title
    assert [(e.dataset_config, e.metric_value) for e in eval_results_from_results(results)] == [
        ("pt", 50.0),
        ("pt", 48.0),
    ]
    with pytest.raises(ValueError, match="unknown results task"):
        update_model_card(tmp_path / "README.md", [{"task": "something-else"}])


def test_plot_fonts_fall_back_without_crashing(tmp_path, caplog) -> None:
    families, missing = font_plan(["Ünïcode Привет", "这是一片农田", "비행기"])
    assert families[0] == "DejaVu Sans"
    assert not {c for c in "ÜnïcodeПривет"} & missing  # DejaVu has Latin and Cyrillic
    # Whatever fonts are installed, a CJK character is either drawn by one of them or replaced.
    coverage = dict(
        __import__("modeling_rsmclip.evaluation.plots", fromlist=["_font_coverage"])._font_coverage()
    )
    for ch in "这是비":
        assert (ch in missing) != any(ord(ch) in coverage[f] for f in families)
    assert displayable("a这b", {"这"}) == f"a{PLACEHOLDER}b"
    path = plot_confusion_matrix([[3, 1], [0, 2]], ["农田", "forest"], tmp_path / "cm.png", "混淆矩阵")
    _assert_png(path)


def test_eval_retrieval_with_the_int8_backend_equals_the_python_api_and_stays_close_to_fp32(tmp_path) -> None:
    """`--precision int8` runs the evaluation through `inference.load_encoder` (PyTorch dynamic quantisation):
    its figures are exactly those of the Python API with that encoder, and within a few points of fp32 on the
    42 bundled UCM test images with the trained demo model."""
    from modeling_rsmclip import RSMCLIPModel, RSMCLIPProcessor
    from modeling_rsmclip.evaluation.embed import Embedder
    from modeling_rsmclip.evaluation.retrieval import evaluate_retrieval, load_karpathy
    from modeling_rsmclip.inference import DEMO_MODEL_DIR, load_encoder

    ucm = sample_dir() / "ucm"
    common = ["--model", str(DEMO_MODEL_DIR), "--karpathy-json", str(ucm / "dataset.json"), "--images"]
    common += [str(ucm / "images"), "--translations", str(ucm / "translations"), "--languages", "en,pt"]
    common += ["--no-cache", "--num-workers", "0", "--quiet", "--no-plots"]
    figures = {}
    for precision in ("fp32", "int8"):
        out = tmp_path / precision
        assert _run(["eval-retrieval", *common, "--precision", precision, "--output-dir", str(out)]) == 0
        figures[precision] = json.loads((out / "retrieval_ucm_test.json").read_text())["languages"]

    model = RSMCLIPModel.from_pretrained(DEMO_MODEL_DIR)
    processor = RSMCLIPProcessor.from_pretrained(DEMO_MODEL_DIR)
    encoder = load_encoder(model, "torch", "int8", processor=processor)
    embedder = Embedder(encoder, processor, num_workers=0, show_progress=False)
    data = load_karpathy(ucm / "dataset.json", ucm / "images", "test", ucm / "translations", ["en", "pt"])
    expected = evaluate_retrieval(embedder, data).results["languages"]
    for lang in ("en", "pt"):
        assert figures["int8"][lang]["mR"] == pytest.approx(expected[lang]["mR"], abs=1e-9)
        assert abs(figures["int8"][lang]["mR"] - figures["fp32"][lang]["mR"]) < 3.0
