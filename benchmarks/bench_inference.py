"""CPU embedding throughput of the inference backends, side by side in one process: PyTorch fp32 (the baseline),
PyTorch int8 (dynamic quantisation), ONNX Runtime fp32 and ONNX Runtime int8 (`modeling_rsmclip.inference`).

Images are real UCM-Captions images preprocessed once (preprocessing is not timed); texts are real UCM captions
in the ten languages, tokenised once, batched as `Embedder` batches them. The backends run in alternating rounds
(one batch each, round after round) so machine noise hits all of them alike; each figure is the median over the
rounds, and every ratio is against PyTorch fp32 from the same run.

    python benchmarks/bench_inference.py                       # full-size architecture, random weights
    python benchmarks/bench_inference.py --model modeling_rsmclip/demo_model
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, cpu_model, ucm_batch, write_result

BACKENDS = (("torch", "fp32"), ("torch", "int8"), ("onnx", "fp32"), ("onnx", "int8"))


def _tokens_per_image(model) -> int:
    vision = model.config.vision_config
    return 1 + (vision.image_size // vision.patch_size) ** 2


def _cpu_flags() -> list[str]:
    """The CPU's int8-relevant vector extensions (AVX2; VNNI and AMX give int8 four times and more fp32's rate)."""
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16")
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return [f for f in wanted if f in flags]
    except OSError:
        pass
    return []


def kernel_ceiling(rows: int, rounds: int) -> dict[str, float]:
    """Speed of PyTorch's dynamic int8 `nn.Linear` over fp32 `nn.Linear` at the image tower's matrix shapes
    (`rows` = images x tokens): the most that int8 weights can give the matmuls on this CPU."""
    import torch
    from torch.ao.quantization import quantize_dynamic

    out = {}
    for k, n in ((768, 768), (768, 3072), (3072, 768)):
        fp32 = torch.nn.Sequential(torch.nn.Linear(k, n)).eval()
        int8 = quantize_dynamic(fp32, {torch.nn.Linear}, dtype=torch.qint8)
        x = torch.randn(rows, k, generator=torch.Generator().manual_seed(0))
        times: dict[str, list[float]] = {"fp32": [], "int8": []}
        with torch.inference_mode():
            for round_index in range(3 * rounds + 1):
                for name, layer in (("fp32", fp32), ("int8", int8)):
                    start = time.perf_counter()
                    layer(x)
                    if round_index:
                        times[name].append(time.perf_counter() - start)
        out[f"{rows}x{k} @ {k}x{n}"] = statistics.median(times["fp32"]) / statistics.median(times["int8"])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default=None, help="model folder (default: the rs-m-clip preset, random weights)"
    )
    parser.add_argument("--batch-size", type=int, default=16, help="images per batch")
    parser.add_argument("--text-batch-size", type=int, default=64, help="texts per batch")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (after one warm-up round)")
    parser.add_argument(
        "--threads", type=int, default=None, help="threads for both runtimes (default: all cores)"
    )
    parser.add_argument("--onnx-dir", type=Path, default=None, help="reuse / keep the ONNX export here")
    parser.add_argument("--output", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)

    import torch
    from PIL import Image

    import modeling_rsmclip  # noqa: F401
    from modeling_rsmclip import RSMCLIPConfig, RSMCLIPModel
    from modeling_rsmclip.inference import load_encoder
    from modeling_rsmclip.inference.encoders import is_onnx_folder
    from modeling_rsmclip.inference.onnx_export import export_onnx

    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    if args.model:
        from transformers import AutoProcessor

        model = RSMCLIPModel.from_pretrained(args.model).eval()
        processor = AutoProcessor.from_pretrained(args.model)
        name = args.model
    else:
        from transformers import AutoTokenizer

        from modeling_rsmclip.testing import make_processor

        torch.manual_seed(0)
        model = RSMCLIPModel(RSMCLIPConfig.from_preset("rs-m-clip")).eval()
        # Real captions tokenised with the demo model's tokenizer (its ids are valid in XLM-R's vocabulary size).
        tokenizer = AutoTokenizer.from_pretrained(str(REPO / "modeling_rsmclip" / "demo_model"))
        processor = make_processor(tokenizer, model.config.vision_config.image_size)
        name = "rs-m-clip preset (ViT-B/32 + XLM-R base), random weights"
    files, texts = ucm_batch(args.batch_size, args.text_batch_size)
    pixel_values = processor.image_processor(
        images=[Image.open(f).convert("RGB") for f in files], return_tensors="pt"
    )["pixel_values"]
    tokens = processor.tokenizer(texts, padding=True, truncation=True, max_length=77, return_tensors="pt")

    tmp = None
    onnx_dir = args.onnx_dir
    if onnx_dir is None:
        tmp = tempfile.TemporaryDirectory()
        onnx_dir = Path(tmp.name) / "onnx"
    if not is_onnx_folder(onnx_dir):
        start = time.perf_counter()
        export_onnx(model, onnx_dir, processor=processor, verify=False)
        print(f"exported ONNX graphs in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    encoders = {
        f"{b} {p}": load_encoder(onnx_dir if b == "onnx" else model, backend=b, precision=p, threads=threads)
        for b, p in BACKENDS
    }

    def image_step(encoder):
        return encoder.get_image_features(pixel_values=pixel_values).pooler_output

    def text_step(encoder):
        return encoder.get_text_features(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
        ).pooler_output

    results: dict[str, dict[str, float]] = {}
    with torch.inference_mode():
        for kind, step, count in (
            ("image", image_step, len(pixel_values)),
            ("text", text_step, len(texts)),
        ):
            reference = torch.nn.functional.normalize(step(encoders["torch fp32"]).float(), dim=-1)
            times: dict[str, list[float]] = {key: [] for key in encoders}
            for round_index in range(args.rounds + 1):
                for key, encoder in encoders.items():
                    start = time.perf_counter()
                    out = step(encoder)
                    elapsed = time.perf_counter() - start
                    if round_index:  # round 0 warms up
                        times[key].append(elapsed)
                    elif kind not in results.get(key, {}):
                        cos = (torch.nn.functional.normalize(out.float(), dim=-1) * reference).sum(-1)
                        results.setdefault(key, {})[f"{kind}_min_cosine"] = float(cos.min())
            base = statistics.median(times["torch fp32"])
            for key, values in times.items():
                median = statistics.median(values)
                results[key][f"{kind}_per_second"] = count / median
                results[key][f"{kind}_speedup"] = base / median

    setup = (
        f"{f'{cpu_model()} CPU'}, {os.cpu_count()} logical CPUs, {threads} threads | torch {torch.__version__} | "
        f"model: {name} | {len(pixel_values)} images/batch, {len(texts)} texts/batch "
        f"({int(tokens['attention_mask'].shape[1])} tokens padded) | median of {args.rounds} alternating rounds"
    )
    print(setup)
    print(
        "| backend | images/s | x torch fp32 | texts/s | x torch fp32 | min cosine to fp32 (image / text) |"
    )
    print("|---|---|---|---|---|---|")
    for key, r in results.items():
        print(
            f"| {key} | {r['image_per_second']:.1f} | {r['image_speedup']:.2f} | {r['text_per_second']:.1f} | "
            f"{r['text_speedup']:.2f} | {r['image_min_cosine']:.5f} / {r['text_min_cosine']:.5f} |"
        )
    kernels = kernel_ceiling(len(pixel_values) * _tokens_per_image(model), args.rounds)
    print(
        "int8 matrix-multiply ceiling on this CPU (PyTorch dynamic int8 nn.Linear over fp32 nn.Linear, the ViT's "
        "shapes, same alternating rounds):"
    )
    for shape, ratio in kernels.items():
        print(f"  {shape}: {ratio:.2f}x")
    print(f"CPU vector extensions: {', '.join(_cpu_flags()) or 'unknown'}")
    if args.output:
        write_result(args.output, {"setup": setup, "results": results, "int8_kernel_speedup": kernels})
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
