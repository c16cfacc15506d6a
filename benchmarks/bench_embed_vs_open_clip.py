"""Image and text embedding throughput of RS-M-CLIP against OpenCLIP, same architecture, side by side in one run.

Both sides are the full-size architecture (OpenCLIP's own ``xlm-roberta-base-ViT-B-32`` and the ``rs-m-clip``
preset of `RSMCLIPModel`: ViT-B/32 at 224 px + XLM-RoBERTa base), with random weights (throughput does not depend on
the values). They run in alternating rounds (one batch each, round after round) so machine noise hits both alike;
each figure is the median over the rounds, and each ratio is RS-M-CLIP over OpenCLIP from the same run.

- Images: real UCM-Captions images, preprocessed once (224 px, CLIP normalisation); preprocessing is not timed.
- Texts: real UCM captions in the ten languages, tokenised once with the bundled demo model's tokenizer (XLM-R's
  own cannot be downloaded here; its ids stay inside both vocabularies). "same ids" feeds both models the same
  77-token padded ids; "as used" gives RS-M-CLIP its own padding (to the longest text of the batch; `Embedder`
  also sorts texts by length before batching, not done here) and OpenCLIP its fixed 77-token context.
- Precisions: ``fp32``; ``autocast-bf16`` (fp32 weights under `torch.autocast`); ``bf16`` (weights cast to bf16).
  On CPUs without bf16 units the bf16 modes are slow for both sides alike.

    python benchmarks/bench_embed_vs_open_clip.py                                  # CPU, fp32
    python benchmarks/bench_embed_vs_open_clip.py --device cuda --precisions fp32,autocast-bf16,bf16 --batch-size 256

Needs open_clip_torch (in ``.[dev]``) and about 4 GB of memory; uses the shared UCM-Captions data, else the bundled
sample (42 images and their captions), so it runs on a machine that has only the checkout.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, cpu_model, ucm_batch, write_result

PRECISIONS = ("fp32", "autocast-bf16", "bf16")


def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(0)
    return f"{cpu_model()} CPU ({os.cpu_count()} logical CPUs)"


def _open_clip_model(root: Path):
    """OpenCLIP's xlm-roberta-base-ViT-B-32 with random weights, its text tower configured from a local folder."""
    import open_clip

    from modeling_rsmclip.testing import write_open_clip_xlmr_b32

    source, _ = write_open_clip_xlmr_b32(root)
    return open_clip.create_model(f"local-dir:{source}", pretrained_text=False)


