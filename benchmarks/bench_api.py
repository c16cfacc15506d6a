"""The HTTP API under load: text searches from 1, 8 and 32 concurrent clients, with and without query batching.

Two `rsmclip serve` processes run side by side on 127.0.0.1 (free ports), on the same index and model: one batches
concurrent text queries (``--max-batch 32 --batch-wait-ms 5``, the defaults), the other embeds each query alone
(``--max-batch 1``). For each client count the two are loaded in turn (the order alternates from one count to the
next, so a change in the machine's load hits both alike). Each client is an asyncio task with its own httpx
connection that sends ``GET /search?query=...&top_k=10`` back to back (captions of the bundled images in the ten
languages, in turn) for ``--duration`` seconds or ``--max-requests`` requests, whichever comes first.

Printed side by side (and written with ``--json``): requests/s, latency p50/p99 in ms, errors (goal: none), the mean
number of queries per forward pass (from ``/health``), the server's RSS, and the batched/unbatched throughput ratio.
Goal: >= 20 text searches/s on the demo model on 2 cores.

    python benchmarks/bench_api.py                              # bundled demo model, index of the bundled samples
    python benchmarks/bench_api.py --index INDEX --duration 30 --json results/bench_api_cpu.json
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path

from _common import REPO, cpu_model, git_commit, write_result
from bench_app import percentile, queries

MODES = {"batched": ["--max-batch", "32", "--batch-wait-ms", "5"], "unbatched": ["--max-batch", "1"]}


def start_server(
    index: str, port: int, mode: str, args: argparse.Namespace, log: Path | None
) -> subprocess.Popen:
    command = [sys.executable, "-m", "modeling_rsmclip.cli", "serve", index, "--port", str(port), "--quiet"]
    command += MODES[mode]
    if args.model:
        command += ["--model", args.model]
    if args.threads:
        command += ["--threads", str(args.threads)]
    if args.backend != "torch" or args.precision != "fp32":
        command += ["--backend", args.backend, "--precision", args.precision]
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    out = open(log, "w") if log else subprocess.DEVNULL
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 600) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with status {process.returncode} before serving (see --log)")
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.5)
    raise SystemExit(f"the server did not answer at {url} within {timeout:.0f} s")


async def load(
    url: str, clients: int, texts: list[str], duration: float, max_requests: int, top_k: int
) -> dict:
    """``clients`` tasks sending searches back to back; latencies of the successful ones, errors counted."""
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    sent = 0
    stop = time.perf_counter() + duration

    async def client(worker: int) -> None:
        nonlocal sent
        async with httpx.AsyncClient(base_url=url, timeout=120) as http:
            i = worker
            while time.perf_counter() < stop and sent < max_requests:
                sent += 1
                t0 = time.perf_counter()
                try:
                    response = await http.get(
                        "/search", params={"query": texts[i % len(texts)], "top_k": top_k}
                    )
                    if response.status_code == 200 and response.json()["count"] == top_k:
                        latencies.append(time.perf_counter() - t0)
                    else:
                        errors.append(f"{response.status_code}: {response.text[:160]}")
                except Exception as error:  # counted and reported, the run goes on
                    errors.append(f"{error.__class__.__name__}: {error}"[:200])
                i += clients

    begin = time.perf_counter()
    await asyncio.gather(*(client(w) for w in range(clients)))
    wall = time.perf_counter() - begin
    return {
        "clients": clients,
        "duration_s": round(wall, 2),
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / wall, 2),
        "latency_p50_ms": round(percentile(latencies, 50) * 1000, 1),
        "latency_p99_ms": round(percentile(latencies, 99) * 1000, 1),
        "errors": len(errors),
        "error_examples": errors[:3],
    }


def batching_figures(url: str) -> dict:
    import httpx

    return httpx.get(url + "/health", timeout=30).json()["batching"]


def after_health_threads(url: str) -> int:
    import httpx

    return httpx.get(url + "/health", timeout=30).json()["threads"]


def run(args: argparse.Namespace) -> dict:
    import httpx
    import psutil

    from modeling_rsmclip.app.cli import free_port

    index = args.index
    if index is None:
        from modeling_rsmclip.index import bundled_sample_index

        index = str(bundled_sample_index(progress=True).path)
    texts = queries()
    servers: dict[str, tuple[subprocess.Popen, str]] = {}
    load_before = os.getloadavg()
    rows: list[dict] = []
    try:
        for mode in MODES:
            port = free_port()
            log = Path(f"{args.log}.{mode}") if args.log else None
            servers[mode] = (start_server(index, port, mode, args, log), f"http://127.0.0.1:{port}")
        for process, url in servers.values():
            wait_ready(url, process)
            for text in texts[:10]:  # warm-up: tokenizer, allocator, first forward passes
                httpx.get(url + "/search", params={"query": text, "top_k": args.top_k}, timeout=120)
        order = list(MODES)
        for level, clients in enumerate(args.clients):
            for mode in order if level % 2 == 0 else order[::-1]:
                process, url = servers[mode]
                before = batching_figures(url)
                result = asyncio.run(load(url, clients, texts, args.duration, args.max_requests, args.top_k))
                after = batching_figures(url)
                batches = after["batches"] - before["batches"]
                result["mode"] = mode
                result["mean_batch"] = (
                    round((after["queries"] - before["queries"]) / batches, 2) if batches else 0
                )
                result["server_threads"] = after_health_threads(url)
                result["server_rss_mb"] = round(psutil.Process(process.pid).memory_info().rss / 2**20, 1)
                result["load_average_1min"] = round(os.getloadavg()[0], 2)
                rows.append(result)
                print(
                    f"{mode:>9} {clients:>3} clients: {result['requests_per_s']:7.2f} req/s  p50 "
                    f"{result['latency_p50_ms']:7.1f} ms  p99 {result['latency_p99_ms']:7.1f} ms  errors "
                    f"{result['errors']}  mean batch {result['mean_batch']}",
                    flush=True,
                )
    finally:
        for process, _ in servers.values():
            process.terminate()
        for process, _ in servers.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    ratios = {}
    for clients in args.clients:
        by_mode = {r["mode"]: r for r in rows if r["clients"] == clients}
        unbatched = by_mode["unbatched"]["requests_per_s"]
        ratios[str(clients)] = (
            round(by_mode["batched"]["requests_per_s"] / unbatched, 2) if unbatched else None
        )
    return {
        "benchmark": "bench_api",
        "machine": f"{os.cpu_count()}-core {cpu_model()}",
        "commit": git_commit(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "index": Path(index).name,
        "model": args.model or "the index's (bundled demo model)",
        "backend": f"{args.backend} {args.precision}",
        "server_threads": rows[0]["server_threads"] if rows else None,
        "duration_s": args.duration,
        "max_requests": args.max_requests,
        "top_k": args.top_k,
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "results": rows,
        "batched_over_unbatched_requests_per_s": ratios,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--index", default=None, help="index folder (default: the bundled samples', built once)"
    )
    parser.add_argument("--model", default=None, help="query model (default: the index's)")
    parser.add_argument("--backend", default="torch", choices=("torch", "onnx"))
    parser.add_argument("--precision", default="fp32", choices=("fp32", "int8"))
    parser.add_argument(
        "--clients", type=int, nargs="+", default=[1, 8, 32], help="client counts (default 1 8 32)"
    )
    parser.add_argument("--duration", type=float, default=20, help="seconds of load per run (default 20)")
    parser.add_argument(
        "--max-requests", type=int, default=3000, help="requests per run at most (default 3000)"
    )
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="the servers' --threads (default: theirs)")
    parser.add_argument(
        "--log", default=None, help="write the servers' output to LOG.batched / LOG.unbatched"
    )
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()
    if min(args.clients) < 1 or args.duration <= 0 or args.max_requests < 1:
        print("error: --clients must be >= 1, --duration > 0 and --max-requests >= 1", file=sys.stderr)
        return 2
    result = run(args)
    print(
        f"\n{result['machine']}, commit {result['commit'][:12]}, load average {result['load_average_before']}"
    )
    print(
        "| clients | batched req/s | p50 | p99 | mean batch | unbatched req/s | p50 | p99 | ratio | errors |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for clients in args.clients:
        b, u = (
            next(r for r in result["results"] if r["clients"] == clients and r["mode"] == m) for m in MODES
        )
        print(
            f"| {clients} | {b['requests_per_s']} | {b['latency_p50_ms']} ms | {b['latency_p99_ms']} ms | "
            f"{b['mean_batch']} | {u['requests_per_s']} | {u['latency_p50_ms']} ms | {u['latency_p99_ms']} ms | "
            f"{result['batched_over_unbatched_requests_per_s'][str(clients)]}x | {b['errors']} / {u['errors']} |"
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        write_result(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
