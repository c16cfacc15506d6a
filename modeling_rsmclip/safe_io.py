"""Outputs never overwrite inputs, and every output file is written whole or not at all.

Every command that writes calls `check_outputs_not_inputs` before it does any work: an output that resolves
(through symlinks and hard links) to one of its inputs, lies inside an input folder, or is an output folder that
holds an input, is refused with one error naming both paths. Output files are then written through
`atomic_output` (a temporary file beside the target, renamed onto it when complete), so a reader, a crash or an
input that is the same file under another name never sees a half-written file; `atomic_folder` does the same for
a folder written by a library (``save_pretrained``, ONNX export).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import UserError

PathLike = str | os.PathLike


class OutputOverwritesInputError(UserError):
    """An output path of a command is (or would write into) one of its inputs."""


def _real(path: PathLike) -> Path:
    return Path(os.path.realpath(os.path.expanduser(os.fspath(path))))


def _is_local(path: PathLike) -> bool:
    """False for what names no local file: URLs (``https://``, ``s3://``, GDAL ``/vsi...`` paths)."""
    text = os.fspath(path)
    return "://" not in text and not text.startswith("/vsi")


def _same_file(a: Path, b: Path) -> bool:
    if a == b:
        return True
    try:
        return os.path.samefile(a, b)  # hard links, bind mounts
    except OSError:
        return False


def _inside(child: Path, parent: Path) -> bool:
    return child != parent and parent in child.parents


def check_outputs_not_inputs(
    outputs: Iterable[PathLike | None],
    inputs: Iterable[PathLike | None],
    *,
    owned: Iterable[PathLike | None] = (),
) -> None:
    """Refuse outputs that would overwrite or change an input; call it before any work.

    Args:
        outputs: the files the command writes, and the folders it writes named files into (each may exist).
        inputs: the files and folders the command reads (``None``, URLs and paths that do not exist are ignored:
            nothing there can be overwritten).
        owned: output folders the command owns: it may write, replace or remove any file inside them (a model
            folder, an index, a dataset, a training run), so they must hold no input either.

    Raises `OutputOverwritesInputError` (a `UserError`: one ``error:`` line at the command line) when an output is
    an input (under any name: symlinks are resolved, hard links compared), lies inside an input folder, or is an
    owned folder holding an input.
    """
    real_inputs = []
    for item in inputs:
        if item is None or not _is_local(item) or not os.path.lexists(os.path.expanduser(os.fspath(item))):
            continue
        real_inputs.append((os.fspath(item), _real(item)))
    checked = [(os.fspath(p), _real(p), False) for p in outputs if p is not None and _is_local(p)]
    checked += [(os.fspath(p), _real(p), True) for p in owned if p is not None and _is_local(p)]
    for out_name, out, is_owned in checked:
        output = _shown(out_name, out)
        for in_name, inp in real_inputs:
            given = _shown(in_name, inp)
            if _same_file(out, inp):
                raise OutputOverwritesInputError(
                    f"the output {output} is the input {given}: writing it would overwrite the input; "
                    "choose another output"
                )
            if _inside(out, inp):
                raise OutputOverwritesInputError(
                    f"the output {output} is inside the input folder {given}: writing it would change the input; "
                    "choose an output outside it"
                )
            if is_owned and _inside(inp, out):
                raise OutputOverwritesInputError(
                    f"the output folder {output} holds the input {given}: its files may be replaced; choose an "
                    "output folder that holds no input"
                )


def _shown(name: str, real: Path) -> str:
    """A path as the user gave it, with what it resolves to when that differs (a symlink, a relative path)."""
    return name if os.path.abspath(name) == str(real) else f"{name} (= {real})"


def _new_file_mode(path: Path) -> int:
    """The permissions of the file being replaced, else those of a new file (0666 less the umask)."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        return 0o666 & ~_umask()


_UMASK: int | None = None


def _umask() -> int:
    global _UMASK
    if _UMASK is None:
        try:  # Linux: read it without changing it (os.umask is process-wide and not thread-safe)
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("Umask:"):
                    _UMASK = int(line.split()[1], 8)
        except (OSError, ValueError):
            pass
        if _UMASK is None:
            _UMASK = os.umask(0o022)
            os.umask(_UMASK)
    return _UMASK


def _temporary_name(path: Path) -> Path:
    # Same folder (a rename stays on one file system), same suffix (writers pick the format from it), hidden.
    return path.with_name(f".{path.stem}.{os.getpid()}-{secrets.token_hex(4)}.tmp{path.suffix}")


class PendingFile:
    """A file written at ``tmp`` (beside ``path``, same suffix) until `commit` renames it onto ``path``; `discard`
    removes it and leaves ``path`` as it was. For writers that stay open across calls (`atomic_output` otherwise).
    """

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = _temporary_name(self.path)

    def commit(self) -> Path:
        if not self.tmp.exists():
            raise FileNotFoundError(f"nothing was written to {self.path}")
        os.chmod(self.tmp, _new_file_mode(self.path))
        os.replace(self.tmp, self.path)
        return self.path

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)


@contextmanager
def atomic_output(path: PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed onto ``path`` when the block ends without an error,
    removed otherwise. Readers see the old file or the new one, never a part of it, and a file that is the same as
    ``path`` under another name (a hard link) keeps its content.

    >>> with atomic_output("out/classes.tif") as tmp:
    ...     write_geotiff(tmp, ...)  # any writer that takes a path (rasterio, PIL, matplotlib, safetensors)
    """
    pending = PendingFile(path)
    try:
        yield pending.tmp
        pending.commit()
    finally:
        pending.discard()


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through `atomic_output` (flushed to disk before the rename)."""
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    return Path(path)


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` through `atomic_output`."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: PathLike, data: Any, *, indent: int | None = 2, **dumps: Any) -> Path:
    """Write ``data`` as JSON (UTF-8, non-ASCII kept, a final newline) to ``path`` through `atomic_output`."""
    dumps.setdefault("ensure_ascii", False)
    return atomic_write_text(path, json.dumps(data, indent=indent, **dumps) + "\n")


@contextmanager
def atomic_folder(path: PathLike) -> Iterator[Path]:
    """A temporary folder beside ``path`` to write a whole output folder into (``save_pretrained``, an export);
    when the block ends without an error each file is renamed into ``path`` (created if needed; other files there
    are kept, files of the same names replaced), otherwise nothing of it reaches ``path``."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"the output {target} exists and is not a folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    tmp.mkdir()
    try:
        yield tmp
        target.mkdir(exist_ok=True)
        for root, _dirs, names in os.walk(tmp):
            relative = Path(root).relative_to(tmp)
            (target / relative).mkdir(parents=True, exist_ok=True)
            for name in names:
                os.replace(Path(root) / name, target / relative / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------------------- damaged inputs
def find_damaged_file(folder: PathLike, names: Iterable[str] | None = None) -> str | None:
    """The first file of a local folder that cannot be read, as ``"<file>: <what is wrong>"``; None when every file
    reads (or ``folder`` is not a local folder).

    Libraries that read a folder of files (transformers, tokenizers, datasets) report a damaged one with a message
    that often names no file; a loader that fails calls this to name it. ``names`` are the files to check, in order
    (default: every file below ``folder``). A file is damaged when it is empty, or by its kind: ``.json`` not UTF-8
    or not a JSON object; ``tokenizer.json`` not readable by tokenizers; ``.model`` not a SentencePiece model;
    ``.arrow`` not an Arrow stream that reads to its end.
    """
    root = Path(folder)
    if not root.is_dir():
        return None
    paths = [root / name for name in names] if names is not None else sorted(p for p in root.rglob("*"))
    for path in paths:
        if not path.is_file():
            continue
        problem = _file_problem(path)
        if problem:
            return f"{path}: {problem}"
    return None


def _file_problem(path: Path) -> str | None:
    data = path.read_bytes() if path.suffix in (".json", ".model") else b""
    if path.stat().st_size == 0:
        return "the file is empty"
    if path.suffix == ".json":
        try:
            text = data.decode("utf-8")
            value = json.loads(text)
        except UnicodeDecodeError as error:
            return f"not UTF-8 text (byte {error.start}): the file is damaged"
        except json.JSONDecodeError as error:
            return f"not valid JSON ({error}): the file is damaged or truncated"
        if not isinstance(value, dict | list):
            return f"expected a JSON object, found a {type(value).__name__}"
        if path.name == "tokenizer.json":
            try:
                from tokenizers import Tokenizer

                Tokenizer.from_str(text)
            except ImportError:
                pass
            except Exception as error:  # the Rust library raises plain exceptions
                return f"not a readable tokenizer ({error})"
    elif path.suffix == ".model":
        try:
            import sentencepiece

            sentencepiece.SentencePieceProcessor(model_proto=data)
        except ImportError:
            pass
        except Exception as error:
            return f"not a readable SentencePiece model ({error})"
    elif path.suffix == ".arrow":
        try:
            import pyarrow as pa

            with pa.memory_map(str(path)) as source:
                reader = pa.ipc.open_stream(source)
                while True:
                    try:
                        reader.read_next_batch()
                    except StopIteration:
                        break
        except ImportError:
            pass
        except Exception as error:  # pyarrow.lib.ArrowInvalid, ...
            return f"not a readable Arrow file ({error}): the file is damaged or truncated"
    return None


def raise_for_damaged_folder(folder: PathLike, error: BaseException) -> None:
    """Called by a loader whose library failed on ``folder``: raise a `ValueError` naming the damaged file when one
    is found (`find_damaged_file`), else return (the caller re-raises ``error``)."""
    damaged = find_damaged_file(folder)
    if damaged:
        raise ValueError(damaged) from error


__all__ = [
    "OutputOverwritesInputError",
    "PendingFile",
    "atomic_folder",
    "atomic_output",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "check_outputs_not_inputs",
    "find_damaged_file",
    "raise_for_damaged_folder",
]