def _tasks(reference, model, pixels, ids_77, mask_77, ids_dyn, mask_dyn) -> dict:
    """(what, side) -> a call embedding one batch."""
    return {
        ("image", "OpenCLIP"): lambda: reference.encode_image(pixels),
        ("image", "RS-M-CLIP"): lambda: model.get_image_features(pixel_values=pixels).pooler_output,
        ("text, same ids", "OpenCLIP"): lambda: reference.encode_text(ids_77),
        ("text, same ids", "RS-M-CLIP"): lambda: (
            model.get_text_features(input_ids=ids_77, attention_mask=mask_77).pooler_output
        ),
        ("text, as used", "OpenCLIP"): lambda: reference.encode_text(ids_77),
        ("text, as used", "RS-M-CLIP"): lambda: (
            model.get_text_features(input_ids=ids_dyn, attention_mask=mask_dyn).pooler_output
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precisions", default="fp32", help=f"comma-separated, of {', '.join(PRECISIONS)}")
    parser.add_argument("--batch-size", type=int, default=16, help="images per batch")
    parser.add_argument("--text-batch-size", type=int, default=64, help="texts per batch")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--output", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    unknown = sorted(set(precisions) - set(PRECISIONS))
    if unknown:
        parser.error(f"unknown precision(s) {unknown}; choose from {PRECISIONS}")

    import torch
    from PIL import Image
    from transformers import AutoProcessor

    import modeling_rsmclip  # noqa: F401
    from modeling_rsmclip import RSMCLIPConfig, RSMCLIPModel

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 on GPUs too
    torch.backends.cudnn.allow_tf32 = False
    device = torch.device(args.device)
    demo = REPO / "modeling_rsmclip" / "demo_model"
    processor = AutoProcessor.from_pretrained(str(demo))
    processor.image_processor.size = {"shortest_edge": 224}
    processor.image_processor.crop_size = {"height": 224, "width": 224}
    files, texts = ucm_batch(args.batch_size, args.text_batch_size)
    pixels = processor(images=[Image.open(f).convert("RGB") for f in files], return_tensors="pt")[
        "pixel_values"
    ]
    padded = processor.tokenizer(
        texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    )
    dynamic = processor.tokenizer(texts, padding=True, truncation=True, max_length=77, return_tensors="pt")
    tokens_77 = int(padded["input_ids"].numel())
    tokens_dynamic = int(dynamic["input_ids"].numel())

    with tempfile.TemporaryDirectory(prefix="rsmclip-vs-open-clip-") as tmp:
        torch.manual_seed(0)
        reference = _open_clip_model(Path(tmp)).eval()
    torch.manual_seed(0)
    model = RSMCLIPModel(RSMCLIPConfig.from_preset("rs-m-clip", dino_out_dim=256)).eval()
    model.distillation_head = torch.nn.Identity()  # unused at inference
    n_ref = sum(p.numel() for p in reference.parameters())
    n_ours = sum(p.numel() for p in model.parameters())

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    rows = []
    for precision in precisions:
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        reference.to(device=device, dtype=dtype)
        model.to(device=device, dtype=dtype)
        x = pixels.to(device=device, dtype=dtype)
        ids_77 = padded["input_ids"].to(device)
        mask_77 = padded["attention_mask"].to(device)
        ids_dyn, mask_dyn = dynamic["input_ids"].to(device), dynamic["attention_mask"].to(device)
        autocast = (
            torch.autocast(device.type, dtype=torch.bfloat16)
            if precision == "autocast-bf16"
            else contextlib.nullcontext()
        )
        tasks = _tasks(reference, model, x, ids_77, mask_77, ids_dyn, mask_dyn)
        sizes = {"image": len(files), "text, same ids": len(texts), "text, as used": len(texts)}
        times: dict[tuple[str, str], list[float]] = {key: [] for key in tasks}
        with torch.inference_mode(), autocast:
            for task in tasks.values():  # warm-up
                task()
            sync()
            for _ in range(args.rounds):
                for key, task in tasks.items():
                    start = time.perf_counter()
                    task()
                    sync()
                    times[key].append(time.perf_counter() - start)
        for what in sizes:
            ref = sizes[what] / statistics.median(times[(what, "OpenCLIP")])
            ours = sizes[what] / statistics.median(times[(what, "RS-M-CLIP")])
            rows.append({"precision": precision, "what": what, "open_clip_per_s": ref, "rsmclip_per_s": ours,
                         "ratio": ours / ref})  # fmt: skip
        print(f"  {precision} done", file=sys.stderr)

    header = (
        f"device: {_device_name(args.device)} | torch {torch.__version__} | {args.rounds} alternating rounds, "
        f"medians | images per batch {len(files)}, texts per batch {len(texts)} | parameters: OpenCLIP "
        f"{n_ref / 1e6:.1f}M, RS-M-CLIP {n_ours / 1e6:.1f}M | text tokens per batch: {tokens_77} padded to 77, "
        f"{tokens_dynamic} with RS-M-CLIP's batching"
    )
    print(header)
    print(f"{'precision':<14} {'embedding':<15} {'OpenCLIP /s':>12} {'RS-M-CLIP /s':>13} {'ratio':>7}")
    for r in rows:
        print(
            f"{r['precision']:<14} {r['what']:<15} {r['open_clip_per_s']:>12.1f} {r['rsmclip_per_s']:>13.1f} "
            f"{r['ratio']:>6.2f}x"
        )
    if args.output:
        write_result(args.output, {"setup": header, "results": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
