"""The dataset builder on the real shared data (UCM-Captions, RSSCN7-mini) and on deliberately broken inputs."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from _shared_data import need_shared_data
from datasets import Image, load_from_disk
from huggingface_hub import DatasetCard
from PIL import Image as PILImage

from modeling_rsmclip.data import (
    BuildError,
    BuildReport,
    MissingTranslationsError,
    build_dataset,
    read_imagefolder,
    save_dataset,
)
from modeling_rsmclip.data.cli import main as cli_main
from modeling_rsmclip.templates import CLASS_NAMES, LANGUAGES, PROMPT_TEMPLATES
from modeling_rsmclip.testing import shared_data_dir

SHARED_DATA = shared_data_dir()
UCM = SHARED_DATA / "ucm-captions"
RSSCN7 = SHARED_DATA / "rsscn7-mini"


@pytest.fixture(autouse=True)
def _real_data():
    """ucm-captions and rsscn7-mini: skip without them, or fail where the real data is required (CI)."""
    need_shared_data("ucm-captions", "dataset.json")
    need_shared_data("rsscn7-mini")


def _ucm_annotations() -> list[dict]:
    return json.loads((UCM / "dataset.json").read_text(encoding="utf-8"))["images"]


def _text_rows(split) -> list[dict]:
    return split.remove_columns("image").to_list()


@pytest.fixture(scope="module")
def ucm(tmp_path_factory: pytest.TempPathFactory):
    """UCM-Captions built once for the module, with the shipped translation cache and no model."""
    arrow = tmp_path_factory.mktemp("ucm-arrow")
    dataset, report = build_dataset(
        "karpathy",
        source="ucm-captions",
        annotations=UCM / "dataset.json",
        images=UCM / "images",
        labels_csv=UCM / "labels.csv",
        languages="all",
        translations_cache=UCM / "translations",
        cache_dir=arrow,
        progress=False,
    )
    return dataset, report, arrow


def test_ucm_rows_splits_and_report(ucm) -> None:
    dataset, report, _ = ucm
    assert {split: len(ds) for split, ds in dataset.items()} == {
        "train": 1680,
        "validation": 210,
        "test": 210,
    }
    assert report.ok, report.summary()
    assert report.rows == {"train": 1680, "validation": 210, "test": 210}
    assert report.captions["train"] == {lang: 8400 for lang in LANGUAGES}
    assert report.captions["test"] == {lang: 1050 for lang in LANGUAGES}
    assert report.distinct_english_texts == 2032
    assert all(
        stats == {"distinct": 2032, "cached": 2032, "translated": 0, "failed": 0}
        for stats in report.translation.values()
    )
    assert set(report.translation) == set(LANGUAGES) - {"en"}
    assert len(report.labels) == 21 and set(report.labels.values()) == {100}


def test_ucm_captions_labels_and_translations(ucm) -> None:
    dataset, _, _ = ucm
    annotations = {entry["filename"]: entry for entry in _ucm_annotations()}
    with open(UCM / "labels.csv", encoding="utf-8", newline="") as handle:
        labels = {row["filename"]: row["label"] for row in csv.DictReader(handle)}
    shipped = {
        lang: {
            e["en"]: e["text"]
            for e in json.loads((UCM / "translations" / f"{lang}.json").read_text(encoding="utf-8"))
        }
        for lang in LANGUAGES[1:]
    }
    split_names = {"train": "train", "validation": "val", "test": "test"}
    seen = set()
    for split, ds in dataset.items():
        for row in _text_rows(ds):
            entry = annotations[row["image_id"]]
            seen.add(row["image_id"])
            assert entry["split"] == split_names[split]
            assert row["source"] == "ucm-captions" and row["label"] == labels[row["image_id"]]
            assert len(row["captions"]) == 50
            by_lang = {lang: [c["text"] for c in row["captions"] if c["lang"] == lang] for lang in LANGUAGES}
            english = [sentence["raw"] for sentence in entry["sentences"]]
            assert by_lang["en"] == english
            for lang in LANGUAGES[1:]:
                assert by_lang[lang] == [shipped[lang][text] for text in english]
                assert all(text.strip() for text in by_lang[lang])
    assert len(seen) == 2100


def test_ucm_images_are_the_original_files(ucm) -> None:
    dataset, _, _ = ucm
    for ds in dataset.values():
        raw = ds.select_columns(["image", "image_id"]).cast_column("image", Image(decode=False))
        for row in raw:
            source = UCM / "images" / row["image_id"]
            data = row["image"]["bytes"]
            assert data == source.read_bytes(), row["image_id"]
            with PILImage.open(source) as expected, PILImage.open(io.BytesIO(data)) as actual:
                assert np.array_equal(np.asarray(actual), np.asarray(expected)), row["image_id"]
    decoded = dataset["test"][0]["image"]  # the Image feature decodes to PIL
    assert decoded.size == PILImage.open(UCM / "images" / dataset["test"][0]["image_id"]).size


def test_ucm_is_streamed_to_disk_not_held_in_memory(ucm) -> None:
    dataset, report, arrow = ucm
    for ds in dataset.values():
        files = [Path(f["filename"]) for f in ds.cache_files]
        assert files and all(arrow in path.parents for path in files)  # memory-mapped Arrow files
    image_bytes = sum(p.stat().st_size for p in (UCM / "images").iterdir())
    arrow_bytes = sum(p.stat().st_size for p in arrow.rglob("*.arrow"))
    assert arrow_bytes > image_bytes  # the images went to disk
    assert report.peak_rss_mb is not None and report.peak_rss_mb > 0


def test_save_to_disk_with_card_and_report(ucm, tmp_path: Path) -> None:
    dataset, report, _ = ucm
    small = dataset.filter(
        lambda image_id: image_id in {"1.jpg", "2.jpg", "1001.jpg"}, input_columns="image_id"
    )
    out = save_dataset(small, report, tmp_path / "out")
    loaded = load_from_disk(str(out))
    assert loaded["train"].features == dataset["train"].features
    assert sorted(loaded["train"]["image_id"]) == sorted(small["train"]["image_id"])

    card_text = (out / "README.md").read_text(encoding="utf-8")
    metadata = yaml.safe_load(card_text.split("---")[1])
    assert metadata["language"] == list(LANGUAGES)
    assert {"zero-shot-image-classification", "image-to-text", "text-to-image"} <= set(
        metadata["task_categories"]
    )
    assert metadata["license"] == "other" and metadata["size_categories"] == ["1K<n<10K"]
    assert "Yang, Yi and Newsam, Shawn" in card_text and "Qu, Bo" in card_text and "2410.23370" in card_text
    assert "| train | 1680 | 8400 |" in card_text
    assert DatasetCard(card_text).data.language == list(LANGUAGES)  # valid Hub metadata
    assert BuildReport.load(out / "build_report.json").rows == report.rows


def test_rsscn7_through_templates_with_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rsscn7"
    args = ["build-dataset", "--layout", "imagefolder", "--source", "rsscn7", "--images", str(RSSCN7)]
    args += ["--output", str(out), "--cache-dir", str(tmp_path / "arrow"), "--no-progress"]
    assert cli_main(args) == 0
    assert "rows" in capsys.readouterr().out
    dataset = load_from_disk(str(out))
    assert {split: len(ds) for split, ds in dataset.items()} == {"train": 280, "validation": 35, "test": 35}
    labels = sorted(CLASS_NAMES["rsscn7"])
    for ds in dataset.values():  # stratified: every class in every split
        assert sorted(set(ds["label"])) == labels
    rows = [row for ds in dataset.values() for row in _text_rows(ds)]
    assert len(rows) == 350 and {row["label"]: 0 for row in rows}.keys() == set(labels)
    for row in rows:
        assert row["source"] == "rsscn7" and row["image_id"].startswith(row["label"] + "/")
        for lang in LANGUAGES:
            texts = [c["text"] for c in row["captions"] if c["lang"] == lang]
            name = CLASS_NAMES["rsscn7"][row["label"]][lang]
            assert texts == [template.format(name) for template in PROMPT_TEMPLATES[lang]]
    report = BuildReport.load(out / "build_report.json")
    assert report.ok and report.labels == {label: 50 for label in labels}
    card = yaml.safe_load((out / "README.md").read_text(encoding="utf-8").split("---")[1])
    assert "image-classification" in card["task_categories"] and "Zou, Qin" in (out / "README.md").read_text()


def test_imagefolder_split_assignment_is_seeded(tmp_path: Path) -> None:
    def assignment(seed: int) -> dict[str, str]:
        items = read_imagefolder(RSSCN7, BuildReport("rsscn7", "imagefolder"), seed=seed)
        return {item.image_id: item.split for item in items}

    assert assignment(0) == assignment(0)
    assert assignment(0) != assignment(1)


def _broken_karpathy(tmp_path: Path) -> tuple[Path, Path]:
    """Four UCM images plus every kind of bad entry."""
    images = tmp_path / "images"
    images.mkdir()
    entries = {e["filename"]: e for e in _ucm_annotations()}
    for name in ("1.jpg", "2.jpg", "3.jpg", "4.jpg"):
        shutil.copy(UCM / "images" / name, images / name)
    data = (UCM / "images" / "5.jpg").read_bytes()
    (images / "5.jpg").write_bytes(data[: len(data) // 2])  # truncated JPEG
    good = entries["1.jpg"]
    empty_caption = json.loads(json.dumps(entries["2.jpg"]))
    empty_caption["sentences"][1]["raw"] = "   "
    empty_caption["sentences"][1]["tokens"] = []
    no_sentences = dict(entries["3.jpg"], sentences=[])
    renamed = dict(entries["4.jpg"], filename="4.tif")  # the file on disk is 4.jpg
    truncated = entries["5.jpg"]
    missing = dict(entries["6.jpg"])  # 6.jpg is not copied
    path = tmp_path / "dataset.json"
    path.write_text(
        json.dumps({"images": [good, empty_caption, no_sentences, renamed, truncated, missing]}),
        encoding="utf-8",
    )
    return path, images


def test_bad_karpathy_inputs_are_reported(tmp_path: Path) -> None:
    annotations, images = _broken_karpathy(tmp_path)
    common = dict(
        source="ucm-captions",
        annotations=annotations,
        images=images,
        languages="en,pt",
        translations_cache=UCM / "translations",
        cache_dir=tmp_path / "arrow",
        progress=False,
    )
    dataset, report = build_dataset("karpathy", **common)
    assert sorted(dataset["train"]["image_id"]) == ["1.jpg", "2.jpg", "4.tif"]
    reasons = {(entry.action, entry.reason.split(" (")[0].split(":")[0]) for entry in report.entries}
    assert ("skipped", "empty caption") in reasons
    assert ("skipped", "no captions for 3.jpg") in reasons
    assert ("repaired", "4.tif not found; used 4.jpg") in reasons
    assert ("skipped", "image file not found") in reasons
    truncated = [e for e in report.entries if "5.jpg" in e.item]
    assert len(truncated) == 1 and "truncated" in truncated[0].reason and "images[4]" in truncated[0].reason
    assert any(str(images / "6.jpg") in e.reason for e in report.entries)
    row = next(r for r in _text_rows(dataset["train"]) if r["image_id"] == "2.jpg")
    assert (
        sum(c["lang"] == "en" for c in row["captions"])
        == 4
        == sum(c["lang"] == "pt" for c in row["captions"])
    )

    with pytest.raises(BuildError, match="5 reported item"):
        build_dataset("karpathy", strict=True, **common)

    out = tmp_path / "out"
    args = [
        "build-dataset",
        "--layout",
        "karpathy",
        "--source",
        "ucm-captions",
        "--annotations",
        str(annotations),
    ]
    args += [
        "--images",
        str(images),
        "--languages",
        "en,pt",
        "--translations-cache",
        str(UCM / "translations"),
    ]
    args += ["--output", str(out), "--cache-dir", str(tmp_path / "arrow"), "--no-progress"]
    assert cli_main(args + ["--strict"]) == 1
    assert not (out / "dataset_dict.json").exists()
    assert len(BuildReport.load(out / "build_report.json").entries) == 5
    assert cli_main(args) == 0 and (out / "dataset_dict.json").exists()


def test_bad_imagefolder_inputs_are_reported(tmp_path: Path) -> None:
    root = tmp_path / "folder"
    for label in ("field", "forest"):
        (root / label).mkdir(parents=True)
        for image in sorted((RSSCN7 / label).iterdir())[:3]:
            shutil.copy(image, root / label / image.name)
    (root / "field" / "notes.txt").write_text("not an image")
    (root / "forest" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a JPEG")
    (root / "README.md").write_text("stray file")
    common = dict(
        source="rsscn7", images=root, cache_dir=tmp_path / "arrow", split_ratios=(1, 0, 0), progress=False
    )
    dataset, report = build_dataset("imagefolder", **common)
    assert len(dataset["train"]) == 6 and list(dataset) == ["train"]
    by_item = {Path(entry.item).name: entry for entry in report.entries}
    assert "not an image file" in by_item["notes.txt"].reason
    assert "unreadable image" in by_item["broken.jpg"].reason
    assert "outside a class folder" in by_item["README.md"].reason
    assert {entry.action for entry in report.entries} == {"skipped"}
    with pytest.raises(BuildError, match="3 reported item"):
        build_dataset("imagefolder", strict=True, **common)


def test_nwpu_captions_layout(tmp_path: Path) -> None:
    ucm = {e["filename"]: e for e in _ucm_annotations()}
    (tmp_path / "images" / "airplane").mkdir(parents=True)
    nwpu = {"airplane": []}
    for index, name in enumerate(("101.jpg", "102.jpg")):
        shutil.copy(UCM / "images" / name, tmp_path / "images" / "airplane" / f"airplane_{index:03d}.jpg")
        raws = [s["raw"] for s in ucm[name]["sentences"]]
        entry = {"filename": f"airplane_{index:03d}.jpg", "split": "test", "imgid": index, "raw": raws[0]}
        entry.update({f"raw_{i}": raws[i] for i in range(1, 5)})
        nwpu["airplane"].append(entry)
    (tmp_path / "dataset_nwpu.json").write_text(json.dumps(nwpu), encoding="utf-8")
    dataset, report = build_dataset(
        "karpathy",
        source="nwpu-captions",
        annotations=tmp_path / "dataset_nwpu.json",
        images=tmp_path / "images",
        languages="en,zh",
        translations_cache=UCM / "translations",
        cache_dir=tmp_path / "arrow",
        progress=False,
    )
    assert report.ok and list(dataset) == ["test"]
    rows = _text_rows(dataset["test"])
    assert [row["label"] for row in rows] == ["airplane", "airplane"]
    assert [c["text"] for c in rows[0]["captions"] if c["lang"] == "en"] == [
        s["raw"] for s in ucm["101.jpg"]["sentences"]
    ]


def test_missing_translations_fail_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    entry = dict(_ucm_annotations()[0])
    entry["sentences"] = [{"raw": "A caption nobody has translated ."}]
    (tmp_path / "dataset.json").write_text(json.dumps({"images": [entry]}), encoding="utf-8")
    common = dict(source="x", annotations=tmp_path / "dataset.json", images=UCM / "images", progress=False)
    with pytest.raises(MissingTranslationsError, match="pt: 1"):
        build_dataset(
            "karpathy", translations_cache=UCM / "translations", cache_dir=tmp_path / "arrow", **common
        )
    args = ["build-dataset", "--layout", "karpathy", "--source", "x", "--images", str(UCM / "images")]
    args += [
        "--annotations",
        str(tmp_path / "dataset.json"),
        "--output",
        str(tmp_path / "out"),
        "--no-progress",
    ]
    assert cli_main(args) == 2
    assert "--translation-model" in capsys.readouterr().err


def test_custom_templates_and_templates_per_image(tmp_path: Path) -> None:
    root = tmp_path / "folder"
    for label in ("grass", "parking"):
        (root / label).mkdir(parents=True)
        for image in sorted((RSSCN7 / label).iterdir())[:3]:
            shutil.copy(image, root / label / image.name)
    templates = {"en": [f"T{i} {{}}" for i in range(5)], "pt": [f"P{i} {{}}" for i in range(5)]}
    (tmp_path / "templates.json").write_text(json.dumps(templates), encoding="utf-8")
    dataset, report = build_dataset(
        "imagefolder",
        source="rsscn7",
        images=root,
        languages="en,pt",
        templates=tmp_path / "templates.json",
        templates_per_image=2,
        split_ratios=(1, 0, 0),
        cache_dir=tmp_path / "arrow",
        progress=False,
    )
    assert report.ok
    chosen = set()
    for row in _text_rows(dataset["train"]):
        english = [c["text"] for c in row["captions"] if c["lang"] == "en"]
        portuguese = [c["text"] for c in row["captions"] if c["lang"] == "pt"]
        assert len(english) == len(portuguese) == 2
        assert [t[1] for t in english] == [t[1] for t in portuguese]  # same template positions
        name = CLASS_NAMES["rsscn7"][row["label"]]
        assert english == [f"T{t[1]} {name['en']}" for t in english]
        assert portuguese == [f"P{t[1]} {name['pt']}" for t in portuguese]
        chosen.add(tuple(t[1] for t in english))
    assert len(chosen) > 1  # the choice varies between images
