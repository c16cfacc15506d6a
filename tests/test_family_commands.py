"""Every model family through every user command: the family x command matrix.

Families: a tiny OpenCLIP CLIP made by open_clip with random weights and converted by `rsmclip convert` (an
`RSMCLIPModel` with the CLIP text tower: the architecture of OpenAI CLIP, RemoteCLIP, GeoRSCLIP, SkyCLIP), and tiny
random Hub-native `CLIPModel`, `SiglipModel`, `Siglip2Model` and `AltCLIPModel` folders (`_family_fixtures`).

Commands, each run as a user runs it (the command-line entry point, or the HTTP server on 127.0.0.1 for `rsmclip
serve`) and checked against a reference computed here with the model's own forward pass, independent of the
package's embedding code: `eval-zero-shot` and `eval-retrieval`, `index build` + `search`, `map classify`, `map
segment` (refused with its reason where the image tower has no dense features), the web app's service, `serve`,
both transformers pipelines, `export --to-onnx` and `search --backend onnx` (refused with its reason for SigLIP 2).
"""

from __future__ import annotations

import concurrent.futures
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _family_fixtures import (
    ALL_FAMILIES,
    family_folder,
    family_model,
    family_onnx_export,
    onnx_cache_root,
    reference_class_embeddings,
    reference_class_scores,
    reference_forward,
    reference_recalls,
)
from PIL import Image

from modeling_rsmclip.testing import sample_dir

pytest.importorskip("faiss", reason='needs faiss: pip install "rsmclip[index]"')

UCM = sample_dir() / "ucm"
INDEX_IMAGES = ("191.jpg", "391.jpg", "791.jpg", "1591.jpg", "2091.jpg", "1291.jpg", "891.jpg", "1991.jpg")
QUERIES = [
    "a beach with blue sea",
    "many planes parked at the airport",
    "停满飞机的机场",
    "uma floresta densa",
]
LABELS = ["beach", "forest", "airplanes", "farmland"]
TILE = 128  # the scene: two UCM images of TILE x TILE pixels side by side
DENSE = ("openclip", "clip", "altclip")  # image towers with patch features in the text space (NACLIP)


def _main(argv: list[str]) -> int:
    from modeling_rsmclip.cli import main

    return main([str(a) for a in argv])


def _error_lines(stderr: list[str], count: int = 1) -> list[str]:
    """The ``error:`` lines of a command's stderr (beside transformers' progress bars): ``count`` of them, and no
    traceback."""
    errors = [line for line in stderr if line.startswith("error: ")]
    assert len(errors) == count and not any("Traceback" in line for line in stderr), stderr
    return errors


def _pil(paths) -> list[Image.Image]:
    return [Image.open(p).convert("RGB") for p in paths]


@pytest.fixture(scope="module", params=ALL_FAMILIES)
def fam(request, tmp_path_factory) -> SimpleNamespace:
    """One family: its folder, its model and processor (loaded with the Auto classes), a folder of a few UCM
    images and the index `rsmclip index build` makes of them."""
    name = request.param
    folder = family_folder(name)
    model, processor = family_model(name)
    root = tmp_path_factory.mktemp(f"commands-{name}")
    images = root / "images"
    images.mkdir()
    for image in INDEX_IMAGES:
        (images / image).symlink_to(UCM / "images" / image)
    index = root / "index"
    argv = ["index", "build", "--model", folder, "--output", index, images, "--num-workers", "0", "--quiet"]
    assert _main(argv) == 0
    files = sorted(images.iterdir())
    return SimpleNamespace(
        name=name, folder=folder, model=model, processor=processor, root=root, images=files, index=index
    )


def _ranking(fam: SimpleNamespace, query: str) -> tuple[list[str], np.ndarray]:
    """File names of the index's images from best to worst for ``query``, and their cosines, from the forward
    pass."""
    ref = reference_forward(fam.name, fam.model, fam.processor, [query], _pil(fam.images))
    cos = (ref["image_embeds"] @ ref["text_embeds"].T)[:, 0]
    order = np.argsort(-cos, kind="stable")
    return [fam.images[i].name for i in order], cos[order]


