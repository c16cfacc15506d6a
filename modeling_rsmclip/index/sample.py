"""The index of the bundled sample images (`examples/sample/`) with the bundled demo model, built once and cached."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from ..cache_dirs import user_cache_dir

logger = logging.getLogger(__name__)


def default_index_cache_dir() -> Path:
    """``$RSMCLIP_INDEX_CACHE``, else ``$XDG_CACHE_HOME/rsmclip/indexes`` (``~/.cache/...``)."""
    return user_cache_dir("indexes", "RSMCLIP_INDEX_CACHE")


def bundled_sample_index(
    path: str | os.PathLike | None = None, *, model: Any = None, processor: Any = None, progress: bool = False
) -> Any:
    """Build (the first time) and load the index of the bundled samples (UC Merced test images with their labels,
    RSSCN7-mini by class folder) made with the bundled demo model. Without ``path`` it lives in the user cache,
    in a folder named after the sample and model files, so a changed checkout gets a fresh index. ``model`` /
    ``processor``: the bundled demo model already loaded (saves loading it again; its fingerprint is checked)."""
    from ..inference.loading import DEMO_MODEL_DIR
    from ..testing import sample_dir
    from .build import build_index
    from .search import IndexModelMismatchError, RSMCLIPIndex

    root = sample_dir()
    sources = [root / "ucm", root / "rsscn7"]
    if path is None:
        weights = DEMO_MODEL_DIR / "model.safetensors"
        stat = weights.stat()
        key = hashlib.sha256(f"{root.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[
            :16
        ]
        path = default_index_cache_dir() / f"sample-{key}"
    path = Path(path)
    if (path / "manifest.json").is_file():
        from .integrity import IndexFileError, read_json

        try:
            if "files" not in read_json(path / "manifest.json"):
                raise IndexFileError(f"{path} was cached before index files had checksums")
            return RSMCLIPIndex.load(path, model=model, processor=processor)
        except (IndexModelMismatchError, IndexFileError) as error:
            # A cache of bundled files made under another fingerprint recipe or before checksums, or damaged:
            # rebuilt, never trusted.
            logger.warning("rebuilding the bundled sample index at %s: %s", path, error)
            shutil.rmtree(path)
    return build_index(
        model if model is not None else str(DEMO_MODEL_DIR),
        path,
        sources,
        processor=processor,
        num_workers=0,
        progress=progress,
    )
