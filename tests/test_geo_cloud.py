"""Reading cloud-optimised GeoTIFFs over HTTP: the same pixels as the local files, only the needed bytes, the matching
overview for coarse reads, bands of several files on one grid, the GDAL settings, signing, and every network fault
retried and then named. The COGs are made from shared/data/geo and served on 127.0.0.1 by `RangeServer`
(tests/_cloud_fixtures.py)."""

from __future__ import annotations

import os
import uuid

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio", reason='needs rasterio: pip install "rsmclip[geo]"')

from modeling_rsmclip.geo.bands import Stretch, get_band_preset, rescale_stretch  # noqa: E402
from modeling_rsmclip.geo.cloud import (  # noqa: E402
    CLOUD_GDAL_OPTIONS,
    RemoteReadError,
    RetryPolicy,
    cloud_env,
    vsi_path,
)
from modeling_rsmclip.geo.raster import BandSource, RasterReader  # noqa: E402
from modeling_rsmclip.geo.tiling import iter_tiles  # noqa: E402

# Quick retries for the fault tests: 2 attempts of ours, 1 retry of each HTTP request by GDAL.
FAST = RetryPolicy(attempts=2, delay=0.05)
FAST_GDAL = {"GDAL_HTTP_MAX_RETRY": "1", "GDAL_HTTP_RETRY_DELAY": "0.05"}


def fresh(url: str) -> str:
    """The same file under a URL GDAL has never seen (its cache is per URL; the server ignores the query)."""
    return f"{url}?fresh={uuid.uuid4().hex}"


def _unit(x: np.ndarray, low: float, high: float) -> np.ndarray:
    return np.rint(np.clip((x.astype(np.float64) - low) / (high - low), 0, 1) * 255).astype(np.uint8)


# -------------------------------------------------------------------------------------------- same pixels
@pytest.mark.parametrize(
    "item,key,windows",
    [
        ("s2-nw", "B04", [(0, 0, 128, 128), (100, 37, 64, 200), (200, 200, 100, 100)]),  # int16, nodata 0
        ("s1-spain", "vv", [(0, 0, 512, 512), (300, 410, 150, 150)]),  # float32, NaN nodata
        ("ls-1", "scene", [(0, 0, 256, 256), (700, 700, 128, 128)]),  # 3-band uint16, past the edge
        ("ucm-mosaic", "image", [(256, 512, 256, 256), (1000, 3, 300, 77)]),  # RGB uint8
    ],
)
def test_windows_over_http_equal_the_local_windows(cloud_archive, cloud_server, item, key, windows):
    local = cloud_archive.path(item, key)
    url = fresh(cloud_server.url(local))
    with RasterReader(local) as near, RasterReader(url) as far:
        assert far.is_remote and not near.is_remote
        assert (far.crs, far.transform, far.width, far.height) == (
            near.crs,
            near.transform,
            near.width,
            near.height,
        )
        assert far.selection == near.selection
        indexes = [i + 1 for i in far.selection.indices]
        for window in windows:
            (a, va), (b, vb) = near.read_bands(window), far.read_bands(window)
            np.testing.assert_array_equal(b, a)
            np.testing.assert_array_equal(vb, va)
            np.testing.assert_array_equal(far.read_rgb(window)[0], near.read_rgb(window)[0])
            if window == windows[0]:  # inside the raster: rasterio itself on the local file is the reference
                with rasterio.open(local) as src:
                    expected = src.read(indexes, window=rasterio.windows.Window(*window))
                np.testing.assert_array_equal(b, expected)
    assert cloud_server.sent(local) > 0


def test_reading_one_tile_moves_a_small_fraction_of_the_scene(cloud_archive, cloud_server):
    local = cloud_archive.path("ucm-mosaic", "image")
    size = os.path.getsize(local)
    url = fresh(cloud_server.url(local))
    with RasterReader(url) as reader:
        opened = cloud_server.sent(local)
        rgb, valid = reader.read_rgb((768, 1024, 256, 256))  # exactly one 256 x 256 block (row 4, col 3)
        with rasterio.open(local) as src:
            block = src.block_size(1, 4, 3)  # bytes of that block in the file (pixel-interleaved: all bands)
            expected = src.read(window=rasterio.windows.Window(768, 1024, 256, 256)).transpose(1, 2, 0)
    sent = cloud_server.sent(local)
    np.testing.assert_array_equal(rgb, expected)
    assert valid.all()
    assert sent - opened >= block  # the block itself came over the wire ...
    assert sent < 0.05 * size, (sent, size)  # ... and, with the header, under 5% of the 64-block scene
    assert all(first > 0 or last < 65536 for _, first, last in cloud_server.ranges)  # ranges, never the file


