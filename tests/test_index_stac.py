"""Indexing and mapping straight from STAC catalogs and COGs, against the real servers of tests/_cloud_fixtures.py
(stac-fastapi-pgstac on PostgreSQL, a static catalog and COGs served by `RangeServer` on 127.0.0.1): an index built
from the STAC API equals one built from the same COGs as local files, and its tiles equal an independent reading of
the files; filters select exactly the expected items; a killed build resumes; `index add` with a later datetime
embeds only the new items; every fault is retried and then named in report.json, or is a clear error; the metadata
is GeoParquet; `map classify|segment` read only the --bbox window of a remote COG or STAC item."""

from __future__ import annotations

import json
import os
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faiss")
pytest.importorskip("pyarrow")
rasterio = pytest.importorskip("rasterio", reason='needs rasterio: pip install "rsmclip[geo]"')
pystac = pytest.importorskip("pystac", reason='needs pystac: pip install "rsmclip[stac]"')

from _index_fixtures import kill_build_after_shards, shard_embeddings  # noqa: E402

from modeling_rsmclip.geo.cloud import RetryPolicy  # noqa: E402
from modeling_rsmclip.geo.stac import StacError, StacQuery  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
S2 = "sentinel-2-l1c-sample"
QUADRANTS = ["s2-nw", "s2-ne", "s2-sw", "s2-se"]  # acquisition order
TILE = 128
FAST = RetryPolicy(attempts=2, delay=0.05)
FAST_GDAL = {"GDAL_HTTP_MAX_RETRY": "1", "GDAL_HTTP_RETRY_DELAY": "0.05"}
OPTIONS = {
    "tile_size": TILE,
    "preset": "sentinel2",
    "batch_size": 8,
    "num_workers": 0,
    "shard_size": 4,
    "progress": False,
    "retry": FAST,
    "gdal_options": FAST_GDAL,
}
# Columns that name where the files are (the HTTP copy or the local one): compared through the URL -> path mapping.
LOCATION_COLUMNS = ["path", "asset_hrefs", "stac_item_href", "stac_bands", "content_hash"]


def _build(saved_tiny, out: Path, url: str, *, add: bool = False, signer=None, **query):
    from modeling_rsmclip.index import add_to_index, build_index

    model, processor = saved_tiny
    stac = StacQuery(url, **query)
    options = {**OPTIONS, "signer": signer}
    if add:
        return add_to_index(out, [], model=model, processor=processor, stac=stac, **options)
    return build_index(model, out, [], processor=processor, stac=stac, **options)


def _report(index) -> dict:
    return json.loads((index.path / "report.json").read_text())


def _items(index) -> list[str]:
    return list(dict.fromkeys(index.metadata["stac_item"].to_pylist()))


def _item_collection(stac_item_dicts, path: Path, edit=None) -> Path:
    """The Sentinel-2 items (asset keys B04...) as an item collection file, with asset URLs GDAL has not seen in this
    process (a query string the server ignores), after ``edit(items)``."""
    tag = uuid.uuid4().hex[:8]
    items = json.loads(json.dumps([d for d in stac_item_dicts if d["collection"] == S2]))
    for item in items:
        for asset in item["assets"].values():
            asset["href"] += f"?t={tag}"
    if edit is not None:
        edit(items)
    path.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    return path


@pytest.fixture(scope="module")
def saved_tiny(tiny_saved):
    """The tiny model and processor as loaded from their folder (the folder the CLI commands here are given)."""
    from modeling_rsmclip.inference import load_model

    return load_model(str(tiny_saved), device="cpu")


@pytest.fixture(scope="module")
def local_catalog(cloud_archive, tmp_path_factory):
    """A static catalog of the same items whose assets are the local files."""
    from modeling_rsmclip.geo.sample_archive import stac_items, write_static_catalog

    return write_static_catalog(
        stac_items(cloud_archive, str(cloud_archive.root)), tmp_path_factory.mktemp("local") / "catalog"
    )


@pytest.fixture(scope="module")
def api_index(saved_tiny, stac_api, tmp_path_factory):
    """The four Sentinel-2 quadrants from the STAC API: 4 tiles each."""
    return _build(saved_tiny, tmp_path_factory.mktemp("api") / "idx", stac_api.url, collections=[S2])


