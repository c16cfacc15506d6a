"""Command line of the training recipe: `train.py` / `accelerate launch train.py` / `rsmclip train`."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ArgumentParser, report_user_error, run_command
from .config import add_training_arguments, config_from_args

DESCRIPTION = (
    "Train RS-M-CLIP: the CLIP loss (negatives gathered across processes) plus DINO-style self-distillation of the "
    "image tower, on a dataset written by `rsmclip build-dataset`. Options come from --config YAML and/or flags "
    "(flags win). Launch on one CPU/GPU with `python train.py ...`, on several GPUs with `accelerate launch "
    "train.py ...` (after `accelerate config`) or `torchrun --nproc_per_node N train.py ...`."
)
EPILOG = (
    "examples:\n"
    "  accelerate launch train.py --config examples/train_rs_m_clip.yaml\n"
    "  python train.py --preset tiny --tokenizer-name-or-path TOKENIZER --dataset DATA --output-dir OUT --max-steps 50"
)


def run(args: argparse.Namespace) -> int:
    """Train with the options in `args`; returns the exit code."""
    try:
        config = config_from_args(args, validate=True)  # every problem at once, before anything runs
    except (ValueError, FileNotFoundError) as error:
        return report_user_error(error)
    check_training_outputs(config, getattr(args, "config", None))
    from .loop import NonFiniteLossError, train

    try:
        result = train(config)
    except NonFiniteLossError as error:
        logging.getLogger(__name__).error("%s", error)
        return 1
    print(f"trained {result.step} steps; model saved to {result.output_dir}")
    return 0


def check_training_outputs(config: Any, config_file: str | None = None) -> None:
    """Before any work: the YAML given with --config is not the resolved copy written into the run folder (the
    run folder itself is checked against the dataset, model and tokenizer with the configuration)."""
    from ..safe_io import check_outputs_not_inputs

    if config.output_dir is None:
        return
    check_outputs_not_inputs([Path(config.output_dir) / "training_config.yaml"], [config_file])


def _configure(parser: argparse.ArgumentParser) -> None:
    add_training_arguments(parser)
    parser.set_defaults(func=run)


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    """Register `rsmclip train`."""
    parser = subparsers.add_parser(
        "train",
        help="train or fine-tune RS-M-CLIP (CLIP + self-distillation)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _configure(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="train.py",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _configure(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args.func, args)


if __name__ == "__main__":
    raise SystemExit(main())