def _assert_hits(rows: list[dict], fam: SimpleNamespace, query: str, atol: float = 2e-3) -> None:
    """Search hits are the forward pass's ranking: the same scores (float16 storage) and the same images, up to
    the order of scores closer than ``atol``."""
    names, cos = _ranking(fam, query)
    assert cos[0] - cos[-1] > 10 * atol  # the query tells the images apart: the ranking is a real check
    by_name = dict(zip(names, cos))
    got = [
        by_name[Path(row["path"]).name] if "path" in row else by_name[Path(row["id"]).name] for row in rows
    ]
    np.testing.assert_allclose([row["score"] for row in rows], got, atol=atol)
    np.testing.assert_allclose(got, cos[: len(rows)], atol=atol)  # the k best, in order


# ------------------------------------------------------------------------------------------------ evaluation
def test_eval_zero_shot(fam, tmp_path):
    from modeling_rsmclip.templates import PROMPT_TEMPLATES

    rsscn7 = sample_dir() / "rsscn7"
    argv = ["eval-zero-shot", "--model", fam.folder, "--image-folder", rsscn7, "--languages", "en,pt"]
    argv += ["--output-dir", tmp_path, "--num-workers", "0", "--no-cache", "--no-plots", "--quiet"]
    assert _main(argv) == 0
    results = json.loads((tmp_path / "zero_shot_rsscn7.json").read_text())
    files = sorted(rsscn7.rglob("*.jpg"))
    truth = [results["classes"].index(p.parent.name) for p in files]
    images = reference_forward(fam.name, fam.model, fam.processor, ["x"], _pil(files))["image_embeds"]
    for lang in ("en", "pt"):
        names = results["class_names"][lang]
        classes = reference_class_embeddings(
            fam.name, fam.model, fam.processor, names, PROMPT_TEMPLATES[lang]
        )
        predicted = reference_class_scores(fam.name, fam.model, images, classes).argmax(1)
        assert results["languages"][lang]["top1"] == pytest.approx(100.0 * np.mean(predicted == truth))


def test_eval_retrieval(fam, tmp_path):
    data = json.loads((UCM / "dataset.json").read_text())
    data["images"] = [e for e in data["images"] if e["filename"] in INDEX_IMAGES]
    karpathy = tmp_path / "dataset.json"
    karpathy.write_text(json.dumps(data))
    argv = ["eval-retrieval", "--model", fam.folder, "--karpathy-json", karpathy, "--images", UCM / "images"]
    argv += ["--translations", UCM / "translations", "--languages", "en,zh", "--output-dir", tmp_path / "out"]
    argv += ["--dataset-name", "ucm8"]
    assert _main(argv + ["--num-workers", "0", "--no-cache", "--no-plots", "--quiet"]) == 0
    results = json.loads((tmp_path / "out" / "retrieval_ucm8_test.json").read_text())
    files = [UCM / "images" / e["filename"] for e in data["images"]]
    images = reference_forward(fam.name, fam.model, fam.processor, ["x"], _pil(files))["image_embeds"]
    zh = {r["en"].strip(): r["text"].strip() for r in json.loads((UCM / "translations/zh.json").read_text())}
    for lang in ("en", "zh"):
        pairs = [
            (i, s["raw"].strip() if lang == "en" else zh[s["raw"].strip()])
            for i, e in enumerate(data["images"])
            for s in e["sentences"]
        ]
        texts = [t for _, t in pairs]
        embeds = reference_forward(fam.name, fam.model, fam.processor, texts, _pil(files[:1]))["text_embeds"]
        expected = reference_recalls(images, embeds, np.array([i for i, _ in pairs]))
        for key, value in expected.items():
            assert results["languages"][lang][key] == pytest.approx(value, abs=1e-9), (lang, key)


