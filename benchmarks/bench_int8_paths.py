"""int8 on the CPU through each available path, side by side in one process: speed and agreement with fp32.

The paths: PyTorch fp32 (the baseline); ``torch.ao`` dynamic quantisation (`inference.quantize_model`, what
``--backend torch --precision int8`` runs; PyTorch deprecates it in favour of torchao); torchao's eager
``quantize_`` with ``Int8DynamicActivationInt8WeightConfig`` (int8 activations and weights) and with
``Int8WeightOnlyConfig`` (int8 weights, fp32 activations), each on the same layers as ``torch.ao`` (every
``nn.Linear`` but the embeddings'), when torchao is installed; and ONNX Runtime int8 (``--backend onnx --precision
int8``, `inference.load_encoder`).

Two measurements, both in alternating rounds (one call of each path per round, so machine noise hits all alike;
medians; every ratio against fp32 of the same run):

1. ``nn.Linear`` alone at the full-size model's matrix shapes (ViT-B/32 image tower: 16 images x 50 tokens;
   XLM-R base text tower: 64 texts x 32 tokens), for the PyTorch paths: the int8 matmul speed each path can give.
2. The whole model end to end (`get_image_features`, `get_text_features` on real UCM images and captions in ten
   languages), for every path, with the smallest cosine of its embeddings to fp32's.

    python benchmarks/bench_int8_paths.py                      # bundled demo model end to end
    python benchmarks/bench_int8_paths.py --model rs-m-clip    # full-size architecture, random weights
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import REPO, cpu_model, ucm_batch, write_result


def _torchao_configs() -> dict[str, Any]:
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig
    except ImportError:
        return {}
    return {
        "torchao int8 dynamic (a8w8)": Int8DynamicActivationInt8WeightConfig(),
        "torchao int8 weight-only (w8)": Int8WeightOnlyConfig(),
    }


def _quantizable(module: Any, name: str) -> bool:
    import torch

    return type(module) is torch.nn.Linear and "embeddings" not in name.split(".")


def torchao_copy(model: Any, config: Any) -> Any:
    from torchao.quantization import quantize_

    out = copy.deepcopy(model).eval()
    quantize_(out, config, filter_fn=_quantizable)
    return out


def alternate(calls: dict[str, Any], rounds: int) -> dict[str, float]:
    """Median seconds per call of each callable, over `rounds` alternating rounds after one warm-up round."""
    times: dict[str, list[float]] = {key: [] for key in calls}
    for round_index in range(rounds + 1):
        for key, call in calls.items():
            start = time.perf_counter()
            call()
            if round_index:
                times[key].append(time.perf_counter() - start)
    return {key: statistics.median(values) for key, values in times.items()}


def linear_speed(rounds: int) -> dict[str, dict[str, float]]:
    """Speed of each PyTorch int8 path's `nn.Linear` over fp32's at the full-size towers' shapes."""
    import torch
    from torch.ao.quantization import quantize_dynamic

    shapes = {
        "image 800x768 @ 768x768": (800, 768, 768),
        "image 800x768 @ 768x3072": (800, 768, 3072),
        "image 800x3072 @ 3072x768": (800, 3072, 768),
        "text 2048x768 @ 768x3072": (2048, 768, 3072),
    }
    out: dict[str, dict[str, float]] = {}
    for shape, (rows, k, n) in shapes.items():
        torch.manual_seed(0)
        fp32 = torch.nn.Sequential(torch.nn.Linear(k, n)).eval()
        layers = {
            "torch fp32": fp32,
            "torch.ao int8": quantize_dynamic(copy.deepcopy(fp32), {torch.nn.Linear}),
        }
        for name, config in _torchao_configs().items():
            layers[name] = torchao_copy(fp32, config)
        x = torch.randn(rows, k, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            medians = alternate({key: (lambda m=m, x=x: m(x)) for key, m in layers.items()}, rounds)
        out[shape] = {key: medians["torch fp32"] / value for key, value in medians.items()}
    return out


def _load(model_arg: str) -> tuple[Any, Any, str]:
    import torch
    from transformers import AutoTokenizer

    from modeling_rsmclip import RSMCLIPConfig, RSMCLIPModel
    from modeling_rsmclip.inference import load_model
    from modeling_rsmclip.testing import make_processor

    if model_arg != "rs-m-clip":
        model, processor = load_model(model_arg)
        return model.eval(), processor, model_arg
    torch.manual_seed(0)
    model = RSMCLIPModel(RSMCLIPConfig.from_preset("rs-m-clip")).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(REPO / "modeling_rsmclip" / "demo_model"))
    processor = make_processor(tokenizer, model.config.vision_config.image_size)
    return model, processor, "rs-m-clip preset (ViT-B/32 + XLM-R base), random weights"


