"""``rsmclip convert`` and ``rsmclip export``: the parsers, light to import; the work is imported when it runs."""

from __future__ import annotations

import argparse
import json

from ..errors import UserError


def _run_convert(args: argparse.Namespace) -> int:
    overrides = {}
    if args.dino_out_dim is not None:
        overrides["dino_out_dim"] = args.dino_out_dim
    from .convert import convert_open_clip

    # A ConversionError (a ValueError) is a user error: `rsmclip` prints `error: ...` and exits 2.
    out = convert_open_clip(
        args.source,
        args.output_dir,
        tokenizer=args.tokenizer,
        revision=args.revision,
        cache_dir=args.cache_dir,
        local_files_only=args.offline,
        open_clip_model=args.open_clip_model,
        weights_file=args.weights,
        push_to_hub=args.push_to_hub,
        private=args.private or None,
        config_overrides=overrides,
    )
    print(f"wrote {out}" + (f" and pushed it to {args.push_to_hub}" if args.push_to_hub else ""))
    return 0


def add_convert_subparser(subparsers: argparse._SubParsersAction) -> None:
    """Register `rsmclip convert`."""
    parser = subparsers.add_parser(
        "convert",
        help="convert an OpenCLIP checkpoint (folder, file, Hub id or known model) into a transformers model folder",
        description=(
            "Convert an OpenCLIP checkpoint (open_clip_config.json + open_clip_model.safetensors or "
            "open_clip_pytorch_model.bin, or a bare state dict with --open-clip-model) into a transformers RS-M-CLIP "
            "model folder: RS-M-CLIP's family (ViT + XLM-RoBERTa) and the standard CLIP (ViT-B/32, ViT-B/16, "
            "ViT-L/14, ViT-H/14, with or without QuickGELU). Examples: "
            "rsmclip convert hf-hub:joaodaniel/RS-M-CLIP rs-m-clip-hf; rsmclip convert remoteclip-vit-b-32 "
            "remoteclip-hf"
        ),
    )
    parser.add_argument(
        "source",
        help=(
            "OpenCLIP checkpoint folder, Hub id (hf-hub:org/name or org/name), or a known model "
            "name (see modeling_rsmclip.known_models.list_known_models())"
        ),
    )
    parser.add_argument("output_dir", help="folder to write the converted model to")
    parser.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer folder or Hub id (default: the checkpoint's own tokenizer files, else its hf_tokenizer_name)",
    )
    parser.add_argument(
        "--open-clip-model",
        default=None,
        metavar="NAME",
        help="OpenCLIP built-in model config to use when the checkpoint has no open_clip_config.json",
    )
    parser.add_argument(
        "--weights",
        default=None,
        metavar="FILE",
        help="the weights file inside the folder or Hub repository (e.g. RemoteCLIP-ViT-B-32.pt)",
    )
    parser.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) of the source")
    parser.add_argument("--cache-dir", default=None, help="Hugging Face cache folder for the download")
    parser.add_argument(
        "--offline", action="store_true", help="use only files already in the Hugging Face cache"
    )
    parser.add_argument(
        "--push-to-hub", metavar="REPO_ID", default=None, help="also upload the folder to this repo"
    )
    parser.add_argument(
        "--private", action="store_true", help="create the --push-to-hub repository as private"
    )
    parser.add_argument(
        "--dino-out-dim",
        type=int,
        default=None,
        help="output size K of the freshly initialised distillation head (default 65536)",
    )
    parser.set_defaults(func=_run_convert)


def _run_onnx(args: argparse.Namespace) -> int:
    try:
        from ..inference.onnx_export import export_onnx
    except ImportError as error:
        raise UserError(f'{error} (pip install "rsmclip[onnx]")') from error
    # A ConversionError / ValueError is a user error: `rsmclip` prints `error: ...` and exits 2.
    out = export_onnx(args.model, args.output_dir, quantize=not args.no_int8)
    manifest = json.loads((out / "onnx_manifest.json").read_text(encoding="utf-8"))
    for name in manifest["files"]:
        print(f"wrote {out / name}")
    checks = ", ".join(f"{k} {v:.6g}" for k, v in manifest.get("verification", {}).items())
    print(f"checked against PyTorch: {checks}")
    print(f"run it without PyTorch: from rsmclip_onnx import ONNXRSMCLIP (in {out})")
    return 0


def _run_export(args: argparse.Namespace) -> int:
    if args.to_open_clip == args.to_onnx:
        raise UserError("choose one target format (--to-open-clip or --to-onnx)")
    if args.to_onnx:
        return _run_onnx(args)
    from .export import export_to_open_clip

    # A ConversionError (a ValueError) is a user error: `rsmclip` prints `error: ...` and exits 2.
    out = export_to_open_clip(
        args.model,
        args.output_dir,
        hf_model_name=args.hf_model_name,
        hf_tokenizer_name=args.hf_tokenizer_name,
        push_to_hub=args.push_to_hub,
        private=args.private or None,
    )
    name = f"hf-hub:{args.push_to_hub}" if args.push_to_hub else f"local-dir:{out.resolve()}"
    print(f"wrote {out}; load it with open_clip.create_model_and_transforms({name!r})")
    return 0


def add_export_subparser(subparsers: argparse._SubParsersAction) -> None:
    """Register `rsmclip export`."""
    parser = subparsers.add_parser(
        "export",
        help="export an RS-M-CLIP model to another format (--to-open-clip, --to-onnx)",
        description=(
            "Export an RS-M-CLIP model folder (or Hub id) as an OpenCLIP checkpoint folder that "
            "open_clip.create_model_and_transforms('local-dir:FOLDER') loads (the distillation head is dropped), "
            "or (--to-onnx) its image and text encoders as ONNX graphs, fp32 and int8, with the processor files "
            "and a runner that needs only onnxruntime."
        ),
    )
    parser.add_argument("model", help="RS-M-CLIP model folder or Hub id")
    parser.add_argument("output_dir", help="folder to write")
    parser.add_argument("--to-open-clip", action="store_true", help="write the OpenCLIP format")
    parser.add_argument(
        "--to-onnx",
        action="store_true",
        help='write ONNX graphs of both encoders (needs pip install "rsmclip[onnx]")',
    )
    parser.add_argument("--no-int8", action="store_true", help="with --to-onnx: skip the int8 graphs")
    parser.add_argument(
        "--hf-model-name",
        default=None,
        help="text_cfg.hf_model_name (default: xlm-roberta-base for that exact architecture, else this folder)",
    )
    parser.add_argument(
        "--hf-tokenizer-name",
        default=None,
        help="text_cfg.hf_tokenizer_name for hf-hub: loading (default: the --push-to-hub repo, else this folder)",
    )
    parser.add_argument(
        "--push-to-hub", metavar="REPO_ID", default=None, help="also upload the folder to this repo"
    )
    parser.add_argument(
        "--private", action="store_true", help="create the --push-to-hub repository as private"
    )
    parser.set_defaults(func=_run_export)


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    """Register `rsmclip convert` and `rsmclip export`."""
    add_convert_subparser(subparsers)
    add_export_subparser(subparsers)


__all__ = ["add_subparser"]
