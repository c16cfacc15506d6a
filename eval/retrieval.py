"""Image-text retrieval evaluation (same as ``rsmclip eval-retrieval``).

Example (UCM-Captions test split, English and nine translations)::

    python eval/retrieval.py --model path/to/model \
        --karpathy-json ../shared/data/ucm-captions/dataset.json --images ../shared/data/ucm-captions/images \
        --translations ../shared/data/ucm-captions/translations --output-dir outputs/eval
"""

from __future__ import annotations

import argparse
import sys

import modeling_rsmclip  # noqa: F401  (registers the model type with the Auto classes)
from modeling_rsmclip.errors import ArgumentParser, run_command
from modeling_rsmclip.evaluation.cli import add_retrieval_arguments, configure_logging, run_retrieval


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_retrieval_arguments(parser)
    configure_logging()
    return run_command(run_retrieval, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