def test_a_coarse_read_comes_from_the_matching_overview(cloud_archive, cloud_server):
    local = cloud_archive.path("ucm-mosaic", "image")
    url = fresh(cloud_server.url(local))
    with rasterio.open(local) as src:
        assert src.overviews(1) == [2, 4, 8]
    with rasterio.open(local, overview_level=2) as ov:  # factor 8: 256 x 256
        expected = ov.read()
    with RasterReader(url) as reader:
        data, valid = reader.read_bands(None, out_shape=(256, 256))
        assert reader.overview_factors == [2, 4, 8]
    np.testing.assert_array_equal(data, expected)
    assert valid.all()
    assert cloud_server.sent(local) < 0.1 * os.path.getsize(local)

    # Tiling with a tile ground size of 1024 px and the model's 224 px reads each tile from an overview.
    cloud_server.reset_counts()
    with RasterReader(fresh(cloud_server.url(local))) as reader:
        tiles = list(iter_tiles(reader, 1024, read_size=256))
    with rasterio.open(local, overview_level=1) as ov:  # factor 4: each 1024-px tile is 256 px there
        reference = ov.read()
    assert [t.rgb.shape for t in tiles] == [(256, 256, 3)] * 4
    for tile in tiles:
        r, c = tile.row * 256, tile.col * 256
        np.testing.assert_array_equal(tile.rgb, reference[:, r : r + 256, c : c + 256].transpose(1, 2, 0))
        assert tile.transform.a == 4.0 and tile.bounds[2] - tile.bounds[0] == 1024.0
    assert cloud_server.sent(local) < 0.15 * os.path.getsize(local)


# ------------------------------------------------------------------------------------- bands of several files
def _s2_sources(cloud_archive, server, item, keys, **meta):
    return [
        BandSource(fresh(server.url(cloud_archive.path(item, k))), name=k.replace("B0", "B"), key=k, **meta)
        for k in keys
    ]


def test_single_band_cogs_read_together_equal_the_13_band_file(shared_data, cloud_archive, cloud_server):
    chip = shared_data / "geo" / "sentinel" / "spain_7370579_s2_l1c_13band.tif"
    with rasterio.open(chip) as src:
        raw = src.read([4, 3, 2], window=rasterio.windows.Window(256, 0, 256, 256))  # the NE quadrant
    sources = _s2_sources(cloud_archive, cloud_server, "s2-ne", ["B04", "B03", "B02"])
    with RasterReader(sources, preset="sentinel2") as reader:
        assert reader.selection.preset == "sentinel2" and reader.selection.stretch == Stretch.fixed(0, 3000)
        data, valid = reader.read_bands()
        rgb, _ = reader.read_rgb((10, 20, 100, 50))
    np.testing.assert_array_equal(data, raw)
    np.testing.assert_array_equal(valid, (raw != 0).all(axis=0))
    expected = np.stack([_unit(raw[c, 20:70, 10:110], 0, 3000) for c in range(3)], axis=-1)
    np.testing.assert_array_equal(rgb, expected)


def test_coarser_bands_are_resampled_onto_the_finest_grid(cloud_archive, cloud_server):
    with rasterio.open(cloud_archive.path("s2-nw", "B8A")) as src:
        coarse = src.read(1).astype(np.float64)  # 20 m: 128 x 128
    keys = ["B8A", "B04", "B03"]  # a false-colour choice mixing 20 m and 10 m bands
    with RasterReader(
        _s2_sources(cloud_archive, cloud_server, "s2-nw", keys), resampling="nearest"
    ) as reader:
        assert (reader.width, reader.height) == (256, 256)  # the 10 m grid
        nearest, _ = reader.read_bands()
    np.testing.assert_array_equal(nearest[0], np.repeat(np.repeat(coarse, 2, 0), 2, 1).astype(np.int16))

    def upsample(a: np.ndarray, axis: int) -> np.ndarray:
        """Bilinear x2 with pixel centres aligned: fine pixel 2k takes 1/4 of k-1 and 3/4 of k, 2k+1 3/4 of k and
        1/4 of k+1."""
        a = np.moveaxis(a, axis, 0)
        prev, nxt = np.concatenate([a[:1], a[:-1]]), np.concatenate([a[1:], a[-1:]])
        out = np.empty((2 * len(a), *a.shape[1:]))
        out[0::2], out[1::2] = 0.25 * prev + 0.75 * a, 0.75 * a + 0.25 * nxt
        return np.moveaxis(out, 0, axis)

    with RasterReader(_s2_sources(cloud_archive, cloud_server, "s2-nw", keys)) as reader:  # bilinear
        bilinear, _ = reader.read_bands((50, 60, 100, 120))
    reference = upsample(upsample(coarse, 0), 1)[60:180, 50:150]
    assert np.abs(bilinear[0] - reference).max() <= 0.5  # int16 rounding only
    with rasterio.open(cloud_archive.path("s2-nw", "B04")) as src:
        np.testing.assert_array_equal(
            bilinear[1], src.read(1, window=rasterio.windows.Window(50, 60, 100, 120))
        )


