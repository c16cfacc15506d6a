"""Archive indexes built and queried with the CPU inference backends (int8 weights, ONNX Runtime): the index
belongs to the source model's weights, the manifest records how it was embedded, and int8 stays close to fp32."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faiss")
pytest.importorskip("pyarrow")

from _index_fixtures import shard_embeddings  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "modeling_rsmclip" / "demo_model"
SAMPLES = REPO / "examples" / "sample" / "ucm" / "images"
QUERIES = ["an airport with many airplanes", "a sandy beach by the sea", "a dense green forest"]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    for path in sorted(SAMPLES.glob("*.jpg"))[:8]:
        shutil.copy(path, folder / path.name)
    return folder


@pytest.fixture(scope="module")
def fp32_and_int8(images, tmp_path_factory):
    from modeling_rsmclip.index import build_index

    root = tmp_path_factory.mktemp("indexes")
    kwargs = {"batch_size": 4, "num_workers": 0, "progress": False}
    fp32 = build_index(str(DEMO), root / "fp32", [images], **kwargs)
    int8 = build_index(str(DEMO), root / "int8", [images], precision="int8", **kwargs)
    return fp32, int8


def _normalised(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_int8_index_keeps_the_fingerprint_and_is_close_to_fp32(fp32_and_int8) -> None:
    fp32, int8 = fp32_and_int8
    assert int8.manifest["model"]["fingerprint"] == fp32.manifest["model"]["fingerprint"]
    assert int8.manifest["embedding"]["backend"] == "torch"
    assert int8.manifest["embedding"]["precision"] == "int8"
    assert fp32.manifest["embedding"]["precision"] == "fp32"
    assert int8.manifest["runs"][0]["precision"] == "int8"
    ids32, emb32 = shard_embeddings(fp32.path)
    ids8, emb8 = shard_embeddings(int8.path)
    assert ids8 == ids32 and len(ids8) == 8
    cosines = (_normalised(emb32) * _normalised(emb8)).sum(axis=1)
    assert cosines.min() > 0.995, cosines


def test_int8_build_of_a_model_path_keeps_one_copy_and_queries_like_a_fresh_load(fp32_and_int8) -> None:
    import torch

    from modeling_rsmclip.index import RSMCLIPIndex
    from modeling_rsmclip.inference import TorchInt8Encoder

    _, int8 = fp32_and_int8
    # The model loaded from the path was quantised in place: the index holds it, as the encoder's model.
    encoder = int8._embedder.model
    assert isinstance(encoder, TorchInt8Encoder) and encoder.quantized is int8._model
    assert not any(isinstance(m, torch.nn.Linear) for m in int8._model.modules())
    # Queries equal those of the same index opened afresh with the fp32 model and int8 queries.
    again = RSMCLIPIndex.load(int8.path, precision="int8")
    for query in QUERIES:
        np.testing.assert_allclose(int8.embed_query(query), again.embed_query(query), atol=1e-6)
        assert [r["id"] for r in int8.search(query, top_k=3)] == [
            r["id"] for r in again.search(query, top_k=3)
        ]


def test_int8_search_matches_brute_force(fp32_and_int8) -> None:
    from modeling_rsmclip.index import RSMCLIPIndex

    _, int8 = fp32_and_int8
    index = RSMCLIPIndex.load(int8.path, precision="int8")
    ids, stored = shard_embeddings(int8.path)
    stored = _normalised(stored)
    for query in QUERIES:
        embedding = index.embed_query(query)[0]
        order = np.argsort(-(stored @ embedding), kind="stable")
        hits = index.search(query, top_k=len(ids))
        assert [h["id"] for h in hits] == [ids[i] for i in order]
        np.testing.assert_allclose([h["score"] for h in hits], (stored @ embedding)[order], atol=1e-5)
    # int8 queries against the fp32 index are allowed (same fingerprint).
    fp32_index = RSMCLIPIndex.load(fp32_and_int8[0].path, precision="int8")
    assert len(fp32_index.search(QUERIES[0], top_k=3)) == 3


def test_cli_int8_build_and_search(images, tmp_path, capsys) -> None:
    from modeling_rsmclip.cli import main

    out = tmp_path / "cli-index"
    args = ["index", "build", "--model", str(DEMO), "--output", str(out), str(images)]
    assert main([*args, "--precision", "int8", "--num-workers", "0", "--quiet"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["embedding"]["backend"], manifest["embedding"]["precision"]) == ("torch", "int8")
    capsys.readouterr()
    assert main(["search", str(out), QUERIES[1], "--precision", "int8", "--top-k", "3", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["rank"] for r in results] == [1, 2, 3]
    # The ids and scores are numpy's ranking of the index's own (int8) embeddings for the int8 query vector.
    from modeling_rsmclip.index import RSMCLIPIndex

    ids, stored = shard_embeddings(out)
    stored = _normalised(stored)
    query = RSMCLIPIndex.load(out, precision="int8").embed_query(QUERIES[1])[0]
    order = np.argsort(-(stored @ query), kind="stable")[:3]
    assert [r["id"] for r in results] == [ids[i] for i in order]
    np.testing.assert_allclose([r["score"] for r in results], (stored @ query)[order], atol=1e-5)
    # Against the fp32 index and fp32 queries: the same top 3 (measured: the same, in the same order).
    capsys.readouterr()
    fp32 = tmp_path / "cli-fp32"
    assert main([*args[:5], str(fp32), str(images), "--num-workers", "0", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["search", str(fp32), QUERIES[1], "--top-k", "3", "--json"]) == 0
    reference = json.loads(capsys.readouterr().out)
    assert {r["id"] for r in results} == {r["id"] for r in reference}

    bad = tmp_path / "bad-index"
    code = main(
        ["index", "build", "--output", str(bad), str(images), "--backend", "onnx", "--precision", "bf16"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error:"), err
    assert not (bad / "manifest.json").exists()
    code = main(["search", str(out), "x", "--backend", "onnx", "--precision", "fp16"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error:"), err


def test_onnx_index_and_queries(images, fp32_and_int8, tmp_path, monkeypatch) -> None:
    """ONNX Runtime embeds the images and the queries; the export is the demo model's (one per test process)."""
    pytest.importorskip("onnxruntime", reason='the ONNX backend needs pip install "rsmclip[onnx]"')
    from _onnx_fixtures import use_demo_onnx_cache

    from modeling_rsmclip.index import RSMCLIPIndex, build_index

    # The index loads the model from its folder and looks for its export in the cache: put the shared one there.
    use_demo_onnx_cache(tmp_path, monkeypatch)
    fp32 = fp32_and_int8[0]
    onnx = build_index(
        str(DEMO), tmp_path / "onnx", [images], backend="onnx", batch_size=4, num_workers=0, progress=False
    )
    assert onnx.manifest["model"]["fingerprint"] == fp32.manifest["model"]["fingerprint"]
    assert (onnx.manifest["embedding"]["backend"], onnx.manifest["embedding"]["precision"]) == (
        "onnx",
        "fp32",
    )
    ids, emb = shard_embeddings(onnx.path)
    ids32, emb32 = shard_embeddings(fp32.path)
    assert ids == ids32
    # ONNX Runtime fp32 and PyTorch fp32 differ by float rounding only: measured, stored (float16) values within
    # 3.1e-5 and cosines 1 - 6e-8; bounds 5e-4 and 1 - 1e-6. The int8 index of the same images is far outside both
    # (measured 6.2e-3 and 1 - 4e-4), so these bounds tell an fp32 index from an int8 one.
    cos = (_normalised(emb) * _normalised(emb32)).sum(axis=1)
    diff = np.abs(emb - emb32).max()
    assert cos.min() > 1 - 1e-6 and diff < 5e-4, (cos.min(), diff)
    int8_ids, emb8 = shard_embeddings(fp32_and_int8[1].path)
    cos8 = (_normalised(emb8) * _normalised(emb32)).sum(axis=1)
    assert int8_ids == ids32 and cos8.min() < 1 - 1e-6 and np.abs(emb8 - emb32).max() > 5e-4
    for query in QUERIES:  # the same ranking and scores as the PyTorch index, for the same query vector
        vector = fp32.embed_query(query)
        got, want = onnx.search_embedding(vector, top_k=8), fp32.search_embedding(vector, top_k=8)
        assert [h["id"] for h in got] == [h["id"] for h in want]
        np.testing.assert_allclose([h["score"] for h in got], [h["score"] for h in want], atol=1e-3)
    # ONNX int8 queries against the fp32 (PyTorch) index.
    index = RSMCLIPIndex.load(fp32.path, backend="onnx", precision="int8")
    stored = _normalised(emb32)
    for query in QUERIES:
        expected = ids32[int(np.argmax(stored @ index.embed_query(query)[0]))]
        assert index.search(query, top_k=1)[0]["id"] == expected
