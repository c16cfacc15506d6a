"""Band presets, windowed raster reading and tiling on the real GeoTIFFs of shared/data/geo."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio", reason='needs rasterio: pip install "rsmclip[geo]"')

from _shared_data import need_shared_data  # noqa: E402
from affine import Affine  # noqa: E402

from modeling_rsmclip.geo.bands import Stretch, list_band_presets, resolve_preset  # noqa: E402
from modeling_rsmclip.geo.raster import RasterReader  # noqa: E402
from modeling_rsmclip.geo.tiling import TileGrid, iter_tiles, length_to_pixels  # noqa: E402

PIXELS = [(0, 0), (17, 301), (255, 256), (400, 99), (511, 511)]


@pytest.fixture(scope="module")
def geo() -> Path:
    return need_shared_data("geo", "sentinel", "spain_7370579_s2_l1c_13band.tif").parents[1]


def _unit(x: np.ndarray, low: float, high: float) -> np.ndarray:
    return np.rint(np.clip((x.astype(np.float64) - low) / (high - low), 0, 1) * 255).astype(np.uint8)


def _copy(src_path: Path, dst: Path, window=None, **changes) -> Path:
    """A copy of (a window of) a raster with profile changes (descriptions=None strips band descriptions)."""
    descriptions = changes.pop("descriptions", "keep")
    tags = changes.pop("tags", None)
    data_fn = changes.pop("data_fn", None)
    with rasterio.open(src_path) as src:
        data = src.read(window=window)
        profile = src.profile.copy()
        profile.update(width=data.shape[2], height=data.shape[1])
        if window is not None:
            profile["transform"] = src.transform @ Affine.translation(window.col_off, window.row_off)
        profile.update(changes)
        kept = src.descriptions
    if data_fn is not None:
        data = data_fn(data)
    with rasterio.open(dst, "w", **profile) as out:
        out.write(data)
        if descriptions == "keep":
            for i, d in enumerate(kept, start=1):
                if d:
                    out.set_band_description(i, d)
        if tags:
            out.update_tags(**tags)
    return dst


# ---------------------------------------------------------------------------------------------------- presets
def test_sentinel2_preset_is_chosen_from_descriptions_and_matches_hand_computation(geo):
    path = geo / "sentinel" / "spain_7370579_s2_l1c_13band.tif"
    with rasterio.open(path) as src:
        raw = src.read([4, 3, 2])  # B4, B3, B2 (1-based)
    with RasterReader(path) as reader:
        assert reader.selection.preset == "sentinel2"
        assert reader.selection.indices == (3, 2, 1)
        rgb, valid = reader.read_rgb()
    assert rgb.dtype == np.uint8 and rgb.shape == (512, 512, 3)
    for row, col in PIXELS:
        expected = [_unit(raw[c, row, col], 0.0, 3000.0) for c in range(3)]  # reflectance x 10000 / 3000
        assert rgb[row, col].tolist() == expected, (row, col)
    assert valid.all() == bool((raw != 0).all())


def test_sentinel2_baseline_offset_from_metadata_shifts_the_stretch(geo, tmp_path):
    src = geo / "sentinel" / "spain_7370579_s2_l1c_13band.tif"
    path = _copy(
        src,
        tmp_path / "l2a.tif",
        window=rasterio.windows.Window(0, 0, 64, 64),
        tags={"BOA_ADD_OFFSET": "-1000"},
        data_fn=lambda d: np.where(d != 0, d + 1000, 0).astype(d.dtype),
    )
    with rasterio.open(src) as s:
        raw = s.read([4, 3, 2], window=rasterio.windows.Window(0, 0, 64, 64))
    with RasterReader(path) as reader:
        assert reader.selection.offset == 1000.0
        assert reader.selection.stretch == Stretch.fixed(1000.0, 4000.0)
        rgb, _ = reader.read_rgb()
    # Same picture as the file without the offset.
    assert np.array_equal(rgb, np.stack([_unit(raw[c], 0.0, 3000.0) for c in range(3)], axis=-1))


def test_sentinel1_false_colour_matches_hand_computation(geo):
    path = geo / "sentinel" / "spain_7370579_s1_vv_vh_db.tif"
    with rasterio.open(path) as src:
        vv, vh = src.read().astype(np.float64)
    with RasterReader(path) as reader:
        assert reader.selection.preset == "sentinel1"
        rgb, valid = reader.read_rgb()
    for row, col in PIXELS:
        expected = [
            _unit(vv[row, col], -25.0, 0.0),
            _unit(vh[row, col], -30.0, -5.0),
            _unit(vv[row, col] - vh[row, col], 0.0, 15.0),
        ]
        assert rgb[row, col].tolist() == expected, (row, col)
    assert valid.all()


def test_nan_nodata_of_sentinel1_is_invalid(geo, tmp_path):
    def punch(d):
        d = d.copy()
        d[:, 10:20, 30:50] = np.nan
        return d

    path = _copy(geo / "sentinel" / "spain_7370579_s1_vv_vh_db.tif", tmp_path / "s1.tif", data_fn=punch)
    with RasterReader(path) as reader:
        rgb, valid = reader.read_rgb((0, 0, 100, 100))
    assert not valid[10:20, 30:50].any() and valid.sum() == 100 * 100 - 10 * 20
    assert (rgb[10:20, 30:50] == 0).all()


def test_explicit_bands_by_name_and_index(geo):
    path = geo / "sentinel" / "spain_7370579_s2_l1c_13band.tif"
    with rasterio.open(path) as src:
        raw = src.read([8, 4, 3], window=rasterio.windows.Window(0, 0, 8, 8))
    with RasterReader(path, bands=["B8", "B4", "B3"], stretch="0,4000") as reader:
        assert reader.selection.indices == (7, 3, 2)
        rgb, _ = reader.read_rgb((0, 0, 8, 8))
    assert np.array_equal(rgb, np.stack([_unit(raw[c], 0, 4000) for c in range(3)], axis=-1))
    with RasterReader(path, bands=[7, 3, 2], stretch="0,4000") as reader:
        assert np.array_equal(reader.read_rgb((0, 0, 8, 8))[0], rgb)


def test_percentile_stretch_is_fixed_once_per_scene(geo):
    path = geo / "spacenet" / "multispectral_4band_float64.tif"
    with rasterio.open(path) as src:
        raw = src.read([3, 2, 1])
    with RasterReader(path, bands=[2, 1, 0], stretch="p2,98") as reader:
        s = reader.selection.stretch
        assert s.kind == "fixed"
        expected_low = np.percentile(raw.reshape(3, -1), 2, axis=1)  # 300x300 < sample size: exact
        assert np.allclose(s.low, expected_low)
        rgb, _ = reader.read_rgb((10, 10, 4, 4))
    assert rgb[0, 0, 0] == _unit(raw[0, 10, 10], s.low[0], s.high[0])


def test_thirteen_bands_without_descriptions_are_refused_with_the_band_list(geo, tmp_path):
    path = _copy(
        geo / "sentinel" / "spain_7370579_s2_l1c_13band.tif",
        tmp_path / "anon.tif",
        window=rasterio.windows.Window(0, 0, 16, 16),
        descriptions=None,
    )
    with pytest.raises(ValueError) as err:
        RasterReader(path)
    message = str(err.value)
    assert "anon.tif" in message and "13 bands" in message
    assert "1: (no description), int16" in message and "13: (no description), int16" in message
    for preset in list_band_presets():
        assert preset in message
    # With the preset the same file reads: 13 bands without names match the L1C layout.
    with RasterReader(path, preset="sentinel2") as reader:
        assert reader.selection.indices == (3, 2, 1)


def test_descriptions_alone_resolve_and_ambiguity_is_an_error():
    assert resolve_preset(["VV", "VH"]).preset == "sentinel1"
    assert resolve_preset(["B02", "B03", "B04", "B8A"]).indices == (2, 1, 0)  # B8A: only Sentinel-2
    landsat = resolve_preset([f"SR_B{i}" for i in range(1, 8)])
    assert landsat.preset == "landsat8" and landsat.indices == (3, 2, 1)
    assert landsat.stretch == Stretch.fixed(7273.0, 18182.0)
    with pytest.raises(ValueError, match="several presets"):
        resolve_preset(["B1", "B2", "B3", "B4", "B5"])  # Sentinel-2 or Landsat
    with pytest.raises(ValueError, match="band index 5 is out of range"):
        resolve_preset(["a", "b", "c"], bands=[5, 1, 0])


# -------------------------------------------------------------------------------------------- masks and dtypes
def test_alpha_band_masks_the_drone_orthomosaic(geo):
    path = geo / "aerial" / "drone_orthomosaic_rgba.tif"
    with rasterio.open(path) as src:
        raw = src.read()
    with RasterReader(path) as reader:
        assert reader.selection.indices == (0, 1, 2)  # the alpha band is a mask, not a colour
        rgb, valid = reader.read_rgb()
    assert np.array_equal(valid, raw[3] > 0)
    assert (rgb[~valid] == 0).all()
    assert np.array_equal(rgb[valid], np.moveaxis(raw[:3], 0, -1)[valid])  # uint8 passes unchanged


def test_nodata_value_and_window_past_the_edge(geo):
    path = geo / "landsat" / "rasterio_RGB.byte.tif"
    with rasterio.open(path) as src:
        raw = src.read()
    with RasterReader(path) as reader:
        rgb, valid = reader.read_rgb((700, 600, 200, 200))  # 91 x 118 pixels inside
    inside = raw[:, 600:718, 700:791]
    assert np.array_equal(valid[:118, :91], (inside != 0).all(axis=0))
    assert not valid[118:].any() and not valid[:, 91:].any()
    assert (rgb[118:] == 0).all()


def test_uint16_int16_and_complex_rasters_read(geo):
    for name in ("landsat/mosaic_cog1.tif", "spacenet/landsat_albers_custom_crs.tif", "spacenet/sar_hh.tif"):
        with RasterReader(geo / name) as reader:
            rgb, valid = reader.read_rgb((reader.width // 2, reader.height // 2, 64, 64))
            assert rgb.dtype == np.uint8 and rgb.shape == (64, 64, 3)
            assert valid.any()
    with rasterio.open(geo / "spacenet" / "sar_hh.tif") as src:
        z = src.read(1)
    with RasterReader(geo / "spacenet" / "sar_hh.tif") as reader:
        s = reader.selection.stretch
        rgb, _ = reader.read_rgb((0, 0, 200, 200))
    assert rgb[150, 120, 0] == _unit(np.abs(z[150, 120]), s.low[0], s.high[0])  # amplitude |z|


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.tif"):
        RasterReader(tmp_path / "nope.tif")


# ----------------------------------------------------------------------------------------------------- geometry
def test_custom_wkt_crs_footprints_round_trip(geo):
    path = geo / "spacenet" / "landsat_albers_custom_crs.tif"
    with RasterReader(path) as reader:
        assert reader.crs is not None and reader.crs.to_epsg() is None  # custom WKT, no EPSG code
        tiles = list(iter_tiles(reader, "3840m"))  # 30 m pixels: 128 px
        assert reader.crs.is_projected
    assert len(tiles) == 16 and tiles[0].window == (0, 0, 128, 128)
    t = tiles[5]
    assert t.transform == reader.transform @ Affine.translation(128, 128)
    back = rasterio.warp.transform_geom(
        "EPSG:4326", reader.crs, {"type": "Polygon", "coordinates": t.footprint_lonlat}
    )
    assert np.allclose(back["coordinates"][0], t.footprint, atol=1e-3)
    west, south, east, north = t.bbox_lonlat
    lons = [p[0] for p in t.footprint_lonlat[0]]
    assert west <= min(lons) + 1e-9 and east >= max(lons) - 1e-9 and -110 < west < -100 and 40 < south < 45


def test_rotated_geotransform_footprint_is_the_affine_of_the_corners(geo):
    path = geo / "spacenet" / "sar_hh.tif"
    with RasterReader(path) as reader:
        assert reader.is_rotated
        a, b, c, d, e, f = reader.transform[:6]
        tile = next(iter(iter_tiles(reader, 100, min_valid=0.0)))
    corners = [(0, 0), (100, 0), (100, 100), (0, 100), (0, 0)]
    expected = [(a * col + b * row + c, d * col + e * row + f) for col, row in corners]
    assert np.allclose(tile.footprint, expected)
    xs = [p[0] for p in expected]
    assert tile.bounds[0] == pytest.approx(min(xs))


def test_tile_grid_counts_and_cell_transform():
    grid = TileGrid(1000, 500, 224, overlap=24)
    assert grid.stride == 200
    assert (grid.n_cols, grid.n_rows) == (math.ceil((1000 - 224) / 200) + 1, math.ceil((500 - 224) / 200) + 1)
    assert len(grid) == 5 * 3
    assert grid.window(7) == (400, 200, 224, 224)
    t = Affine(2.0, 0.0, 1000.0, 0.0, -2.0, 5000.0)
    cell = grid.cell_transform(t)
    # One cell per tile, 200 px = 400 m wide, centred on the tile: first cell starts 12 px = 24 m in.
    assert cell == Affine(400.0, 0.0, 1024.0, 0.0, -400.0, 4976.0)
    assert len(TileGrid(224, 224, 224)) == 1 and len(TileGrid(225, 10, 224)) == 2
    with pytest.raises(ValueError, match="overlap"):
        TileGrid(100, 100, 10, overlap=10)


def test_lengths_in_metres(geo):
    with RasterReader(geo / "aerial" / "colorado_0.15m.tif") as reader:
        assert length_to_pixels("15m", reader) == round(15 / reader.pixel_size[0])
    with RasterReader(geo / "sentinel" / "spain_7370579_s2_l1c_13band.tif") as reader:
        with pytest.raises(ValueError, match="geographic"):
            length_to_pixels("100m", reader)


def test_mostly_nodata_tiles_are_skipped_and_counted(geo):
    path = geo / "landsat" / "rasterio_RGB.byte.tif"  # 791 x 718, nodata 0 around the scene's footprint
    with rasterio.open(path) as src:
        valid = (src.read() != 0).all(axis=0)
    with RasterReader(path) as reader:
        tiles = iter_tiles(reader, 128, min_valid=0.5)
        read = {t.index: t for t in tiles}
        grid = tiles.grid
    expected_skipped, fractions = [], {}
    for i, (col, row, w, h) in enumerate(grid.windows()):
        area = valid[row : row + h, col : col + w]  # numpy cuts at the edge: the tile's part inside the scene
        fractions[i] = area.sum() / area.size  # the edge is not nodata
        if fractions[i] < 0.5:
            expected_skipped.append(i)
    assert tiles.skipped == expected_skipped and 0 < tiles.n_skipped < len(grid)
    assert list(read) == [i for i in range(len(grid)) if i not in expected_skipped]
    assert tiles.report()["skipped_mostly_nodata"] == len(expected_skipped)
    assert tiles.valid_fractions == pytest.approx(fractions)
    # Edge tiles are read moved back inside the scene (791 - 128 = 663, 718 - 128 = 590).
    assert {t.read_window[:2] for t in read.values() if t.window[0] + 128 > 791} <= {
        (663, r) for r in range(719)
    }
    assert all(t.read_window[0] + 128 <= 791 and t.read_window[1] + 128 <= 718 for t in read.values())


def test_edge_tiles_are_whole_tiles_of_the_scene_and_not_skipped(geo):
    """A 512 px scene without nodata cut into 224 px tiles: 3 x 3 tiles, all kept (the grid's last column and row
    reach 160 px past the edge; they are read moved back inside the scene, at 288 = 512 - 224)."""
    path = geo / "sentinel" / "spain_7370579_s2_l1c_13band.tif"
    with rasterio.open(path) as src:
        assert (src.read([4, 3, 2]) != 0).all()  # no nodata pixel in the picture's bands
    with RasterReader(path) as reader:
        full, _ = reader.read_rgb()
        tiles = iter_tiles(reader, 224, min_valid=0.5)
        got = list(tiles)
    assert len(tiles.grid) == 9 and len(got) == 9 and tiles.skipped == []
    assert [t.window[:2] for t in got] == [(c, r) for r in (0, 224, 448) for c in (0, 224, 448)]
    assert [t.read_window[:2] for t in got] == [(c, r) for r in (0, 224, 288) for c in (0, 224, 288)]
    assert all(t.valid_fraction == 1.0 and t.valid.all() for t in got)
    corner = got[-1]
    assert np.array_equal(corner.rgb, full[288:512, 288:512])  # the scene's pixels, no black padding
    assert corner.transform == reader.transform @ Affine.translation(288, 288)
    # The footprint is the tile's cell inside the scene: 448..512.
    t = reader.transform
    assert corner.bounds == pytest.approx(
        (t.c + 448 * t.a, t.f + 512 * t.e, t.c + 512 * t.a, t.f + 448 * t.e)
    )
    assert corner.geojson_feature()["properties"]["read_window"] == [288, 288, 224, 224]


def test_edge_rule_helpers_against_hand_computation(geo):
    from modeling_rsmclip.geo.tiling import clamp_window, keep_tile, read_tile_pixels

    assert clamp_window((448, 448, 224, 224), 512, 512) == (288, 288, 224, 224)
    assert clamp_window((0, 224, 224, 224), 512, 300) == (0, 76, 224, 224)
    assert clamp_window((0, 0, 224, 224), 100, 512) == (0, 0, 224, 224)  # narrower than a tile: padded
    grid = TileGrid(450, 230, 224, overlap=0)
    assert grid.read_windows() == [(0, 0, 224, 224), (224, 0, 224, 224), (226, 0, 224, 224),
                                   (0, 6, 224, 224), (224, 6, 224, 224), (226, 6, 224, 224)]  # fmt: skip
    assert keep_tile(0.5, 0.5) and not keep_tile(0.49, 0.5) and not keep_tile(0.0, 0.0)

    path = geo / "landsat" / "rasterio_RGB.byte.tif"  # 791 x 718, nodata 0
    with rasterio.open(path) as src:
        valid = (src.read() != 0).all(axis=0)
    with RasterReader(path) as reader:
        edge = read_tile_pixels(reader, (700, 600, 200, 200))  # 91 x 118 of it inside the scene
        small = read_tile_pixels(reader, (0, 0, 1000, 1000))  # larger than the scene: padded
        outside = read_tile_pixels(reader, (800, 0, 100, 100))
    assert edge.read_window == (591, 518, 200, 200)
    assert np.array_equal(edge.valid, valid[518:718, 591:791])
    assert edge.valid_fraction == pytest.approx(valid[600:718, 700:791].mean())
    assert small.read_window == (0, 0, 1000, 1000) and small.valid_fraction == pytest.approx(valid.mean())
    assert not small.valid[718:].any() and not small.valid[:, 791:].any()
    assert outside.valid_fraction == 0.0


def test_raster_georeferenced_by_gcps_only_is_refused_clearly(tmp_path):
    from rasterio.control import GroundControlPoint

    path = tmp_path / "gcps.tif"
    gcps = [
        GroundControlPoint(0, 0, 5e5, 4.1e6),
        GroundControlPoint(0, 9, 5e5, 4.1e6 - 3),
        GroundControlPoint(9, 0, 5e5 + 3, 4.1e6),
    ]
    profile = dict(driver="GTiff", width=10, height=10, count=3, dtype="uint8", gcps=gcps, crs="EPSG:32611")
    with rasterio.open(path, "w", **profile) as out:
        out.write(np.ones((3, 10, 10), np.uint8))
    with pytest.raises(ValueError, match="gcps.tif: georeferenced by ground control points only"):
        RasterReader(path)
