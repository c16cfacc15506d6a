"""Zero-shot tile maps on a georeferenced mosaic of real UC Merced images, and the `rsmclip map` command."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio", reason='needs rasterio: pip install "rsmclip[geo]"')

from affine import Affine  # noqa: E402
from PIL import Image  # noqa: E402

from modeling_rsmclip.testing import sample_dir  # noqa: E402

CLASSES = ["agricultural", "beach", "forest", "parkinglot", "river", "storagetanks"]
LABELS = {
    "en": ["farmland", "beach", "forest", "parking lot", "river", "storage tanks"],
    "pt": ["terras agrícolas", "praia", "floresta", "estacionamento", "rio", "tanques de armazenamento"],
}
PER_CLASS = 2
TILE = 256
ORIGIN = (500000.0, 4100000.0)  # EPSG:32611, UTM 11N (California)
PIXEL = 0.3


def _ucm_images(root: Path) -> dict[str, list[Path]]:
    chosen: dict[str, list[Path]] = {c: [] for c in CLASSES}
    with open(root / "labels.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["split"] != "test" or row["label"] not in chosen or len(chosen[row["label"]]) >= PER_CLASS:
                continue
            path = root / "images" / row["filename"]
            with Image.open(path) as im:
                if im.size == (TILE, TILE):
                    chosen[row["label"]].append(path)
    return chosen


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory):
    """A 3 x 5 mosaic GeoTIFF of 256 px UCM test images (RGBA, the last cell fully transparent)."""
    chosen = _ucm_images(sample_dir() / "ucm")
    cells = [(label, path) for label in CLASSES for path in chosen[label]]
    cols, rows = 5, 3
    assert len(cells) == len(CLASSES) * PER_CLASS and len(cells) < cols * rows
    data = np.zeros((4, rows * TILE, cols * TILE), dtype=np.uint8)
    truth = np.full((rows, cols), -1)
    for i, (label, path) in enumerate(cells):
        r, c = divmod(i, cols)
        rgb = np.asarray(Image.open(path).convert("RGB"))
        data[:3, r * TILE : (r + 1) * TILE, c * TILE : (c + 1) * TILE] = np.moveaxis(rgb, -1, 0)
        data[3, r * TILE : (r + 1) * TILE, c * TILE : (c + 1) * TILE] = 255
        truth[r, c] = CLASSES.index(label)
    out = tmp_path_factory.mktemp("mosaic") / "ucm_mosaic.tif"
    transform = Affine(PIXEL, 0.0, ORIGIN[0], 0.0, -PIXEL, ORIGIN[1])
    profile = dict(
        driver="GTiff", width=cols * TILE, height=rows * TILE, count=4, dtype="uint8", crs="EPSG:32611",
        transform=transform, photometric="RGB", alpha="YES", tiled=True, blockxsize=256, blockysize=256,
    )  # fmt: skip
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(data)
    return out, truth, [path for _, path in cells]


@pytest.fixture(scope="module")
def demo():
    import modeling_rsmclip  # noqa: F401
    from modeling_rsmclip.geo.zero_shot import load_model

    return load_model("demo")


@pytest.fixture(scope="module")
def classified(mosaic, demo, tmp_path_factory):
    from modeling_rsmclip.geo import classify_scene

    path, _, _ = mosaic
    model, processor = demo
    out = tmp_path_factory.mktemp("classified")
    result = classify_scene(
        path, LABELS["en"], model=model, processor=processor, tile_size=TILE, output_dir=out, progress=False
    )
    return result, out


def test_class_map_equals_per_tile_zero_shot_and_beats_chance(mosaic, demo, classified):
    from modeling_rsmclip.evaluation import Embedder, ImageFiles, average_prompt_embeddings
    from modeling_rsmclip.templates import PROMPT_TEMPLATES

    _, truth, files = mosaic
    result, _ = classified
    model, processor = demo
    # Reference: the evaluation suite's zero-shot recipe on the original image files of the same tiles.
    embedder = Embedder(model, processor, batch_size=16, show_progress=False)
    images = embedder.images(ImageFiles(files)).numpy().astype(np.float64)
    templates = PROMPT_TEMPLATES["en"]
    prompts = [t.format(label) for label in LABELS["en"] for t in templates]
    texts = embedder.texts(prompts).numpy().reshape(len(LABELS["en"]), len(templates), -1)
    logits = model.logit_scale.exp().item() * images @ average_prompt_embeddings(texts).T
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)

    assert result.class_ids.shape == truth.shape == (3, 5)
    kept = truth >= 0
    assert np.array_equal(result.class_ids[kept], expected.argmax(1))
    assert np.allclose(result.probabilities[kept], expected, atol=1e-4)
    assert (result.class_ids[~kept] == -1).all() and result.skipped == [12, 13, 14]  # transparent cells
    accuracy = float((result.class_ids[kept] == truth[kept]).mean())
    assert accuracy > 2.0 / len(CLASSES), f"accuracy {accuracy:.2f} not above chance ({1 / len(CLASSES):.2f})"


def test_written_geotiff_geojson_and_overlay(mosaic, classified):
    path, truth, _ = mosaic
    result, out = classified
    with rasterio.open(out / "classes.tif") as src:
        assert src.crs.to_epsg() == 32611
        # One pixel per 256 px tile: 76.8 m, same origin (hand computed).
        assert src.transform.almost_equals(
            Affine(TILE * PIXEL, 0.0, ORIGIN[0], 0.0, -TILE * PIXEL, ORIGIN[1])
        )
        assert (src.width, src.height, src.count, src.nodata) == (5, 3, 3, -1.0)
        assert src.descriptions == ("class_id", "top1_probability", "valid_fraction")
        ids, top1, fraction = src.read()
        assert json.loads(src.tags()["LABELS"]) == LABELS["en"]
    assert np.array_equal(ids.astype(int), result.class_ids)
    kept = truth >= 0
    assert np.allclose(top1[kept], result.probabilities[kept].max(-1), atol=1e-6)
    assert np.array_equal(fraction, np.where(kept, 1.0, 0.0))  # the last three cells are transparent

    collection = json.loads((out / "tiles.geojson").read_text())
    features = collection["features"]
    assert len(features) == int(kept.sum())
    first = features[0]
    corners = [(ORIGIN[0], ORIGIN[1]), (ORIGIN[0] + 76.8, ORIGIN[1]), (ORIGIN[0] + 76.8, ORIGIN[1] - 76.8)]
    lonlat = rasterio.warp.transform("EPSG:32611", "EPSG:4326", *zip(*corners))
    ring = np.array(first["geometry"]["coordinates"][0])
    assert np.allclose(ring[:3], np.array(lonlat).T, atol=1e-9)
    assert first["properties"]["label"] == LABELS["en"][first["properties"]["class_id"]]
    assert [f["properties"]["valid_fraction"] for f in features] == [1.0] * int(kept.sum())
    assert sum(first["properties"]["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    png = Image.open(out / "overlay.png")
    assert png.size[0] > 300 and png.mode in ("RGB", "RGBA")


def test_classify_in_portuguese_uses_portuguese_templates(mosaic, demo):
    from modeling_rsmclip.inference import class_embeddings

    model, processor = demo
    pt = class_embeddings(model, processor, LABELS["pt"], "pt")
    en = class_embeddings(model, processor, LABELS["pt"], "en")
    assert pt.shape == (len(CLASSES), model.config.projection_dim)
    assert not np.allclose(pt, en)  # different templates, different class embeddings
    # The Portuguese embeddings by hand: every Portuguese template filled, normalised, averaged, normalised.
    import torch
    import torch.nn.functional as F

    from modeling_rsmclip.templates import PROMPT_TEMPLATES

    with torch.no_grad():
        for row, label in zip(pt, LABELS["pt"]):
            tokens = processor(
                text=[t.format(label) for t in PROMPT_TEMPLATES["pt"]], padding=True, return_tensors="pt"
            )
            embeds = F.normalize(model.get_text_features(**tokens).pooler_output, dim=-1)
            np.testing.assert_allclose(row, F.normalize(embeds.mean(0), dim=0).numpy(), atol=1e-5)


def test_cli_map_classify_and_user_errors(mosaic, tmp_path, capsys):
    from modeling_rsmclip.cli import main

    path, _, _ = mosaic
    out = tmp_path / "out"
    code = main(
        ["map", "classify", str(path), "--labels", ",".join(LABELS["pt"]), "--language", "pt",
         "--output", str(out), "--tile-size", "76.8m", "--no-progress"]
    )  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["tile_size"] == TILE and summary["language"] == "pt"
    assert {p.name for p in out.iterdir()} >= {"classes.tif", "tiles.geojson", "overlay.png", "summary.json"}

    assert (
        main(["map", "classify", str(tmp_path / "missing.tif"), "--labels", "a,b", "--output", str(out)]) == 2
    )
    assert "error: raster not found" in capsys.readouterr().err
    assert main(["map", "classify", str(path), "--labels", "a", "--output", str(out)]) == 2
    assert "at least two labels" in capsys.readouterr().err


def _rgb_scene(path: Path, rgb: np.ndarray, transform: Affine) -> Path:
    profile = dict(driver="GTiff", width=rgb.shape[1], height=rgb.shape[0], count=3, dtype="uint8",
                   crs="EPSG:32611", transform=transform)  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.moveaxis(rgb, -1, 0))
    return path


def test_edge_tiles_of_a_scene_without_nodata_are_classified_with_their_valid_fraction(demo, tmp_path):
    """512 px scene, 224 px tiles: all 9 tiles are classified (5 used to be skipped as "mostly nodata"). An edge
    tile is classified from the whole tile moved inside the scene: its probabilities equal those of that 224 px
    crop classified on its own; a block of real nodata is still skipped and counted."""
    from modeling_rsmclip.geo import classify_scene

    model, processor = demo
    chosen = _ucm_images(sample_dir() / "ucm")
    cells = [chosen[c][0] for c in ("forest", "beach", "river", "storagetanks")]
    rgb = np.zeros((512, 512, 3), dtype=np.uint8)
    for i, path in enumerate(cells):
        r, c = divmod(i, 2)
        rgb[r * 256 : (r + 1) * 256, c * 256 : (c + 1) * 256] = np.asarray(Image.open(path).convert("RGB"))
    rgb = np.maximum(rgb, 1)  # 0 is kept for nodata below
    transform = Affine(PIXEL, 0.0, ORIGIN[0], 0.0, -PIXEL, ORIGIN[1])
    scene = _rgb_scene(tmp_path / "scene.tif", rgb, transform)
    kwargs = dict(model=model, processor=processor, tile_size=224, progress=False)
    result = classify_scene(scene, LABELS["en"], output_dir=tmp_path / "out", **kwargs)
    assert len(result.grid) == 9 and result.skipped == [] and (result.class_ids >= 0).all()
    assert result.summary()["classified"] == 9 and result.summary()["skipped_mostly_nodata"] == 0
    assert np.array_equal(result.valid_fraction, np.ones((3, 3), dtype=np.float32))
    with rasterio.open(tmp_path / "out" / "classes.tif") as src:
        ids, _, fraction = src.read()
    assert np.array_equal(ids, result.class_ids) and np.array_equal(fraction, np.ones((3, 3)))
    features = json.loads((tmp_path / "out" / "tiles.geojson").read_text())["features"]
    assert len(features) == 9 and all(f["properties"]["valid_fraction"] == 1.0 for f in features)
    corner = features[-1]["properties"]
    assert corner["window"] == [448, 448, 224, 224] and corner["read_window"] == [288, 288, 224, 224]

    crop = _rgb_scene(tmp_path / "crop.tif", rgb[288:512, 288:512], transform @ Affine.translation(288, 288))
    alone = classify_scene(crop, LABELS["en"], **kwargs)
    assert alone.class_ids.shape == (1, 1)
    assert np.allclose(result.probabilities[2, 2], alone.probabilities[0, 0], atol=1e-5)

    # Real nodata in the last column's cells (x >= 448) from row 112 down. Their tiles are read from x = 288 (the
    # part of the scene the model sees), and their valid fraction is that of the cells: 112 / 224 valid rows in
    # the top one (kept: at the threshold), none below (skipped).
    holed = rgb.copy()
    holed[112:, 448:] = 0
    path = _rgb_scene(tmp_path / "holed.tif", holed, transform)
    with rasterio.open(path, "r+") as dst:
        dst.nodata = 0
    holed_result = classify_scene(path, LABELS["en"], **kwargs)
    expected = np.ones((3, 3))
    expected[:, 2] = [112 / 224, 0.0, 0.0]
    assert np.allclose(holed_result.valid_fraction, expected)
    assert holed_result.skipped == [5, 8] and (holed_result.class_ids[:, :2] >= 0).all()
    assert holed_result.class_ids[0, 2] >= 0 and holed_result.summary()["skipped_mostly_nodata"] == 2
