"""`rsmclip serve`: the HTTP API on a real server on 127.0.0.1, against the Python API's own answers.

One index for the module: the bundled samples (UC Merced and RSSCN7 images) and a 2 x 2 GeoTIFF mosaic near Porto
cut into four georeferenced tiles, built with the bundled demo model. The server (uvicorn in a thread, on a free
port) serves the API and the Gradio page, and is stopped when the module ends, also after a failure.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

import numpy as np
import pytest
from _app_fixtures import MOSAIC, MOSAIC_ORIGIN, UCM_IMAGES, write_mosaic_geotiff
from PIL import Image

pytest.importorskip("fastapi", reason='the HTTP API needs FastAPI: pip install "rsmclip[serve]"')
pytest.importorskip("faiss", reason='archive search needs faiss: pip install "rsmclip[index]"')
import httpx  # noqa: E402

from modeling_rsmclip.index import RSMCLIPIndex, build_index, to_geojson  # noqa: E402
from modeling_rsmclip.inference import DEMO_MODEL_DIR  # noqa: E402
from modeling_rsmclip.serve import BackgroundServer, SearchService, ServeLimits, build_api  # noqa: E402
from modeling_rsmclip.testing import sample_dir  # noqa: E402

MAX_UPLOAD_MB = 1.0
PT_QUERY = "muitos aviões estacionados no aeroporto"
PORTO_BBOX = (-8.6425, 41.1884, -8.6361, 41.1909)  # around the four tiles of the mosaic


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    (root / "scenes").mkdir()
    scene = write_mosaic_geotiff(root / "scenes" / "porto.tif")
    index_dir = root / "index"
    build_index(
        "demo",
        index_dir,
        [sample_dir() / "ucm", sample_dir() / "rsscn7", scene],
        tile_size=256,
        num_workers=0,
        progress=False,
    )
    service = SearchService.load(index_dir, limits=ServeLimits(max_upload_mb=MAX_UPLOAD_MB))
    try:
        with BackgroundServer(build_api(service, page=True)) as server:
            with httpx.Client(base_url=server.url, timeout=120) as client:
                yield SimpleNamespace(
                    service=service,
                    client=client,
                    url=server.url,
                    index_dir=index_dir,
                    scene=scene,
                    root=root,
                    reference=RSMCLIPIndex.load(index_dir, model="demo"),
                )
    finally:
        service.close()


def _ids_scores(rows):
    return [r["id"] for r in rows], np.array([r["score"] for r in rows])


def _assert_same(api_rows, python_rows, atol=1e-6):
    api_ids, api_scores = _ids_scores(api_rows)
    ids, scores = _ids_scores(python_rows)
    assert api_ids == ids
    np.testing.assert_allclose(api_scores, scores, atol=atol, rtol=0)


# ------------------------------------------------------------------------------------------------- search
def test_portuguese_query_gives_the_python_api_result(served):
    expected = served.reference.search(PT_QUERY, top_k=10)
    got = served.client.get("/search", params={"query": PT_QUERY, "top_k": 10})
    assert got.status_code == 200 and got.headers["content-type"] == "application/json"
    body = got.json()
    assert body["query"] == {"text": PT_QUERY, "top_k": 10, "where": None, "bbox": None}
    assert body["count"] == 10
    _assert_same(body["results"], expected)
    assert [r["rank"] for r in body["results"]] == list(range(1, 11))
    posted = served.client.post("/search", json={"query": PT_QUERY, "top_k": 10}).json()
    _assert_same(posted["results"], expected)
    for fields in (
        {"data": {"query": PT_QUERY, "top_k": "10"}},
        {"files": {"query": (None, PT_QUERY), "top_k": (None, "10")}},
    ):
        form = served.client.post("/search", **fields)  # a URL-encoded form, a multipart one
        assert form.status_code == 200, form.text
        _assert_same(form.json()["results"], expected)


@pytest.mark.parametrize("name", ["592.jpg", "2091.jpg"])  # not in the mosaic
def test_image_upload_gives_the_python_api_image_query(served, name):
    path = UCM_IMAGES / name
    expected = served.reference.search(str(path), top_k=5, image=True)
    got = served.client.post(
        "/search", data={"top_k": "5"}, files={"image": (name, path.read_bytes(), "image/jpeg")}
    )
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["query"]["image"] == name
    _assert_same(body["results"], expected)
    assert body["results"][0]["id"] == f"ucm/images/{name}" and body["results"][0]["score"] > 0.999


def test_where_and_bbox_filter_as_the_python_api(served):
    cases = [
        {"where": "label == 'beach'"},
        {"where": "label in ['airport', 'harbor'] and kind == 'file'"},
        {"bbox": PORTO_BBOX},
        {"bbox": (-8.6415, 41.1890, -8.6400, 41.1900), "where": "valid_fraction >= 0.99"},  # tile (0, 0)
    ]
    for case in cases:
        expected = served.reference.search(PT_QUERY, top_k=20, **case)
        params = {"query": PT_QUERY, "top_k": 20, **case}
        if "bbox" in case:
            params["bbox"] = ",".join(map(str, case["bbox"]))
        got = served.client.get("/search", params=params)
        assert got.status_code == 200, got.text
        _assert_same(got.json()["results"], expected)
        assert expected, case
    beach = served.client.get("/search", params={"query": "praia", "top_k": 50, "where": "label == 'beach'"})
    labels = {r["label"] for r in beach.json()["results"]}
    assert labels == {"beach"}
    # The bbox keeps the tiles whose lon/lat box intersects it, computed here from the metadata with numpy.
    box = (-8.6400, 41.1895, -8.6380, 41.1905)  # across the top two tiles
    table = served.reference.metadata.to_pylist()
    inside = {
        row["id"]
        for row in table
        if row["bbox"] is not None
        and row["bbox"][0] <= box[2]
        and row["bbox"][2] >= box[0]
        and row["bbox"][1] <= box[3]
        and row["bbox"][3] >= box[1]
    }
    got = served.client.post("/search", json={"query": PT_QUERY, "top_k": 50, "bbox": list(box)}).json()
    assert {r["id"] for r in got["results"]} == inside == {"porto.tif@0,0", "porto.tif@256,0"}


def test_geojson_by_format_and_by_accept_header(served):
    expected = to_geojson(served.reference.search(PT_QUERY, top_k=6, bbox=PORTO_BBOX))
    by_format = served.client.get(
        "/search",
        params={"query": PT_QUERY, "top_k": 6, "bbox": ",".join(map(str, PORTO_BBOX)), "format": "geojson"},
    )
    by_accept = served.client.get(
        "/search",
        params={"query": PT_QUERY, "top_k": 6, "bbox": ",".join(map(str, PORTO_BBOX))},
        headers={"Accept": "application/geo+json"},
    )
    by_body = served.client.post(
        "/search", json={"query": PT_QUERY, "top_k": 6, "bbox": list(PORTO_BBOX), "format": "geojson"}
    )
    by_form = served.client.post(
        "/search",
        data={"query": PT_QUERY, "top_k": "6", "bbox": ",".join(map(str, PORTO_BBOX)), "format": "geojson"},
    )
    for got in (by_format, by_accept, by_body, by_form):
        assert got.status_code == 200 and got.headers["content-type"] == "application/geo+json"
        collection = got.json()
        assert collection["type"] == "FeatureCollection" and len(collection["features"]) == 4
        for feature, reference in zip(collection["features"], expected["features"]):
            assert feature["geometry"] == reference["geometry"]
            assert feature["properties"]["id"] == reference["properties"]["id"]
            assert abs(feature["properties"]["score"] - reference["properties"]["score"]) < 1e-6
            assert "path" not in feature["properties"]
    # The upper-left corner of tile (0, 0), from the mosaic's UTM origin by rasterio's own transform.
    from rasterio.warp import transform

    lon, lat = transform("EPSG:32629", "EPSG:4326", [MOSAIC_ORIGIN[0]], [MOSAIC_ORIGIN[1]])
    tile = next(f for f in by_format.json()["features"] if f["properties"]["id"] == "porto.tif@0,0")
    ring = tile["geometry"]["coordinates"][0]
    assert min(abs(x - lon[0]) + abs(y - lat[0]) for x, y in ring) < 1e-9


# -------------------------------------------------------------------------------------------------- items
def test_item_metadata_is_the_index_row_without_its_path(served):
    number = served.reference.metadata.column("id").to_pylist().index("porto.tif@256,0")
    row = served.reference.row(number)
    got = served.client.get("/items/porto.tif@256,0")
    assert got.status_code == 200
    body = got.json()
    assert "path" not in body
    assert body["id"] == "porto.tif@256,0" and body["window"] == [256, 0, 256, 256]
    assert body["bbox"] == row["bbox"] and body["footprint_lonlat"] == json.loads(row["footprint_lonlat"])
    assert body["thumbnail_url"] == "/items/porto.tif@256,0/thumbnail"
    label = served.client.get("/items/" + quote("ucm/images/391.jpg")).json()["label"]
    assert label == "beach"


def test_thumbnails_of_a_file_and_of_a_tile(served):
    png = served.client.get("/items/ucm/images/391.jpg/thumbnail", params={"size": 64})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    reference = Image.open(UCM_IMAGES / "391.jpg").convert("RGB")
    reference.thumbnail((64, 64))
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png.content))), np.asarray(reference))
    # The tile (256, 256) of the mosaic is the fourth image, read through its window: equal to rasterio's read.
    import rasterio
    from rasterio.windows import Window

    tile = served.client.get("/items/porto.tif@256,256/thumbnail", params={"size": 256})
    with rasterio.open(served.scene) as src:
        expected = src.read(window=Window(256, 256, 256, 256)).transpose(1, 2, 0)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(tile.content))), expected)
    jpeg = served.client.get("/items/porto.tif@0,0/thumbnail", params={"size": 32, "format": "jpeg"})
    assert jpeg.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(jpeg.content)).size == (32, 32)
    assert MOSAIC[0][1] == "airplane"


# ----------------------------------------------------------------------------------------------- refusals
def _big_png() -> bytes:
    noise = np.random.default_rng(0).integers(0, 256, (700, 700, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(noise).save(out, format="PNG")
    assert len(out.getvalue()) > MAX_UPLOAD_MB * 2**20
    return out.getvalue()


BAD_REQUESTS = [
    ("empty query", "GET", "/search", {"params": {"query": ""}}, 400, "the query is empty"),
    ("blank query", "POST", "/search", {"json": {"query": "   "}}, 400, "the query is empty"),
    ("no query", "POST", "/search", {"json": {"top_k": 3}}, 400, "the query is empty"),
    ("huge query", "GET", "/search", {"params": {"query": "praia " * 2000}}, 422, "at most 300 characters"),
    (
        "huge query (JSON)",
        "POST",
        "/search",
        {"json": {"query": "praia " * 2000}},
        422,
        "at most 300 are allowed",
    ),
    (
        "top_k 0",
        "GET",
        "/search",
        {"params": {"query": "praia", "top_k": 0}},
        422,
        "greater than or equal to 1",
    ),
    ("top_k 1e9", "POST", "/search", {"json": {"query": "praia", "top_k": 10**9}}, 422, "between 1 and 100"),
    ("top_k text", "POST", "/search", {"json": {"query": "praia", "top_k": "many"}}, 422, "whole number"),
    ("bad bbox", "GET", "/search", {"params": {"query": "praia", "bbox": "1,2,3"}}, 400, "four numbers"),
    (
        "bbox upside down",
        "POST",
        "/search",
        {"json": {"query": "a", "bbox": [0, 5, 1, 1]}},
        400,
        "north of its north",
    ),
    (
        "bbox off the globe",
        "GET",
        "/search",
        {"params": {"query": "a", "bbox": "0,0,200,1"}},
        400,
        "longitudes",
    ),
    (
        "bad where",
        "GET",
        "/search",
        {"params": {"query": "praia", "where": "label =="}},
        400,
        "not a valid expression",
    ),
    (
        "where on code",
        "GET",
        "/search",
        {"params": {"query": "a", "where": "__import__('os')"}},
        400,
        "where",
    ),
    (
        "where unknown column",
        "GET",
        "/search",
        {"params": {"query": "a", "where": "colour == 1"}},
        400,
        "unknown column 'colour'",
    ),
    (
        "where on path",
        "GET",
        "/search",
        {"params": {"query": "a", "where": "path.str.contains('etc')"}},
        400,
        "unknown column 'path'",
    ),
    ("where type", "GET", "/search", {"params": {"query": "a", "where": "label > 3"}}, 400, "where"),
    (
        "where too long",
        "GET",
        "/search",
        {"params": {"query": "a", "where": "label == 'x' or " * 40 + "label == 'y'"}},
        422,
        "at most 500",
    ),
    ("bad format", "GET", "/search", {"params": {"query": "a", "format": "xml"}}, 422, "format"),
    ("unknown field", "POST", "/search", {"json": {"query": "a", "k": 3}}, 400, "unknown field"),
    (
        "bad body format",
        "POST",
        "/search",
        {"json": {"query": "a", "format": "kml"}},
        422,
        "format must be json or geojson",
    ),
    (
        "not JSON",
        "POST",
        "/search",
        {"content": b"{query", "headers": {"content-type": "application/json"}},
        400,
        "not valid JSON",
    ),
    ("JSON list", "POST", "/search", {"json": ["praia"]}, 400, "JSON object"),
    ("unknown form field", "POST", "/search", {"data": {"query": "a", "k": "3"}}, 400, "unknown field"),
    (
        "other body",
        "POST",
        "/search",
        {"content": b"query=a", "headers": {"content-type": "text/plain"}},
        415,
        "multipart/form-data",
    ),
    (
        "query string too long",
        "GET",
        "/search",
        {"params": {"query": "a" * 20000}},
        414,
        "POST long requests as JSON",
    ),
    ("huge headers", "GET", "/health", {"headers": {"X-Padding": "b" * 70000}}, 431, "the headers are"),
    ("unknown id", "GET", "/items/ucm/images/nope.jpg", {}, 404, "no item with id 'ucm/images/nope.jpg'"),
    ("path-like id", "GET", "/items/..%2F..%2Fetc%2Fpasswd", {}, 404, "no item with id '../../etc/passwd'"),
    ("absolute id", "GET", "/items/%2Fetc%2Fpasswd", {}, 404, "no item with id"),
    ("path-like thumbnail", "GET", "/items/..%2F..%2Fetc%2Fpasswd/thumbnail", {}, 404, "no item with id"),
    ("thumbnail size", "GET", "/items/ucm/images/391.jpg/thumbnail", {"params": {"size": 0}}, 422, "size"),
    (
        "thumbnail huge",
        "GET",
        "/items/ucm/images/391.jpg/thumbnail",
        {"params": {"size": 10**6}},
        422,
        "size",
    ),
    (
        "thumbnail format",
        "GET",
        "/items/ucm/images/391.jpg/thumbnail",
        {"params": {"format": "gif"}},
        422,
        "format",
    ),
    (
        "not an image",
        "POST",
        "/search",
        {"files": {"image": ("notes.jpg", b"these are not pixels", "image/jpeg")}},
        400,
        "notes.jpg: not a readable image",
    ),
    ("empty upload", "POST", "/search", {"files": {"image": ("empty.png", b"", "image/png")}}, 400, "empty"),
    (
        "image and text",
        "POST",
        "/search",
        {
            "data": {"query": "a"},
            "files": {"image": ("191.jpg", (UCM_IMAGES / "191.jpg").read_bytes(), "image/jpeg")},
        },
        400,
        "not both",
    ),
    (
        "server file name",
        "POST",
        "/search",
        {"files": {"image": ("/etc/passwd", b"root:x:0:0", "text/plain")}},
        400,
        "passwd: not a readable image",
    ),
]


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=[case[0] for case in BAD_REQUESTS])
def test_bad_requests_get_a_4xx_and_a_message(served, case):
    _, method, url, kwargs, status, message = case
    got = served.client.request(method, url, **kwargs)
    assert got.status_code == status, got.text
    assert got.headers["content-type"] == "application/json"
    detail = got.json()["detail"]
    assert isinstance(detail, str) and message in detail, detail
    assert len(got.content) < 2000  # the message, not an echo of the input
    assert served.client.get("/health").status_code == 200  # and the server keeps serving


def test_oversized_bodies_get_413(served):
    big = _big_png()
    got = served.client.post("/search", files={"image": ("big.png", big, "image/png")})
    assert got.status_code == 413 and "more than the 1.1 MB this server accepts" in got.json()["detail"]

    def chunks():  # no Content-Length: refused while it arrives
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536]

    chunked = served.client.post("/search", content=chunks(), headers={"content-type": "application/json"})
    assert chunked.status_code == 413 and "at least" in chunked.json()["detail"]
    # Under the body limit but over the image limit (the multipart envelope is allowed for).
    limit = served.service.limits.max_upload_bytes
    data = (UCM_IMAGES / "191.jpg").read_bytes()
    padded = data + b"\0" * (limit - len(data) + 10)
    got = served.client.post("/search", files={"image": ("191.jpg", padded, "image/jpeg")})
    assert got.status_code == 413 and "the upload is" in got.json()["detail"]


def test_no_response_contains_a_server_path(served):
    tile = "porto.tif@0,0"
    requests = [
        ("GET", "/search", {"params": {"query": PT_QUERY, "top_k": 100}}),
        ("GET", "/search", {"params": {"query": PT_QUERY, "top_k": 100, "format": "geojson"}}),
        ("POST", "/search", {"json": {"query": "uma praia", "top_k": 100, "bbox": list(PORTO_BBOX)}}),
        (
            "POST",
            "/search",
            {
                "files": {"image": ("191.jpg", (UCM_IMAGES / "191.jpg").read_bytes(), "image/jpeg")},
                "data": {"top_k": "100"},
            },
        ),
        ("GET", "/health", {}),
        ("GET", "/", {}),
        ("GET", "/openapi.json", {}),
        ("GET", f"/items/{tile}", {}),
        ("GET", "/items/ucm/images/191.jpg", {}),
    ]
    requests += [(method, url, kwargs) for _, method, url, kwargs, _, _ in BAD_REQUESTS]
    ids = served.reference.metadata.column("id").to_pylist()
    requests += [("GET", "/items/" + quote(item), {}) for item in ids]
    forbidden = {
        str(served.index_dir),
        str(served.index_dir.resolve()),
        str(served.root.resolve()),
        str(served.scene.parent),
        str(sample_dir()),
        str(sample_dir().resolve()),
        str(DEMO_MODEL_DIR),
        str(Path.cwd()),
        "/tmp/",
    }
    for method, url, kwargs in requests:
        got = served.client.request(method, url, **kwargs)
        text = got.content.decode("utf-8")
        assert got.status_code < 500, (url, text)
        for path in forbidden:
            assert path not in text, (method, url, path)
        if got.headers["content-type"].startswith("application/"):
            _assert_no_absolute_strings(got.json(), url)


def _assert_no_absolute_strings(value, url):
    if isinstance(value, dict):
        assert "path" not in value or url == "/openapi.json", url
        for item in value.values():
            _assert_no_absolute_strings(item, url)
    elif isinstance(value, list):
        for item in value:
            _assert_no_absolute_strings(item, url)
    elif isinstance(value, str):
        assert not value.startswith(("/work", "/tmp", "/home", "/etc", "file:")), (url, value)


# ------------------------------------------------------------------------------------------ health, page
def test_health_names_what_is_loaded(served):
    body = served.client.get("/health").json()
    manifest = json.loads((served.index_dir / "manifest.json").read_text())
    assert body["status"] == "ok" and body["model"] == "demo"
    assert body["fingerprint"] == manifest["model"]["fingerprint"]
    assert body["index"]["items"] == len(served.reference) == manifest["counts"]["items"] == 53
    assert body["index"]["georeferenced"] is True and "path" not in body["index"]["columns"]
    assert (body["backend"], body["precision"]) == ("torch", "fp32")
    assert body["limits"]["max_upload_bytes"] == MAX_UPLOAD_MB * 2**20
    assert body["page"] == "/app/"


def test_concurrent_text_queries_are_batched_and_answered_alike(served):
    queries = [
        PT_QUERY,
        "uma praia",
        "a dense residential area",
        "森林",
        "ein Hafen mit Booten",
        "un terrain de tennis",
    ]
    queries = queries * 3
    before = served.service.batcher.stats.as_dict()
    with concurrent.futures.ThreadPoolExecutor(len(queries)) as pool:
        answers = list(
            pool.map(
                lambda q: httpx.get(served.url + "/search", params={"query": q, "top_k": 5}, timeout=120),
                queries,
            )
        )
    after = served.service.batcher.stats.as_dict()
    for query, got in zip(queries, answers):
        assert got.status_code == 200
        _assert_same(got.json()["results"], served.reference.search(query, top_k=5), atol=1e-5)
    assert after["queries"] - before["queries"] == len(queries)
    assert after["batches"] - before["batches"] < len(queries)  # some queries shared a forward pass
    assert after["largest"] >= 2


def test_batched_embeddings_equal_single_ones(served):
    texts = [PT_QUERY, "praia", "a dense residential area with many houses and trees", "森林"]
    batch = served.reference.embed_queries(texts)
    single = np.concatenate([served.reference.embed_query(t) for t in texts])
    np.testing.assert_allclose(batch, single, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="query 1 must be a non-empty text"):
        served.reference.embed_queries(["a", " "])


def test_gradio_page_is_mounted_on_the_same_model(served):
    page = served.client.get("/app/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    from gradio_client import Client

    client = Client(served.url + "/app/", verbose=False, download_files=str(served.root / "downloads"))
    status, gallery, _map, table, _files = client.predict(PT_QUERY, "auto", 5, api_name="/search")
    assert "query language: pt" in status
    expected = served.reference.search(PT_QUERY, top_k=5)
    assert [row[0] for row in table["data"]] == [1, 2, 3, 4, 5]
    np.testing.assert_allclose(
        [row[1] for row in table["data"]], [round(r["score"], 4) for r in expected], atol=1e-4
    )
    assert served.service.app.index is served.service.index  # one index and one model for both


def test_slow_searches_and_a_full_queue_get_503(served):
    """A search over the time limit, and a text query beyond the waiting limit, on the same model and index."""
    from fastapi.testclient import TestClient

    from modeling_rsmclip.serve import RequestError

    hasty = SearchService(served.service.app, limits=ServeLimits(timeout_s=0.0005))
    try:
        got = TestClient(build_api(hasty)).get("/search", params={"query": PT_QUERY})
        assert got.status_code == 503 and "took longer than the 0.0005 s" in got.json()["detail"]
    finally:
        hasty.close()
    crowded = SearchService(served.service.app, limits=ServeLimits(max_pending=1), max_batch=1)
    try:
        futures = []
        with pytest.raises(RequestError, match="waiting already") as refused:
            for _ in range(
                50
            ):  # one query may wait (the worker computes another): a second waiting one is refused
                futures.append(crowded.submit_text(PT_QUERY))
        assert refused.value.status == 503 and refused.value.headers == {"Retry-After": "1"}
        assert 1 <= len(futures) < 50
        expected = served.reference.embed_query(PT_QUERY)[0]
        for future in futures:
            np.testing.assert_allclose(future.result(60), expected, atol=1e-6)
    finally:
        crowded.close()
    assert served.service.app.index is served.service.index  # the shared index is still in use
