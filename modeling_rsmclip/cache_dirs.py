"""Where the package keeps what it computes once and reuses (embeddings, indexes, ONNX exports)."""

from __future__ import annotations

import os
from pathlib import Path


def user_cache_dir(name: str, env_var: str) -> Path:
    """``$<env_var>`` when set, else ``$XDG_CACHE_HOME/rsmclip/<name>`` (``~/.cache/rsmclip/<name>``)."""
    env = os.environ.get(env_var)
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rsmclip" / name
