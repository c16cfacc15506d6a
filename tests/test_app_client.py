"""The launched web app, driven with gradio_client over HTTP: same numbers as the Python API, errors in the page."""

from __future__ import annotations

import concurrent.futures
import csv
import json
import os

import numpy as np
import pytest
from _app_fixtures import UCM_IMAGES, confidences, reference_probabilities, write_mosaic_geotiff

pytest.importorskip("gradio", reason='the web app needs Gradio: pip install "rsmclip[app]"')
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from modeling_rsmclip.app.cli import serve  # noqa: E402
from modeling_rsmclip.app.service import AppLimits, AppService  # noqa: E402
from modeling_rsmclip.templates import LANGUAGES  # noqa: E402
from modeling_rsmclip.testing import sample_dir  # noqa: E402

MAX_UPLOAD_MB = 1.0


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """(service, client): `rsmclip app`'s default app (bundled demo model, index of the bundled samples) on a free
    port of 127.0.0.1, once for this module."""
    pytest.importorskip("faiss", reason='archive search needs faiss: pip install "rsmclip[index]"')
    service = AppService.load(
        limits=AppLimits(max_upload_mb=MAX_UPLOAD_MB), work_dir=tmp_path_factory.mktemp("work")
    )
    demo, url = serve(service, "127.0.0.1", block=False, concurrency=2)
    try:
        yield service, Client(url, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))
    finally:
        demo.close()


def test_api_lists_the_tabs(app):
    _, client = app
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/search", "/search_image", "/classify", "/segment"} <= set(endpoints)


@pytest.mark.parametrize(
    "image, labels, lang",
    [
        ("191.jpg", "aviões, uma praia, uma floresta, um porto", "pt"),
        ("2091.jpg", "a tennis court, a beach, a forest", "en"),
    ],
)
def test_classify_returns_the_python_api_numbers(app, image, labels, lang):
    service, client = app
    status, label, picture, files = client.predict(
        handle_file(str(UCM_IMAGES / image)), labels, "auto", api_name="/classify"
    )
    assert f"Prompt language: {lang}" in status
    got = confidences(label)
    python_api = service.classify(UCM_IMAGES / image, labels, "auto")
    assert list(got) == sorted(python_api.labels, key=lambda k: -python_api.as_label_dict()[k])
    np.testing.assert_allclose([got[k] for k in python_api.labels], python_api.probabilities, atol=1e-6)
    expected = reference_probabilities(
        service.model, service.processor, UCM_IMAGES / image, python_api.labels, lang
    )
    np.testing.assert_allclose([got[k] for k in python_api.labels], expected, atol=1e-5)
    assert label["label"] == python_api.labels[int(np.argmax(expected))]
    assert picture and files == []


@pytest.mark.parametrize(
    "labels, language, message",
    [
        ("forest", "auto", "give at least two labels"),
        (", ".join(f"c{i}" for i in range(30)), "auto", "30 labels given; at most 24"),
        ("forest, beach", "xx", "not in the list of choices"),  # the drop-down refuses it before the service
    ],
)
def test_bad_input_is_a_message_and_the_server_keeps_serving(app, labels, language, message):
    _, client = app
    with pytest.raises(AppError, match=message):
        client.predict(handle_file(str(UCM_IMAGES / "191.jpg")), labels, language, api_name="/classify")
    status, *_ = client.predict(
        handle_file(str(UCM_IMAGES / "191.jpg")), "forest, beach", "en", api_name="/classify"
    )
    assert status.startswith("Prompt language: en")


def test_unreadable_and_oversized_uploads_are_refused(app, tmp_path):
    _, client = app
    (tmp_path / "notes.png").write_text("not a picture")
    with pytest.raises(AppError, match="notes.png: not a readable image"):
        client.predict(handle_file(str(tmp_path / "notes.png")), "forest, beach", "en", api_name="/classify")
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + bytes(int(MAX_UPLOAD_MB * 2**20) + 10))
    with pytest.raises(Exception, match="(?i)file size|too large|exceeds|413"):
        client.predict(handle_file(str(big)), "forest, beach", "en", api_name="/classify")
    with pytest.raises(AppError, match="type a query first"):
        client.predict("   ", "auto", 5, api_name="/search")


