"""Train and evaluate the demo model and the paper's two claims at small scale, over several seeds.

Variants (each trained with train.py from the same YAML, differing only as named):
- ``full``: CLIP + self-distillation, captions in all 10 languages (the RS-M-CLIP recipe);
- ``clip_only``: CLIP loss only (claim a: does self-distillation help?);
- ``english_only``: CLIP + self-distillation on English captions only (claim b: do translations help English?).

Every run is evaluated on the UCM-Captions test split (retrieval in English, and in every language for ``full``)
and zero-shot on RSSCN7-mini (never seen in training) and on UCM (labels.csv, test split). The summary (mean and
standard deviation over seeds) is written to ``--out``/summary.json and printed as a markdown table.

    python scripts/run_experiments.py --config examples/train_demo_cpu.yaml --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from modeling_rsmclip.testing import shared_data_dir

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "full": [],
    "clip_only": ["--no-distillation"],
    "english_only": ["--caption-languages", "en"],
}


def _run(cmd: list[str], log: Path) -> None:
    print("+", " ".join(cmd), flush=True)
    with open(log, "a") as f:
        result = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"command failed ({result.returncode}); see {log}")


def evaluate(model_dir: Path, out: Path, shared: Path, languages: str, log: Path) -> dict:
    rsmclip = [sys.executable, "-m", "modeling_rsmclip.cli"]
    lang_args = [] if languages == "all" else ["--languages", languages]
    common = [*lang_args, "--output-dir", str(out), "--no-plots", "--no-cache"]
    ucm = shared / "ucm-captions"
    _run(
        rsmclip
        + [
            "eval-retrieval",
            "--model",
            str(model_dir),
            "--karpathy-json",
            str(ucm / "dataset.json"),
            "--images",
            str(ucm / "images"),
            "--translations",
            str(ucm / "translations"),
            "--dataset-name",
            "UCM-Captions",
            *common,
        ],
        log,
    )
    _run(
        rsmclip
        + [
            "eval-zero-shot",
            "--model",
            str(model_dir),
            "--image-folder",
            str(shared / "rsscn7-mini"),
            "--dataset-name",
            "rsscn7-mini",
            "--class-names",
            "rsscn7",
            *common,
        ],
        log,
    )
    _run(
        rsmclip
        + [
            "eval-zero-shot",
            "--model",
            str(model_dir),
            "--labels-csv",
            str(ucm / "labels.csv"),
            "--images",
            str(ucm / "images"),
            "--split",
            "test",
            "--dataset-name",
            "ucm",
            "--class-names",
            "ucm",
            *common,
        ],
        log,
    )
    results = {}
    for path in sorted(out.glob("*.json")):
        data = json.loads(path.read_text())
        if data.get("task") == "image-text-retrieval":
            results["retrieval"] = {lang: m["mR"] for lang, m in data["languages"].items()}
            results["retrieval_full"] = data["languages"]
        elif data.get("task") == "zero-shot-image-classification":
            name = data["dataset"]["name"]
            results[f"zero_shot_{name}"] = {lang: m["top1"] for lang, m in data["languages"].items()}
    return results


def summarise(runs: dict[str, list[dict]]) -> dict:
    summary = {}
    for variant, items in runs.items():
        metrics = {
            "UCM retrieval mR (en)": [r["retrieval"]["en"] for r in items],
            "RSSCN7-mini zero-shot top-1 (en)": [r["zero_shot_rsscn7-mini"]["en"] for r in items],
            "UCM zero-shot top-1 (en)": [r["zero_shot_ucm"]["en"] for r in items],
        }
        summary[variant] = {
            k: {"mean": statistics.mean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0, "values": v}
            for k, v in metrics.items()
        }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="train.py YAML shared by every run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", default="outputs/experiments")
    parser.add_argument("--shared-data", default=str(shared_data_dir()))
    parser.add_argument(
        "--extra", nargs=argparse.REMAINDER, default=[], help="more train.py flags for every run"
    )
    args = parser.parse_args()
    out, shared = Path(args.out), Path(args.shared_data)
    out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {v: [] for v in args.variants}
    for seed in args.seeds:
        for variant in args.variants:
            run_dir = out / f"{variant}-seed{seed}"
            results_file = run_dir / "results.json"
            if results_file.exists():
                runs[variant].append(json.loads(results_file.read_text()))
                continue
            run_dir.mkdir(parents=True, exist_ok=True)
            log = run_dir / "log.txt"
            start = time.time()
            model_dir = run_dir / "model"
            _run(
                [
                    sys.executable,
                    "train.py",
                    "--config",
                    args.config,
                    "--seed",
                    str(seed),
                    "--output-dir",
                    str(model_dir),
                    "--report-to",
                    "none",
                    *VARIANTS[variant],
                    *args.extra,
                ],
                log,
            )
            train_s = time.time() - start
            languages = "all" if variant == "full" else "en"
            results = evaluate(model_dir, run_dir / "eval", shared, languages, log)
            results.update({"variant": variant, "seed": seed, "train_seconds": round(train_s, 1)})
            results_file.write_text(json.dumps(results, indent=2))
            runs[variant].append(results)
            print(
                f"{variant} seed {seed}: mR(en) {results['retrieval']['en']:.2f}, "
                f"RSSCN7 top-1 {results['zero_shot_rsscn7-mini']['en']:.1f}, {train_s:.0f} s",
                flush=True,
            )
    summary = summarise(runs)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    header = "| variant | " + " | ".join(next(iter(summary.values())).keys()) + " |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for variant, metrics in summary.items():
        cells = [f"{m['mean']:.2f} ± {m['std']:.2f}" for m in metrics.values()]
        print(f"| {variant} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
