"""Start-up of the `rsmclip` command: `--help` of every sub-command and one `rsmclip search` end to end, for this
checkout and (``--baseline REF``) an earlier commit checked out beside it, measured alternately in one run.

    python benchmarks/bench_cli.py --baseline 6932223 --repeats 5

Each measurement is a fresh process (``python -m modeling_rsmclip.cli ...`` with the tree on ``PYTHONPATH``): wall
time and peak resident memory (``ru_maxrss`` of the child). The search runs on an index of the bundled RSSCN7
sample built once per tree with that tree's own demo model, so both trees answer the same query on the same data.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, cpu_model, write_result

HELPS = ([], ["index", "build"], ["search"], ["map", "classify"], ["eval-zero-shot"], ["train"], ["app"])
QUERY = "campos de futebol perto de um rio"


def _run(tree: Path, argv: list[str]) -> float:
    """Seconds of one `python -m modeling_rsmclip.cli ARGV` in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "modeling_rsmclip.cli", *argv],
        env=env,
        cwd=tree,
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"{tree}: rsmclip {' '.join(argv)} failed: {out.stderr[-2000:]}")
    return elapsed


def _peak_mib(tree: Path, argv: list[str]) -> float:
    """Peak resident memory of one run, read by GNU time."""
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        ["/usr/bin/time", "-f", "%M", sys.executable, "-m", "modeling_rsmclip.cli", *argv],
        env=env,
        cwd=tree,
        capture_output=True,
        text=True,
    )
    return int(out.stderr.strip().splitlines()[-1]) / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--baseline", default=None, help="git commit to compare against (checked out in a temp dir)"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path, default=REPO / "results" / "bench_cli.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        trees = {"current": REPO}
        if args.baseline:
            base = Path(tmp) / "baseline"
            subprocess.run(
                ["git", "worktree", "add", "--detach", str(base), args.baseline], cwd=REPO, check=True
            )
            trees["baseline"] = base
        try:
            for name, tree in trees.items():
                index = Path(tmp) / f"index-{name}"
                sample = tree / "examples" / "sample" / "rsscn7"
                argv = [
                    "index",
                    "build",
                    "--output",
                    str(index),
                    str(sample),
                    "--num-workers",
                    "0",
                    "--quiet",
                ]
                _run(tree, argv)
            times: dict[str, dict[str, list[float]]] = {n: {} for n in trees}
            for _ in range(args.repeats):
                for name, tree in trees.items():  # alternate trees so drift hits both alike
                    for argv in HELPS:
                        key = "rsmclip " + " ".join([*argv, "--help"])
                        times[name].setdefault(key, []).append(_run(tree, [*argv, "--help"]))
                    key = f"rsmclip search INDEX {QUERY!r}"
                    search = ["search", str(Path(tmp) / f"index-{name}"), QUERY, "--top-k", "5"]
                    times[name].setdefault(key, []).append(_run(tree, search))
            memory = {
                name: {
                    "rsmclip --help": _peak_mib(tree, ["--help"]),
                    "rsmclip search": _peak_mib(
                        tree, ["search", str(Path(tmp) / f"index-{name}"), QUERY, "--top-k", "5"]
                    ),
                }
                for name, tree in trees.items()
            }
        finally:
            if "baseline" in trees:
                subprocess.run(["git", "worktree", "remove", "--force", str(trees["baseline"])], cwd=REPO)

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    result = {
        "machine": f"{cpu_model()}, {os.cpu_count()} cores",
        "commit": commit.stdout.strip(),
        "baseline": args.baseline,
        "date": time.strftime("%Y-%m-%d"),
        "repeats": args.repeats,
        "median_s": {n: {k: statistics.median(v) for k, v in t.items()} for n, t in times.items()},
        "peak_mib": memory,
    }
    print(f"machine: {result['machine']}; median of {args.repeats} fresh processes")
    header = f"{'command':58s} {'current s':>10s}" + (
        f" {'baseline s':>11s} {'ratio':>7s}" if args.baseline else ""
    )
    print(header)
    for key, value in result["median_s"]["current"].items():
        line = f"{key:58s} {value:10.2f}"
        if args.baseline:
            base = result["median_s"]["baseline"][key]
            line += f" {base:11.2f} {base / value:6.1f}x"
        print(line)
    for name, mem in memory.items():
        print(f"peak RSS ({name}): " + ", ".join(f"{k} {v:.0f} MiB" for k, v in mem.items()))
    write_result(args.output, result)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
