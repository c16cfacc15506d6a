"""`rsmclip app --write-space DIR`: a folder that is a complete Hugging Face Space of the web app.

A Gradio Space is a Git repository holding ``README.md`` (its settings in a YAML front-matter block: ``sdk``,
``sdk_version``, ``app_file``, ...), the ``app_file`` it runs, ``requirements.txt`` (pip installs it before the
start) and ``.gitattributes`` (which files go to Git LFS: the Hub refuses plain files over 10 MB, and the bundled
demo model's weights are 24 MB). The folder written here holds those four files, the package itself
(``modeling_rsmclip/``, with the demo model) and the bundled samples (``examples/sample/``, the archive the
Search tab indexes on its first start), so that ``git push`` of the folder to a new Space is all there is to do.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

# The oldest Gradio whose `launch()` takes every keyword `ui.launch_kwargs` passes (`footer_links`, `theme`,
# `css` moved there in 6.0); pyproject's `app` extra declares the same floor.
GRADIO_FLOOR = "6"
PACKAGE_DIR = Path(__file__).resolve().parents[1]
REPO_DIR = PACKAGE_DIR.parent
ENTRY_POINT = REPO_DIR / "app.py"
SAMPLES = REPO_DIR / "examples" / "sample"
# Git LFS for model weights and other binary files of the Space (Hub: plain files over 10 MB are refused).
LFS_PATTERNS = ("*.safetensors", "*.bin", "*.onnx", "*.pt", "*.pth", "*.ckpt", "*.tar.gz")
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", "*.egg-info")


def _declared_requirements() -> list[str]:
    """The package's requirements as declared: ``pyproject.toml`` of a source checkout, else the installed
    package's metadata (extras as ``; extra == "name"`` markers)."""
    pyproject = REPO_DIR / "pyproject.toml"
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = None  # type: ignore[assignment]
    if tomllib is not None and pyproject.is_file():
        project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
        extras = project.get("optional-dependencies", {})
        return list(project["dependencies"]) + [
            f'{spec}; extra == "{name}"' for name, specs in extras.items() for spec in specs
        ]
    from importlib import metadata

    return list(metadata.requires("rsmclip") or [])


def space_requirements() -> list[str]:
    """What the Space's pip installs: the package's own dependencies and the `app` extra's (as declared: one list),
    without Gradio, which the Space's ``sdk_version`` installs."""
    lines = []
    for requirement in _declared_requirements():
        spec, _, marker = requirement.partition(";")
        marker = marker.replace(" ", "").replace("'", '"')
        if marker and marker != 'extra=="app"':
            continue
        name = re.split(r"[\s<>=!~\[]", spec.strip(), maxsplit=1)[0]
        if name.lower() == "gradio":
            continue
        lines.append(spec.strip())
    return list(dict.fromkeys(lines))


def space_readme(gradio_version: str, title: str = "RS-M-CLIP") -> str:
    """README.md of the Space: the YAML settings block the Hub reads, then a short description."""
    return f"""---
title: {title}
emoji: 🛰️
colorFrom: blue
colorTo: green
sdk: gradio
sdk_version: {gradio_version}
python_version: "3.11"
app_file: app.py
pinned: false
license: mit
short_description: Multilingual search and maps of remote-sensing imagery
tags:
  - remote-sensing
  - clip
  - multilingual
  - zero-shot-image-classification
---

# {title}

Multilingual (ten languages) text and image search of an archive of remote-sensing images, zero-shot
classification and per-pixel class maps of scenes, with the RS-M-CLIP model. It starts on the bundled demo model
and sample images; set the Space variables `RSMCLIP_MODEL` (a Hub id) and `RSMCLIP_INDEX` to serve others, and
`RSMCLIP_BACKEND` / `RSMCLIP_PRECISION` (`onnx` / `int8`) for the CPU backend.
"""


def write_space(folder: str | Path, gradio_version: str | None = None) -> dict[str, Any]:
    """Write the Space into ``folder`` (new or empty). Returns what was written: files, sizes, the LFS patterns."""
    from ..errors import UserError

    out = Path(folder)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: the Space folder must be new or empty")
    if gradio_version is None:
        import gradio

        gradio_version = gradio.__version__
    out.mkdir(parents=True, exist_ok=True)
    shutil.copytree(PACKAGE_DIR, out / PACKAGE_DIR.name, ignore=_IGNORE)
    shutil.copytree(SAMPLES, out / "examples" / "sample", ignore=_IGNORE)
    shutil.copy2(ENTRY_POINT, out / "app.py")
    (out / "README.md").write_text(space_readme(gradio_version), encoding="utf-8")
    requirements = space_requirements()
    (out / "requirements.txt").write_text("\n".join(requirements) + "\n", encoding="utf-8")
    (out / ".gitattributes").write_text(
        "".join(f"{pattern} filter=lfs diff=lfs merge=lfs -text\n" for pattern in LFS_PATTERNS),
        encoding="utf-8",
    )
    weights = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.safetensors"))
    return {"folder": str(out), "gradio": gradio_version, "requirements": requirements, "lfs_files": weights}