def test_bands_in_different_crs_are_refused(cloud_archive):
    sources = [
        BandSource(str(cloud_archive.path("s2-nw", "B04")), name="B4"),
        BandSource(str(cloud_archive.path("ls-1", "scene")), band=2, name="B3"),
        BandSource(str(cloud_archive.path("s2-nw", "B02")), name="B2"),
    ]
    with pytest.raises(ValueError, match="different CRSs"):
        RasterReader(sources, preset="sentinel2")


def test_declared_scale_and_offset_keep_the_preset_in_reflectance(cloud_archive):
    # Sentinel-2 processing baseline 04.00: DN = 10000 x reflectance + 1000, declared as scale 1e-4, offset -0.1.
    sources = [
        BandSource(str(cloud_archive.path("s2-sw", k)), name=k.replace("B0", "B"), scale=1e-4, offset=-0.1)
        for k in ("B04", "B03", "B02")
    ]
    with RasterReader(sources, preset="sentinel2") as reader:
        np.testing.assert_allclose(reader.selection.stretch.low, (1000, 1000, 1000))
        np.testing.assert_allclose(reader.selection.stretch.high, (4000, 4000, 4000))
        data, valid = reader.read_bands()
        rgb, _ = reader.read_rgb()
    expected = np.stack([_unit(data[c], 1000, 4000) for c in range(3)], axis=-1)
    expected[~valid] = 0
    np.testing.assert_array_equal(rgb, expected)
    # Landsat Collection 2 Level-2's own scaling changes nothing; a user stretch always wins.
    landsat = get_band_preset("landsat8")
    same = rescale_stretch(landsat, landsat.stretch, [2.75e-5] * 3, [-0.2] * 3)
    np.testing.assert_allclose(same.low, [7273] * 3, atol=0.5)
    np.testing.assert_allclose(same.high, [18182] * 3, atol=0.5)
    with RasterReader(sources, preset="sentinel2", stretch=(0, 5000)) as reader:
        assert reader.selection.stretch == Stretch.fixed(0, 5000)


def test_catalog_nodata_marks_pixels_invalid(cloud_archive):
    path = cloud_archive.path("s2-nw", "B04")
    with rasterio.open(path) as src:
        values = src.read(1)
    marker = int(
        np.bincount(values[values > 0].ravel()).argmax()
    )  # the commonest value, as a declared nodata
    with RasterReader([BandSource(str(path), name="B4", nodata=float(marker))]) as reader:
        _, valid = reader.read_bands()
    np.testing.assert_array_equal(valid, (values != marker) & (values != 0))


# --------------------------------------------------------------------------------------------- GDAL settings
def test_cloud_settings_are_set_and_user_choices_win(monkeypatch):
    for name in ("GDAL_HTTP_MAX_RETRY", "AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    with cloud_env():
        settings = rasterio.env.getenv()
    for name, value in CLOUD_GDAL_OPTIONS.items():
        assert str(settings[name]) == value, name
    with rasterio.Env(GDAL_HTTP_MAX_RETRY="9"), cloud_env():  # an enclosing rasterio.Env wins
        assert str(rasterio.env.getenv()["GDAL_HTTP_MAX_RETRY"]) == "9"
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "7")  # so does the environment
    with cloud_env():
        assert "GDAL_HTTP_MAX_RETRY" not in rasterio.env.getenv()
    with cloud_env({"GDAL_HTTP_MAX_RETRY": "2"}):  # and options passed here win over everything
        assert str(rasterio.env.getenv()["GDAL_HTTP_MAX_RETRY"]) == "2"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")  # credentials: requests are signed, not anonymous
    with cloud_env():
        assert "AWS_NO_SIGN_REQUEST" not in rasterio.env.getenv()
    assert vsi_path("s3://bucket/key.tif") == "/vsis3/bucket/key.tif"
    assert vsi_path("https://host/a.tif") == "/vsicurl/https://host/a.tif"


