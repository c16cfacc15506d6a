"""Zero-shot scene classification evaluation (same as ``rsmclip eval-zero-shot``).

Example (RSSCN7 subset, prompts in every language)::

    python eval/zero_shot.py --model path/to/model --image-folder ../shared/data/rsscn7-mini \
        --output-dir outputs/eval
"""

from __future__ import annotations

import argparse
import sys

import modeling_rsmclip  # noqa: F401  (registers the model type with the Auto classes)
from modeling_rsmclip.errors import ArgumentParser, run_command
from modeling_rsmclip.evaluation.cli import add_zero_shot_arguments, configure_logging, run_zero_shot


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_zero_shot_arguments(parser)
    configure_logging()
    return run_command(run_zero_shot, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
