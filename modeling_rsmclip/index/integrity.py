"""What an index folder holds is what was written: every file it is read from is named in its manifest with its size
and checksum, stays inside the folder, and is checked before it is used.

`finalize` records ``manifest["files"]``: for ``index.faiss``, ``metadata.parquet`` and every shard (Parquet and
report) the size in bytes and a SHA-256 tree checksum (`file_checksum`). Loading an index checks the files it reads
(the FAISS file and the metadata: a size check, then the checksum, hashed on up to four threads: 1.5 s for the
2 GB of a 10^6-entry index on the 2-core development machine); ``index add`` and ``rsmclip index verify`` check every file. A manifest that names a path outside its
folder (absolute, or climbing out through ``..`` or a symlink) is refused.

A damaged, truncated, empty or missing file is one `IndexFileError` (a `errors.UserError`: one ``error:`` line at
the command line) naming the file and what is wrong with it; the FAISS and Arrow errors of a file that cannot be
parsed are turned into the same error where the file is opened (`read_faiss`, `read_parquet`, `read_json`).

An index written before checksums were recorded loads with a warning; ``rsmclip index verify INDEX --record``
checks it against its shards (ids, order and vectors) and records its checksums.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..errors import UserError

logger = logging.getLogger(__name__)

CHECKSUM = "sha256-tree-64MiB"
"""The checksum recorded: SHA-256 of (the file's size, then the SHA-256 of each 64 MiB block in order); the blocks
are hashed on up to four threads (hashlib releases the GIL), so a large FAISS file is checked at the disk's speed."""
BLOCK = 64 << 20


# The files of an on-disk index (`index.ondisk`) checked by size only when it is loaded.
ONDISK_BULK_PREFIXES = ("ondisk/lists-", "ondisk/vectors-")


class IndexFileError(UserError):
    """A file of an index folder is missing, damaged, truncated, or named outside the folder."""


# -------------------------------------------------------------------------------------------------- checksums
def _block_digest(path: Path, offset: int, size: int) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(offset)
        left = size
        while left > 0:
            data = f.read(min(left, 8 << 20))
            if not data:
                raise IndexFileError(f"{path}: shorter than it was a moment ago (being written?)")
            h.update(data)
            left -= len(data)
    return h.digest()


def file_checksum(path: str | os.PathLike, *, threads: int | None = None) -> str:
    """The `CHECKSUM` of a file, as hex."""
    path = Path(path)
    size = path.stat().st_size
    blocks = [(start, min(BLOCK, size - start)) for start in range(0, size, BLOCK)] or [(0, 0)]
    workers = max(1, min(threads or min(4, os.cpu_count() or 1), len(blocks)))
    if workers == 1:
        digests = [_block_digest(path, start, n) for start, n in blocks]
    else:
        with ThreadPoolExecutor(workers) as pool:
            digests = list(pool.map(lambda block: _block_digest(path, *block), blocks))
    top = hashlib.sha256(size.to_bytes(8, "little"))
    for digest in digests:
        top.update(digest)
    return top.hexdigest()


def describe_files(folder: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """``{name: {"size", "sha256_tree"}}`` of the files ``names`` (relative to ``folder``), for the manifest."""
    return {
        name: {"size": (folder / name).stat().st_size, "sha256_tree": file_checksum(folder / name)}
        for name in names
    }


# ------------------------------------------------------------------------------------------------ containment
def inside(folder: Path, name: Any, what: str = "file") -> Path:
    """``folder / name`` for a relative path ``name`` from a manifest that stays inside ``folder`` (also through
    symlinks); anything else (absolute, ``..`` climbing out, not a string) is an `IndexFileError`."""
    manifest = Path(folder) / "manifest.json"
    if not isinstance(name, str) or not name or "\0" in name:
        raise IndexFileError(
            f"{manifest}: the {what} path {name!r} is not a file name inside the index folder"
        )
    relative = Path(name)
    if relative.is_absolute() or ".." in relative.parts:
        raise IndexFileError(
            f"{manifest}: the {what} path {name!r} is outside the index folder {folder}; an index names only "
            "files inside its folder"
        )
    path = Path(folder) / relative
    root = Path(os.path.realpath(folder))
    real = Path(os.path.realpath(path))
    if real != root and root not in real.parents:
        raise IndexFileError(
            f"{manifest}: the {what} {name!r} leads outside the index folder {folder} (to {real}); an index names "
            "only files inside its folder"
        )
    return path


# ------------------------------------------------------------------------------------------------ verification
def check_file(folder: Path, name: str, record: dict[str, Any], *, checksum: bool = True) -> None:
    """Refuse the file ``name`` of ``folder`` unless it has the size and checksum ``record`` (from the manifest)."""
    path = inside(folder, name)
    if not path.is_file():
        raise IndexFileError(
            f"{path}: missing (the manifest lists it); restore it or rebuild the index ({_recovery(name)})"
        )
    size = path.stat().st_size
    expected = record.get("size") if isinstance(record, dict) else None
    if not isinstance(expected, int):
        raise IndexFileError(f"{folder / 'manifest.json'}: no size recorded for {name!r}")
    if size != expected:
        state = "empty" if size == 0 else ("truncated" if size < expected else "longer than written")
        raise IndexFileError(
            f"{path}: damaged ({state}: {size} bytes, {expected} written); {_recovery(name)}"
        )
    if checksum and file_checksum(path) != record.get("sha256_tree"):
        raise IndexFileError(
            f"{path}: damaged (its checksum differs from the one recorded when it was written); {_recovery(name)}"
        )


def _recovery(name: str) -> str:
    if name.startswith("shards/"):
        return (
            "the index cannot be extended or repaired from its shards: rebuild it with `rsmclip index build` (a "
            "shard of an unfinished run: delete it and rerun that command, which embeds it again)"
        )
    return "`rsmclip index verify INDEX --repair` rebuilds it from the shards"


def verify_files(
    folder: Path, manifest: dict[str, Any], names: list[str] | None = None, *, size_only: Any = ()
) -> bool:
    """Check the files ``names`` (default: every file the manifest lists) against the manifest's record (only the
    size for those in ``size_only``). Returns False, with a warning, for an index written before checksums were
    recorded (nothing to check against)."""
    files = manifest.get("files")
    if files is None:
        logger.warning(
            "%s was written before index files had checksums: it is loaded unchecked; run `rsmclip index verify %s "
            "--record` to check it against its shards and record them",
            folder,
            folder,
        )
        return False
    if not isinstance(files, dict):
        raise IndexFileError(
            f"{folder / 'manifest.json'}: 'files' is not a mapping of file names to checksums"
        )
    for name in files if names is None else names:
        if name not in files:
            raise IndexFileError(f"{folder / 'manifest.json'}: no checksum recorded for {name!r}")
        check_file(folder, name, files[name], checksum=name not in size_only)
    return True


def check_index_files(folder: Path) -> dict[str, Any]:
    """The checked manifest of an index folder, after checking the files a search reads (all but the shards, which
    `index add` and `index verify` check): for a command to refuse a damaged index before it loads a model."""
    manifest = read_manifest(folder)
    names = [n for n in manifest.get("files") or {} if not n.startswith("shards/")]
    if manifest.get("files") is not None:  # what search reads must be among them
        names += [n for n in (manifest["index"]["file"], "metadata.parquet") if n not in names]
    # An on-disk index is read in part by each search: hashing its lists and vectors (GBs at 10^7) at every load
    # would read them whole. Their sizes are checked here; `index verify` and `index add` check their checksums.
    bulk = [n for n in names if n.startswith(ONDISK_BULK_PREFIXES)]
    verify_files(folder, manifest, names, size_only=bulk)
    return manifest


# ------------------------------------------------------------------------------------------------------ reading
def read_json(path: Path, what: str = "JSON file") -> Any:
    """A JSON file of an index folder, or an `IndexFileError` naming it (missing, empty, not UTF-8, not JSON)."""
    try:
        text = Path(path).read_bytes()
    except OSError as err:
        raise IndexFileError(f"{path}: cannot be read ({err.strerror or err})") from err
    if not text.strip():
        raise IndexFileError(f"{path}: the {what} is empty")
    try:
        return json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise IndexFileError(f"{path}: damaged, not a UTF-8 {what} ({err})") from err
    except RecursionError as err:
        raise IndexFileError(f"{path}: damaged, the {what} is nested too deeply to read") from err


MANIFEST_KEYS = {
    "format": str,
    "model": dict,
    "index": dict,
    "counts": dict,
}


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of an index folder, checked: the format, the keys loading needs and their types, and the FAISS
    file's path inside the folder."""
    path = Path(folder) / "manifest.json"
    manifest = read_json(path, "index manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != "rsmclip-index":
        raise IndexFileError(f'{path}: not an rsmclip index manifest (no "format": "rsmclip-index")')
    for key, kind in MANIFEST_KEYS.items():
        if not isinstance(manifest.get(key), kind):
            raise IndexFileError(f"{path}: damaged: {key!r} is missing or not a {kind.__name__}")
    needed = [
        ("model", "fingerprint", str),
        ("model", "name_or_path", str),
        ("index", "file", str),
        ("counts", "items", int),
    ]
    for section, key, kind in needed:
        if not isinstance(manifest[section].get(key), kind):
            raise IndexFileError(f"{path}: damaged: '{section}.{key}' is missing or not a {kind.__name__}")
    inside(folder, manifest["index"]["file"], "FAISS index")
    inside(folder, "metadata.parquet", "metadata")
    for name in manifest.get("files") or {}:
        inside(folder, name)
    return manifest


def read_faiss(path: Path) -> Any:
    """A FAISS index file, or an `IndexFileError` naming it (FAISS's RuntimeError on a damaged file)."""
    import faiss

    if not path.is_file():
        raise IndexFileError(f"{path}: missing; {_recovery(path.name)}")
    if path.stat().st_size == 0:
        raise IndexFileError(f"{path}: the FAISS index is empty; {_recovery(path.name)}")
    try:
        return faiss.read_index(str(path))
    except (RuntimeError, MemoryError, ValueError) as err:
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise IndexFileError(
            f"{path}: damaged, not a readable FAISS index ({reason}); {_recovery(path.name)}"
        ) from err


def read_parquet(path: Path, columns: list[str] | None = None) -> Any:
    """A Parquet file of an index folder, or an `IndexFileError` naming it (Arrow's errors on a damaged file)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.is_file():
        raise IndexFileError(f"{path}: missing; {_recovery(_relative(path))}")
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise IndexFileError(
            f"{path}: damaged, not a readable Parquet file ({reason}); {_recovery(_relative(path))}"
        ) from err


def _relative(path: Path) -> str:
    return f"shards/{path.name}" if path.parent.name == "shards" else path.name


__all__ = [
    "CHECKSUM",
    "IndexFileError",
    "check_file",
    "check_index_files",
    "describe_files",
    "file_checksum",
    "inside",
    "read_faiss",
    "read_json",
    "read_manifest",
    "read_parquet",
    "verify_files",
]
