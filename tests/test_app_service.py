"""The web app's service layer (no web server): language detection, classification numbers, input limits, files."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from _app_fixtures import MOSAIC_ORIGIN, UCM_IMAGES, reference_probabilities, write_mosaic_geotiff
from PIL import Image

from modeling_rsmclip.app.language import detect_language, resolve_language
from modeling_rsmclip.app.mapview import Projection, footprints_svg
from modeling_rsmclip.app.service import (
    AppLimits,
    AppService,
    InputError,
    shown_row,
    split_labels,
    write_results_csv,
)
from modeling_rsmclip.templates import LANGUAGES
from modeling_rsmclip.testing import sample_dir


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> AppService:
    return AppService.load(with_index=False, work_dir=tmp_path_factory.mktemp("app-work"))


# ------------------------------------------------------------------------------------------------ languages
def test_detects_the_language_of_the_bundled_captions():
    """Every caption of the bundled UCM set, in all ten languages: at least 97% right per language."""
    root = sample_dir() / "ucm"
    english = [
        s["raw"] for e in json.loads((root / "dataset.json").read_text())["images"] for s in e["sentences"]
    ]
    by_lang = {"en": english}
    for path in sorted((root / "translations").glob("*.json")):
        by_lang[path.stem] = [row["text"] for row in json.loads(path.read_text(encoding="utf-8"))]
    assert set(by_lang) == set(LANGUAGES)
    for lang, texts in by_lang.items():
        guesses = Counter(detect_language(t) for t in texts)
        assert guesses[lang] / len(texts) >= 0.97, (lang, guesses.most_common(4))


@pytest.mark.parametrize(
    "text, lang",
    [
        ("muitos aviões estacionados no aeroporto", "pt"),
        ("ein Strand mit blauem Meer", "de"),
        ("一条穿过森林的河流", "zh"),
        ("테니스장", "ko"),
        ("река в лесу", "ru"),
        ("a tennis court surrounded by trees", "en"),
        ("12345", "en"),  # nothing to go on: English
    ],
)
def test_detect_language_examples(text, lang):
    assert detect_language(text) == lang


def test_resolve_language():
    assert resolve_language("auto", "uma praia") == "pt"
    assert resolve_language("", "uma praia") == "pt"
    assert resolve_language("FR", "uma praia") == "fr"  # a chosen language wins over detection
    with pytest.raises(ValueError, match="unknown language 'xx'.*auto, en, pt"):
        resolve_language("xx", "uma praia")


def test_split_labels():
    assert split_labels(" forest, beach ;harbor\n\n, ") == ["forest", "beach", "harbor"]
    assert split_labels("森林，海滩、港口") == ["森林", "海滩", "港口"]


# ---------------------------------------------------------------------------------------------- classification
@pytest.mark.parametrize(
    "image, labels, lang",
    [
        ("191.jpg", "airplanes, a beach, a forest, a harbor", "en"),
        ("191.jpg", "aviões, uma praia, uma floresta, um porto", "pt"),
        ("2091.jpg", "网球场, 海滩, 森林", "zh"),
    ],
)
def test_classify_matches_the_zero_shot_recipe(service, image, labels, lang):
    result = service.classify(UCM_IMAGES / image, labels, "auto")
    assert result.language == lang  # detected from the labels
    expected = reference_probabilities(
        service.model, service.processor, UCM_IMAGES / image, result.labels, lang
    )
    np.testing.assert_allclose(result.probabilities, expected, atol=1e-5)
    assert result.labels == split_labels(labels)
    assert abs(sum(result.probabilities) - 1) < 1e-5


def test_classify_chosen_language_changes_the_templates(service):
    auto = service.classify(UCM_IMAGES / "191.jpg", "airplanes, a beach", "auto")
    german = service.classify(UCM_IMAGES / "191.jpg", "airplanes, a beach", "de")
    assert (auto.language, german.language) == ("en", "de")
    expected = reference_probabilities(
        service.model, service.processor, UCM_IMAGES / "191.jpg", ["airplanes", "a beach"], "de"
    )
    np.testing.assert_allclose(german.probabilities, expected, atol=1e-5)
    assert not np.allclose(auto.probabilities, german.probabilities, atol=1e-6)


def test_classify_reads_16_bit_and_rgba_uploads_like_the_processor(service, tmp_path):
    """A 16-bit grey TIFF goes through the project's one decoder: same numbers as its 8-bit RGB equivalent."""
    grey8 = np.asarray(Image.open(UCM_IMAGES / "191.jpg").convert("L"))
    Image.fromarray(grey8.astype(np.uint16) * 257).save(tmp_path / "grey16.tif")
    Image.fromarray(grey8).convert("RGB").save(tmp_path / "grey8.png")
    a = service.classify(tmp_path / "grey16.tif", "airplanes, a beach, a forest", "en")
    b = service.classify(tmp_path / "grey8.png", "airplanes, a beach, a forest", "en")
    np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-5)
    assert a.preview.endswith(".png") and Path(a.preview).is_file()  # a TIFF is shown as a PNG


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "labels, message",
    [
        ("", "at least two labels"),
        ("forest", "at least two labels"),
        (", ".join(f"class {i}" for i in range(30)), "30 labels given; at most 24"),
        ("forest, " + "x" * 200, "200 characters long"),
        ("forest, beach, Forest", "'Forest' is given twice"),
    ],
)
def test_bad_labels_are_refused(service, labels, message):
    with pytest.raises(InputError, match=re.escape(message)):
        service.classify(UCM_IMAGES / "191.jpg", labels, "auto")


