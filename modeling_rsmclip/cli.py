"""The `rsmclip` command: one sub-command per job."""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import ArgumentParser, run_command

# Modules that each define `add_subparser(subparsers)`. They are light to import (argparse definitions only): each
# sub-command imports torch, transformers and its optional extras when it runs, so `rsmclip --help` stays fast.
SUBCOMMAND_MODULES = (
    "modeling_rsmclip.demo",
    "modeling_rsmclip.conversion.cli",
    "modeling_rsmclip.data.cli",
    "modeling_rsmclip.training.cli",
    "modeling_rsmclip.evaluation.cli",
    "modeling_rsmclip.geo.cli",
    "modeling_rsmclip.index.cli",
    "modeling_rsmclip.app.cli",
    "modeling_rsmclip.serve.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="rsmclip", description="RS-M-CLIP: multilingual CLIP for remote-sensing imagery."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMAND_MODULES:
        importlib.import_module(module).add_subparser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    # A user error in any sub-command: one `error: ...` line on stderr, exit status 2 (see errors.py).
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
