"""The Ray engine against the one-process build: the same images into the same index, side by side in one run.

    python benchmarks/bench_ray.py --images 1000 --rounds 3 --ray-actors auto,1   # this machine: a local Ray
    python benchmarks/bench_ray.py --images 20000 --ray-address auto              # on a Ray cluster's head node

Each round builds the index of the same image folder once per variant, in alternating order so that machine noise
hits all of them: ``engine="local"`` (this process; its torch threads embed while a data-loader worker decodes)
(``--local-one-thread``: also with one torch thread, a CPU actor's share) and ``engine="ray"`` with each pool size
of ``--ray-actors`` (a Ray Data pipeline: model actors, decoding in the
actors or in tasks, the shard writer here). Figures: end-to-end images/s of each (files -> finished index,
including loading the model in this process and the FAISS merge), the ratio of each Ray variant to the
one-process build per round, and the Ray pipeline's own start-up (until its first chunk is back: actors started,
model loaded) and steady rate after it. Ray itself is started (``ray.init``) once, before the rounds, and timed
apart. Each Ray index is checked against the one-process index of its round (same shard rows, embeddings within
1e-6).

On a cluster, run the script on the head node (or as a Ray job: ``ray job submit --working-dir . -- python
benchmarks/bench_ray.py --ray-address auto ...``) with the images on storage every node reads; the one-process
side then runs on the head node alone. The command lines it prints are the ones to run there.
Raw results: ``results/bench_ray_<tag>.json`` (machine, commit, date, load average).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import REPO, cpu_model, git_commit, write_result

CLUSTER_COMMANDS = """\
# A Ray cluster: `ray up cluster.yaml` (VMs) or a KubeRay RayCluster, every node with `pip install "rsmclip[ray]"`
# and the images on storage every node reads (NFS, a bucket mounted with s3fs/gcsfuse, or STAC/COG URLs).
ray job submit --address http://HEAD:8265 -- \\
    rsmclip index build --engine ray --ray-address auto --model MODEL -o /shared/index /shared/images
# or, from the head node itself:
rsmclip index build --engine ray --ray-address auto -o /shared/index /shared/images
# this comparison there:
ray job submit --address http://HEAD:8265 --working-dir . -- \\
    python benchmarks/bench_ray.py --ray-address auto --images 20000 --rounds 2 --out results/bench_ray_cluster.json
