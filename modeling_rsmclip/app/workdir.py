"""The app's temporary work folder: one per server process, gone when the process is.

The folder is ``<temp>/rsmclip-app-<pid>-<random>``. It is removed at a normal exit (`atexit`); a server killed
outright (SIGKILL, out of memory, a power cut) cannot remove it, so every start removes the folders of this pattern
whose process no longer exists. Folders of running servers, and anything not made here, are left alone (a folder
whose process id was since given to another running process waits until that one ends).
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

PREFIX = "rsmclip-app-"
_NAME = re.compile(rf"^{re.escape(PREFIX)}(\d+)-[A-Za-z0-9_]+$")


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists (on this machine)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    except OSError:  # pragma: no cover - e.g. Windows without that process
        return False
    return True


def remove_stale_work_dirs(parent: str | os.PathLike | None = None) -> list[Path]:
    """Remove the work folders under ``parent`` (the temporary directory) whose server process is gone."""
    root = Path(parent or tempfile.gettempdir())
    removed = []
    for folder in root.glob(f"{PREFIX}*"):
        match = _NAME.match(folder.name)
        if not match or not folder.is_dir() or folder.is_symlink():
            continue
        pid = int(match.group(1))
        if pid == os.getpid() or process_alive(pid):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    if removed:
        logger.info("removed %d work folder(s) left by stopped app servers", len(removed))
    return removed


def make_work_dir(parent: str | os.PathLike | None = None) -> Path:
    """A new work folder for this process (stale ones removed first), removed again when the process exits."""
    remove_stale_work_dirs(parent)
    folder = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=parent))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder
