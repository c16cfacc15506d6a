"""Archive-index benchmarks (figures in BENCHMARKS.md, "Archive search" section).

    python benchmarks/bench_index.py throughput --model demo --images 400 --rounds 2
    python benchmarks/bench_index.py throughput --model full --images 96 --rounds 2
    python benchmarks/bench_index.py embed-tiles --out /tmp/rsmclip-bench/tiles.npy --max-tiles 200000
    python benchmarks/bench_index.py search --embeddings /tmp/rsmclip-bench/tiles.npy --random 1000000
    python benchmarks/bench_index.py eval-memory --images 20000 --texts 100000
    python benchmarks/bench_index.py fingerprint --rounds 3

throughput: files -> index (decode in workers, embed, Parquet shards, FAISS, manifest) against the model alone on
the same images already decoded and preprocessed, alternating rounds in one process, so machine noise hits both.
embed-tiles: real embeddings of 128 x 128 tiles (stride 64) cut from the shared UC Merced and RSSCN7 images, demo
model; saved every chunk, so a run stopped early still leaves what it embedded.
search: queries/s, p50/p99 single-query latency, recall@10 against exact search, build time and bytes per entry
for exact and approximate FAISS indexes; queries are real caption embeddings in ten languages.
eval-memory: peak resident memory of the bounded-memory retrieval ranking on random unit vectors.
fingerprint: the model fingerprint (exact integer row sums) against SHA-256 of every weight, full-size model.
Run the full-size and long ones under ``flock /tmp/rsmclip-heavy.lock``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from modeling_rsmclip.testing import shared_data_dir  # noqa: E402

MACHINE = "2-core AMD EPYC CPU, shared"


def _demo():
    from transformers import AutoModel, AutoProcessor

    import modeling_rsmclip  # noqa: F401
    from modeling_rsmclip.inference import DEMO_MODEL_DIR

    return AutoModel.from_pretrained(DEMO_MODEL_DIR).eval(), AutoProcessor.from_pretrained(DEMO_MODEL_DIR)


def _full():
    from transformers import AutoProcessor

    from modeling_rsmclip import RSMCLIPConfig, RSMCLIPModel
    from modeling_rsmclip.inference import DEMO_MODEL_DIR
    from modeling_rsmclip.testing import make_processor

    torch.manual_seed(0)
    model = RSMCLIPModel(RSMCLIPConfig.from_preset("rs-m-clip")).eval()
    tokenizer = AutoProcessor.from_pretrained(DEMO_MODEL_DIR).tokenizer
    return model, make_processor(tokenizer, model.config.vision_config.image_size)


# ------------------------------------------------------------------------------------------------ throughput
def throughput(args: argparse.Namespace) -> dict:
    from PIL import Image

    from modeling_rsmclip.index import build_index

    model, processor = _demo() if args.model == "demo" else _full()
    images = sorted((shared_data_dir() / "ucm-captions" / "images").glob("*.jpg"), key=lambda p: int(p.stem))
    images = images[:: max(1, len(images) // args.images)][: args.images]
    work = Path(tempfile.mkdtemp(prefix="bench-index-"))
    folder = work / "images"
    folder.mkdir()
    for p in images:
        (folder / p.name).symlink_to(p)
    # Model only: the same images, decoded and preprocessed beforehand, same batch size.
    pixels = processor(images=[Image.open(p).convert("RGB") for p in images], return_tensors="pt")[
        "pixel_values"
    ]
    model_only, index_rate = [], []

    def run_model() -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, len(pixels), args.batch_size):
                model.get_image_features(pixel_values=pixels[i : i + args.batch_size])
        return len(pixels) / (time.perf_counter() - start)

    def run_index(r: int) -> float:
        start = time.perf_counter()
        build_index(
            model,
            work / f"idx{r}",
            [folder],
            processor=processor,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            progress=False,
        )
        rate = len(images) / (time.perf_counter() - start)
        shutil.rmtree(work / f"idx{r}")
        return rate

    run_model()  # warm-up
    for r in range(args.rounds):
        model_only.append(run_model())
        index_rate.append(run_index(r))
    shutil.rmtree(work)
    ratio = [i / m for i, m in zip(index_rate, model_only)]
    return {
        "model": args.model,
        "images": len(images),
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "rounds": args.rounds,
        "model_only_img_s": model_only,
        "files_to_index_img_s": index_rate,
        "ratio_per_round": ratio,
        "ratio_median": float(np.median(ratio)),
        "machine": MACHINE,
    }


# ------------------------------------------------------------------------------------------------ embeddings
def embed_tiles(args: argparse.Namespace) -> dict:
    from PIL import Image

    model, processor = _demo()
    ip = processor.image_processor
    mean = torch.tensor(ip.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(ip.image_std).view(1, 3, 1, 1)
    data = shared_data_dir()
    files = sorted((data / "ucm-captions" / "images").glob("*.jpg")) + sorted(
        (data / "rsscn7-mini").rglob("*.jpg")
    )
    size, stride = 128, 64
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done: list[np.ndarray] = [np.load(out)] if out.exists() and not args.restart else []
    have = sum(len(d) for d in done)
    tiles, skipped, start = [], 0, time.perf_counter()
    embedded = 0

    def flush() -> None:
        nonlocal embedded
        batch = torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2).float() / 255.0
        with torch.inference_mode():
            emb = model.get_image_features(pixel_values=(batch - mean) / std).pooler_output
        done.append(torch.nn.functional.normalize(emb, dim=-1).numpy().astype(np.float32))
        embedded += len(tiles)
        tiles.clear()
        tmp = out.with_name(out.stem + ".tmp.npy")
        np.save(tmp, np.concatenate(done))
        os.replace(tmp, out)  # a run stopped by its time limit leaves a whole file

    count = 0
    for path in files:
        image = np.asarray(Image.open(path).convert("RGB"))
        h, w = image.shape[:2]
        for y in range(0, h - size + 1, stride):
            for x in range(0, w - size + 1, stride):
                count += 1
                if count <= have:
                    skipped += 1
                    continue
                tiles.append(image[y : y + size, x : x + size])
                if len(tiles) == 256:
                    flush()
                    rate = embedded / (time.perf_counter() - start)
                    print(f"{have + embedded} tiles, {rate:.1f} tiles/s", flush=True)
                if have + embedded + len(tiles) >= args.max_tiles:
                    break
            if have + embedded + len(tiles) >= args.max_tiles:
                break
        if have + embedded + len(tiles) >= args.max_tiles:
            break
    if tiles:
        flush()
    total = have + embedded
    return {"tiles": total, "rate_tiles_s": embedded / (time.perf_counter() - start), "machine": MACHINE}


# ---------------------------------------------------------------------------------------------------- search
def _queries(n: int) -> np.ndarray:
    """Real caption embeddings (demo model), spread over the ten languages."""
    from modeling_rsmclip.evaluation.embed import Embedder
    from modeling_rsmclip.evaluation.retrieval import load_karpathy

    model, processor = _demo()
    ucm = shared_data_dir() / "ucm-captions"
    data = load_karpathy(ucm / "dataset.json", ucm / "images", "test", ucm / "translations")
    texts = [t for lang in data.captions for _, t in data.captions[lang][:: max(1, 10 * 1050 // n)]][:n]
    return (
        Embedder(model, processor, batch_size=128, cache_dir=None, show_progress=False)
        .embed_texts(texts)
        .numpy()
    )


def _bench_index(
    base: np.ndarray, queries: np.ndarray, truth: np.ndarray, factory: str, sweep: dict
) -> list[dict]:
    import faiss

    from modeling_rsmclip.index.build import build_faiss
    from modeling_rsmclip.index.common import apply_search_params

    start = time.perf_counter()
    index = build_faiss(base, factory, max_train=sweep.pop("max_train", None))
    build_s = time.perf_counter() - start
    bytes_per_entry = len(faiss.serialize_index(index)) / len(base)
    rows = []
    name, values = next(iter(sweep.items())) if sweep else (None, [None])
    for value in values:
        if name:
            apply_search_params(index, {name: value})
        latencies = []
        found = np.empty((len(queries), 10), dtype=np.int64)
        for i, q in enumerate(queries):
            t = time.perf_counter()
            _, ids = index.search(q[None], 10)
            latencies.append(time.perf_counter() - t)
            found[i] = ids[0]
        t = time.perf_counter()
        index.search(queries, 10)
        batch_qps = len(queries) / (time.perf_counter() - t)
        recall = (
            float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth)]))
            if truth is not None
            else 1.0
        )
        rows.append(
            {
                "factory": factory,
                "param": name,
                "value": value,
                "recall@10": recall,
                "p50_ms": 1000 * float(np.percentile(latencies, 50)),
                "p99_ms": 1000 * float(np.percentile(latencies, 99)),
                "single_qps": len(queries) / sum(latencies),
                "batch_qps": batch_qps,
                "build_s": build_s,
                "bytes_per_entry": bytes_per_entry,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def search(args: argparse.Namespace) -> dict:
    import faiss

    from modeling_rsmclip.index.build import build_faiss, choose_index

    results: dict = {"machine": MACHINE, "faiss": faiss.__version__, "threads": faiss.omp_get_max_threads()}
    if args.embeddings:
        base = np.load(args.embeddings).astype(np.float32)
        queries = _queries(args.queries)
        exact = build_faiss(base, "Flat")
        _, truth = exact.search(queries, 10)
        auto, params = choose_index(len(base), base.shape[1])
        print(f"real: {len(base)} x {base.shape[1]}; auto -> {auto} {params}", flush=True)
        nlist = max(1, min(1 << round(np.log2(4 * np.sqrt(len(base)))), len(base) // 39))
        rows = _bench_index(base, queries, None, "Flat", {})
        rows += _bench_index(base, queries, truth, f"IVF{nlist},Flat", {"nprobe": [4, 8, 16, 32, 64]})
        rows += _bench_index(base, queries, truth, "HNSW32,Flat", {"efSearch": [16, 32, 64, 128]})
        results["real"] = {
            "n": len(base),
            "dim": base.shape[1],
            "queries": len(queries),
            "auto": [auto, params],
            "rows": rows,
        }
    if args.random:
        rng = np.random.default_rng(0)
        dim = args.random_dim
        base = rng.standard_normal((args.random, dim), dtype=np.float32)
        base /= np.linalg.norm(base, axis=1, keepdims=True)
        queries = rng.standard_normal((args.queries, dim), dtype=np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        exact = build_faiss(base, "Flat")
        _, truth = exact.search(queries, 10)
        del exact
        rows = _bench_index(base, queries[: min(100, len(queries))], None, "Flat", {})
        nlist = args.random_nlist
        rows += _bench_index(
            base, queries, truth, f"IVF{nlist},Flat", {"nprobe": [8, 32, 128, 512], "max_train": 64 * nlist}
        )
        results["random"] = {"n": args.random, "dim": dim, "queries": len(queries), "rows": rows}
    return results


# ------------------------------------------------------------------------------------------------ eval memory
def eval_memory(args: argparse.Namespace) -> dict:
    from modeling_rsmclip.evaluation.metrics import retrieval_metrics_chunked

    rng = np.random.default_rng(0)
    images = torch.nn.functional.normalize(
        torch.from_numpy(rng.standard_normal((args.images, 512), dtype=np.float32)), dim=-1
    )
    owner = np.repeat(np.arange(args.images), args.texts // args.images)
    texts = images[torch.from_numpy(owner)] + 0.5 * torch.from_numpy(
        rng.standard_normal((len(owner), 512), dtype=np.float32)
    )
    texts = torch.nn.functional.normalize(texts, dim=-1)
    import gc
    import threading

    import psutil

    gc.collect()
    process = psutil.Process()
    before = process.memory_info().rss / 2**20
    peak = [before]
    running = [True]

    def sample() -> None:  # resident memory every 5 ms while ranking
        while running[0]:
            peak[0] = max(peak[0], process.memory_info().rss / 2**20)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    start = time.perf_counter()
    metrics = retrieval_metrics_chunked(images, texts, owner)
    elapsed = time.perf_counter() - start
    running[0] = False
    sampler.join()
    peak = peak[0]
    return {
        "images": args.images,
        "texts": len(owner),
        "dim": 512,
        "seconds": elapsed,
        "mR": metrics["mR"],
        "peak_rss_while_ranking_mib": peak,
        "rss_before_ranking_mib": before,
        "ranking_extra_mib": peak - before,
        "embeddings_mib": (images.numel() + texts.numel()) * 4 / 2**20,
        "full_matrix_would_need_mib": args.images * len(owner) * 4 / 2**20,
        "machine": MACHINE,
    }


# ------------------------------------------------------------------------------------------------ fingerprint
def fingerprint(args: argparse.Namespace) -> dict:
    from modeling_rsmclip.evaluation.embed import _processor_state, model_fingerprint

    model, processor = _full()

    def sha_every_weight() -> str:  # the previous rule: SHA-256 over every byte
        h = hashlib.sha256(b"rsmclip-model-v1")
        h.update(model.config.to_json_string(use_diff=False).encode())
        for name, tensor in sorted(model.state_dict().items()):
            t = tensor.detach().contiguous().cpu()
            h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        h.update(_processor_state(processor).encode())
        return h.hexdigest()

    old, new = [], []
    for _ in range(args.rounds):
        t = time.perf_counter()
        sha_every_weight()
        old.append(time.perf_counter() - t)
        t = time.perf_counter()
        model_fingerprint(model, processor)
        new.append(time.perf_counter() - t)
    params = sum(p.numel() for p in model.parameters())
    return {
        "params": params,
        "sha256_every_weight_s": old,
        "row_sum_checksum_s": new,
        "speedup_median": float(np.median(np.array(old) / np.array(new))),
        "machine": MACHINE,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("throughput")
    p.add_argument("--model", choices=("demo", "full"), default="demo")
    p.add_argument("--images", type=int, default=400)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-workers", type=int, default=None)
    p = sub.add_parser("embed-tiles")
    p.add_argument("--out", default="/tmp/rsmclip-bench/tiles.npy")
    p.add_argument("--max-tiles", type=int, default=200_000)
    p.add_argument("--restart", action="store_true")
    p = sub.add_parser("search")
    p.add_argument("--embeddings", default=None)
    p.add_argument("--queries", type=int, default=500)
    p.add_argument("--random", type=int, default=0)
    p.add_argument("--random-dim", type=int, default=512)
    p.add_argument("--random-nlist", type=int, default=1024)
    p = sub.add_parser("eval-memory")
    p.add_argument("--images", type=int, default=20_000)
    p.add_argument("--texts", type=int, default=100_000)
    p = sub.add_parser("fingerprint")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", default=None)
    for s in sub.choices.values():
        s.add_argument("--json-out", default=None, help="also write the figures here")
    args = parser.parse_args()
    torch.manual_seed(0)
    result = {
        "throughput": throughput,
        "embed-tiles": embed_tiles,
        "search": search,
        "eval-memory": eval_memory,
        "fingerprint": fingerprint,
    }[args.command](args)
    result["command"] = " ".join(sys.argv)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json_out:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from _common import write_result

        write_result(args.json_out, result)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