def model_speed(model_arg: str, rounds: int, batch_size: int, text_batch_size: int) -> dict[str, Any]:
    """Images/s, texts/s and min cosine to fp32 of every int8 path on the whole model."""
    import torch
    from PIL import Image

    from modeling_rsmclip.inference import load_encoder, quantize_model

    model, processor, name = _load(model_arg)
    files, texts = ucm_batch(batch_size, text_batch_size)
    pixels = processor.image_processor(
        images=[Image.open(f).convert("RGB") for f in files], return_tensors="pt"
    )["pixel_values"]
    tokens = processor.tokenizer(texts, padding=True, truncation=True, max_length=77, return_tensors="pt")
    paths: dict[str, Any] = {"torch fp32": model, "torch.ao int8": quantize_model(model)}
    for key, config in _torchao_configs().items():
        paths[key] = torchao_copy(model, config)
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        paths["onnx int8"] = load_encoder(model, "onnx", "int8", processor=processor, cache_dir=cache)
        export_s = time.perf_counter() - start
        results: dict[str, dict[str, float]] = {key: {} for key in paths}
        with torch.inference_mode():
            for kind, count, step in (
                ("image", len(pixels), lambda m: m.get_image_features(pixel_values=pixels).pooler_output),
                (
                    "text",
                    len(texts),
                    lambda m: (
                        m.get_text_features(
                            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
                        ).pooler_output
                    ),
                ),
            ):
                reference = torch.nn.functional.normalize(step(model).float(), dim=-1)
                for key, encoder in paths.items():
                    got = torch.nn.functional.normalize(step(encoder).float(), dim=-1)
                    results[key][f"{kind}_min_cosine"] = float((got * reference).sum(-1).min())
                medians = alternate(
                    {key: (lambda e=e, step=step: step(e)) for key, e in paths.items()}, rounds
                )
                for key, median in medians.items():
                    results[key][f"{kind}_per_second"] = count / median
                    results[key][f"{kind}_speedup"] = medians["torch fp32"] / median
    return {
        "model": name,
        "images_per_batch": len(pixels),
        "texts_per_batch": len(texts),
        "tokens_padded": int(tokens["attention_mask"].shape[1]),
        "onnx_export_and_quantise_s": export_s,
        "results": results,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default="demo", help='"demo", a model folder, or "rs-m-clip" (random weights)'
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--text-batch-size", type=int, default=64)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch and ONNX Runtime threads (default: all)"
    )
    parser.add_argument("--output", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)

    import torch

    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    versions = {"torch": torch.__version__}
    try:
        import torchao

        versions["torchao"] = torchao.__version__
    except ImportError:
        versions["torchao"] = "not installed"
    import onnxruntime

    versions["onnxruntime"] = onnxruntime.__version__
    print(f"{cpu_model()}, {os.cpu_count()} logical CPUs, {threads} threads | {versions}")
    linear = linear_speed(args.rounds)
    print("nn.Linear speed over fp32 (higher is faster):")
    keys = list(next(iter(linear.values())))
    print("| shape | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for shape, ratios in linear.items():
        print(f"| {shape} | " + " | ".join(f"{ratios[k]:.2f}" for k in keys) + " |")
    whole = model_speed(args.model, args.rounds, args.batch_size, args.text_batch_size)
    print(
        f"model: {whole['model']} | {whole['images_per_batch']} images, {whole['texts_per_batch']} texts "
        f"({whole['tokens_padded']} tokens) per batch | median of {args.rounds} alternating rounds | ONNX export "
        f"and quantisation {whole['onnx_export_and_quantise_s']:.0f} s (once, cached by `load_encoder`)"
    )
    print("| path | images/s | x fp32 | texts/s | x fp32 | min cosine to fp32 (image / text) |")
    print("|---|---|---|---|---|---|")
    for key, r in whole["results"].items():
        print(
            f"| {key} | {r['image_per_second']:.1f} | {r['image_speedup']:.2f} | {r['text_per_second']:.1f} | "
            f"{r['text_speedup']:.2f} | {r['image_min_cosine']:.5f} / {r['text_min_cosine']:.5f} |"
        )
    if args.output:
        write_result(
            args.output, {"threads": threads, "versions": versions, "linear_speedup": linear, "model": whole}
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
