"""Helpers shared by the archive-index tests: the UCM test split as an image folder, and direct embeddings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def ucm_test_folder(
    shared_data: Path, out: Path, limit: int | None = None
) -> tuple[Path, list[str], dict[str, str]]:
    """A folder of symlinks to the UCM-Captions test images, with a ``labels.csv``: (folder, files, labels)."""
    ucm = shared_data / "ucm-captions"
    data = json.loads((ucm / "dataset.json").read_text())
    files = [e["filename"] for e in data["images"] if e["split"] == "test"][:limit]
    labels = {}
    for line in (ucm / "labels.csv").read_text().splitlines()[1:]:
        name, label, _ = line.split(",")
        labels[name] = label
    out.mkdir(parents=True, exist_ok=True)
    for name in files:
        (out / name).symlink_to(ucm / "images" / name)
    (out / "labels.csv").write_text("filename,label\n" + "".join(f"{f},{labels[f]}\n" for f in files))
    return out, files, {f: labels[f] for f in files}


@torch.no_grad()
def direct_image_embeddings(model, processor, paths: list[Path], batch: int = 64) -> np.ndarray:
    """Every image straight through PIL, the processor and the model: the reference the index is checked against."""
    out = []
    for start in range(0, len(paths), batch):
        images = [Image.open(p).convert("RGB") for p in paths[start : start + batch]]
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        out.append(F.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1))
    return torch.cat(out).numpy()


@torch.no_grad()
def direct_text_embeddings(model, processor, texts: list[str]) -> np.ndarray:
    out = []
    for text in texts:
        batch = processor(text=[text], return_tensors="pt")
        out.append(F.normalize(model.get_text_features(**batch).pooler_output, dim=-1))
    return torch.cat(out).numpy()


def as_stored(embeddings: np.ndarray) -> np.ndarray:
    """What the index searches: float16 storage, re-normalised in float32."""
    x = embeddings.astype(np.float16).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def shard_embeddings(index_dir: Path) -> tuple[list[str], np.ndarray]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.concat_tables([pq.read_table(p) for p in sorted((index_dir / "shards").glob("*.parquet"))])
    dim = table.schema.field("embedding").type.list_size
    flat = table["embedding"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return table["id"].to_pylist(), flat.astype(np.float32).reshape(table.num_rows, dim)


def kill_build_after_shards(
    script: str, out: Path, repo: Path, shards_before_kill: int = 2
) -> dict[str, int]:
    """Run ``script`` (a Python build of the index folder ``out``) in its own process, SIGKILL it once
    ``shards_before_kill`` shards are written, and return the shards it left (name -> mtime_ns). Fails when the
    build ends before it could be killed."""
    import os
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    shards = out / "shards"
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if shards.is_dir() and len(list(shards.glob("*.parquet"))) >= shards_before_kill:
            break
        time.sleep(0.01)
    assert proc.poll() is None, (
        f"the build ended before it could be killed: {proc.communicate()[1][-2000:]!r}"
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return {p.name: p.stat().st_mtime_ns for p in shards.glob("*.parquet")}
