"""Retrieval and zero-shot runners with the tiny random model, checked against a direct computation."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from modeling_rsmclip.evaluation.embed import Embedder, ImageFiles
from modeling_rsmclip.evaluation.retrieval import evaluate_retrieval, load_builder_dataset, load_karpathy
from modeling_rsmclip.evaluation.zero_shot import (
    evaluate_zero_shot,
    load_builder_labels,
    load_image_folder,
    load_labels_csv,
    resolve_class_names,
)
from modeling_rsmclip.templates import CLASS_NAMES, PROMPT_TEMPLATES
from modeling_rsmclip.testing import sample_dir

LANGS = ["en", "zh", "de"]


@pytest.fixture(scope="module")
def ucm() -> Path:
    return sample_dir() / "ucm"


def _direct_image_embeds(model, processor, paths: list[Path]) -> torch.Tensor:
    """All images in one batch, straight through the processor and the model."""
    images = [Image.open(p).convert("RGB") for p in paths]
    with torch.no_grad():
        pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
        return F.normalize(model.get_image_features(pixel_values=pixel_values).pooler_output, dim=-1)


def _direct_text_embeds(model, processor, texts: list[str]) -> torch.Tensor:
    with torch.no_grad():
        batch = processor(text=texts, return_tensors="pt")
        out = model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return F.normalize(out.pooler_output, dim=-1)


def _reference_recall(scores: np.ndarray, correct: list[set[int]], k: int) -> float:
    """Sort every row (ties: incorrect items first, i.e. against the model) and look for a correct item in the top K."""
    hits = 0
    for row, good in zip(scores, correct):
        order = sorted(range(len(row)), key=lambda j: (-row[j], j in good))
        hits += any(j in good for j in order[:k])
    return 100.0 * hits / len(correct)


def _expected_captions(ucm: Path, langs: list[str]) -> tuple[list[str], dict[str, list[tuple[int, str]]]]:
    """Read the Karpathy file and translation caches independently of the loader."""
    data = json.loads((ucm / "dataset.json").read_text())
    tables = {
        lang: {e["en"]: e["text"] for e in json.loads((ucm / "translations" / f"{lang}.json").read_text())}
        for lang in langs
        if lang != "en"
    }
    files, caps = [], {lang: [] for lang in langs}
    for entry in (e for e in data["images"] if e["split"] == "test"):
        for sentence in entry["sentences"]:
            for lang in langs:
                caps[lang].append(
                    (len(files), sentence["raw"] if lang == "en" else tables[lang][sentence["raw"]])
                )
        files.append(entry["filename"])
    return files, caps


def test_retrieval_matches_direct_computation(tiny, ucm, tmp_path) -> None:
    model, processor = tiny
    files, expected = _expected_captions(ucm, LANGS)
    data = load_karpathy(ucm / "dataset.json", ucm / "images", "test", ucm / "translations", LANGS)
    assert data.image_ids == files
    assert data.captions == expected
    assert data.skipped == {}

    embedder = Embedder(model, processor, batch_size=16, cache_dir=tmp_path / "cache", show_progress=False)
    result = evaluate_retrieval(embedder, data, ks=(1, 5, 10), model_name="tiny")
    res = result.results
    assert res["task"] == "image-text-retrieval"
    assert res["dataset"] == {
        "name": "ucm",
        "type": "ucm",
        "split": "test",
        "source": str(ucm / "dataset.json"),
        "num_images": len(files),
    }
    assert list(res["languages"]) == LANGS

    images = _direct_image_embeds(model, processor, [ucm / "images" / f for f in files])
    torch.testing.assert_close(result.image_embeds, images, atol=1e-5, rtol=1e-4)
    for lang in LANGS:
        texts = [t for _, t in expected[lang]]
        owner = [i for i, _ in expected[lang]]
        text_embeds = _direct_text_embeds(model, processor, texts)
        torch.testing.assert_close(result.text_embeds[lang], text_embeds, atol=1e-5, rtol=1e-4)
        sim = (images @ text_embeds.T).numpy()
        metrics = res["languages"][lang]
        for k in (1, 5, 10):
            i2t = _reference_recall(
                sim, [{j for j, o in enumerate(owner) if o == i} for i in range(len(files))], k
            )
            t2i = _reference_recall(sim.T, [{o} for o in owner], k)
            assert metrics[f"i2t_R@{k}"] == pytest.approx(i2t), (lang, k)
            assert metrics[f"t2i_R@{k}"] == pytest.approx(t2i), (lang, k)
        assert metrics["num_texts"] == 5 * len(files)
    assert res["average"]["mR"] == pytest.approx(np.mean([res["languages"][lang]["mR"] for lang in LANGS]))


def test_embeddings_are_cached_per_model_and_data(tiny, ucm, tmp_path) -> None:
    model, processor = tiny
    data = load_karpathy(ucm / "dataset.json", ucm / "images", "test", ucm / "translations", ["en", "ko"])
    first = evaluate_retrieval(
        Embedder(model, processor, cache_dir=tmp_path, show_progress=False), data
    ).results
    cached = sorted(p.name for p in tmp_path.rglob("*.safetensors"))
    assert len(cached) == 3  # images + en texts + ko texts

    # A second run reads everything back: the model is never called.
    blocked = copy.deepcopy(model)

    def fail(*args, **kwargs):
        raise AssertionError("the model was called although the embeddings are cached")

    blocked.get_image_features = fail
    blocked.get_text_features = fail
    again = evaluate_retrieval(
        Embedder(blocked, processor, cache_dir=tmp_path, show_progress=False), data
    ).results
    assert again["languages"] == first["languages"]

    # Changed weights give a new model key, so nothing stale is read.
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.visual_projection.weight.mul_(-1.0)
    embedder = Embedder(changed, processor, cache_dir=tmp_path, show_progress=False)
    assert embedder.model_key != Embedder(model, processor, cache_dir=None).model_key
    evaluate_retrieval(embedder, data)
    assert len(list(tmp_path.rglob("*.safetensors"))) == 6


def _write_builder_dataset(ucm: Path, out: Path, langs: list[str]) -> None:
    datasets = pytest.importorskip("datasets")
    files, caps = _expected_captions(ucm, langs)
    rows = {"image": [], "image_id": [], "source": [], "label": [], "captions": []}
    labels = {}
    for line in (ucm / "labels.csv").read_text().splitlines()[1:]:
        name, label, _ = line.split(",")
        labels[name] = label
    for i, name in enumerate(files):
        rows["image"].append(str(ucm / "images" / name))
        rows["image_id"].append(name)
        rows["source"].append("ucm-captions")
        rows["label"].append(None if i == 0 else labels[name])  # one row without a label
        rows["captions"].append(
            [{"lang": lang, "text": t} for lang in langs for o, t in caps[lang] if o == i]
        )
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "image_id": datasets.Value("string"),
            "source": datasets.Value("string"),
            "label": datasets.Value("string"),
            "captions": datasets.List({"lang": datasets.Value("string"), "text": datasets.Value("string")}),
        }
    )
    test = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict({"test": test}).save_to_disk(str(out))


def test_builder_dataset_gives_the_same_results_as_karpathy(tiny, ucm, tmp_path) -> None:
    model, processor = tiny
    _write_builder_dataset(ucm, tmp_path / "ds", ["en", "zh"])
    from_builder = load_builder_dataset(str(tmp_path / "ds"), "test")
    assert from_builder.name == "ucm-captions"
    assert from_builder.languages == ["en", "zh"]
    from_json = load_karpathy(
        ucm / "dataset.json", ucm / "images", "test", ucm / "translations", ["en", "zh"]
    )
    assert from_builder.captions == from_json.captions
    embedder = Embedder(model, processor, batch_size=32, cache_dir=None, show_progress=False)
    a = evaluate_retrieval(embedder, from_builder).results["languages"]
    b = evaluate_retrieval(embedder, from_json).results["languages"]
    assert a == b

    labelled = load_builder_labels(str(tmp_path / "ds"), "test")
    assert labelled.skipped == {"rows_without_label": 1}
    assert len(labelled.labels) == len(from_json.image_ids) - 1
    with pytest.raises(ValueError, match="split 'validation' not found"):
        load_builder_dataset(str(tmp_path / "ds"), "validation")


def test_zero_shot_matches_direct_computation(tiny, ucm) -> None:
    model, processor = tiny
    data = load_labels_csv(ucm / "labels.csv", ucm / "images", split="test")
    assert data.classes == sorted(CLASS_NAMES["ucm"])
    langs = ["en", "zh"]
    embedder = Embedder(model, processor, batch_size=16, cache_dir=None, show_progress=False)
    res = evaluate_zero_shot(embedder, data, langs, ks=(1, 5))
    assert res["class_names_source"] == "templates.CLASS_NAMES['ucm']"
    assert res["class_names"]["zh"][0] == CLASS_NAMES["ucm"]["agricultural"]["zh"]

    assert isinstance(data.images, ImageFiles)
    images = _direct_image_embeds(model, processor, data.images.paths).double()
    labels = torch.tensor(data.labels)
    for lang in langs:
        class_embeds = []
        for cls in data.classes:
            name = CLASS_NAMES["ucm"][cls][lang]
            prompts = _direct_text_embeds(model, processor, [t.format(name) for t in PROMPT_TEMPLATES[lang]])
            class_embeds.append(F.normalize(prompts.double().mean(0), dim=0))
        logits = images @ torch.stack(class_embeds).T
        pred = logits.argmax(1)
        metrics = res["languages"][lang]
        assert metrics["top1"] == pytest.approx(100.0 * (pred == labels).double().mean().item())
        top5 = logits.topk(5, dim=1).indices
        assert metrics["top5"] == pytest.approx(
            100.0 * (top5 == labels[:, None]).any(1).double().mean().item()
        )
        confusion = np.zeros((len(data.classes),) * 2, dtype=int)
        for t, p in zip(labels.tolist(), pred.tolist()):
            confusion[t, p] += 1
        assert metrics["confusion_matrix"] == confusion.tolist()


def test_class_names_fallback_and_image_folder(tmp_path) -> None:
    root = tmp_path / "scenes"
    for cls in ("sea_ice", "Dense-Forest"):
        (root / cls).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(root / cls / "a.png")
    (root / "sea_ice" / "notes.txt").write_text("not an image")
    data = load_image_folder(root)
    assert data.classes == ["Dense-Forest", "sea_ice"]
    assert data.labels == [0, 1]
    assert data.skipped == {"non_image_files": 1}
    names, source = resolve_class_names(data.classes, ["en", "ko"])
    # "sea_ice" is an NWPU-RESISC45 class (shipped table); "Dense-Forest" is in none: split into words, untranslated
    assert source == "mixed"
    sea_ice = CLASS_NAMES["nwpu-resisc45"]["sea_ice"]
    assert names == {"en": ["dense forest", sea_ice["en"]], "ko": ["dense forest", sea_ice["ko"]]}
    # Known classes are matched ignoring case, spaces and separators; the dataset name breaks ties.
    names, source = resolve_class_names(["River_Lake", "forest"], ["ru"], hint="rsscn7")
    assert source == "templates.CLASS_NAMES['rsscn7']"
    assert names["ru"] == [CLASS_NAMES["rsscn7"]["river_lake"]["ru"], CLASS_NAMES["rsscn7"]["forest"]["ru"]]


def test_bad_inputs_name_the_file(tmp_path, ucm) -> None:
    bad = tmp_path / "labels.csv"
    bad.write_text("filename,label\n1.jpg,beach\n,forest\n")
    with pytest.raises(ValueError, match=r"labels.csv, line 3: empty filename or label"):
        load_labels_csv(bad, ucm / "images")
    with pytest.raises(ValueError, match="no 'split' column"):
        load_labels_csv(bad, ucm / "images", split="test")
    with pytest.raises(FileNotFoundError, match="image file not found: .*missing.jpg"):
        ImageFiles([tmp_path / "missing.jpg"])
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ValueError, match="broken.jpg"):
        ImageFiles([broken])[0]
    with pytest.raises(ValueError, match=r"no captions for language\(s\) \['xx'\]"):
        load_karpathy(ucm / "dataset.json", ucm / "images", "test", ucm / "translations", ["en", "xx"])


def test_real_data_loaders(shared_data) -> None:
    ucm = shared_data / "ucm-captions"
    data = load_karpathy(ucm / "dataset.json", ucm / "images", "test", ucm / "translations")
    assert data.languages == ["en", "de", "es", "fr", "it", "ko", "nl", "pt", "ru", "zh"]
    assert len(data.image_ids) == 210
    assert {lang: len(c) for lang, c in data.captions.items()} == {lang: 1050 for lang in data.languages}
    assert data.skipped == {}
    labelled = load_labels_csv(ucm / "labels.csv", ucm / "images", split="test")
    assert len(labelled.labels) == 210 and len(labelled.classes) == 21
    assert np.bincount(labelled.labels).tolist() == [10] * 21
    rsscn7 = load_image_folder(shared_data / "rsscn7-mini")
    assert rsscn7.classes == sorted(CLASS_NAMES["rsscn7"]) and len(rsscn7.labels) == 350
    names, source = resolve_class_names(rsscn7.classes, ["fr"], hint=rsscn7.name)
    assert source == "templates.CLASS_NAMES['rsscn7-mini']"
    assert names["fr"] == [CLASS_NAMES["rsscn7"][c]["fr"] for c in rsscn7.classes]
