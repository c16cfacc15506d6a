"""The Ray engine of the index build: on a local Ray cluster of 2 CPUs started here, `build_index(engine="ray")`
writes the same shards as the one-process build (names, rows, ids, float16 embeddings) and the same FAISS index;
a model actor killed mid-run is restarted by Ray and no item is lost or embedded twice."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import tempfile
from pathlib import Path

import numpy as np
import pytest

from modeling_rsmclip.testing import sample_dir

REPO = Path(__file__).resolve().parents[1]
# Shards of 4 items, embedded in batches of 2: every shard is two chunks on Ray.
OPTIONS = {"shard_size": 4, "batch_size": 2, "num_workers": 0, "progress": False}


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray of 2 CPUs in a temporary folder, shut down at the end of the module even when a test fails."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("faiss")
    temp = tempfile.mkdtemp(prefix="rsr", dir="/tmp")  # short: Ray's socket paths must fit in 107 characters
    # The workers import this checkout's package, whatever the installed one is.
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _temp_dir=temp,
        logging_level=logging.WARNING,
        runtime_env={"env_vars": env},
    )
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> list[str]:
    """The bundled samples after a folder whose first shard holds an unreadable file and, in its second chunk, a
    copy of its first image (a duplicate across chunks of one shard); two of its images repeat sample images
    (duplicates across shards)."""
    extra = tmp_path_factory.mktemp("extra")
    images = sorted((sample_dir() / "ucm" / "images").glob("*.jpg"))
    shutil.copy(images[0], extra / "a.jpg")
    (extra / "b.jpg").write_bytes(b"not a jpeg")
    shutil.copy(images[1], extra / "c.jpg")
    shutil.copy(images[0], extra / "d.jpg")
    return [str(extra), str(sample_dir())]


@pytest.fixture(scope="module")
def one_process(sources, tmp_path_factory):
    from modeling_rsmclip.index import build_index

    return build_index("demo", tmp_path_factory.mktemp("one") / "idx", sources, **OPTIONS)


def _shards(index_dir: Path) -> dict[str, object]:
    import pyarrow.parquet as pq

    return {p.name: pq.read_table(p) for p in sorted((index_dir / "shards").glob("*.parquet"))}


def _assert_same_index(ray_dir: Path, one) -> None:
    import faiss
    import pyarrow.parquet as pq

    ray_shards, one_shards = _shards(ray_dir), _shards(one.path)
    assert (
        list(ray_shards) == list(one_shards) and len(one_shards) == 14
    )  # 53 items in shards of 4: 14 in one run, 1 + 13 in two
    for name, table in one_shards.items():
        other = ray_shards[name]
        assert other["id"].to_pylist() == table["id"].to_pylist(), name
        assert other.drop_columns(["embedding"]).equals(table.drop_columns(["embedding"])), name
        dim = table.schema.field("embedding").type.list_size
        a = np.asarray(other["embedding"].combine_chunks().flatten(), dtype=np.float32).reshape(-1, dim)
        b = np.asarray(table["embedding"].combine_chunks().flatten(), dtype=np.float32).reshape(-1, dim)
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6, err_msg=name)
        report = name.replace(".parquet", ".report.json")
        assert (ray_dir / "shards" / report).read_text() == (one.path / "shards" / report).read_text()
    assert pq.read_table(ray_dir / "metadata.parquet").equals(one.metadata)
    assert json.loads((ray_dir / "report.json").read_text()) == json.loads(
        (one.path / "report.json").read_text()
    )
    # The same FAISS index: every stored vector as a query gives the same neighbours and scores.
    index_ray, index_one = (
        faiss.read_index(str(ray_dir / "index.faiss")),
        faiss.read_index(str(one.path / "index.faiss")),
    )
    queries = index_one.reconstruct_n(0, index_one.ntotal)
    scores_ray, ids_ray = index_ray.search(queries, 5)
    scores_one, ids_one = index_one.search(queries, 5)
    np.testing.assert_array_equal(ids_ray, ids_one)
    np.testing.assert_allclose(scores_ray, scores_one, atol=1e-6)


def test_ray_build_equals_one_process_build(ray_cluster, sources, one_process, tmp_path) -> None:
    from modeling_rsmclip.index import build_index

    index = build_index("demo", tmp_path / "idx", sources, engine="ray", **OPTIONS)
    # The cases of the work list are there: an unreadable file, a duplicate within a shard (across its two
    # chunks) and duplicates across shards, all reported as the one-process build reports them.
    report = json.loads((tmp_path / "idx" / "report.json").read_text())
    assert [e["id"] for e in report["unreadable"]] == [f"{Path(sources[0]).name}/b.jpg"]
    assert len(report["duplicates"]) == 3 and len(index) == 53 - 1 - 3
    _assert_same_index(tmp_path / "idx", one_process)
    assert index.manifest["counts"] == one_process.manifest["counts"]
    assert index.manifest["model"]["fingerprint"] == one_process.manifest["model"]["fingerprint"]
    text = "um campo de ténis"
    assert [r["id"] for r in index.search(text, top_k=5)] == [
        r["id"] for r in one_process.search(text, top_k=5)
    ]


def test_index_add_on_ray_survives_a_killed_actor(ray_cluster, sources, tmp_path, monkeypatch) -> None:
    """`index add` on Ray with one model actor, whose process is killed (SIGKILL) as soon as its first chunk reaches
    the shard writer: Ray restarts the actor and runs the chunks it had not finished again. The result equals the
    one-process `index add` of the same folder onto the same index (the two sample images already indexed are
    reported unchanged, not embedded again), with every item once."""
    from modeling_rsmclip.index import add_to_index, build_index, ray_engine

    build_index("demo", tmp_path / "one", sources[:1], **OPTIONS)
    shutil.copytree(tmp_path / "one", tmp_path / "ray")
    one = add_to_index(tmp_path / "one", sources[1:], **OPTIONS)

    killed: list[int] = []
    writers: list[object] = []
    add = ray_engine._ShardWriter.add

    def add_and_kill(self, shard, chunk, results, kept, embeddings, pid):
        if not killed:
            writers.append(self)
            os.kill(pid, signal.SIGKILL)  # a worker of the cluster this module started
            killed.append(pid)
        return add(self, shard, chunk, results, kept, embeddings, pid)

    monkeypatch.setattr(ray_engine._ShardWriter, "add", add_and_kill)
    index = add_to_index(tmp_path / "ray", sources[1:], engine="ray", ray_actors=1, **OPTIONS)
    stats = writers[0].stats
    # The killed process embedded the first chunk(s); the restarted actor (another process) embedded the rest.
    assert killed[0] in stats.workers and len(stats.workers) >= 2, dict(stats.workers)
    assert stats.chunks == 25 and stats.items == 49, stats  # 49 items in 13 shards of 4: 12 x 2 + 1 chunks
    ids = index.metadata["id"].to_pylist()
    assert len(ids) == len(set(ids)) == len(one) == 2 + 49 - 2
    assert len(json.loads((tmp_path / "ray" / "report.json").read_text())["unchanged"]) == 2
    _assert_same_index(tmp_path / "ray", one)


def test_plan_actors() -> None:
    """The pool sizes by hand: one GPU actor per GPU fed by decoding tasks; else one actor per CPU, decoding its own
    chunks; CPU encoders and --device cpu stay off the GPUs; GPUs without a spare CPU for decoding are refused."""
    from modeling_rsmclip.index.ray_engine import ActorPool, plan_actors

    assert plan_actors({"CPU": 64, "GPU": 8}) == ActorPool(8, 1, 1, "cuda", False)
    assert plan_actors({"CPU": 64, "GPU": 8}, actors=2) == ActorPool(2, 1, 1, "cuda", False)
    assert plan_actors({"CPU": 64, "GPU": 8}, device="cpu") == ActorPool(64, 0, 1, "cpu", True)
    assert plan_actors({"CPU": 16, "GPU": 2}, cpu_encoder=True) == ActorPool(16, 0, 1, "cpu", True)
    assert plan_actors({"CPU": 2}) == ActorPool(2, 0, 1, "cpu", True)
    assert plan_actors({"CPU": 2}, actors=1) == ActorPool(1, 0, 1, "cpu", True)
    with pytest.raises(ValueError, match="decoding needs"):
        plan_actors({"CPU": 1, "GPU": 1})
    with pytest.raises(ValueError, match="no GPU"):
        plan_actors({"CPU": 8}, device="cuda")
    with pytest.raises(ValueError, match=">= 1"):
        plan_actors({"CPU": 8}, actors=0)


def test_engine_errors(tmp_path, capsys, monkeypatch) -> None:
    """--ray-address without --engine ray is one error line; without Ray installed, --engine ray is one error line
    naming the extra to install (before any model is loaded)."""
    import sys

    from modeling_rsmclip.cli import main

    argv = ["index", "build", "-o", str(tmp_path / "idx"), str(sample_dir() / "rsscn7")]
    assert main([*argv, "--ray-address", "auto"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "--engine ray" in err[0], err
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if it were not installed
    assert main([*argv, "--engine", "ray"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'pip install "rsmclip[ray]"' in err[0], err
    assert not (tmp_path / "idx").exists()
