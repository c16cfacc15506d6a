"""Retrieval quality of the CPU inference backends: UCM-Captions test-split mR per language, fp32 vs int8.

Runs `evaluation.retrieval.evaluate_retrieval` (the evaluation suite's own code) with the model, then with each
backend of `modeling_rsmclip.inference.load_encoder` in its place, on the same data, and prints mR per language
with the difference to PyTorch fp32.

    python benchmarks/bench_int8_retrieval.py                                   # the bundled demo model
    python benchmarks/bench_int8_retrieval.py --model MODEL --ties optimistic
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BACKENDS = (("torch", "fp32"), ("torch", "int8"), ("onnx", "fp32"), ("onnx", "int8"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=str(REPO / "modeling_rsmclip" / "demo_model"))
    parser.add_argument("--ties", choices=["pessimistic", "optimistic"], default="pessimistic")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--output", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)

    from transformers import AutoProcessor

    import modeling_rsmclip  # noqa: F401
    from modeling_rsmclip import RSMCLIPModel
    from modeling_rsmclip.evaluation.embed import Embedder
    from modeling_rsmclip.evaluation.retrieval import evaluate_retrieval, load_karpathy
    from modeling_rsmclip.inference import load_encoder
    from modeling_rsmclip.testing import shared_data_dir

    root = shared_data_dir() / "ucm-captions"
    if not (root / "dataset.json").is_file():
        raise SystemExit(f"UCM-Captions not found at {root}: set RSMCLIP_SHARED_DATA")
    data = load_karpathy(
        root / "dataset.json", root / "images", "test", root / "translations", name="UCM-Captions"
    )
    model = RSMCLIPModel.from_pretrained(args.model).eval()
    processor = AutoProcessor.from_pretrained(args.model)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for backend, precision in BACKENDS:
            encoder = load_encoder(model, backend, precision, processor=processor, cache_dir=tmp)
            embedder = Embedder(
                encoder, processor, batch_size=args.batch_size, cache_dir=None, show_progress=False
            )
            result = evaluate_retrieval(embedder, data, ties=args.ties, model_name=args.model)
            results[f"{backend} {precision}"] = {
                lang: m["mR"] for lang, m in result.results["languages"].items()
            }
    base = results["torch fp32"]
    langs = list(base)
    print(f"UCM-Captions test split ({len(data.image_ids)} images), {args.ties} ties, model {args.model}: mR")
    print("| backend | " + " | ".join(langs) + " | max abs diff to torch fp32 |")
    print("|---" * (len(langs) + 2) + "|")
    for key, values in results.items():
        worst = max(abs(values[lang] - base[lang]) for lang in langs)
        print(f"| {key} | " + " | ".join(f"{values[lang]:.2f}" for lang in langs) + f" | {worst:.2f} |")
    if args.output:
        from _common import write_result

        write_result(args.output, {"model": args.model, "ties": args.ties, "mR": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
