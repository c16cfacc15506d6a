"""GeoTIFF scenes as an index source: real UC Merced images mosaicked into a georeferenced scene (EPSG:4326, a
chosen geotransform), cut into tiles. Each tile's footprint equals its corners computed by hand from the
geotransform; an all-nodata tile is counted and listed with its path and window; bbox filters and GeoJSON follow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faiss")
pytest.importorskip("pyarrow")
rasterio = pytest.importorskip("rasterio")

from modeling_rsmclip.testing import sample_dir  # noqa: E402

CELL = 256
WEST, NORTH, STEP = 10.0, 50.0, 1e-4  # degrees per pixel
# 3 x 2 mosaic of real images; the last cell is nodata.
CELLS = [["191.jpg", "391.jpg", "791.jpg"], ["2091.jpg", "1691.jpg", None]]
LABELS = {
    "191.jpg": "airplane",
    "391.jpg": "beach",
    "791.jpg": "forest",
    "2091.jpg": "tenniscourt",
    "1691.jpg": "river",
}


def _corner(col: float, row: float) -> list[float]:
    return [WEST + col * STEP, NORTH - row * STEP]


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    from PIL import Image
    from rasterio.transform import Affine

    data = np.zeros((3, 2 * CELL, 3 * CELL), dtype=np.uint8)
    for r, row in enumerate(CELLS):
        for c, name in enumerate(row):
            if name is None:
                continue
            image = Image.open(sample_dir() / "ucm" / "images" / name).convert("RGB").resize((CELL, CELL))
            pixels = np.maximum(np.asarray(image), 1)  # 0 is nodata
            data[:, r * CELL : (r + 1) * CELL, c * CELL : (c + 1) * CELL] = pixels.transpose(2, 0, 1)
    path = tmp_path_factory.mktemp("scene") / "mosaic.tif"
    profile = {
        "driver": "GTiff",
        "width": 3 * CELL,
        "height": 2 * CELL,
        "count": 3,
        "dtype": "uint8",
        "nodata": 0,
        "crs": "EPSG:4326",
        "transform": Affine(STEP, 0, WEST, 0, -STEP, NORTH),
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


@pytest.fixture(scope="module")
def scene_index(scene, tmp_path_factory):
    from modeling_rsmclip.cli import main
    from modeling_rsmclip.index import RSMCLIPIndex

    out = tmp_path_factory.mktemp("idx") / "scene"
    argv = [
        "index",
        "build",
        "--output",
        str(out),
        str(scene),
        "--tile-size",
        str(CELL),
        "--num-workers",
        "0",
        "--quiet",
    ]
    assert main(argv) == 0
    return RSMCLIPIndex.load(out)


def test_tile_footprints_equal_corners_from_the_geotransform(scene_index) -> None:
    rows = scene_index.metadata.to_pylist()
    assert len(rows) == 5 and scene_index.is_georeferenced
    for row in rows:
        col_off, row_off, width, height = row["window"]
        assert (width, height) == (CELL, CELL)
        corners = [
            (col_off, row_off),
            (col_off + width, row_off),
            (col_off + width, row_off + height),
            (col_off, row_off + height),
            (col_off, row_off),
        ]
        expected = [_corner(c, r) for c, r in corners]
        np.testing.assert_allclose(json.loads(row["footprint_lonlat"])[0], expected, atol=1e-9)
        np.testing.assert_allclose(
            json.loads(row["footprint"]), expected, atol=1e-9
        )  # the CRS is lon/lat here
        west, north = _corner(col_off, row_off)
        east, south = _corner(col_off + width, row_off + height)
        np.testing.assert_allclose(row["bbox"], [west, south, east, north], atol=1e-9)
        np.testing.assert_allclose(row["bounds"], [west, south, east, north], atol=1e-9)
        assert row["crs"] == "EPSG:4326" and row["valid_fraction"] == 1.0


def test_nodata_tile_is_reported_with_its_path_and_window(scene_index, scene) -> None:
    report = json.loads((scene_index.path / "report.json").read_text())
    assert report["nodata_tiles"] == [
        {
            "id": "mosaic.tif@512,256",
            "path": str(scene.resolve()),
            "window": [512, 256, CELL, CELL],
            "valid_fraction": 0.0,
        }
    ]
    assert scene_index.manifest["counts"]["nodata_tiles"] == 1


def test_search_bbox_filter_and_geojson(scene_index, tmp_path, capsys) -> None:
    from modeling_rsmclip.cli import main
    from modeling_rsmclip.index import to_geojson

    results = scene_index.search("many planes parked at the airport", top_k=5)
    assert results[0]["window"] == [0, 0, CELL, CELL]  # the airplane cell
    # Only the left column: west of the first cell boundary.
    left = scene_index.search("a beach", top_k=5, bbox=[WEST, 0, WEST + CELL * STEP * 0.5, 90])
    assert sorted(r["window"][1] for r in left) == [0, CELL] and all(r["window"][0] == 0 for r in left)
    collection = to_geojson(results)
    feature = collection["features"][0]
    assert feature["geometry"]["type"] == "Polygon" and feature["properties"]["score"] == results[0]["score"]
    ring = feature["geometry"]["coordinates"][0]
    np.testing.assert_allclose(
        ring, [_corner(c, r) for c, r in [(0, 0), (0, CELL), (CELL, CELL), (CELL, 0), (0, 0)]]
    )
    out = tmp_path / "hits.geojson"
    assert main(["search", str(scene_index.path), "praia", "--top-k", "2", "--geojson", str(out)]) == 0
    assert "bbox (W,S,E,N)" in capsys.readouterr().out
    written = json.loads(out.read_text())
    assert [f["properties"]["rank"] for f in written["features"]] == [1, 2]
    assert all(
        f["geometry"]["coordinates"][0][0] == f["geometry"]["coordinates"][0][-1] for f in written["features"]
    )


def test_index_tiles_follow_the_maps_rule_for_the_edge(tmp_path) -> None:
    """The index reads a scene's tiles as `rsmclip map` does (one rule, `geo.tiling`): the same pixels (edge tiles
    moved back inside the scene), the same valid fraction (counted inside the scene) and the same skips. A 700 x
    500 px scene of random pixels, cut into 224 px tiles, has edge tiles in its last column and row, and a block
    of nodata in its bottom-right corner."""
    from modeling_rsmclip.geo.raster import RasterReader
    from modeling_rsmclip.geo.tiling import iter_tiles
    from modeling_rsmclip.index.sources import SourceOptions, list_scene_tiles, read_item

    rng = np.random.default_rng(0)
    data = rng.integers(1, 256, size=(3, 500, 700), dtype=np.uint8)
    data[:, 300:, 500:] = 0  # nodata
    path = tmp_path / "scene.tif"
    profile = {"driver": "GTiff", "width": 700, "height": 500, "count": 3, "dtype": "uint8", "nodata": 0,
               "crs": "EPSG:4326", "transform": rasterio.transform.Affine(STEP, 0, WEST, 0, -STEP, NORTH)}  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    options = SourceOptions(tile_size=224, min_valid=0.5)
    items = list_scene_tiles(path, options, scene_id="scene")
    results = [read_item(item, options) for item in items]
    with RasterReader(path) as reader:
        tiles = iter_tiles(reader, 224, min_valid=0.5)
        kept = {t.index: t for t in tiles}
    assert len(items) == len(tiles.grid) == 4 * 3
    assert [item.window for item in items] == list(tiles.grid.windows())
    # Hand computation: the valid share of each tile's part inside the scene.
    valid = (data != 0).all(axis=0)
    expected = [valid[r : r + 224, c : c + 224].mean() for c, r, _, _ in tiles.grid.windows()]
    assert [r.valid_fraction for r in results] == pytest.approx(expected)
    assert [r.valid_fraction for r in results] == pytest.approx([tiles.valid_fractions[i] for i in range(12)])
    skipped = [i for i, r in enumerate(results) if r.error == "nodata"]
    assert skipped == tiles.skipped == [i for i, f in enumerate(expected) if f < 0.5] == [6, 7, 10, 11]
    for index, tile in kept.items():
        np.testing.assert_array_equal(results[index].image, tile.rgb)
    # The bottom-left tile's grid window reaches 172 rows past the edge; it is read from row 500 - 224 = 276.
    np.testing.assert_array_equal(results[8].image, np.moveaxis(data[:, 276:500, 0:224], 0, -1))
    assert results[8].valid_fraction == 1.0