def test_unknown_language_is_refused(service):
    with pytest.raises(InputError, match="unknown language 'klingon'"):
        service.classify(UCM_IMAGES / "191.jpg", "forest, beach", "klingon")


def test_bad_uploads_are_refused(service, tmp_path):
    (tmp_path / "notes.jpg").write_text("this is not a picture")
    with pytest.raises(InputError, match="notes.jpg: not a readable image"):
        service.classify(tmp_path / "notes.jpg", "forest, beach", "en")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match="empty.png: the file is empty"):
        service.classify(tmp_path / "empty.png", "forest, beach", "en")
    with pytest.raises(InputError, match="no image uploaded"):
        service.classify(None, "forest, beach", "en")
    with pytest.raises(InputError, match="'gone.jpg' was not found"):
        service.classify(tmp_path / "gone.jpg", "forest, beach", "en")
    # Truncated JPEG: the header reads, the pixels do not.
    data = (UCM_IMAGES / "191.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError, match="cut.jpg: cannot use this image"):
        service.classify(tmp_path / "cut.jpg", "forest, beach", "en")


def test_size_limits(service, tmp_path):
    small = AppService(
        service.model,
        service.processor,
        limits=AppLimits(max_upload_mb=0.01, max_image_pixels=100 * 100),
        work_dir=tmp_path / "work",
    )
    with pytest.raises(InputError, match=r"191.jpg: the file is \d+\.\d KB, more than the 10.2 KB"):
        small.classify(UCM_IMAGES / "191.jpg", "forest, beach", "en")
    Image.new("RGB", (200, 150), "white").save(tmp_path / "wide.png")  # a few hundred bytes
    with pytest.raises(InputError, match="200 x 150 pixels is more than the 10,000"):
        small.classify(tmp_path / "wide.png", "forest, beach", "en")
    with pytest.raises(InputError, match="top-k must be between 1 and 48"):
        small._top_k(100)


def test_search_without_an_index_says_so(service):
    with pytest.raises(InputError, match="type a query"):
        service.search("   ", "auto", 5)
    with pytest.raises(InputError, match="at most 300"):
        service.search("x" * 301, "auto", 5)
    with pytest.raises(InputError, match="without an archive index"):
        service.search("uma praia", "auto", 5)


# -------------------------------------------------------------------------------------------- files and maps
def test_results_csv_round_trip(tmp_path):
    rows = [
        {"rank": 1, "score": 0.5, "id": "a", "path": "x/1.jpg", "window": None, "bbox": [1.0, 2.0, 3.0, 4.0]},
        {"rank": 2, "score": 0.25, "id": "b", "path": "x/2.jpg", "window": [0, 0, 8, 8], "label": "beach"},
    ]
    write_results_csv(rows, tmp_path / "r.csv")
    with open(tmp_path / "r.csv", newline="", encoding="utf-8") as f:
        back = list(csv.DictReader(f))
    assert list(back[0])[:8] == [
        "rank", "score", "id", "tile", "window_col", "window_row", "window_width", "window_height"
    ]  # fmt: skip
    assert "path" not in back[0]  # where files live stays on the server
    assert [float(r["score"]) for r in back] == [0.5, 0.25]
    assert json.loads(back[0]["bbox"]) == [1.0, 2.0, 3.0, 4.0]
    assert json.loads(back[1]["window"]) == [0, 0, 8, 8]
    assert back[1]["tile"] == "col 0, row 0, 8 x 8 px" and back[0]["tile"] == ""
    assert [back[1][k] for k in ("window_col", "window_row", "window_width", "window_height")] == [
        "0",
        "0",
        "8",
        "8",
    ]
    assert back[1]["label"] == "beach" and back[0]["label"] == ""


def test_footprint_map_draws_each_polygon_where_it_is():
    def square(w, s, e, n):
        return {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}

    collection = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": square(-8.70, 41.10, -8.60, 41.20),
                "properties": {"rank": 1, "score": 0.4},
            },
            {
                "type": "Feature",
                "geometry": square(-8.50, 41.00, -8.45, 41.05),
                "properties": {"rank": 2, "score": 0.3},
            },
        ],
    }
    svg = footprints_svg(collection)
    assert "http" not in svg.replace("http://www.w3.org/2000/svg", "")  # nothing fetched
    frame = {k: float(v) for k, v in re.findall(r'data-(west|south|east|north)="([-\d.e]+)"', svg)}
    proj = Projection(frame["west"], frame["south"], frame["east"], frame["north"], 560, 360)
    polygons = re.findall(r'data-rank="(\d)" points="([^"]+)"', svg)
    assert sorted(rank for rank, _ in polygons) == ["1", "2"]
    for rank, points in polygons:
        corners = [proj.to_lonlat(*map(float, p.split(","))) for p in points.split()]
        expected = collection["features"][int(rank) - 1]["geometry"]["coordinates"][0]
        np.testing.assert_allclose(corners, expected, atol=1e-3)
    labels = re.findall(r">(-?[\d.]+)°<", svg)
    assert len(labels) == len(set(labels)) >= 4  # graticule labels precise enough to tell apart
    assert footprints_svg({"features": []}).startswith("<p")


