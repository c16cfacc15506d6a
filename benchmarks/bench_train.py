"""Training throughput and peak memory: CLIP-only vs CLIP + self-distillation, side by side.

Each objective runs in a fresh process (clean peak-memory counters) with the training recipe's own pieces
(`TrainingModule`, `ClipLoss`, `DINOLoss`, `EMATeacher`, AdamW, Accelerate's autocast/backward): one timed
optimiser step is forward + losses + backward + gradient clipping + AdamW + the teacher's EMA update. Images are
real UCM-Captions images, decoded and augmented once beforehand (the DataLoader's work is not timed); texts are
random token ids of a fixed length.

    python benchmarks/bench_train.py                      # CPU, the "small" preset
    python benchmarks/bench_train.py --device cuda        # GPU, the real RS-M-CLIP architecture, bf16
    python benchmarks/bench_train.py --preset rs-m-clip --batch-size 4 --steps 3 --warmup 1 --with-frozen-embeddings

`--with-frozen-embeddings` also runs both objectives with the token-embedding table frozen
(`freeze_token_embeddings`), so its effect on step time and memory comes from the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from _common import REPO, cpu_model, ucm_captions_root, write_result

MODES = ("clip", "clip+distillation")


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _known_peak_bf16_tflops() -> float | None:
    """Dense bf16 tensor-core peak of the first GPU, when it is one whose datasheet figure is known."""
    import torch

    name = torch.cuda.get_device_name(0)
    for key, peak in (
        ("H200", 989.0),
        ("H100", 989.0 if "SXM" in name or "HBM3" in name else 756.0),
        ("A100", 312.0),
    ):
        if key in name:
            return peak
    return None


def run_one(args: argparse.Namespace) -> dict:
    """Benchmark one objective in this process."""
    import torch
    from accelerate import Accelerator
    from PIL import Image

    from modeling_rsmclip.configuration_rsmclip import RSMCLIPConfig
    from modeling_rsmclip.modeling_rsmclip import RSMCLIPModel
    from modeling_rsmclip.training.augment import MultiCropAugmentation, MultiCropConfig, build_clip_transform
    from modeling_rsmclip.training.build import TrainingModule
    from modeling_rsmclip.training.loop import default_local_crop_size
    from modeling_rsmclip.training.losses import ClipLoss, DINOLoss
    from modeling_rsmclip.training.teacher import EMATeacher

    distill = args.mode == "clip+distillation"
    if args.threads:
        torch.set_num_threads(args.threads)
    accelerator = Accelerator(cpu=args.device == "cpu", mixed_precision=args.mixed_precision)
    device = accelerator.device
    torch.manual_seed(0)
    overrides = {"dino_out_dim": args.dino_out_dim} if args.dino_out_dim else {}
    config = RSMCLIPConfig.from_preset(args.preset, **overrides)
    if args.attn_implementation:
        config._attn_implementation = args.attn_implementation
    model = RSMCLIPModel(config)
    if args.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if not distill:
        model.distillation_head.requires_grad_(False)
    if args.freeze_token_embeddings:
        model.text_model.get_input_embeddings().requires_grad_(False)
    size = config.vision_config.image_size
    local_size = default_local_crop_size(size, config.vision_config.patch_size)

    # Real images, augmented once: `batch_size` samples.
    files = sorted((ucm_captions_root() / "images").glob("*.jpg"), key=lambda p: int(p.stem))[
        :: max(1, 2100 // args.batch_size)
    ]
    images = [Image.open(f).convert("RGB") for f in files[: args.batch_size]]
    while len(images) < args.batch_size:
        images += images[: args.batch_size - len(images)]
    clip_view = build_clip_transform(size, flip_rotate=True)
    batch = {"pixel_values": torch.stack([clip_view(im) for im in images])}
    if distill:
        aug = MultiCropAugmentation(
            MultiCropConfig(
                num_global_crops=2,
                num_local_crops=args.num_local_crops,
                global_crop_size=size,
                local_crop_size=local_size,
            )
        )
        views = [aug(im) for im in images]
        batch["global_crops"] = torch.stack([v[0][i] for i in range(2) for v in views])
        if args.num_local_crops:
            batch["local_crops"] = torch.stack([v[1][i] for i in range(args.num_local_crops) for v in views])
    generator = torch.Generator().manual_seed(0)
    vocab = config.text_config.vocab_size
    ids = torch.randint(5, vocab, (args.batch_size, args.text_length), generator=generator)
    ids[:, 0], ids[:, -1] = 0, 2
    batch["input_ids"] = ids
    batch["attention_mask"] = torch.ones_like(ids)
    batch = {k: v.to(device) for k, v in batch.items()}

    module = TrainingModule(model, clip_view=args.clip_view if distill else "center", distillation=distill)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    module, optimizer = accelerator.prepare(module, optimizer)
    teacher = EMATeacher(model.vision_model, model.distillation_head).to(device) if distill else None
    dino = DINOLoss(config.dino_out_dim).to(device) if distill else None
    clip = ClipLoss()
    trainable = [p for p in module.parameters() if p.requires_grad]

    def step() -> None:
        out = module(**batch)
        loss = clip(out["image_embeds"], out["text_embeds"], out["logit_scale"])
        if distill:
            with accelerator.autocast():
                targets = teacher(batch["global_crops"])
            loss = loss + dino(out["student_logits"], targets, 0.04)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if distill:
            teacher.update(model.vision_model, model.distillation_head, 0.996)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    rss_before = _rss_mb()
    for _ in range(args.warmup):
        step()
    sync()
    # Model FLOPs of one step (forward + backward; matmuls, convolutions and attention, as torch counts them),
    # measured on one more step outside the timed ones: the arithmetic each objective needs, whatever the machine.
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    sync()
    step_flops = counter.get_total_flops()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    elapsed = time.perf_counter() - start
    result = {
        "mode": args.mode + (" frozen-emb" if args.freeze_token_embeddings else ""),
        "samples_per_second": args.steps * args.batch_size / elapsed,
        "step_ms": 1000 * elapsed / args.steps,
        "step_gflops": step_flops / 1e9,
        "achieved_tflops": step_flops * args.steps / elapsed / 1e12,
    }
    if args.peak_tflops:
        result["mfu"] = result["achieved_tflops"] / args.peak_tflops
    if device.type == "cuda":
        result["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
        result["memory_kind"] = "torch.cuda.max_memory_allocated"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        result["peak_memory_mb"] = peak
        result["peak_memory_increase_mb"] = peak - rss_before
        result["memory_kind"] = "process peak RSS (ru_maxrss); increase = over the RSS before the first step"
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--preset", default=None, help="architecture (default: rs-m-clip on cuda, small on cpu)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="pairs per step (default: 128 cuda, 8 cpu)"
    )
    parser.add_argument("--num-local-crops", type=int, default=8)
    parser.add_argument(
        "--dino-out-dim", type=int, default=None, help="K of the head (default: the preset's)"
    )
    parser.add_argument("--text-length", type=int, default=32, help="tokens per caption")
    parser.add_argument(
        "--mixed-precision",
        choices=["no", "fp16", "bf16"],
        default=None,
        help="default: bf16 on cuda, no on cpu",
    )
    parser.add_argument("--attn-implementation", default=None)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument(
        "--clip-view",
        choices=["center", "global"],
        default="center",
        help="image of the CLIP loss: its own centre view (the recipe's default) or the first global crop",
    )
    parser.add_argument(
        "--freeze-token-embeddings", action="store_true", help="freeze the token-embedding table in every run"
    )
    parser.add_argument(
        "--with-frozen-embeddings",
        action="store_true",
        help="also run both objectives with the token-embedding table frozen",
    )
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="run the sequence of objectives this many times (A B A B ...) and keep each one's fastest run",
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="the device's peak dense TFLOP/s at the run's precision, for model FLOPs utilisation (default: "
        "known for H100/H200/A100 in bf16; none on CPUs)",
    )
    parser.add_argument("--output", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument("--mode", choices=MODES, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cuda = args.device == "cuda"
    args.preset = args.preset or ("rs-m-clip" if cuda else "small")
    args.batch_size = args.batch_size or (128 if cuda else 8)
    args.mixed_precision = args.mixed_precision or ("bf16" if cuda else "no")

    if args.peak_tflops is None and cuda and args.mixed_precision == "bf16":
        args.peak_tflops = _known_peak_bf16_tflops()
    if args.mode:  # child process: one objective
        print(json.dumps(run_one(args)))
        return 0

    runs = [(mode, False) for mode in MODES]
    if args.with_frozen_embeddings:
        runs += [(mode, True) for mode in MODES]
    given = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--with-frozen-embeddings"]
    best: dict[tuple[str, bool], dict] = {}
    for _ in range(max(1, args.repeats)):
        for mode, frozen in runs:
            command = [sys.executable, __file__, *given, "--mode", mode]
            if args.peak_tflops and "--peak-tflops" not in command:
                command += ["--peak-tflops", str(args.peak_tflops)]
            if frozen and "--freeze-token-embeddings" not in command:
                command.append("--freeze-token-embeddings")
            env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
            proc = subprocess.run(command, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                print(proc.stderr[-4000:], file=sys.stderr)
                return proc.returncode
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"  {result['mode']}: {result['step_ms']:.0f} ms/step", file=sys.stderr)
            if (mode, frozen) not in best or result["step_ms"] < best[(mode, frozen)]["step_ms"]:
                best[(mode, frozen)] = result
    results = [best[run] for run in runs]

    import torch

    device_name = torch.cuda.get_device_name(0) if cuda else f"{cpu_model()} CPU"
    header = (
        f"device: {device_name} ({os.cpu_count()} logical CPUs visible) | preset {args.preset} | batch "
        f"{args.batch_size} | {args.num_local_crops} local crops | mixed precision {args.mixed_precision} | "
        f"{args.steps} timed steps after {args.warmup} warm-up, best of {max(1, args.repeats)} | CLIP view {args.clip_view}"
        + (" | token embeddings frozen" if args.freeze_token_embeddings else "")
    )
    print(header)
    print(
        f"{'objective':<31} {'samples/s':>10} {'step (ms)':>10} {'GFLOP/step':>11} {'TFLOP/s':>8} {'MFU':>6} "
        f"{'peak memory (MiB)':>18} {'of which training':>18}"
    )
    for r in results:
        extra = r.get("peak_memory_increase_mb")
        mfu = f"{r['mfu']:.1%}" if "mfu" in r else "-"
        print(
            f"{r['mode']:<31} {r['samples_per_second']:>10.2f} {r['step_ms']:>10.1f} {r['step_gflops']:>11.0f} "
            f"{r['achieved_tflops']:>8.3f} {mfu:>6} {r['peak_memory_mb']:>18.0f} "
            f"{'' if extra is None else f'{extra:.0f}':>18}"
        )
    print(f"memory: {results[0]['memory_kind']}; FLOPs: torch.utils.flop_counter (forward + backward)")
    if args.peak_tflops:
        print(f"MFU against a peak of {args.peak_tflops:g} TFLOP/s")
    ratio = results[1]["samples_per_second"] / results[0]["samples_per_second"]
    print(
        f"CLIP+distillation runs at {ratio:.2f}x the CLIP-only throughput "
        f"(step time {results[1]['step_ms'] / results[0]['step_ms']:.2f}x; "
        f"model FLOPs {results[1]['step_gflops'] / results[0]['step_gflops']:.2f}x)"
    )
    if len(results) == 4:
        frozen_ratio = results[3]["step_ms"] / results[2]["step_ms"]
        print(
            f"with the token embeddings frozen: CLIP+distillation step time {frozen_ratio:.2f}x the CLIP-only one "
            f"(model FLOPs {results[3]['step_gflops'] / results[2]['step_gflops']:.2f}x)"
        )
        for plain, frozen in ((results[0], results[2]), (results[1], results[3])):
            print(
                f"freezing the token embeddings, {plain['mode']}: step time {frozen['step_ms'] / plain['step_ms']:.2f}x, "
                f"peak memory {frozen['peak_memory_mb'] / plain['peak_memory_mb']:.2f}x "
                f"({frozen['peak_memory_mb'] - plain['peak_memory_mb']:+.0f} MiB)"
            )
    if args.output:
        write_result(args.output, {"setup": header, "results": results, "throughput_ratio": ratio})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
