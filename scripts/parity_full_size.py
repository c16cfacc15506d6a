"""Full-size OpenCLIP <-> RS-M-CLIP parity, random weights, fp32: ViT-B/32 + XLM-RoBERTa base (RS-M-CLIP), or a
standard CLIP architecture (`--architecture ViT-B-32-quickgelu`, `ViT-B-16`, `ViT-L-14`, `ViT-H-14`, ...).

Builds OpenCLIP's own model of that architecture with random weights, writes it as an OpenCLIP checkpoint folder,
converts it with `rsmclip convert`'s function, exports the result back with `rsmclip export --to-open-clip`'s
function, loads each side with its own library and prints the largest absolute differences of image embeddings,
text embeddings and logits on the same inputs (token ids are fed directly: random XLM-R-shaped ids, or for a
standard CLIP OpenCLIP's own tokenization of captions in the ten languages).

XLM-RoBERTa's configuration and tokenizer cannot be downloaded here, so the text tower's configuration is written
locally (the exact `xlm-roberta-base` architecture) and the folder carries the small test tokenizer (the ids fed
to both models do not come from it). ViT-B/32 + XLM-R needs about 8 GB of memory and ~5 GB of temporary disk, a
few minutes on CPU; ViT-L/14 about twice that, ViT-H/14 about 5 times.

    python scripts/parity_full_size.py [--architecture NAME] [--device cpu] [--keep DIR]

Exits with status 1 when a difference exceeds --tolerance (default 1e-4).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.nn.functional import normalize

XLMR_ARCHITECTURE = "xlm-roberta-base-ViT-B-32"


def random_token_ids(batch: int, length: int, vocab_size: int, generator: torch.Generator) -> torch.Tensor:
    """XLM-R-shaped ids: <s>=0 ... </s>=2, then <pad>=1 to `length`; a different text length per row."""
    ids = torch.full((batch, length), 1, dtype=torch.long)
    for row in range(batch):
        n = int(torch.randint(3, length - 1, (1,), generator=generator)) if row else length - 2
        ids[row, 0] = 0
        ids[row, 1 : n + 1] = torch.randint(4, vocab_size - 1, (n,), generator=generator)
        ids[row, n + 1] = 2
    return ids


@torch.no_grad()
def max_differences(open_clip_model, model, pixels: torch.Tensor, ids: torch.Tensor) -> dict[str, float]:
    ref_image = open_clip_model.encode_image(pixels)
    ref_text = open_clip_model.encode_text(ids)
    # OpenCLIP's get_logits, from the embeddings above (it would run both towers again)
    ref_logits = (
        open_clip_model.logit_scale.exp() * normalize(ref_image, dim=-1) @ normalize(ref_text, dim=-1).T
    )
    output = model(input_ids=ids, pixel_values=pixels)
    image = output.vision_model_output.pooler_output
    text = output.text_model_output.pooler_output
    logits = output.logits_per_image
    return {
        "image embeddings": (image - ref_image).abs().max().item(),
        "text embeddings": (text - ref_text).abs().max().item(),
        "logits": (logits - ref_logits).abs().max().item(),
        "(logit magnitude)": ref_logits.abs().max().item(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--architecture",
        default=XLMR_ARCHITECTURE,
        help=f"{XLMR_ARCHITECTURE} (RS-M-CLIP's, the default) or an OpenCLIP standard CLIP, e.g. ViT-L-14-quickgelu",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument(
        "--keep", default=None, help="write the folders here and keep them (default: a temp dir)"
    )
    args = parser.parse_args(argv)

    import open_clip
    from safetensors.torch import save_file

    import modeling_rsmclip  # noqa: F401
    from modeling_rsmclip import RSMCLIPModel
    from modeling_rsmclip.conversion import convert_open_clip, export_to_open_clip
    from modeling_rsmclip.testing import write_open_clip_xlmr_b32

    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 on GPUs too
    torch.backends.cudnn.allow_tf32 = False
    device = torch.device(args.device)
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="rsmclip-parity-"))
    root.mkdir(parents=True, exist_ok=True)
    start = time.time()
    clip_text = args.architecture != XLMR_ARCHITECTURE
    try:
        if clip_text:
            model_cfg = open_clip.get_model_config(args.architecture)
            if model_cfg is None or "hf_model_name" in model_cfg.get("text_cfg", {}):
                parser.error(f"{args.architecture!r} is not one of OpenCLIP's standard CLIP model configs")
            source, text_dir = root / "open_clip", None
            source.mkdir(parents=True, exist_ok=True)
            config_json = {"model_cfg": model_cfg, "preprocess_cfg": {}}
            (source / "open_clip_config.json").write_text(json.dumps(config_json))
        else:
            source, text_dir = write_open_clip_xlmr_b32(root)

        print(f"[{time.time() - start:5.0f}s] building OpenCLIP {args.architecture} with random weights")
        torch.manual_seed(args.seed)
        reference = open_clip.create_model(f"local-dir:{source}", pretrained_text=False)
        generator = torch.Generator().manual_seed(args.seed)
        with torch.no_grad():  # perturb everything, LayerNorms included, so no tensor keeps a trivial value
            for param in reference.parameters():
                param.add_(0.02 * torch.randn(param.shape, generator=generator))
        n_params = sum(p.numel() for p in reference.parameters())
        save_file(
            {k: v.contiguous() for k, v in reference.state_dict().items()},
            str(source / "open_clip_model.safetensors"),
        )
        del reference

        print(f"[{time.time() - start:5.0f}s] {n_params / 1e6:.1f}M parameters; converting (rsmclip convert)")
        converted = convert_open_clip(source, root / "rsmclip", config_overrides={"dino_out_dim": 4096})
        reference, _, _ = open_clip.create_model_and_transforms(f"local-dir:{source}")
        reference = reference.to(device).eval()
        model = RSMCLIPModel.from_pretrained(converted).to(device).eval()

        size = model.config.vision_config.image_size
        pixels = torch.randn(args.batch, 3, size, size, generator=generator).to(device)
        if clip_text:
            from modeling_rsmclip.testing import sample_captions

            captions = sample_captions()
            ids = open_clip.tokenize(captions[:: max(1, len(captions) // args.batch)][: args.batch]).to(
                device
            )
        else:
            ids = random_token_ids(args.batch, 77, model.config.text_config.vocab_size, generator).to(device)
        results = {"OpenCLIP -> RS-M-CLIP": max_differences(reference, model, pixels, ids)}
        del reference

        print(f"[{time.time() - start:5.0f}s] exporting back (rsmclip export --to-open-clip)")
        exported = export_to_open_clip(
            converted, root / "open_clip_back", hf_model_name=None if clip_text else str(text_dir)
        )
        back, _, _ = open_clip.create_model_and_transforms(f"local-dir:{exported}")
        back = back.to(device).eval()
        results["RS-M-CLIP -> OpenCLIP"] = max_differences(back, model, pixels, ids)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    print(
        f"\n{args.architecture}, {n_params / 1e6:.1f}M parameters: max |difference| (fp32, {device}, batch "
        f"{args.batch}, {time.time() - start:.0f}s in all)"
    )
    failed = False
    for direction, diffs in results.items():
        print(f"  {direction}:")
        for name, value in diffs.items():
            flag = "" if name.startswith("(") or value <= args.tolerance else f"  > {args.tolerance}"
            failed |= bool(flag)
            print(f"    {name:<18} {value:.3e}{flag}")
    print("PASS" if not failed else "FAIL", f"(tolerance {args.tolerance})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