def test_footprint_map_fits_hits_in_two_distant_regions():
    """Tiles of 256 m in Lisbon and in Porto (270 km apart): the frame holds both regions, and each hit, far smaller
    than a pixel at that scale, is still drawn where it is, numbered, at a visible size."""

    def tile(west, south, size=0.003):
        ring = [[west, south], [west + size, south], [west + size, south + size], [west, south + size]]
        return {"type": "Polygon", "coordinates": [ring + [ring[0]]]}

    lisbon = [(-9.14, 38.71), (-9.13, 38.72)]
    porto = [(-8.61, 41.15), (-8.60, 41.14)]
    features = [
        {"type": "Feature", "geometry": tile(*corner), "properties": {"rank": rank, "score": 0.5}}
        for rank, corner in enumerate(lisbon + porto, start=1)
    ]
    svg = footprints_svg({"type": "FeatureCollection", "features": features})
    frame = {k: float(v) for k, v in re.findall(r'data-(west|south|east|north)="([-\d.e]+)"', svg)}
    assert (
        frame["west"] < -9.14
        and frame["east"] > -8.597
        and frame["south"] < 38.71
        and frame["north"] > 41.153
    )
    proj = Projection(frame["west"], frame["south"], frame["east"], frame["north"], 560, 360)
    markers = re.findall(
        r'<circle class="footprint-marker" data-rank="(\d)" cx="([-\d.]+)" cy="([-\d.]+)" r="([\d.]+)"', svg
    )
    assert sorted(rank for rank, *_ in markers) == ["1", "2", "3", "4"]
    for rank, cx, cy, radius in markers:
        west, south = (lisbon + porto)[int(rank) - 1]
        lon, lat = proj.to_lonlat(float(cx), float(cy))
        assert (
            abs(lon - (west + 0.0015)) < 1e-3 and abs(lat - (south + 0.0015)) < 1e-3
        )  # at the tile's centre
        assert 0 <= float(cx) <= 560 and 0 <= float(cy) <= 360 and float(radius) * 2 >= 12
    # The two regions are drawn apart: Porto's hits well above Lisbon's.
    ys = {rank: float(cy) for rank, _, cy, _ in markers}
    assert min(ys["1"], ys["2"]) - max(ys["3"], ys["4"]) > 200
    # Footprints large enough to see get no marker.
    big = [dict(f, geometry=tile(*corner, size=0.5)) for f, corner in zip(features, lisbon + porto)]
    assert "footprint-marker" not in footprints_svg({"features": big})