# ------------------------------------------------------------------------------------------- index and search
def test_index_build_and_search(fam, capsys):
    from modeling_rsmclip.index import RSMCLIPIndex

    index = RSMCLIPIndex.load(fam.index)
    assert index.manifest["model"]["family"] == model_family_name(fam)
    ref = reference_forward(fam.name, fam.model, fam.processor, ["x"], _pil(fam.images[:1]))
    assert index.manifest["embedding"]["dim"] == ref["image_embeds"].shape[1]
    for query in QUERIES[:2]:
        capsys.readouterr()
        assert _main(["search", fam.index, query, "--top-k", "5", "--json"]) == 0
        _assert_hits(json.loads(capsys.readouterr().out), fam, query)
    # An image query finds that image first, with cosine 1.
    assert _main(["search", fam.index, fam.images[3], "--image", "--top-k", "1", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert Path(rows[0]["path"]).name == fam.images[3].name and rows[0]["score"] == pytest.approx(1, abs=2e-3)


def model_family_name(fam: SimpleNamespace) -> str:
    """The `inference.families` name of a fixture family (the converted OpenCLIP CLIP is an RS-M-CLIP model)."""
    return "rsmclip" if fam.name == "openclip" else fam.name


# ------------------------------------------------------------------------------------------------------ maps
@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> tuple[Path, list[np.ndarray]]:
    """A georeferenced TILE x 2 TILE scene: two UCM images side by side."""
    rasterio = pytest.importorskip("rasterio", reason='needs rasterio: pip install "rsmclip[geo]"')
    from affine import Affine

    tiles = [
        np.asarray(im.resize((TILE, TILE))) for im in _pil([UCM / "images" / n for n in INDEX_IMAGES[:2]])
    ]
    path = tmp_path_factory.mktemp("scene") / "scene.tif"
    profile = dict(
        driver="GTiff", width=2 * TILE, height=TILE, count=3, dtype="uint8", crs="EPSG:32611",
        transform=Affine(0.3, 0.0, 500000.0, 0.0, -0.3, 4100000.0), photometric="RGB",
    )  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.concatenate(tiles, axis=1).transpose(2, 0, 1))
    return path, tiles


def _tile_scores(fam: SimpleNamespace, tiles: list[np.ndarray]) -> np.ndarray:
    """The family's zero-shot scores of each tile (softmax, or SigLIP's sigmoid with its bias), by hand."""
    from modeling_rsmclip.templates import PROMPT_TEMPLATES

    images = reference_forward(fam.name, fam.model, fam.processor, ["x"], tiles)["image_embeds"]
    classes = reference_class_embeddings(fam.name, fam.model, fam.processor, LABELS, PROMPT_TEMPLATES["en"])
    return reference_class_scores(fam.name, fam.model, images, classes)


def test_map_classify(fam, scene, tmp_path):
    path, tiles = scene
    argv = [
        "map",
        "classify",
        path,
        "--labels",
        ",".join(LABELS),
        "--output",
        tmp_path,
        "--model",
        fam.folder,
    ]
    assert _main(argv + ["--tile-size", TILE, "--no-progress"]) == 0
    features = json.loads((tmp_path / "tiles.geojson").read_text())["features"]
    got = np.array([[f["properties"]["probabilities"][label] for label in LABELS] for f in features])
    expected = _tile_scores(fam, tiles)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert [f["properties"]["label"] for f in features] == [LABELS[i] for i in expected.argmax(1)]


def test_map_segment(fam, scene, tmp_path, capsys):
    rasterio = pytest.importorskip("rasterio")
    path, tiles = scene
    argv = ["map", "segment", path, "--labels", ",".join(LABELS), "--output", tmp_path, "--model", fam.folder]
    argv += ["--window", TILE, "--stride", TILE, "--no-naclip", "--no-progress"]
    if fam.name not in DENSE:
        assert _main(argv) == 2
        error = capsys.readouterr().err.strip().splitlines()
        error = _error_lines(error)
        assert "no dense patch features" in error[0] and "map classify" in error[0]
        assert "attention head" in error[0]
        assert not (tmp_path / "segmentation.tif").exists()
        return
    assert _main(argv) == 0
    with rasterio.open(tmp_path / "segmentation.tif") as src:
        class_map = src.read(1)
    # By hand: each window's patch tokens through the post-layernorm and the projection, cosine with the class
    # embeddings, bilinear upsampling to the window's pixels, argmax.
    from modeling_rsmclip.templates import PROMPT_TEMPLATES

    model, processor = fam.model, fam.processor
    pixels = processor.image_processor(images=tiles, return_tensors="pt")["pixel_values"]
    grid = pixels.shape[-1] // model.config.vision_config.patch_size
    with torch.inference_mode():
        hidden = model.vision_model(pixel_values=pixels).last_hidden_state[:, 1:]
        patches = F.normalize(
            model.visual_projection(model.vision_model.post_layernorm(hidden)).double(), dim=-1
        )
    classes = torch.from_numpy(
        reference_class_embeddings(fam.name, model, processor, LABELS, PROMPT_TEMPLATES["en"])
    )
    logits = (patches @ classes.T).reshape(2, grid, grid, len(LABELS)).permute(0, 3, 1, 2).float()
    expected = F.interpolate(logits, size=(TILE, TILE), mode="bilinear", align_corners=False).argmax(1)
    expected = torch.cat(list(expected), dim=1).numpy()
    assert class_map.shape == expected.shape and len(np.unique(expected)) > 1  # not a one-class map
    assert np.mean(class_map == expected) > 0.999


# ----------------------------------------------------------------------------------------------- app and serve
def test_app_service(fam, scene, tmp_path):
    from modeling_rsmclip.app.service import AppService, InputError
    from modeling_rsmclip.index import RSMCLIPIndex

    index = RSMCLIPIndex.load(fam.index, model=fam.model, processor=fam.processor)
    service = AppService(fam.model, fam.processor, index=index, work_dir=tmp_path / "app")
    result = service.classify(str(fam.images[0]), ", ".join(LABELS), language="en")
    expected = _tile_scores(fam, _pil(fam.images[:1]))[0]
    np.testing.assert_allclose(result.probabilities, expected, atol=1e-5)
    found = service.search(QUERIES[1], language="en", top_k=4)
    _assert_hits(found.rows, fam, QUERIES[1])
    path, _ = scene
    if fam.name in DENSE:
        segmented = service.segment(str(path), ", ".join(LABELS), language="en", window=TILE)
        assert Path(segmented.geotiff_path).is_file() and sum(segmented.class_fractions.values()) == 1.0
    else:
        with pytest.raises(InputError, match="no dense patch features.*map classify"):
            service.segment(str(path), ", ".join(LABELS), language="en", window=TILE)


def test_serve_search(fam):
    """`rsmclip serve`'s service and API on a real HTTP server on 127.0.0.1: concurrent text queries (batched
    into one forward pass, padded together) and an image upload rank as the forward pass does."""
    pytest.importorskip("fastapi", reason='the HTTP API needs FastAPI: pip install "rsmclip[serve]"')
    import httpx

    from modeling_rsmclip.serve import BackgroundServer, SearchService, build_api

    service = SearchService.load(fam.index, max_wait_ms=50)
    try:
        with (
            BackgroundServer(build_api(service)) as server,
            httpx.Client(base_url=server.url, timeout=120) as client,
        ):

            def get(query: str) -> list[dict]:
                response = client.get("/search", params={"query": query, "top_k": 5})
                assert response.status_code == 200, response.text
                return response.json()["results"]

            with concurrent.futures.ThreadPoolExecutor(len(QUERIES)) as pool:
                answers = list(pool.map(get, QUERIES))
            for query, rows in zip(QUERIES, answers):
                assert all("path" not in row for row in rows)
                _assert_hits(rows, fam, query)
            with open(fam.images[2], "rb") as f:
                response = client.post(
                    "/search", files={"image": ("q.jpg", f, "image/jpeg")}, data={"top_k": "1"}
                )
            assert response.status_code == 200, response.text
            assert Path(response.json()["results"][0]["id"]).name == fam.images[2].name
    finally:
        service.close()


# -------------------------------------------------------------------------------------------------- pipelines
def test_pipelines(fam):
    from transformers import pipeline

    from modeling_rsmclip import RSMCLIPRetrievalPipeline, RSMCLIPZeroShotImageClassificationPipeline

    image = _pil(fam.images[:1])[0]
    classifier = pipeline(
        "zero-shot-image-classification",
        model=str(fam.folder),
        pipeline_class=RSMCLIPZeroShotImageClassificationPipeline,
    )
    template = "a satellite image of {}."
    got = {
        row["label"]: row["score"]
        for row in classifier(image, candidate_labels=LABELS, hypothesis_template=template)
    }
    ref = reference_forward(fam.name, fam.model, fam.processor, [template.format(x) for x in LABELS], [image])
    np.testing.assert_allclose([got[x] for x in LABELS], ref["probabilities"][0], atol=1e-5)
    retriever = pipeline("rsmclip-retrieval", model=str(fam.folder), pipeline_class=RSMCLIPRetrievalPipeline)
    rows = retriever(QUERIES[0], images=[str(p) for p in fam.images], top_k=len(fam.images))
    names, cos = _ranking(fam, QUERIES[0])
    assert [fam.images[row["index"]].name for row in rows] == names
    np.testing.assert_allclose([row["score"] for row in rows], cos, atol=2e-6)


# ------------------------------------------------------------------------------------------------------- ONNX
def test_export_onnx_and_search_with_onnx_backend(fam, capsys, monkeypatch):
    """`rsmclip export --to-onnx` gives graphs whose embeddings are the forward pass's (fp32, within 1e-5), and
    `rsmclip search --backend onnx` runs those graphs and ranks as the forward pass does; SigLIP 2 is refused with
    its reason by both. (The standalone runner of each export: tests/test_model_families_onnx.py.)"""
    pytest.importorskip("onnxruntime", reason='needs onnxruntime: pip install "rsmclip[onnx]"')
    from modeling_rsmclip.evaluation.embed import Embedder, ImageFiles
    from modeling_rsmclip.inference import load_encoder

    capsys.readouterr()
    export, out = family_onnx_export(fam.name)
    # `--backend onnx` looks for a model's graphs in the cache (one export per weights' SHA-256), where the export
    # above went: the search runs the graphs that `rsmclip export --to-onnx` wrote.
    monkeypatch.setenv("RSMCLIP_ONNX_CACHE", str(onnx_cache_root()))
    search = _main(["search", fam.index, QUERIES[1], "--top-k", "5", "--json", "--backend", "onnx"])
    if fam.name == "siglip2":
        assert (export, search) == (2, 2)
        errors = _error_lines(capsys.readouterr().err.strip().splitlines(), 2)
        assert all("SigLIP 2" in line and "NaFlex" in line and "--backend torch" in line for line in errors)
        assert not out.exists()
        # Every other command with --backend onnx says the same before it embeds anything.
        scene_argv = ["map", "classify", fam.images[0], "--labels", "a,b", "--output", fam.root / "onnx-map"]
        eval_argv = [
            "eval-zero-shot",
            "--image-folder",
            sample_dir() / "rsscn7",
            "--output-dir",
            fam.root / "zs",
        ]
        build_argv = ["index", "build", "--output", fam.root / "onnx-index", fam.images[0].parent]
        for argv in (scene_argv, eval_argv, build_argv):
            assert _main([*argv, "--model", fam.folder, "--backend", "onnx"]) == 2, argv
            (error,) = _error_lines(capsys.readouterr().err.strip().splitlines())
            assert "SigLIP 2" in error and "NaFlex" in error, argv
        from modeling_rsmclip.serve import SearchService

        with pytest.raises(ValueError, match="SigLIP 2.*NaFlex"):
            SearchService.load(fam.index, backend="onnx")  # what `rsmclip serve` and `rsmclip app` load
        return
    assert (export, search) == (0, 0)
    printed = capsys.readouterr().out
    _assert_hits(json.loads(printed[printed.index("[") :]), fam, QUERIES[1])
    manifest = json.loads((out / "onnx_manifest.json").read_text())
    assert manifest["family"] == model_family_name(fam)
    encoder = load_encoder(str(out), "onnx", "fp32")
    embedder = Embedder(encoder, fam.processor, num_workers=0, cache_dir=None, show_progress=False)
    ref = reference_forward(fam.name, fam.model, fam.processor, QUERIES, _pil(fam.images))
    texts, images = embedder.texts(QUERIES).numpy(), embedder.images(ImageFiles(fam.images)).numpy()
    diffs = np.abs(texts - ref["text_embeds"]).max(), np.abs(images - ref["image_embeds"]).max()
    assert max(diffs) < 1e-5, diffs