def test_concurrent_requests_all_answer(app):
    """More requests than the queue's concurrency: they wait their turn, every one is answered correctly."""
    service, client = app
    expected = service.classify(UCM_IMAGES / "191.jpg", "airplanes, a beach", "en").probabilities

    def one(_):
        _, label, _, _ = client.predict(
            handle_file(str(UCM_IMAGES / "191.jpg")), "airplanes, a beach", "en", api_name="/classify"
        )
        got = confidences(label)
        return [got["airplanes"], got["a beach"]]

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(one, range(6)))
    for probs in results:
        np.testing.assert_allclose(probs, expected, atol=1e-6)


# ------------------------------------------------------------------------------------------------------ search
def brute_force_ranking(index, query_embedding: np.ndarray, k: int) -> tuple[list[str], np.ndarray]:
    """Cosine ranking of every stored vector, computed with numpy (the reference for the FAISS index)."""
    vectors = index.index.reconstruct_n(0, len(index))
    scores = vectors @ query_embedding.reshape(-1)
    order = np.argsort(-scores, kind="stable")[:k]
    return [index.row(int(i))["id"] for i in order], scores[order]


def read_csv(path: str) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_text_search_returns_the_python_api_results(app):
    service, client = app
    query = "muitos aviões estacionados no aeroporto"
    status, gallery, map_html, table, files = client.predict(query, "auto", 5, api_name="/search")
    expected = service.index.search(query, top_k=5)
    assert status == "5 results · query language: pt"
    assert table["headers"] == ["rank", "score", "label", "id", "tile"]
    # Rows are named by their id, relative to their source: the file's path below its source folder.
    assert [row[3] for row in table["data"]] == [r["id"] for r in expected]
    for row, hit in zip(table["data"], expected):
        assert hit["path"].endswith("/" + row[3].split("/", 1)[1]) and not os.path.isabs(row[3])
    assert [row[0] for row in table["data"]] == [1, 2, 3, 4, 5]
    np.testing.assert_allclose([row[1] for row in table["data"]], [r["score"] for r in expected], atol=1e-4)
    assert [g["caption"].split("  ·  ")[-1] for g in gallery] == [r["id"] for r in expected]
    assert all(g["image"] for g in gallery)
    (csv_file,) = files
    rows = read_csv(csv_file)
    assert "path" not in rows[0]
    assert [r["id"] for r in rows] == [r["id"] for r in expected]
    np.testing.assert_allclose([float(r["score"]) for r in rows], [r["score"] for r in expected], atol=1e-6)
    assert [r["label"] for r in rows] == [r["label"] for r in expected]
    # The same ranking from numpy over the stored vectors.
    ids, scores = brute_force_ranking(service.index, service.index.embed_query(query), 5)
    assert [r["id"] for r in rows] == ids
    np.testing.assert_allclose([float(r["score"]) for r in rows], scores, atol=1e-5)
    assert "not georeferenced" in map_html


def test_search_in_all_ten_languages(app):
    """One caption of the same UCM image in each language: the app's top results equal the Python API's."""
    service, client = app
    root = sample_dir() / "ucm"
    first = json.loads((root / "dataset.json").read_text())["images"][0]
    queries = {"en": first["sentences"][0]["raw"]}
    for lang in LANGUAGES[1:]:
        rows = json.loads((root / "translations" / f"{lang}.json").read_text(encoding="utf-8"))
        queries[lang] = rows[0]["text"]
    for lang, query in queries.items():
        status, _, _, table, _ = client.predict(query, "auto", 3, api_name="/search")
        assert status.endswith(f"query language: {lang}"), (query, status)
        assert [row[3] for row in table["data"]] == [r["id"] for r in service.index.search(query, top_k=3)]