# ------------------------------------------------------------------------------------- georeferenced archive
@pytest.fixture(scope="module")
def geo_service(service, tmp_path_factory):
    """The app over an index of a GeoTIFF mosaic cut into its four 256 px tiles."""
    pytest.importorskip("rasterio", reason='GeoTIFF scenes need rasterio: pip install "rsmclip[geo]"')
    pytest.importorskip("faiss", reason='archive search needs faiss: pip install "rsmclip[index]"')
    from modeling_rsmclip.index import build_index

    root = tmp_path_factory.mktemp("geo-archive")
    scene = write_mosaic_geotiff(root / "mosaic.tif")
    index = build_index(
        service.model, root / "index", [scene], processor=service.processor, tile_size=256, progress=False
    )
    return AppService(service.model, service.processor, index=index, work_dir=root / "work")


def test_search_of_a_georeferenced_archive_maps_and_exports_footprints(geo_service):
    from modeling_rsmclip.index import to_geojson

    index = geo_service.index
    assert index.is_georeferenced and len(index) == 4
    result = geo_service.search("aviões estacionados no aeroporto", "auto", 4)
    assert result.language == "pt"
    expected = index.search("aviões estacionados no aeroporto", top_k=4)
    assert [(r["id"], r["rank"]) for r in result.rows] == [(r["id"], r["rank"]) for r in expected]
    np.testing.assert_allclose([r["score"] for r in result.rows], [r["score"] for r in expected], atol=1e-6)
    # GeoJSON download = the index's own export of the same results, as they may leave the server.
    collection = json.loads(Path(result.geojson_path).read_text())
    assert collection == json.loads(json.dumps(to_geojson([shown_row(r) for r in expected])))
    # Each tile's footprint, from the mosaic's geotransform: tile (col, row) spans 256 m east and 256 m south.
    from rasterio.warp import transform as warp

    x0, y0 = MOSAIC_ORIGIN
    for feature, row in zip(collection["features"], result.rows):
        col_off, row_off, width, height = row["window"]
        xs = [x0 + col_off, x0 + col_off + width, x0 + col_off + width, x0 + col_off]
        ys = [y0 - row_off, y0 - row_off, y0 - row_off - height, y0 - row_off - height]
        lons, lats = warp("EPSG:32629", "EPSG:4326", xs, ys)
        ring = np.array(feature["geometry"]["coordinates"][0])
        np.testing.assert_allclose(sorted(ring[:-1, 0]), sorted(lons), atol=1e-7)
        np.testing.assert_allclose(sorted(ring[:-1, 1]), sorted(lats), atol=1e-7)
    # The map draws the same four footprints, numbered by rank.
    assert sorted(re.findall(r'data-rank="(\d)"', result.map_svg)) == ["1", "2", "3", "4"]
    # The gallery shows the tile, cut out of the scene.
    thumb = geo_service.result_image(result.source_rows[0], size=64)
    assert thumb.size == (64, 64)
    scene_rgb = np.asarray(Image.open(UCM_IMAGES / "191.jpg").convert("RGB").resize((256, 256)))
    expected_thumb = np.asarray(
        Image.fromarray(scene_rgb).resize((64, 64), Image.Resampling.BICUBIC), dtype=float
    )
    assert (
        np.abs(np.asarray(thumb, dtype=float) - expected_thumb).mean() < 8
    )  # the airplanes tile, not another
    saved = geo_service.result_thumbnail(result.source_rows[0], size=64)
    assert geo_service.result_thumbnail(result.source_rows[0], size=64) == saved  # made once, then reused
    assert Image.open(saved).size == (64, 64)
    # The tile the query is about: the airplanes are in the upper-left tile.
    assert result.rows[0]["window"] == [0, 0, 256, 256]


