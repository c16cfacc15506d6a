"""STAC: searching a real STAC API (stac-fastapi-pgstac on PostgreSQL, started by the fixtures on 127.0.0.1) and the
same items as a static catalog, an item collection and single items; choosing each item's bands from its own
metadata whatever its asset keys; and catalogs that fail. The items describe the sample archive's COGs
(`geo.sample_archive`), served by `RangeServer`."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio", reason='needs rasterio: pip install "rsmclip[geo]"')
pystac = pytest.importorskip("pystac", reason='needs pystac: pip install "rsmclip[stac]"')

from modeling_rsmclip.geo.cloud import RetryPolicy  # noqa: E402
from modeling_rsmclip.geo.sample_archive import SENTINEL2_ITEMS  # noqa: E402
from modeling_rsmclip.geo.stac import (  # noqa: E402
    MissingBandsError,
    StacError,
    StacQuery,
    asset_bands,
    guess_preset,
    item_record,
    open_item,
    parse_datetime,
    search_items,
    select_bands,
)

S2 = "sentinel-2-l1c-sample"
FAST = RetryPolicy(attempts=3, delay=0.05)


def _item(stac_item_dicts, item_id: str, collection: str = S2):
    data = next(d for d in stac_item_dicts if d["id"] == item_id and d["collection"] == collection)
    return pystac.Item.from_dict(json.loads(json.dumps(data)))


def _quadrant_bounds(cloud_archive, item_id: str) -> list[float]:
    return cloud_archive.scene(item_id).bbox


def _inside(box: list[float], margin: float = 0.25) -> list[float]:
    """A small box inside ``box`` (its centre part)."""
    w, s, e, n = box
    dx, dy = (e - w) * margin, (n - s) * margin
    return [w + dx, s + dy, e - dx, n - dy]


# ---------------------------------------------------------------------------------------------- band choice
@pytest.mark.parametrize("collection", [S2, S2 + "-common"])
def test_sentinel2_bands_are_found_by_common_name_whatever_the_asset_keys(
    stac_item_dicts, cloud_archive, collection
):
    item = _item(stac_item_dicts, "s2-nw", collection)
    assert ("B04" in item.assets) == (collection == S2) and ("red" in item.assets) == (collection != S2)
    preset, sources = select_bands(item, "sentinel2")
    assert preset == "sentinel2"
    assert [s.href.rsplit("/", 1)[1] for s in sources] == ["B04.tif", "B03.tif", "B02.tif"]  # not visual.tif
    assert all(s.scale == 1e-4 and s.offset == 0.0 and s.nodata == 0.0 and s.band == 1 for s in sources)
    assert guess_preset(item) == "sentinel2"  # from the platform property
    # Explicit bands by common name or band id: the same files either way.
    _, false_colour = select_bands(item, "sentinel2", bands=["nir", "red", "green"])
    _, by_id = select_bands(item, "sentinel2", bands=["B08", "B04", "B03"])
    assert [s.href for s in false_colour] == [s.href for s in by_id]
    assert [s.href.rsplit("/", 1)[1] for s in by_id] == ["B08.tif", "B04.tif", "B03.tif"]
    # The rgb preset takes the display asset: one three-band file.
    _, visual = select_bands(item, "rgb")
    assert {s.href.rsplit("/", 1)[1] for s in visual} == {"visual.tif"} and [s.band for s in visual] == [
        1,
        2,
        3,
    ]


def test_both_naming_styles_read_the_same_picture_as_the_13_band_chip(shared_data, stac_item_dicts):
    chip = shared_data / "geo" / "sentinel" / "spain_7370579_s2_l1c_13band.tif"
    with rasterio.open(chip) as src:
        raw = src.read([4, 3, 2], window=rasterio.windows.Window(0, 256, 256, 256)).astype(np.float64)  # SW
    expected = np.rint(np.clip(raw / 3000.0, 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0)
    expected[(raw == 0).any(axis=0)] = 0
    pictures = []
    for collection in (S2, S2 + "-common"):
        with open_item(_item(stac_item_dicts, "s2-sw", collection), "sentinel2") as reader:
            assert reader.name == "STAC item s2-sw"
            pictures.append(reader.read_rgb()[0])
    np.testing.assert_array_equal(pictures[0], expected)
    np.testing.assert_array_equal(pictures[1], expected)


def test_multi_band_assets_and_polarisations(stac_item_dicts, cloud_archive):
    landsat = _item(stac_item_dicts, "ls-2", "landsat-rgb-sample")
    preset, sources = select_bands(landsat, "landsat8")
    assert (
        preset == "landsat8"
        and len({s.href for s in sources}) == 1
        and [s.band for s in sources] == [1, 2, 3]
    )
    with open_item(landsat, "landsat8") as reader, rasterio.open(cloud_archive.path("ls-2", "scene")) as src:
        data, valid = reader.read_bands((100, 200, 128, 96))
        np.testing.assert_array_equal(data, src.read(window=rasterio.windows.Window(100, 200, 128, 96)))
    sar = _item(stac_item_dicts, "s1-spain", "sentinel-1-sample")
    assert guess_preset(sar) == "sentinel1"
    preset, sources = select_bands(sar)
    assert preset == "sentinel1" and [s.key for s in sources] == ["vv", "vh"]
    assert all(np.isnan(s.nodata) for s in sources)
    with open_item(sar) as reader:
        assert reader.selection.composite == "sentinel1"
        _, valid = reader.read_bands()
    with (
        rasterio.open(cloud_archive.path("s1-spain", "vv")) as vv,
        rasterio.open(cloud_archive.path("s1-spain", "vh")) as vh,
    ):
        np.testing.assert_array_equal(valid, np.isfinite(vv.read(1)) & np.isfinite(vh.read(1)))


def test_an_item_without_the_wanted_bands_is_refused_with_its_asset_keys(stac_item_dicts):
    data = json.loads(
        json.dumps(next(d for d in stac_item_dicts if d["id"] == "s2-ne" and d["collection"] == S2))
    )
    data["assets"] = {k: v for k, v in data["assets"].items() if k in ("B01", "B05", "B11")}
    data["assets"]["thumbnail"] = {
        "href": "https://example.invalid/t.png",
        "type": "image/png",
        "roles": ["thumbnail"],
    }
    item = pystac.Item.from_dict(data)
    with pytest.raises(MissingBandsError) as caught:
        select_bands(item, "sentinel2")
    message = str(caught.value)
    assert "s2-ne" in message and "red (B4)" in message and "B01, B05, B11, thumbnail" in message
    assert caught.value.assets == ["B01", "B05", "B11", "thumbnail"]
    assert [b.key for b in asset_bands(item)] == ["B01", "B05", "B11"]  # the thumbnail is no band


def test_stac_1_1_bands_are_read_too(stac_item_dicts):
    data = json.loads(
        json.dumps(next(d for d in stac_item_dicts if d["id"] == "s2-nw" and d["collection"] == S2))
    )
    for asset in data["assets"].values():  # STAC 1.1: one "bands" list, extension fields prefixed
        eo, raster = asset.pop("eo:bands"), asset.pop("raster:bands", [{}] * len(asset.get("eo:bands", [{}])))
        asset["bands"] = [
            {
                "name": e["name"],
                "eo:common_name": e["common_name"],
                **{f"raster:{k}": v for k, v in r.items()},
            }
            for e, r in zip(eo, raster)
        ]
    data["stac_version"] = "1.1.0"
    _, sources = select_bands(pystac.Item.from_dict(data), "sentinel2")
    assert [s.key for s in sources] == ["B04", "B03", "B02"] and sources[0].scale == 1e-4


# ---------------------------------------------------------------------------------------------------- search
@pytest.fixture(scope="module")
def catalogs(stac_api, static_catalog, range_server, cloud_archive):
    """The same items behind four doors: the STAC API, the static catalog over HTTP and on disk, the item
    collection JSON on disk."""
    return {
        "api": stac_api.url,
        "static-http": range_server.url(static_catalog),
        "static-file": str(static_catalog),
        "item-collection": str(static_catalog.parent / "items.json"),
    }


def _ids(catalogs, door, **query) -> list[str]:
    return [item.id for item in search_items(StacQuery(catalogs[door], **query), retry=FAST)]


DOORS = ["api", "static-http", "static-file", "item-collection"]


@pytest.mark.parametrize("door", DOORS)
def test_filters_select_exactly_the_expected_items(catalogs, cloud_archive, door):
    # All four quadrants, in acquisition order.
    assert _ids(catalogs, door, collections=[S2]) == ["s2-nw", "s2-ne", "s2-sw", "s2-se"]
    # bbox inside one quadrant, then one over the western half.
    assert _ids(catalogs, door, collections=[S2], bbox=_inside(_quadrant_bounds(cloud_archive, "s2-se"))) == [
        "s2-se"
    ]
    nw, sw = _quadrant_bounds(cloud_archive, "s2-nw"), _quadrant_bounds(cloud_archive, "s2-sw")
    west = [nw[0] + 1e-4, sw[1] + 1e-4, nw[2] - 1e-4, nw[3] - 1e-4]
    assert _ids(catalogs, door, collections=[S2], bbox=west) == ["s2-nw", "s2-sw"]
    # datetime: a summer interval; an open-ended one; one day.
    assert _ids(catalogs, door, collections=[S2], datetime="2024-06-01/2024-07-31") == ["s2-ne", "s2-sw"]
    assert _ids(catalogs, door, collections=[S2], datetime="2024-07-01/..") == ["s2-sw", "s2-se"]
    assert _ids(catalogs, door, collections=[S2], datetime="2024-05-10") == ["s2-nw"]
    # Cloud cover (CQL2 text and JSON), alone and with a date range.
    low = [i for i, (_, _, _, cc) in SENTINEL2_ITEMS.items() if cc < 20]
    assert _ids(catalogs, door, collections=[S2], filter="eo:cloud_cover < 20") == low == ["s2-nw", "s2-sw"]
    cql_json = {"op": "<=", "args": [{"property": "eo:cloud_cover"}, 35]}
    assert _ids(catalogs, door, collections=[S2], filter=cql_json, datetime="2024-06-01/..") == [
        "s2-ne",
        "s2-sw",
    ]
    # max_items keeps the first items of the fixed order.
    assert _ids(catalogs, door, collections=[S2], max_items=2) == ["s2-nw", "s2-ne"]
    # Several collections: acquisition time first, then collection, then id.
    both = _ids(catalogs, door, collections=["landsat-rgb-sample", "sentinel-1-sample"])
    assert both == ["ls-1", "ls-2", "s1-spain"]
    everything = _ids(catalogs, door)
    assert len(everything) == 12 and everything[:2] == ["ucm-mosaic", "ls-1"]
    assert everything.count("s2-nw") == 2  # one per naming style (two collections)


def test_every_door_gives_the_same_items(catalogs):
    results = {}
    for door in DOORS:
        items = search_items(StacQuery(catalogs[door], collections=[S2 + "-common"]), retry=FAST)
        results[door] = [(i.id, i.collection_id, sorted(i.assets), i.assets["red"].href) for i in items]
    assert all(r == results["api"] for r in results.values()), results
    assert [r[0] for r in results["api"]] == ["s2-nw", "s2-ne", "s2-sw", "s2-se"]


def test_item_records_carry_what_an_index_needs(catalogs, range_server):
    item = search_items(StacQuery(catalogs["api"], collections=[S2], datetime="2024-06-15"), retry=FAST)[0]
    _, sources = select_bands(item, "sentinel2")
    record = item_record(item, sources)
    assert record["stac_item"] == "s2-ne" and record["stac_collection"] == S2
    assert record["datetime"] == "2024-06-15T10:30:00Z" and record["cloud_cover"] == 35.0
    assert record["stac_item_href"].startswith(catalogs["api"]) and "s2-ne" in record["stac_item_href"]
    assert json.loads(record["asset_hrefs"]) == [
        f"{range_server.base_url}/sentinel2/s2-ne/{b}.tif" for b in ("B04", "B03", "B02")
    ]
    assert json.loads(record["item_geometry"])["type"] == "Polygon" and len(record["item_bbox"]) == 4


# ---------------------------------------------------------------------------------------------------- faults
def test_a_stac_api_that_is_down_is_a_clear_error(range_server):
    url = range_server.refused_url("stac")
    with pytest.raises(StacError) as caught:
        search_items(StacQuery(url, collections=[S2]), retry=FAST)
    assert url in str(caught.value) and "cannot read the STAC catalog" in str(caught.value)


def test_a_catalog_answering_errors_is_retried_then_named(cloud_server, static_catalog):
    url = cloud_server.url(static_catalog)
    cloud_server.fail(static_catalog, 2, status=503)  # two 503s, then the catalog answers
    ids = [i.id for i in search_items(StacQuery(url, collections=["landsat-rgb-sample"]), retry=FAST)]
    assert ids == ["ls-1", "ls-2"] and cloud_server.failures[cloud_server.key(static_catalog)] == 2
    cloud_server.fail(static_catalog, 100, status=500)
    with pytest.raises(StacError, match="500"):
        search_items(StacQuery(url + f"?x={uuid.uuid4().hex}"), retry=FAST)
    assert cloud_server.failures[cloud_server.key(static_catalog)] == 2 + FAST.attempts


def test_bad_queries_are_refused_naming_the_value(tmp_path):
    with pytest.raises(ValueError, match="CQL2 filter 'eo:cloud_cover <'"):
        StacQuery("catalog.json", filter="eo:cloud_cover <")
    with pytest.raises(ValueError, match="2024-13-01"):
        StacQuery("catalog.json", datetime="2024-13-01/2024-12-31")
    with pytest.raises(ValueError, match="ends before it starts"):
        StacQuery("catalog.json", datetime="2024-08-01/2024-06-01")
    with pytest.raises(ValueError, match="west,south,east,north"):
        StacQuery("catalog.json", bbox=[10, 50, 11])
    with pytest.raises(FileNotFoundError, match="nothing.json"):
        search_items(StacQuery(str(tmp_path / "nothing.json")))
    (tmp_path / "x.json").write_text('{"type": "Something"}')
    with pytest.raises(StacError, match="not STAC"):
        search_items(StacQuery(str(tmp_path / "x.json")))
    start, end = parse_datetime("2024-06-01/2024-06-30")
    assert (start.isoformat(), end.isoformat()) == (
        "2024-06-01T00:00:00+00:00",
        "2024-06-30T23:59:59.999999+00:00",
    )
