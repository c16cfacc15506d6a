"""Copy the package's four Hub code files into the bundled demo model folder, so that the folder works on its own
with `trust_remote_code=True` (as a model saved with `save_pretrained`, or downloaded from the Hub, does).

    python scripts/sync_demo_model_code.py          # copy the files that differ
    python scripts/sync_demo_model_code.py --check  # list the files that differ; exit 1 if any

Run it after changing any of the four files; `tests/test_readme_snippets.py` checks the copies are identical.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "modeling_rsmclip"
HUB_CODE_FILES = (
    "configuration_rsmclip.py",
    "modeling_rsmclip.py",
    "processing_rsmclip.py",
    "pipeline_rsmclip.py",
)


def stale_files(folder: Path) -> list[str]:
    """The code files whose copy in `folder` is missing or differs from the package's."""
    return [
        name
        for name in HUB_CODE_FILES
        if not (folder / name).is_file() or (folder / name).read_bytes() != (PACKAGE / name).read_bytes()
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--folder", type=Path, default=PACKAGE / "demo_model", help="the model folder")
    parser.add_argument("--check", action="store_true", help="only report; exit 1 when a copy is stale")
    args = parser.parse_args(argv)
    if not (args.folder / "config.json").is_file():
        print(f"error: {args.folder} is not a model folder (no config.json)", file=sys.stderr)
        return 2
    stale = stale_files(args.folder)
    for name in stale:
        if args.check:
            state = "differs from" if (args.folder / name).is_file() else "is missing; it is"
            print(f"stale: {args.folder / name} {state} {PACKAGE / name}")
        else:
            shutil.copyfile(PACKAGE / name, args.folder / name)
            print(f"copied {PACKAGE / name} -> {args.folder / name}")
    if not stale:
        print(f"{args.folder}: the {len(HUB_CODE_FILES)} code files are up to date")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