def test_a_signer_is_applied_before_every_open(cloud_archive, cloud_server):
    local = cloud_archive.path("s2-se", "B02")
    real = cloud_server.url(local)
    calls = []

    def sign(href: str) -> str:
        calls.append(href)
        return href.replace("https://archive.invalid/", cloud_server.base_url + "/") + f"?token=t{len(calls)}"

    href = "https://archive.invalid/" + real.split("/", 3)[3]
    cloud_server.fail(
        local, 2
    )  # GDAL retries once per request: the first open fails, the second is signed anew
    with RasterReader(href, signer=sign, retry=FAST, gdal_options=FAST_GDAL) as reader:
        data, _ = reader.read_bands((0, 0, 64, 64))
    with rasterio.open(local) as src:
        np.testing.assert_array_equal(data[0], src.read(1, window=rasterio.windows.Window(0, 0, 64, 64)))
    assert calls == [href, href]
    assert cloud_server.targets and all("token=t" in t for t in cloud_server.targets)
    assert any("token=t2" in t for t in cloud_server.targets)


# ------------------------------------------------------------------------------------------------- faults
def test_http_500_then_recovery_is_retried_transparently(cloud_archive, cloud_server):
    local = cloud_archive.path("s2-nw", "B03")
    url = fresh(cloud_server.url(local))
    cloud_server.fail(local, 3)  # three 500s: GDAL's retries of the first request, then ours
    with RasterReader(url, retry=FAST, gdal_options=FAST_GDAL) as reader:
        data, _ = reader.read_bands()
    with rasterio.open(local) as src:
        np.testing.assert_array_equal(data[0], src.read(1))
    assert cloud_server.failures[cloud_server.key(local)] == 3


def test_a_window_that_keeps_failing_is_named_after_its_retries(cloud_archive, cloud_server):
    local = cloud_archive.path("ucm-mosaic", "image")
    url = fresh(cloud_server.url(local))
    with RasterReader(url, retry=FAST, gdal_options=FAST_GDAL) as reader:
        cloud_server.fail(local, 1000)
        with pytest.raises(RemoteReadError) as caught:
            reader.read_bands((512, 512, 256, 256))
        cloud_server.clear_faults()
        again, _ = reader.read_bands((512, 512, 256, 256))  # the same reader recovers with the server
    err = caught.value
    assert err.href == url and err.window == (512, 512, 256, 256) and err.attempts == 2
    assert "500" in err.reason and url in str(err) and "[512, 512, 256, 256]" in str(err)
    assert err.to_dict()["window"] == [512, 512, 256, 256]
    assert cloud_server.failures[cloud_server.key(local)] >= 4  # 2 attempts x (1 + 1 GDAL retry)
    with rasterio.open(local) as src:
        np.testing.assert_array_equal(again, src.read(window=rasterio.windows.Window(512, 512, 256, 256)))


def test_unreachable_and_dropping_servers_are_named(cloud_archive, cloud_server):
    calls = []

    def counting(href: str) -> str:
        calls.append(href)
        return href

    refused = cloud_server.refused_url("scene.tif")
    with pytest.raises(RemoteReadError) as caught:
        RasterReader(refused, retry=FAST, gdal_options=FAST_GDAL, signer=counting)
    assert caught.value.href == refused and caught.value.window is None and len(calls) == 2
    assert "connect" in caught.value.reason.lower()

    local = cloud_archive.path("s2-ne", "B04")
    cloud_server.drop(local)
    url = fresh(cloud_server.url(local))
    with pytest.raises(RemoteReadError, match="Empty reply"):
        RasterReader(url, retry=FAST, gdal_options=FAST_GDAL)
    assert cloud_server.failures[cloud_server.key(local)] >= 2


def test_a_truncated_cog_reads_its_first_blocks_and_names_the_lost_ones(cloud_archive, cloud_server):
    local = cloud_archive.path("ucm-mosaic", "image")
    cloud_server.truncate(local, int(os.path.getsize(local) * 0.6))
    url = fresh(cloud_server.url(local))
    with RasterReader(url, retry=FAST, gdal_options=FAST_GDAL) as reader, rasterio.open(local) as src:
        first, _ = reader.read_bands((0, 0, 256, 256))  # stored near the start
        np.testing.assert_array_equal(first, src.read(window=rasterio.windows.Window(0, 0, 256, 256)))
        with pytest.raises(RemoteReadError) as caught:
            reader.read_bands((1792, 1792, 256, 256))  # the last block: past the cut
    assert caught.value.window == (1792, 1792, 256, 256) and caught.value.attempts == 2
