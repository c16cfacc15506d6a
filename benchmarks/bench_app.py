"""The web app under load: N concurrent clients for a fixed time against a local `rsmclip app`.

The app runs in its own process (`python -m modeling_rsmclip.cli app`, bound to 127.0.0.1 on a free port), so its
resident memory is measured alone (psutil, sampled every second). Each client is a `gradio_client.Client` in its
own thread that sends requests back to back through the app's queue until the time is up:

- ``search``: text queries in the ten languages (the bundled captions, in turn);
- ``classify``: zero-shot classification of a bundled image with five labels in the image's turn of language;
- ``mixed`` (default): the two alternately.

Printed (and written with ``--json``): requests/s, latency p50/p99 in ms, errors (goal: none), the server's RSS
after warm-up and at the end, and its peak (goal: flat).

    python benchmarks/bench_app.py --clients 4 --duration 60
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from _common import REPO, cpu_model, write_result

CLASSIFY_LABELS = {
    "en": "airplanes, a beach, a forest, a harbor, a river",
    "pt": "aviões, uma praia, uma floresta, um porto, um rio",
    "zh": "飞机, 海滩, 森林, 港口, 河流",
    "de": "Flugzeuge, ein Strand, ein Wald, ein Hafen, ein Fluss",
}


def queries() -> list[str]:
    """The first caption of a few bundled images, in each of the ten languages."""
    from modeling_rsmclip.templates import LANGUAGES
    from modeling_rsmclip.testing import sample_dir

    root = sample_dir() / "ucm"
    images = json.loads((root / "dataset.json").read_text())["images"]
    out = [entry["sentences"][0]["raw"] for entry in images[::10]]
    for lang in LANGUAGES[1:]:
        rows = json.loads((root / "translations" / f"{lang}.json").read_text(encoding="utf-8"))
        out += [row["text"] for row in rows[::25]]
    return out


def start_app(port: int, args: argparse.Namespace) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "modeling_rsmclip.cli",
        "app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--concurrency",
        str(args.concurrency),
    ]
    if args.model:
        command += ["--model", args.model]
    if args.index:
        command += ["--index", args.index]
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    log = open(Path(args.log), "w") if args.log else subprocess.DEVNULL
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the app exited with status {process.returncode} before serving (see --log)")
        try:
            with urllib.request.urlopen(url + "config", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise SystemExit(f"the app did not answer at {url} within {timeout:.0f} s")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def run(args: argparse.Namespace) -> dict:
    import psutil
    from gradio_client import Client, handle_file

    from modeling_rsmclip.app.cli import free_port
    from modeling_rsmclip.testing import sample_dir

    port = args.port or free_port()
    url = f"http://127.0.0.1:{port}/"
    images = sorted((sample_dir() / "ucm" / "images").glob("*.jpg"))
    texts = queries()
    process = start_app(port, args)
    server = psutil.Process(process.pid)
    try:
        started = time.time()
        wait_ready(url, process)
        startup_s = time.time() - started
        warm = Client(url, verbose=False)
        warm.predict(texts[0], "auto", args.top_k, api_name="/search")
        warm.predict(
            handle_file(str(images[0])), CLASSIFY_LABELS["en"], "auto", 224, "auto", api_name="/classify"
        )

        def rss() -> int:
            return sum(p.memory_info().rss for p in [server, *server.children(recursive=True)])

        rss_start = rss()
        rss_peak = rss_start
        latencies: list[float] = []
        errors: list[str] = []
        counts = {"search": 0, "classify": 0}
        lock = threading.Lock()
        stop = time.time() + args.duration

        def client_loop(worker: int) -> None:
            client = Client(url, verbose=False)
            i = worker
            sent = 0
            while time.time() < stop:
                # mixed: every client alternates, half of the clients starting with each kind
                kind = (
                    args.endpoint if args.endpoint != "mixed" else ("search", "classify")[(worker + sent) % 2]
                )
                sent += 1
                t0 = time.perf_counter()
                try:
                    if kind == "search":
                        client.predict(texts[i % len(texts)], "auto", args.top_k, api_name="/search")
                    else:
                        lang = list(CLASSIFY_LABELS)[i % len(CLASSIFY_LABELS)]
                        client.predict(
                            handle_file(str(images[i % len(images)])),
                            CLASSIFY_LABELS[lang],
                            "auto",
                            224,
                            "auto",
                            api_name="/classify",
                        )
                    elapsed = time.perf_counter() - t0
                    with lock:
                        latencies.append(elapsed)
                        counts[kind] += 1
                except Exception as error:  # counted and reported, the run goes on
                    with lock:
                        errors.append(f"{kind}: {error.__class__.__name__}: {error}"[:200])
                i += args.clients

        threads = [threading.Thread(target=client_loop, args=(w,), daemon=True) for w in range(args.clients)]
        t_begin = time.time()
        for thread in threads:
            thread.start()
        while any(t.is_alive() for t in threads):
            rss_peak = max(rss_peak, rss())
            time.sleep(1)
        wall = time.time() - t_begin
        rss_end = rss()
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
    return {
        "machine": f"{os.cpu_count()}-core {cpu_model()}",
        "clients": args.clients,
        "concurrency": args.concurrency,
        "endpoint": args.endpoint,
        "duration_s": round(wall, 1),
        "startup_s": round(startup_s, 1),
        "requests": len(latencies),
        "requests_by_endpoint": counts,
        "requests_per_s": round(len(latencies) / wall, 2),
        "latency_p50_ms": round(percentile(latencies, 50) * 1000, 1),
        "latency_p99_ms": round(percentile(latencies, 99) * 1000, 1),
        "errors": len(errors),
        "error_examples": errors[:5],
        "rss_start_mb": round(rss_start / 2**20, 1),
        "rss_end_mb": round(rss_end / 2**20, 1),
        "rss_peak_mb": round(rss_peak / 2**20, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (default 4)")
    parser.add_argument("--duration", type=float, default=60, help="seconds of load (default 60)")
    parser.add_argument("--endpoint", choices=("mixed", "search", "classify"), default="mixed")
    parser.add_argument("--concurrency", type=int, default=2, help="the app's queue concurrency (default 2)")
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--model", default=None, help="model for the app (default: the bundled demo model)")
    parser.add_argument("--index", default=None, help="index for the app (default: the bundled samples')")
    parser.add_argument("--port", type=int, default=None, help="port (default: a free one)")
    parser.add_argument("--log", default=None, help="write the app's output to this file")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()
    if args.clients < 1 or args.duration <= 0:
        print("error: --clients must be >= 1 and --duration > 0", file=sys.stderr)
        return 2
    result = run(args)
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    if args.json:
        write_result(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
