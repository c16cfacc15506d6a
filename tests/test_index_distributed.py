"""`torchrun --nproc_per_node 2` (gloo, CPU): the index build splits its shards across the two processes and gives
the same index as one process. This file is also the script the processes run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
OPTIONS = {"shard_size": 2, "batch_size": 2, "num_workers": 0, "progress": False}


def _sources() -> list[str]:
    from modeling_rsmclip.testing import sample_dir

    return [str(sample_dir() / "rsscn7")]  # 7 real images: 4 shards of 2


def _worker(out_dir: str) -> None:
    """Run by each process: the same `build_index` call, recording which shards this process embedded."""
    import modeling_rsmclip.index.build as build
    from modeling_rsmclip.inference import DEMO_MODEL_DIR

    rank = int(os.environ["RANK"])
    embedded = []
    original = build.embed_shard

    def recording(items, *args, **kwargs):
        embedded.append(items[0].id)
        return original(items, *args, **kwargs)

    build.embed_shard = recording
    index = build.build_index(str(DEMO_MODEL_DIR), Path(out_dir) / "idx", _sources(), **OPTIONS)
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps({"first_ids": embedded, "len": len(index)}))


def test_two_process_build_equals_one_process_build(tmp_path) -> None:
    pytest.importorskip("faiss")
    from _index_fixtures import shard_embeddings

    from modeling_rsmclip.index import build_index
    from modeling_rsmclip.inference import DEMO_MODEL_DIR

    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += [str(Path(__file__).resolve()), "--worker", str(tmp_path)]
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    # 7 images in shards of 2: shard s goes to process s % 2.
    assert [len(r["first_ids"]) for r in ranks] == [2, 2] and ranks[0]["len"] == ranks[1]["len"] == 7
    assert not set(ranks[0]["first_ids"]) & set(ranks[1]["first_ids"])

    two = tmp_path / "idx"
    one = build_index(str(DEMO_MODEL_DIR), tmp_path / "one", _sources(), **OPTIONS)
    ids_two, emb_two = shard_embeddings(two)
    ids_one, emb_one = shard_embeddings(one.path)
    assert ids_two == ids_one
    np.testing.assert_allclose(emb_two, emb_one, atol=1e-3)
    import pyarrow.parquet as pq

    assert pq.read_table(two / "metadata.parquet").equals(one.metadata)
    manifest = json.loads((two / "manifest.json").read_text())
    assert manifest["model"]["fingerprint"] == one.manifest["model"]["fingerprint"]
    assert manifest["counts"] == one.manifest["counts"]


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        _worker(sys.argv[2])
