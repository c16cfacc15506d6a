"""Search at scale with the on-disk index (``ivfpq-disk``): recall@10 against exact search, p50/p99 latency, resident
memory and build time at 1M and 10M vectors, and on the real embeddings the synthetic ones are modelled on.

Real embeddings at 10^7 do not exist here, so they are drawn from a model of real ones:

1. Real: the bundled demo model embeds the 2100 UCM-Captions images and 64-pixel tiles (overlap 32) of the RGB
   GeoTIFFs of the shared data (aerial and Landsat scenes), through `rsmclip index build` (cached in ``--work``).
2. Model: a Gaussian mixture with diagonal covariances, fitted by hard-assignment EM: FAISS k-means (``--components``
   clusters, cosine) on the L2-normalised real embeddings, then each cluster's weight, mean and per-dimension
   standard deviation. A synthetic vector is a component drawn by weight, its mean plus its standard deviations
   times a standard normal draw, L2-normalised.
3. Vectors are generated in blocks straight into the index's float16 vector file (`ondisk.write_ondisk`), so no
   step holds all of them. Queries: ``--queries`` real captions (text embeddings, the cross-modal use) and as many
   held-out mixture draws (image-to-image); exact top-10 by a chunked float32 scan of the stored float16 vectors.

Each phase (build, exact ground truth, search) runs in its own process, which reports its peak resident memory
(``VmHWM``, memory-mapped file pages included) and its peak anonymous memory (``RssAnon``: what cannot be
dropped from the page cache). Latency: one query at a time (FAISS with ``--search-threads`` OpenMP threads, 1 by
default), after 20 warm-up queries, files in the page cache.

    nice python benchmarks/bench_index_scale.py --sizes 1000000           # ~10 min on 2 cores
    nice python benchmarks/bench_index_scale.py --sizes 1000000 10000000  # + ~40 min, ~8 GB in --work
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from _common import REPO, provenance, write_result  # noqa: E402  (puts the checkout on sys.path)

GEO_SCENES = [
    "aerial/colorado_0.15m.tif",
    "aerial/drone_orthomosaic_rgba.tif",
    "landsat/rasterio_RGB.byte.tif",
    "landsat/mosaic_cog1.tif",
    "landsat/mosaic_cog2.tif",
]
K = 10
ARGS = argparse.Namespace()  # the command line, for the phases' processes


# ------------------------------------------------------------------------------------------------ memory
class MemoryPeak:
    """Peak RssAnon / RssFile of this process, sampled every 20 ms, and its peak RSS (VmHWM: ``ru_maxrss`` would
    carry the parent's peak over the exec)."""

    def __init__(self) -> None:
        self.anon = self.file = self.hwm = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                self.anon = max(self.anon, int(line.split()[1]))
            elif line.startswith("VmHWM:"):
                self.hwm = int(line.split()[1])
            elif line.startswith("RssFile:"):
                self.file = max(self.file, int(line.split()[1]))

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self._sample()

    def report(self) -> dict:
        self._stop.set()
        self._thread.join()
        self._sample()
        return {
            "peak_rss_mb": round(self.hwm / 1024, 1),
            "peak_anon_mb": round(self.anon / 1024, 1),
            "peak_file_mapped_mb": round(self.file / 1024, 1),
        }


# ------------------------------------------------------------------------------------------- real vectors
def real_embeddings(work: Path, num_queries: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """The real image/tile embeddings (float16) and caption query embeddings (float32) of the demo model."""
    from modeling_rsmclip.index import add_to_index, build_index
    from modeling_rsmclip.index.ondisk import normalized
    from modeling_rsmclip.testing import shared_data_dir

    cache = work / "real.npz"
    if cache.is_file():
        data = np.load(cache)
        return data["base"], data["queries"], json.loads(str(data["info"]))
    data_dir = shared_data_dir()
    folder = work / "real-index"
    build_index("demo", folder, [data_dir / "ucm-captions" / "images"], index_type="flat", num_workers=1)
    scenes = [data_dir / "geo" / s for s in GEO_SCENES if (data_dir / "geo" / s).is_file()]
    index = add_to_index(folder, scenes, tile_size=64, overlap=32, index_type="flat", num_workers=1)
    import pyarrow as pa
    import pyarrow.parquet as pq

    shards = sorted((folder / "shards").glob("*.parquet"))
    table = pa.concat_tables([pq.read_table(p, columns=["id", "embedding"]) for p in shards])
    dim = table.schema.field("embedding").type.list_size
    flat = table["embedding"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
    base = np.asarray(flat, dtype=np.float16).reshape(table.num_rows, dim)
    captions = json.loads((data_dir / "ucm-captions" / "dataset.json").read_text())
    texts = [s["raw"] for e in captions["images"] for s in e["sentences"]]
    texts = [texts[i] for i in np.random.default_rng(0).choice(len(texts), num_queries, replace=False)]
    queries = np.concatenate([index.embed_queries(texts[i : i + 32]) for i in range(0, len(texts), 32)])
    sources = table["id"].to_pylist()
    info = {
        "images": sum(not i.startswith(tuple(Path(s).name for s in GEO_SCENES)) for i in sources),
        "tiles": sum(i.startswith(tuple(Path(s).name for s in GEO_SCENES)) for i in sources),
        "scenes": [str(s.relative_to(data_dir)) for s in scenes],
        "dim": int(dim),
    }
    np.savez(cache, base=base, queries=normalized(queries), info=json.dumps(info))
    return base, normalized(queries), info


def fit_mixture(x: np.ndarray, components: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A diagonal Gaussian mixture by hard-assignment EM: k-means on the normalised vectors, then per cluster the
    weight, mean and per-dimension standard deviation."""
    import faiss

    from modeling_rsmclip.index.ondisk import normalized

    x = normalized(x)
    kmeans = faiss.Kmeans(x.shape[1], components, niter=25, seed=seed, spherical=True, verbose=False)
    kmeans.train(x)
    _, assign = kmeans.index.search(x, 1)
    assign = assign[:, 0]
    weights, means, stds = [], [], []
    for c in range(components):
        members = x[assign == c]
        if len(members) < 2:
            continue
        weights.append(len(members))
        means.append(members.mean(0))
        stds.append(members.std(0))
    weights = np.array(weights, dtype=np.float64)
    return {"weights": weights / weights.sum(), "means": np.array(means), "stds": np.array(stds)}


def draw(mixture: dict[str, np.ndarray], n: int, rng: np.random.Generator) -> np.ndarray:
    comp = rng.choice(len(mixture["weights"]), size=n, p=mixture["weights"])
    x = mixture["means"][comp] + mixture["stds"][comp] * rng.standard_normal(
        (n, mixture["means"].shape[1]), dtype=np.float32
    )
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


# ------------------------------------------------------------------------------------------------ phases
def phase_build(args: argparse.Namespace) -> dict:
    from modeling_rsmclip.index import ondisk
    from modeling_rsmclip.index.ondisk import write_ondisk

    if args.pq_min_dims:  # finer PQ codes than the library's default
        ondisk.PQ_MIN_DIMS = args.pq_min_dims

    memory = MemoryPeak()
    folder = Path(args.dir)
    generating = [0.0]
    if args.n == 0:  # the real embeddings
        base = np.load(Path(args.work) / "real.npz")["base"]
        n, dim = base.shape

        def chunks():
            yield from np.array_split(base, max(1, len(base) // 65536))

    else:
        mixture = dict(np.load(Path(args.work) / "mixture.npz"))
        n, dim = args.n, mixture["means"].shape[1]

        def chunks():
            rng = np.random.default_rng(1)
            for start in range(0, n, 65536):
                t = time.perf_counter()
                x = draw(mixture, min(65536, n - start), rng)
                generating[0] += time.perf_counter() - t
                yield x

    start = time.perf_counter()
    section = write_ondisk(folder, chunks, n, dim, progress=True)
    seconds = time.perf_counter() - start
    (folder / "section.json").write_text(json.dumps(section))
    disk = sum(p.stat().st_size for p in (folder / "ondisk").iterdir())
    return {
        "n": n,
        "dim": int(dim),
        "factory": section["factory"],
        "search_params": section["search_params"],
        "build_s": round(seconds - generating[0], 1),
        "generate_s": round(generating[0], 1),
        "disk_mb": round(disk / 2**20, 1),
        "build_memory": memory.report(),
    }


def phase_truth(args: argparse.Namespace) -> dict:
    from modeling_rsmclip.index.ondisk import VectorStore, normalized

    memory = MemoryPeak()
    folder = Path(args.dir)
    section = json.loads((folder / "section.json").read_text())
    store = VectorStore(folder / "ondisk", section["vectors"])
    queries = np.load(folder / "queries.npy")
    best_s = np.full((len(queries), K), -np.inf, dtype=np.float32)
    best_i = np.full((len(queries), K), -1, dtype=np.int64)
    start = time.perf_counter()
    for first, x in store.chunks(0, 262_144):
        scores = queries @ normalized(x).T
        ids = np.broadcast_to(np.arange(first, first + len(x)), scores.shape)
        s = np.concatenate([best_s, scores], axis=1)
        i = np.concatenate([best_i, ids], axis=1)
        top = np.argpartition(-s, K - 1, axis=1)[:, :K]
        best_s, best_i = np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)
    np.save(folder / "truth.npy", best_i)
    return {"truth_s": round(time.perf_counter() - start, 1), "truth_memory": memory.report()}


def phase_search(args: argparse.Namespace) -> dict:
    import faiss

    from modeling_rsmclip.index.ondisk import OnDiskIndex

    # One query at a time: FAISS gives one query one thread anyway, and its OpenMP team of 2 costs milliseconds
    # per call when the cores are shared with other jobs.
    faiss.omp_set_num_threads(args.search_threads)
    memory = MemoryPeak()
    folder = Path(args.dir)
    section = json.loads((folder / "section.json").read_text())
    start = time.perf_counter()
    index = OnDiskIndex.open(folder, section)
    open_s = time.perf_counter() - start
    queries = np.load(folder / "queries.npy")
    kinds = json.loads((folder / "query_kinds.json").read_text())
    truth = np.load(folder / "truth.npy")
    default = section["search_params"]
    nlist = index.ivf.nlist
    probes = sorted({min(nlist, max(1, int(default["nprobe"] * f))) for f in args.nprobe_factors})
    configs = [(p, r) for p in probes for r in args.rerank]
    for q in queries[:20]:  # warm-up
        index.search(q[None], K)
    results = []
    for nprobe, rerank in configs:
        index.ivf.nprobe, index.rerank = nprobe, rerank
        latencies, hits = [], []
        for q, t in zip(queries, truth):
            t0 = time.perf_counter()
            _, ids = index.search(q[None], K)
            latencies.append(time.perf_counter() - t0)
            hits.append(len(set(ids[0].tolist()) & set(t.tolist())) / K)
        latencies, hits = np.array(latencies) * 1000, np.array(hits)
        row = {"nprobe": nprobe, "rerank": rerank, "candidates": K * rerank}
        for kind in sorted(set(kinds)):
            mask = np.array([k == kind for k in kinds])
            row[f"recall@10_{kind}"] = round(float(hits[mask].mean()), 4)
        row.update(
            {
                "recall@10": round(float(hits.mean()), 4),
                "p50_ms": round(float(np.percentile(latencies, 50)), 2),
                "p99_ms": round(float(np.percentile(latencies, 99)), 2),
                "default": nprobe == min(default["nprobe"], nlist) and rerank == default["rerank"],
            }
        )
        results.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return {
        "open_s": round(open_s, 2),
        "faiss_threads": args.search_threads,
        "search": results,
        "search_memory": memory.report(),
    }


def run_phase(phase: str, folder: Path, work: Path, n: int) -> dict:
    out = folder / f"{phase}.json"
    cmd = [
        sys.executable,
        __file__,
        "--phase",
        phase,
        "--dir",
        str(folder),
        "--work",
        str(work),
        "--n",
        str(n),
    ]
    cmd += ["--nprobe-factors", *map(str, ARGS.nprobe_factors), "--rerank", *map(str, ARGS.rerank)]
    cmd += ["--search-threads", str(getattr(ARGS, "search_threads", 1))]
    cmd += ["--pq-min-dims", str(getattr(ARGS, "pq_min_dims", 0))]
    subprocess.run(cmd, check=True, cwd=REPO)
    return json.loads(out.read_text())


def one_size(name: str, n: int, work: Path, queries: np.ndarray, kinds: list[str]) -> dict:
    import shutil

    folder = work / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    np.save(folder / "queries.npy", queries)
    (folder / "query_kinds.json").write_text(json.dumps(kinds))
    print(f"== {name}: building", file=sys.stderr, flush=True)
    result = {"name": name, **run_phase("build", folder, work, n)}
    print(f"== {name}: exact ground truth", file=sys.stderr, flush=True)
    result.update(run_phase("truth", folder, work, n))
    print(f"== {name}: searching", file=sys.stderr, flush=True)
    result.update(run_phase("search", folder, work, n))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[1_000_000])
    parser.add_argument(
        "--queries", type=int, default=300, help="caption queries (and as many mixture draws)"
    )
    parser.add_argument("--components", type=int, default=64, help="mixture components")
    parser.add_argument("--work", type=Path, default=Path("/tmp/rsmclip-bench-scale"))
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench_index_scale_cpu.json")
    parser.add_argument("--keep", action="store_true", help="keep the generated indexes in --work")
    parser.add_argument(
        "--nprobe-factors", type=float, nargs="+", default=[0.25, 0.5, 1.0], help="nprobe: default x"
    )
    parser.add_argument(
        "--attach",
        type=Path,
        nargs="*",
        default=[],
        help="also report the build/truth/search results already in these folders of --work (same mixture)",
    )
    parser.add_argument(
        "--pq-min-dims", type=int, default=0, help="dimensions per PQ byte (default: the library's, 8)"
    )
    parser.add_argument("--search-threads", type=int, default=1, help="FAISS OpenMP threads while searching")
    parser.add_argument(
        "--rerank", type=int, nargs="+", default=[10, 30, 100], help="re-ranking factors swept"
    )
    parser.add_argument("--phase", choices=("build", "truth", "search"), help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    ARGS.__dict__.update(vars(args))
    if args.phase:
        result = {"build": phase_build, "truth": phase_truth, "search": phase_search}[args.phase](args)
        Path(args.dir, f"{args.phase}.json").write_text(json.dumps(result))
        return
    measured = provenance()
    args.work.mkdir(parents=True, exist_ok=True)
    base, captions, info = real_embeddings(args.work, args.queries)
    mixture = fit_mixture(base, args.components)
    np.savez(args.work / "mixture.npz", **mixture)
    held_out = draw(mixture, args.queries, np.random.default_rng(2)).astype(np.float32)
    held_out /= np.linalg.norm(held_out, axis=1, keepdims=True)
    results = [one_size("real", 0, args.work, captions, ["caption"] * len(captions))]
    queries = np.concatenate([captions, held_out])
    kinds = ["caption"] * len(captions) + ["mixture"] * len(held_out)
    for n in args.sizes:
        results.append(one_size(f"mixture-{n}", n, args.work, queries, kinds))
        write_result(args.out, summary(results, info, mixture, args), measured)
        if not args.keep:
            import shutil

            shutil.rmtree(args.work / f"mixture-{n}", ignore_errors=True)
    for folder in args.attach:  # sizes measured phase by phase earlier (e.g. a 10M run that took an hour)
        parts = [json.loads((folder / f"{phase}.json").read_text()) for phase in ("build", "truth", "search")]
        results.append(
            {"name": folder.name, "attached": str(folder), **{k: v for p in parts for k, v in p.items()}}
        )
    write_result(args.out, summary(results, info, mixture, args), measured)
    print(json.dumps(results, indent=1))


def summary(results: list[dict], info: dict, mixture: dict, args: argparse.Namespace) -> dict:
    return {
        "benchmark": "on-disk IVF-PQ (ivfpq-disk) search at scale",
        "model": "bundled demo model",
        "real_embeddings": {**info, "count": results[0]["n"]},
        "mixture": {
            "components": int(len(mixture["weights"])),
            "fit": "hard-assignment EM: spherical FAISS k-means, per-cluster weight, mean, per-dimension std",
            "mean_std": round(float(mixture["stds"].mean()), 4),
        },
        "queries": {"caption": args.queries, "mixture": args.queries, "k": K},
        "goal": "recall@10 >= 0.95 at p50 < 20 ms on 10M vectors with < 2 GB resident",
        "results": results,
    }


if __name__ == "__main__":
    main()