def test_results_name_hits_by_id_and_tiles_by_window_never_by_server_path(geo_service):
    """Table rows, CSV, GeoJSON and the map: ids relative to their source, each tile's window, no server path."""
    result = geo_service.search("aviões estacionados no aeroporto", "auto", 4)
    scene_folder = str(Path(result.source_rows[0]["path"]).parent)
    assert Path(result.source_rows[0]["path"]).is_absolute()  # where the file lives: kept on the server
    for row, source in zip(result.rows, result.source_rows):
        assert "path" not in row and row["id"] == source["id"]
        col, top, width, height = source["window"]
        assert row["id"].endswith(f"mosaic.tif@{col},{top}") and not Path(row["id"]).is_absolute()
        assert row["tile"] == f"col {col}, row {top}, {width} x {height} px"
    assert sorted(tuple(r["window"][:2]) for r in result.rows) == [(0, 0), (0, 256), (256, 0), (256, 256)]
    with open(result.csv_path, newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert list(table[0])[:8] == [
        "rank", "score", "id", "tile", "window_col", "window_row", "window_width", "window_height"
    ]  # fmt: skip
    for line, source in zip(table, result.source_rows):
        assert [int(line[k]) for k in ("window_col", "window_row", "window_width", "window_height")] == list(
            source["window"]
        )
    collection = json.loads(Path(result.geojson_path).read_text())
    assert [f["properties"]["tile"] for f in collection["features"]] == [r["tile"] for r in result.rows]
    for text in (
        Path(result.csv_path).read_text(),
        Path(result.geojson_path).read_text(),
        result.map_svg,
        json.dumps(result.rows),
    ):
        assert scene_folder not in text, text


def test_image_search_finds_the_tile_it_was_cut_from(geo_service, tmp_path):
    Image.open(UCM_IMAGES / "791.jpg").convert("RGB").resize((256, 256)).save(tmp_path / "forest.png")
    result = geo_service.search_by_image(tmp_path / "forest.png", 2)
    expected = geo_service.index.search(tmp_path / "forest.png", top_k=2, image=True)
    assert [r["id"] for r in result.rows] == [r["id"] for r in expected]
    assert result.rows[0]["window"] == [0, 256, 256, 256]  # lower-left tile
    assert result.rows[0]["score"] > 0.99


def test_default_app_builds_the_sample_index_on_first_start_and_rebuilds_a_stale_one(tmp_path, monkeypatch):
    pytest.importorskip("faiss", reason='archive search needs faiss: pip install "rsmclip[index]"')
    monkeypatch.setenv("RSMCLIP_INDEX_CACHE", str(tmp_path / "cache"))
    first = AppService.load(work_dir=tmp_path / "work")  # nothing cached: built now
    (folder,) = (tmp_path / "cache").iterdir()
    assert first.index.path == folder and len(first.index) == 49
    expected = [r["id"] for r in first.search("uma praia", "auto", 3).rows]
    # An index left by another release (a different model fingerprint) is rebuilt, not refused or trusted.
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["model"]["fingerprint"] = "0" * 64
    (folder / "manifest.json").write_text(json.dumps(manifest))
    second = AppService.load(work_dir=tmp_path / "work")
    assert second.index.path == folder and second.index.manifest["model"]["fingerprint"] != "0" * 64
    assert [r["id"] for r in second.search("uma praia", "auto", 3).rows] == expected
