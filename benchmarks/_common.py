"""What the benchmark scripts share: the CPU's name for their headers, and the real UCM-Captions data (the shared
copy beside the checkout, else the bundled sample, so a machine holding only the checkout can run them)."""

from __future__ import annotations

import json
import platform
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ucm_captions_root() -> Path:
    """UCM-Captions of the shared data (`$RSMCLIP_SHARED_DATA`), else the bundled sample (42 images, same layout)."""
    from modeling_rsmclip.testing import sample_dir, shared_data_dir

    root = shared_data_dir() / "ucm-captions"
    if (root / "dataset.json").is_file():
        return root
    print(
        f"UCM-Captions not found at {root} (RSMCLIP_SHARED_DATA): using the bundled sample", file=sys.stderr
    )
    return sample_dir() / "ucm"


def ucm_batch(batch_size: int, text_batch_size: int) -> tuple[list[Path], list[str]]:
    """`batch_size` image files spread over the dataset and `text_batch_size` real captions in the ten languages
    (every 7th, shuffled with seed 0); both repeated when the data holds fewer."""
    root = ucm_captions_root()
    data = json.loads((root / "dataset.json").read_text())
    files = [root / "images" / e["filename"] for e in data["images"]]
    files = (files * (1 + batch_size // len(files)))[:: max(1, len(files) // batch_size)][:batch_size]
    texts = [s["raw"] for e in data["images"] for s in e["sentences"]][::7]
    for path in sorted((root / "translations").glob("*.json")):
        texts += [r["text"] for r in json.loads(path.read_text(encoding="utf-8"))][::7]
    texts = [t for t in texts if t.strip()]
    random.Random(0).shuffle(texts)
    return files, (texts * (1 + text_batch_size // len(texts)))[:text_batch_size]


def git_commit() -> str:
    """The commit of the checkout, with ``-dirty`` when tracked files have uncommitted changes (``unknown``
    outside git)."""
    import subprocess

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "HEAD") or "unknown"
    if git("status", "--porcelain", "--untracked-files=no"):
        commit += "-dirty"
    return commit


def provenance() -> dict:
    """Where and when a result was measured: the machine (CPU, cores, memory, GPU), the commit of the checkout
    (`git_commit`), the UTC date, the command and the library versions."""
    import datetime
    import os

    commit = git_commit()
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        memory = float("nan")
    machine = f"{cpu_model()}, {os.cpu_count()} logical CPUs, {memory:.0f} GiB RAM"
    versions = {"python": platform.python_version()}
    try:
        import torch

        versions["torch"] = torch.__version__
        if torch.cuda.is_available():
            machine += f", GPU {torch.cuda.get_device_name(0)}"
        else:
            machine += ", no GPU"
    except ImportError:
        pass
    try:
        with open("/proc/loadavg") as handle:
            load = handle.read().split()[0]
    except OSError:
        load = "unknown"
    return {
        "machine": machine,
        "load_average_1min_at_start": load,
        "commit": commit,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "versions": versions,
    }


def write_result(path: str | Path, result: dict, measured: dict | None = None) -> Path:
    """Save a benchmark's raw result as JSON with its `provenance` (``measured``: one taken at the start of the run,
    else now), written to a temporary file and renamed into place."""
    from modeling_rsmclip.safe_io import atomic_write_json

    return atomic_write_json(path, {"provenance": measured or provenance(), **result}, indent=1)