def test_image_search_returns_the_python_api_results(app):
    service, client = app
    image = UCM_IMAGES / "1591.jpg"
    status, gallery, _, table, _ = client.predict(handle_file(str(image)), 4, api_name="/search_image")
    expected = service.index.search(image, top_k=4, image=True)
    assert status == "4 results for the uploaded image"
    assert [row[3] for row in table["data"]] == [r["id"] for r in expected]
    assert table["data"][0][3].endswith("/1591.jpg") and table["data"][0][1] > 0.999  # itself, first


# ------------------------------------------------------------------------------------------------------ scenes
@pytest.fixture(scope="module")
def mosaic(tmp_path_factory):
    pytest.importorskip("rasterio", reason='GeoTIFF scenes need rasterio: pip install "rsmclip[geo]"')
    return write_mosaic_geotiff(tmp_path_factory.mktemp("scene") / "mosaic.tif", tile_px=128)


def test_classify_a_geotiff_returns_the_python_api_class_map(app, mosaic, tmp_path):
    import rasterio

    from modeling_rsmclip.geo import classify_scene

    service, client = app
    labels = "aviões, praia, floresta, estacionamento"
    status, label, picture, files = client.predict(
        handle_file(str(mosaic)), labels, "auto", 128, "auto", api_name="/classify"
    )
    expected = classify_scene(
        mosaic,
        ["aviões", "praia", "floresta", "estacionamento"],
        model=service.model,
        processor=service.processor,
        language="pt",
        tile_size=128,
        output_dir=tmp_path,
        progress=False,
    )
    assert "scene of 4 tiles of 128 px" in status and "Prompt language: pt" in status
    counts = {name: int((expected.class_ids == i).sum()) for i, name in enumerate(expected.labels)}
    got = confidences(label)
    assert got == pytest.approx({name: n / 4 for name, n in counts.items()}, abs=1e-9)
    by_name = {f.rsplit("/", 1)[-1]: f for f in files}
    assert set(by_name) == {"classes.tif", "tiles.geojson"}
    with rasterio.open(by_name["classes.tif"]) as src, rasterio.open(expected.files["geotiff"]) as ref:
        assert src.crs == ref.crs and src.transform == ref.transform
        np.testing.assert_array_equal(src.read(1), ref.read(1))
        np.testing.assert_allclose(src.read(2), ref.read(2), atol=1e-6)
    geojson = json.loads(open(by_name["tiles.geojson"], encoding="utf-8").read())
    assert [f["properties"]["label"] for f in geojson["features"]] == [
        f["properties"]["label"] for f in expected.geojson["features"]
    ]
    assert picture


def test_segment_returns_the_python_api_class_map(app, mosaic, tmp_path):
    import rasterio

    from modeling_rsmclip.geo import segment_scene

    service, client = app
    labels = "airplanes, beach, forest, parking lot"
    status, overlay, legend, fractions, files = client.predict(
        handle_file(str(mosaic)), labels, "en", 128, "auto", api_name="/segment"
    )
    expected = segment_scene(
        mosaic,
        ["airplanes", "beach", "forest", "parking lot"],
        model=service.model,
        processor=service.processor,
        language="en",
        window=128,
        output_dir=tmp_path,
        progress=False,
    )
    total = sum(expected.pixels_per_class.values())
    assert total == 256 * 256
    assert confidences(fractions) == pytest.approx(
        {k: v / total for k, v in expected.pixels_per_class.items()}, abs=1e-9
    )
    (geotiff,) = files
    with rasterio.open(geotiff) as src:
        assert src.crs.to_epsg() == 32629 and (src.width, src.height) == (256, 256)
        np.testing.assert_array_equal(src.read(1), expected.class_map)
    for name in ("airplanes", "beach", "forest", "parking lot"):
        assert name in legend
    assert overlay and status == "Prompt language: en"