# ------------------------------------------------------------------------------------------- same index
def test_an_index_from_the_stac_api_equals_one_from_the_local_files(
    saved_tiny, api_index, stac_api, local_catalog, cloud_archive, range_server, tmp_path
):
    local = _build(saved_tiny, tmp_path / "local", str(local_catalog), collections=[S2])
    a, b = api_index.metadata, local.metadata
    assert a.column("id").to_pylist() == b.column("id").to_pylist()
    assert a.column("id").to_pylist()[:4] == [f"{S2}/s2-nw@{c},{r}" for r in (0, TILE) for c in (0, TILE)]
    assert _items(api_index) == QUADRANTS and a.column_names == b.column_names
    for name in a.column_names:
        if name not in LOCATION_COLUMNS:
            assert a.column(name).to_pylist() == b.column(name).to_pylist(), name
    # The locations differ by the server's address only.
    served = [h.replace(range_server.base_url, str(cloud_archive.root)) for h in a["asset_hrefs"].to_pylist()]
    assert served == b["asset_hrefs"].to_pylist()
    assert all(
        h.startswith(f"{stac_api.url}/collections/{S2}/items/") for h in a["stac_item_href"].to_pylist()
    )
    ids_a, emb_a = shard_embeddings(api_index.path)
    ids_b, emb_b = shard_embeddings(local.path)
    assert ids_a == ids_b
    np.testing.assert_allclose(emb_a, emb_b, atol=1e-6)
    # What a row says of its item is the item's own record in the catalog.
    row = next(r for r in a.to_pylist() if r["id"] == f"{S2}/s2-se@128,128")
    assert (row["stac_item"], row["stac_collection"]) == ("s2-se", S2)
    assert (row["datetime"], row["cloud_cover"]) == ("2024-08-25T10:30:00Z", 80.0)
    assert json.loads(row["asset_hrefs"]) == [
        f"{range_server.base_url}/sentinel2/s2-se/{b}.tif" for b in ("B04", "B03", "B02")
    ]
    assert json.loads(row["item_geometry"]) == cloud_archive.scene("s2-se").geometry
    assert api_index.manifest["runs"][0]["stac"] == StacQuery(stac_api.url, collections=[S2]).to_dict()


def test_a_tile_is_the_same_picture_as_rasterio_reads_it(saved_tiny, api_index, cloud_archive):
    """Independent reference: the three band files read with rasterio, stretched by hand (0..3000 -> 0..255,
    nodata 0 black), through the processor and the model."""
    import torch
    import torch.nn.functional as F

    model, processor = saved_tiny
    window = rasterio.windows.Window(128, 0, 128, 128)
    bands = []
    for band in ("B04", "B03", "B02"):
        with rasterio.open(cloud_archive.path("s2-ne", band)) as src:
            bands.append(src.read(1, window=window).astype(np.float64))
            bounds = rasterio.windows.bounds(window, src.transform)
    raw = np.stack(bands)
    rgb = np.rint(np.clip(raw / 3000.0, 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0)
    rgb[(raw == 0).any(axis=0)] = 0
    with torch.no_grad():
        pixels = processor(images=[rgb], return_tensors="pt")["pixel_values"]
        expected = F.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)[0].numpy()
    ids, embeddings = shard_embeddings(api_index.path)
    got = embeddings[ids.index(f"{S2}/s2-ne@128,0")]
    np.testing.assert_allclose(got, expected, atol=2e-3)  # float16 storage
    row = next(r for r in api_index.metadata.to_pylist() if r["id"] == f"{S2}/s2-ne@128,0")
    np.testing.assert_allclose(row["bbox"], bounds, atol=1e-12)  # the chip is in EPSG:4326


# ---------------------------------------------------------------------------------------------- filters
def test_bbox_datetime_and_cloud_cover_select_exactly_the_expected_items(
    saved_tiny, stac_api, cloud_archive, tmp_path
):
    w, s, e, n = cloud_archive.scene("s2-se").bbox
    inside_se = [w + (e - w) / 4, s + (n - s) / 4, e - (e - w) / 4, n - (n - s) / 4]
    cases = [
        ({"bbox": inside_se}, ["s2-se"]),
        ({"datetime": "2024-06-01/2024-07-31"}, ["s2-ne", "s2-sw"]),
        ({"filter": "eo:cloud_cover < 20"}, ["s2-nw", "s2-sw"]),
        ({"filter": "eo:cloud_cover < 40", "datetime": "2024-06-01/.."}, ["s2-ne", "s2-sw"]),
        ({"max_items": 3}, ["s2-nw", "s2-ne", "s2-sw"]),
    ]
    for k, (query, expected) in enumerate(cases):
        index = _build(saved_tiny, tmp_path / f"idx{k}", stac_api.url, collections=[S2], **query)
        assert _items(index) == expected, query
        assert len(index) == 4 * len(expected)


