"""The comparison table of docs/models.md: `rsmclip benchmark` with the bundled demo model and tiny random models of
the four Hub-native families (CLIP, SigLIP, SigLIP 2, AltCLIP; seed 0, built here with
`testing.make_tiny_family_model`), on RSSCN7-mini and the UCM-Captions test split of the shared data (else the bundled
sample), in English, Portuguese and Chinese.

    python scripts/benchmark_families.py                       # writes results/benchmark_families/
    python scripts/benchmark_families.py --output /tmp/bench   # elsewhere

The random models score at chance: they show that every family goes through the same runners, not a ranking. The
run's machine, commit, date and wall time are saved beside the table (run.json).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _common import cpu_model  # noqa: E402

FAMILIES = ("clip", "siglip", "siglip2", "altclip")


def datasets() -> list[str]:
    from modeling_rsmclip.testing import sample_dir, shared_data_dir

    shared = shared_data_dir()
    if (shared / "ucm-captions" / "dataset.json").is_file() and (shared / "rsscn7-mini").is_dir():
        return [f"rsscn7-mini={shared / 'rsscn7-mini'}", f"ucm-captions={shared / 'ucm-captions'}"]
    print(f"shared data not found at {shared}: using the bundled sample", file=sys.stderr)
    return [f"rsscn7-sample={sample_dir() / 'rsscn7'}", f"ucm-sample={sample_dir() / 'ucm'}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=REPO / "results" / "benchmark_families")
    parser.add_argument("--languages", default="en,pt,zh")
    args = parser.parse_args()

    from modeling_rsmclip.evaluation.benchmark import run_benchmark, write_outputs
    from modeling_rsmclip.testing import make_tiny_family_model

    with tempfile.TemporaryDirectory() as tmp:
        models = ["demo"] + [
            f"tiny-{family}={make_tiny_family_model(family, Path(tmp) / family)}" for family in FAMILIES
        ]
        start = time.perf_counter()
        result = run_benchmark(
            models, datasets(), args.languages.split(","), num_workers=1, cache_dir=Path(tmp) / "cache"
        )
        seconds = time.perf_counter() - start
    files = write_outputs(result, args.output)
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    run = {
        "machine": f"{cpu_model()}, CPU only",
        "commit": commit,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python scripts/benchmark_families.py " + " ".join(sys.argv[1:]),
        "models": [m.split("=")[0] for m in models],
        "datasets": [d.split("=")[0] for d in datasets()],
        "languages": args.languages.split(","),
        "wall_seconds": round(seconds, 1),
    }
    (args.output / "run.json").write_text(json.dumps(run, indent=1) + "\n", encoding="utf-8")
    print(files["markdown"].read_text(encoding="utf-8"))
    print(f"{seconds:.0f} s; wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