"""


def _images(count: int) -> tuple[Path, list[Path]]:
    """``count`` UC Merced images (spread over the shared copy; else the bundled samples), symlinked into a folder."""
    from modeling_rsmclip.testing import sample_dir, shared_data_dir

    root = shared_data_dir() / "ucm-captions" / "images"
    files = sorted(root.glob("*.jpg"), key=lambda p: int(p.stem)) if root.is_dir() else []
    if not files:
        print(f"UCM-Captions not found at {root}: using the bundled samples", file=sys.stderr)
        files = sorted(sample_dir().rglob("*.jpg"))
    files = files[:: max(1, len(files) // count)][:count]
    folder = Path(tempfile.mkdtemp(prefix="bench-ray-")) / "images"
    folder.mkdir()
    for path in files:
        (folder / path.name).symlink_to(path)
    return folder, files


def _same_shards(a: Path, b: Path) -> bool:
    import pyarrow.parquet as pq

    names = sorted(p.name for p in (a / "shards").glob("*.parquet"))
    if names != sorted(p.name for p in (b / "shards").glob("*.parquet")):
        return False
    for name in names:
        x, y = pq.read_table(a / "shards" / name), pq.read_table(b / "shards" / name)
        if not x.drop_columns(["embedding"]).equals(y.drop_columns(["embedding"])):
            return False
        ex = np.asarray(x["embedding"].combine_chunks().flatten(), dtype=np.float32)
        ey = np.asarray(y["embedding"].combine_chunks().flatten(), dtype=np.float32)
        if ex.shape != ey.shape or np.abs(ex - ey).max(initial=0.0) > 1e-6:
            return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="demo", help="model folder or Hub id (default: the demo model)")
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--shard-size", type=int, default=128)
    parser.add_argument("--num-workers", type=int, default=None, help="local engine's decoding workers")
    parser.add_argument(
        "--ray-address", default=None, help="a Ray cluster (default: a local Ray on every core)"
    )
    parser.add_argument(
        "--ray-actors",
        default="auto",
        help="comma list of Ray pool sizes to measure, each beside the one-process build (auto: the engine's "
        "default; e.g. auto,1)",
    )
    parser.add_argument(
        "--local-one-thread",
        action="store_true",
        help="also the one-process build with one torch thread (a Ray CPU actor's share)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench_ray_cpu.json")
    args = parser.parse_args()

    import ray
    import torch

    from modeling_rsmclip.index import build_index, ray_engine

    print(CLUSTER_COMMANDS)
    folder, files = _images(args.images)
    work = folder.parent
    started = time.perf_counter()
    if args.ray_address:
        ray.init(address=args.ray_address, logging_level=logging.WARNING)
    else:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.WARNING)
    ray_start = time.perf_counter() - started
    resources = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}
    print(f"Ray started in {ray_start:.1f} s: {resources}")

    stats: list[ray_engine.RayRunStats] = []
    embed_shards = ray_engine.embed_shards

    def recording(*a, **k):
        stats.append(embed_shards(*a, **k))
        return stats[-1]

    ray_engine.embed_shards = recording  # build.py looks it up when the engine runs
    common = {"batch_size": args.batch_size, "shard_size": args.shard_size, "progress": False}
    variants = {"local": {"engine": "local", "num_workers": args.num_workers}}
    if args.local_one_thread:
        variants["local_1_thread"] = {"engine": "local", "num_workers": args.num_workers}
    for size in args.ray_actors.split(","):
        actors = None if size == "auto" else int(size)
        variants[f"ray_actors_{size}"] = {"engine": "ray", "ray_actors": actors}
    names = list(variants)
    ray_names = [n for n in names if variants[n]["engine"] == "ray"]
    rounds = []
    for r in range(args.rounds):
        row: dict = {}
        for name in names if r % 2 == 0 else names[::-1]:  # alternate the order: noise hits every variant
            load = os.getloadavg()[0]
            threads = torch.get_num_threads()
            if name == "local_1_thread":
                torch.set_num_threads(1)
            begin = time.perf_counter()
            build_index(args.model, work / f"{name}{r}", [folder], **common, **variants[name])
            seconds = time.perf_counter() - begin
            torch.set_num_threads(threads)
            row[name] = {"seconds": seconds, "img_s": len(files) / seconds, "load_avg_1min": load}
            if variants[name]["engine"] == "ray":
                s = stats[-1]
                row[name].update(
                    {
                        "pipeline_seconds": s.seconds,
                        "startup_seconds": s.first_chunk_seconds,
                        "steady_img_s": (s.items - s.first_chunk_items)
                        / max(1e-9, s.seconds - s.first_chunk_seconds),
                        "actor_processes": len(s.workers),
                        "ratio_to_local": None,
                        "same_index_as_local": None,
                    }
                )
        for name in ray_names:
            row[name]["ratio_to_local"] = row[name]["img_s"] / row["local"]["img_s"]
            row[name]["same_index_as_local"] = _same_shards(work / f"{name}{r}", work / f"local{r}")
            if "local_1_thread" in row:
                row[name]["ratio_to_local_1_thread"] = row[name]["img_s"] / row["local_1_thread"]["img_s"]
            print(
                f"round {r}: local {row['local']['img_s']:.1f} img/s; {name} {row[name]['img_s']:.1f} img/s "
                f"(start-up {row[name]['startup_seconds']:.1f} s, then {row[name]['steady_img_s']:.1f} img/s), "
                f"ratio {row[name]['ratio_to_local']:.2f}, same index: {row[name]['same_index_as_local']}",
                flush=True,
            )
        if "local_1_thread" in row:
            print(
                f"round {r}: local with 1 torch thread {row['local_1_thread']['img_s']:.1f} img/s", flush=True
            )
        for name in names:
            shutil.rmtree(work / f"{name}{r}")
        rounds.append(row)
    ray_engine.embed_shards = embed_shards
    ray.shutdown()
    shutil.rmtree(work)

    summary = {
        f"{name}_img_s_median": float(np.median([row[name]["img_s"] for row in rounds]))
        for name in names
        if name not in ray_names
    }
    for name in ray_names:
        for key in ("img_s", "ratio_to_local", "ratio_to_local_1_thread", "steady_img_s", "startup_seconds"):
            if key in rounds[0][name]:
                summary[f"{name}_{key}_median"] = float(np.median([row[name][key] for row in rounds]))
    summary["all_same_index"] = all(row[n]["same_index_as_local"] for row in rounds for n in ray_names)
    result = {
        "benchmark": "bench_ray",
        "machine": f"{os.cpu_count()}-core {cpu_model()}, no GPU" if "GPU" not in resources else cpu_model(),
        "ray_resources": resources,
        "commit": git_commit(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "ray_version": ray.__version__,
        "model": args.model,
        "images": len(files),
        "batch_size": args.batch_size,
        "shard_size": args.shard_size,
        "ray_start_seconds": ray_start,
        "local_torch_threads": torch.get_num_threads(),
        "load_avg_1min_range": [
            min(v["load_avg_1min"] for row in rounds for v in row.values()),
            max(v["load_avg_1min"] for row in rounds for v in row.values()),
        ],
        "summary": summary,
        "rounds": rounds,
        "cluster_commands": CLUSTER_COMMANDS,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_result(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k not in ("rounds", "cluster_commands")}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