def test_where_and_search_output_link_each_hit_to_its_item(api_index, tiny_saved, tmp_path, capsys):
    from modeling_rsmclip.cli import main

    rows = api_index.metadata.to_pylist()
    summer = {r["id"] for r in rows if r["datetime"] >= "2024-06-01" and r["cloud_cover"] < 20}
    assert {r.split("@")[0] for r in summer} == {f"{S2}/s2-sw"}
    geojson = tmp_path / "hits.geojson"
    argv = ["search", str(api_index.path), "a field", "--top-k", "16", "--model", str(tiny_saved)]
    where = ["--where", "datetime >= '2024-06-01' and cloud_cover < 20"]
    assert main([*argv, *where, "--json", "--geojson", str(geojson)]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert {h["id"] for h in hits} == summer and "geometry" not in hits[0]
    features = json.loads(geojson.read_text())["features"]
    assert [f["properties"]["id"] for f in features] == [h["id"] for h in hits]
    for hit, feature in zip(hits, features):
        assert feature["links"][0]["href"] == hit["stac_item_href"] and feature["links"][0]["rel"] == "via"
    with urllib.request.urlopen(hits[0]["stac_item_href"], timeout=10) as answer:  # the link resolves
        assert json.load(answer)["id"] == hits[0]["stac_item"] == "s2-sw"
    assert main([*argv, "--top-k", "3"]) == 0
    table = capsys.readouterr().out
    assert "STAC item" in table and f"/collections/{S2}/items/" in table and "2024-" in table


def test_the_metadata_is_geoparquet(api_index):
    geopandas = pytest.importorskip("geopandas")
    import pyarrow.parquet as pq
    import shapely

    path = api_index.path / "metadata.parquet"
    geo = json.loads(pq.read_schema(path).metadata[b"geo"])
    assert geo["version"] == "1.1.0" and geo["primary_column"] == "geometry"
    column = geo["columns"]["geometry"]
    assert column["encoding"] == "WKB" and column["geometry_types"] == ["Polygon"]
    assert column["crs"]["id"] == {"authority": "EPSG", "code": 4326}
    frame = geopandas.read_parquet(path)
    assert frame.crs.to_epsg() == 4326 and len(frame) == len(api_index)
    np.testing.assert_allclose(frame.total_bounds, column["bbox"])
    for geometry, footprint in zip(frame.geometry, frame["footprint_lonlat"]):
        expected = shapely.geometry.shape({"type": "Polygon", "coordinates": json.loads(footprint)})
        assert geometry.equals_exact(expected, 0) or geometry.equals_exact(expected.reverse(), 0)
        assert geometry.exterior.is_ccw
    from modeling_rsmclip.index.geoparquet import polygon_wkb

    ring = list(frame.geometry.iloc[0].exterior.coords)
    assert polygon_wkb([ring]) == shapely.to_wkb(frame.geometry.iloc[0], byte_order=1, flavor="iso")


# ------------------------------------------------------------------------------------ resume and add
def test_a_killed_build_resumes_to_the_same_index(saved_tiny, tiny_saved, api_index, stac_api, tmp_path):
    out = tmp_path / "idx"
    options = {**OPTIONS, "shard_size": 1, "batch_size": 1, "retry": None}
    script = (
        "from modeling_rsmclip.index import build_index\n"
        "from modeling_rsmclip.geo.stac import StacQuery\n"
        f"build_index({str(tiny_saved)!r}, {str(out)!r}, [], stac=StacQuery({stac_api.url!r}, collections=[{S2!r}]),"
        f" **{options!r})\n"
    )
    done = kill_build_after_shards(script, out, REPO)
    shards = out / "shards"
    plan = json.loads((out / "runs" / "run-000.json").read_text())
    assert 2 <= len(done) < plan["num_shards"] == 16 and not (out / "manifest.json").exists()
    assert plan["stac"]["collections"] == [S2] and (out / "runs" / "listing-000.items.json").is_file()

    model, processor = saved_tiny
    from modeling_rsmclip.index import build_index

    resumed = build_index(
        model, out, [], processor=processor, stac=StacQuery(stac_api.url, collections=[S2]), **options
    )
    for name, mtime in done.items():  # finished shards were not recomputed
        assert (shards / name).stat().st_mtime_ns == mtime, name
    ids_a, emb_a = shard_embeddings(resumed.path)
    ids_b, emb_b = shard_embeddings(api_index.path)
    assert ids_a == ids_b
    np.testing.assert_allclose(emb_a, emb_b, atol=1e-6)
    assert resumed.metadata.drop_columns(["content_hash"]).equals(
        api_index.metadata.drop_columns(["content_hash"])
    )


def test_add_with_a_later_datetime_embeds_only_the_new_items(saved_tiny, api_index, stac_api, tmp_path):
    out = tmp_path / "idx"
    first = _build(saved_tiny, out, stac_api.url, collections=[S2], datetime="../2024-06-30")
    assert _items(first) == ["s2-nw", "s2-ne"]
    opened = []  # the signer sees every remote file just before it is opened

    def sign(href: str) -> str:
        opened.append(href.rsplit("/", 2)[-2])
        return href

    added = _build(
        saved_tiny, out, stac_api.url, add=True, signer=sign, collections=[S2], datetime="../2024-08-31"
    )
    assert _items(added) == QUADRANTS
    # The items already indexed were not opened at all; the new ones were.
    assert set(opened) == {"s2-sw", "s2-se"}
    assert json.loads((out / "runs" / "run-001.json").read_text())["num_items"] == 8
    unchanged = _report(added)["unchanged"]
    assert [(u["stac_item"], u["reason"]) for u in unchanged] == [
        ("s2-nw", "already indexed (same item id and asset hrefs)"),
        ("s2-ne", "already indexed (same item id and asset hrefs)"),
    ]
    assert added.manifest["counts"]["unchanged"] == 2
    assert [r["stac"]["datetime"] for r in added.manifest["runs"]] == ["../2024-06-30", "../2024-08-31"]
    # The union equals a build of all four items.
    ids_a, emb_a = shard_embeddings(added.path)
    ids_b, emb_b = shard_embeddings(api_index.path)
    assert ids_a == ids_b
    np.testing.assert_allclose(emb_a, emb_b, atol=1e-6)


# ------------------------------------------------------------------------------------------------ faults
def test_an_unreachable_asset_and_an_item_without_the_bands_are_named(
    saved_tiny, stac_item_dicts, cloud_server, tmp_path
):
    refused = cloud_server.refused_url("sentinel2/s2-ne/B03.tif")

    def edit(items):
        by_id = {item["id"]: item for item in items}
        by_id["s2-ne"]["assets"]["B03"]["href"] = refused
        by_id["s2-sw"]["assets"] = {k: v for k, v in by_id["s2-sw"]["assets"].items() if k in ("B01", "B05")}

    catalog = _item_collection(stac_item_dicts, tmp_path / "items.json", edit)
    index = _build(saved_tiny, tmp_path / "idx", str(catalog), collections=[S2])
    assert _items(index) == ["s2-nw", "s2-se"] and len(index) == 8
    report = _report(index)
    [missing] = report["missing_bands"]
    assert missing["stac_item"] == "s2-sw" and missing["assets"] == ["B01", "B05"]
    assert "red (B4)" in missing["error"]
    [unreachable] = report["network_errors"]
    assert unreachable["stac_item"] == "s2-ne" and unreachable["href"] == refused
    assert unreachable["window"] is None and unreachable["attempts"] == FAST.attempts
    assert "connect" in unreachable["error"].lower()
    counts = index.manifest["counts"]
    assert (counts["network_errors"], counts["missing_bands"]) == (1, 1)

    from modeling_rsmclip.index.cli import _summary

    assert "network errors 1, items without the bands 1" in _summary(index)

    # When no item has the bands, the build stops before loading the model, saying why.
    from modeling_rsmclip.index import build_index

    with pytest.raises(
        ValueError, match=r"nothing to index from .*: 4 missing bands \(first: STAC item 's2-nw'"
    ):
        build_index(
            "no-model-needed",
            tmp_path / "none",
            [],
            stac=StacQuery(str(catalog)),
            tile_size=TILE,
            preset="sentinel1",
            progress=False,
        )


def test_http_500_then_recovery_loses_nothing(saved_tiny, api_index, stac_item_dicts, cloud_server, tmp_path):
    catalog = _item_collection(stac_item_dicts, tmp_path / "items.json")
    cloud_server.fail("sentinel2/s2-sw/B04.tif", 3)  # GDAL's retry of the first request fails too, then ours
    index = _build(saved_tiny, tmp_path / "idx", str(catalog), collections=[S2])
    assert cloud_server.failures[cloud_server.key("sentinel2/s2-sw/B04.tif")] == 3
    assert _report(index)["network_errors"] == [] and _items(index) == QUADRANTS
    ids_a, emb_a = shard_embeddings(index.path)
    ids_b, emb_b = shard_embeddings(api_index.path)
    assert ids_a == ids_b
    np.testing.assert_allclose(emb_a, emb_b, atol=1e-6)


def test_a_truncated_cog_names_each_lost_window_and_keeps_the_rest(
    saved_tiny, stac_item_dicts, cloud_archive, cloud_server, tmp_path
):
    path = cloud_archive.path("s2-se", "B02")
    with rasterio.open(path) as src:  # where each full-resolution block lies in the file
        blocks = {
            (c * TILE, r * TILE): int(src.get_tag_item(f"BLOCK_OFFSET_{c}_{r}", "TIFF", bidx=1))
            for r in range(2)
            for c in range(2)
        }
    cut = sorted(blocks.values())[2]  # the last two blocks in file order are lost
    lost = sorted(w for w, offset in blocks.items() if offset >= cut)
    assert len(lost) == 2
    cloud_server.truncate(path, cut)
    catalog = _item_collection(stac_item_dicts, tmp_path / "items.json")
    index = _build(saved_tiny, tmp_path / "idx", str(catalog), collections=[S2])
    errors = _report(index)["network_errors"]
    assert sorted(tuple(e["tile_window"][:2]) for e in errors) == lost
    for entry in errors:
        assert entry["stac_item"] == "s2-se" and entry["href"].split("?")[0] == cloud_server.url(path)
        assert entry["attempts"] == FAST.attempts and entry["window"] == [
            *entry["tile_window"][:2],
            TILE,
            TILE,
        ]
        assert entry["id"] == f"{S2}/s2-se@{entry['tile_window'][0]},{entry['tile_window'][1]}"
    ids = set(index.metadata["id"].to_pylist())
    assert len(index) == 14 and not ids & {e["id"] for e in errors}
    assert index.manifest["counts"]["network_errors"] == 2

    # The file is whole again: an add of the same items (URLs GDAL has not seen) embeds just the two lost tiles.
    cloud_server.clear_faults()
    catalog = _item_collection(stac_item_dicts, tmp_path / "again.json")
    added = _build(saved_tiny, tmp_path / "idx", str(catalog), add=True, collections=[S2])
    assert len(added) == 16 and _report(added)["network_errors"] == []
    new = json.loads((tmp_path / "idx" / "runs" / "run-001.json").read_text())
    assert new["num_items"] == 2  # the lost tiles; the other 14 are known by their content hash
    assert sorted(u["id"] for u in _report(added)["unchanged"]) == sorted(ids)


def test_a_stac_api_that_is_down_is_one_clear_error(tiny_saved, range_server, tmp_path, capsys):
    from modeling_rsmclip.cli import main
    from modeling_rsmclip.index import build_index

    url = range_server.refused_url("stac")
    with pytest.raises(StacError, match="cannot read the STAC catalog"):
        build_index(
            str(tiny_saved), tmp_path / "idx", [], stac=StacQuery(url), tile_size=TILE, progress=False
        )
    argv = [
        "index",
        "build",
        "--output",
        str(tmp_path / "cli"),
        "--stac",
        url,
        "--tile-size",
        "128",
        "--quiet",
    ]
    assert main([*argv, "--model", str(tiny_saved), "--retries", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot read the STAC catalog") and url in err[0]
    assert not (tmp_path / "cli" / "manifest.json").exists()
    # Bad query values are refused by the parser, naming the value.
    with pytest.raises(SystemExit) as exit_:
        main(["index", "build", "--output", str(tmp_path / "x"), "--stac", url, "--datetime", "2024-13-01"])
    assert exit_.value.code == 2 and "2024-13-01" in capsys.readouterr().err
    assert main(["index", "build", "--output", str(tmp_path / "x"), "--datetime", "2024-06-01", "a.jpg"]) == 2
    assert "--datetime search a STAC catalog" in capsys.readouterr().err


# -------------------------------------------------------------------------------------------------- maps
def _lonlat_box(path: Path, window: tuple[int, int, int, int]) -> str:
    with rasterio.open(path) as src:
        bounds = rasterio.windows.bounds(rasterio.windows.Window(*window), src.transform)
        box = rasterio.warp.transform_bounds(src.crs, "EPSG:4326", *bounds)
    return ",".join(repr(float(v)) for v in box)


def test_map_classify_of_a_cog_url_reads_only_the_bbox_window(
    tiny_saved, cloud_archive, cloud_server, tmp_path
):
    from modeling_rsmclip.cli import main

    local = cloud_archive.path("ucm-mosaic", "image")
    bbox = _lonlat_box(local, (512, 768, 512, 512))
    url = f"{cloud_server.url(local)}?t={uuid.uuid4().hex}"
    common = ["--labels", "forest,beach,airplane", "--tile-size", "256", "--model", str(tiny_saved)]
    assert (
        main(
            [
                "map",
                "classify",
                url,
                *common,
                "--bbox",
                bbox,
                "--output",
                str(tmp_path / "far"),
                "--no-progress",
            ]
        )
        == 0
    )
    sent = cloud_server.sent(local)
    assert (
        main(
            [
                "map",
                "classify",
                str(local),
                *common,
                "--bbox",
                bbox,
                "--output",
                str(tmp_path / "near"),
                "--no-progress",
            ]
        )
        == 0
    )
    with (
        rasterio.open(tmp_path / "far" / "classes.tif") as far,
        rasterio.open(tmp_path / "near" / "classes.tif") as near,
    ):
        np.testing.assert_array_equal(far.read(), near.read())
        assert (far.crs, far.transform, far.shape) == (near.crs, near.transform, near.shape)
        summary = json.loads((tmp_path / "far" / "summary.json").read_text())
        col, row, width, height = summary["scene_window"]
        with rasterio.open(local) as src:
            # The window covers the box: the 512 x 512 pixels asked for, plus the pixels the lon/lat box adds.
            assert col <= 512 and row <= 768 and col + width >= 1024 and row + height >= 1280
            assert width < 600 and height < 600
            assert far.transform.c == src.transform.c + col and far.transform.f == src.transform.f - row
            assert far.crs == src.crs
            touched = [
                src.block_size(1, r, c)
                for r in range(row // 256, (row + height - 1) // 256 + 1)
                for c in range(col // 256, (col + width - 1) // 256 + 1)
            ]
    # Only the blocks under the window (and the header) came over the wire: a fraction of the scene.
    size = os.path.getsize(local)
    assert sent < 2 * sum(touched) + 65536 and sent < 0.4 * size, (sent, sum(touched), size)


def test_map_segment_of_a_stac_item_with_a_bbox(
    tiny_saved, static_catalog, local_catalog, cloud_server, tmp_path
):
    from modeling_rsmclip.cli import main

    remote_item = cloud_server.url(static_catalog.parent / S2 / "s2-nw" / "s2-nw.json")
    local_item = local_catalog.parent / S2 / "s2-nw" / "s2-nw.json"
    with rasterio.open(json.loads(local_item.read_text())["assets"]["B04"]["href"]) as src:
        box = rasterio.windows.bounds(rasterio.windows.Window(64, 32, 160, 128), src.transform)
    bbox = ",".join(repr(float(v)) for v in box)
    common = ["--labels", "water,field,city", "--preset", "sentinel2", "--window", "64", "--bbox", bbox]
    common += ["--model", str(tiny_saved), "--no-progress"]
    assert main(["map", "segment", remote_item, *common, "--output", str(tmp_path / "far")]) == 0
    assert main(["map", "segment", str(local_item), *common, "--output", str(tmp_path / "near")]) == 0
    with (
        rasterio.open(tmp_path / "far" / "segmentation.tif") as far,
        rasterio.open(tmp_path / "near" / "segmentation.tif") as near,
        rasterio.open(json.loads(local_item.read_text())["assets"]["B04"]["href"]) as src,
    ):
        np.testing.assert_array_equal(far.read(), near.read())
        assert far.shape == (128, 160) and far.crs == src.crs
        assert far.transform.almost_equals(src.transform * rasterio.Affine.translation(64, 32))
    assert cloud_server.sent("sentinel2/s2-nw/B08.tif") == 0  # only the bands of the preset
