"""``rsmclip index verify``: check an index folder against what was written and against its shards, record the
checksums of an index written before they existed, or rebuild a damaged FAISS file and metadata from the shards.

The shards (`build`) are the index's source of truth: they hold every embedding and metadata row. The FAISS file
and ``metadata.parquet`` are merged from them, so when the shards are intact a damaged, truncated, deleted or
reordered ``index.faiss`` / ``metadata.parquet`` is rebuilt exactly (``--repair``). Without recorded checksums (an
older index) the check compares the FAISS vectors and the metadata rows, in order, with the shards' (``--record``
then records the checksums).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .integrity import IndexFileError, check_file, describe_files, read_faiss, read_manifest, read_parquet

SAMPLE = 10_000  # vectors compared with the shards' (all of them up to this many)


@dataclass
class Verification:
    """What `verify_index` found: ``problems`` (one line each, naming the file), the number of ``files`` whose
    checksum was checked, ``rows`` compared with the shards, and what was done (``recorded``, ``repaired``)."""

    path: Path
    problems: list[str] = field(default_factory=list)
    files: int = 0
    rows: int = 0
    checksums: bool = True
    shards_ok: bool = True
    recorded: bool = False
    repaired: bool = False

    def summary(self) -> str:
        if self.problems:
            return f"{self.path}: {len(self.problems)} problem(s): " + "; ".join(self.problems)
        done = " (repaired from the shards)" if self.repaired else ""
        done += " (checksums recorded)" if self.recorded else ""
        sums = f"{self.files} files match their checksums, " if self.checksums else "no checksums recorded, "
        return f"{self.path}: ok{done}: {sums}{self.rows} rows match the shards"


def _problem(err: Exception) -> str:
    return str(err).strip().splitlines()[0]


def _shard_rows(path: Path, manifest: dict[str, Any], result: Verification) -> tuple[Any, np.ndarray] | None:
    """The shards merged as `build.finalize` merges them: (metadata table, normalised float32 embeddings)."""
    import pyarrow as pa

    from .build import _read_json

    merged = {r.get("run") for r in manifest.get("runs", []) if isinstance(r, dict)}
    shard_files = [  # the shards of the runs merged into the index (not those of an unfinished run)
        p for p in sorted((path / "shards").glob("*.parquet")) if not merged or _run_of(p) in merged
    ]
    if not shard_files:
        result.problems.append(
            f"{path / 'shards'}: no shards: the index cannot be checked or repaired from them"
        )
        return None
    tables = []
    for shard in shard_files:
        try:
            tables.append(read_parquet(shard))
            _read_json(shard.with_name(shard.name[: -len(".parquet")] + ".report.json"))
        except IndexFileError as err:
            result.problems.append(_problem(err))
    if len(tables) < len(shard_files):
        return None
    table = pa.concat_tables(tables, promote_options="default")
    seen: set[str] = set()
    keep = np.zeros(table.num_rows, dtype=bool)
    for i, h in enumerate(table["content_hash"].to_pylist()):
        keep[i] = h not in seen
        seen.add(h)
    table = table.filter(pa.array(keep))
    dim = int(manifest.get("embedding", {}).get("dim") or table.schema.field("embedding").type.list_size)
    flat = table["embedding"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
    embeddings = flat.astype(np.float32).reshape(table.num_rows, dim)
    embeddings /= np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    return table.drop_columns(["embedding"]), embeddings


def _run_of(shard: Path) -> int | None:
    """The run number of ``shard-rRRR-SSSSSS.parquet``."""
    try:
        return int(shard.name.split("-")[1].removeprefix("r"))
    except (IndexError, ValueError):
        return None


def _vectors(index: Any, rows: np.ndarray) -> np.ndarray | None:
    """The stored vectors of ``rows`` (None where the index type cannot give them back)."""
    import faiss

    try:
        try:
            faiss.extract_index_ivf(index).make_direct_map()
        except RuntimeError:
            pass  # not an inverted file
        return np.stack([index.reconstruct(int(i)) for i in rows])
    except RuntimeError:
        return None


def _compare(
    path: Path, manifest: dict[str, Any], shards: tuple[Any, np.ndarray], result: Verification
) -> None:
    """The FAISS vectors and the metadata rows against the shards', in order."""
    table, embeddings = shards
    meta_path = path / "metadata.parquet"
    faiss_path = path / manifest["index"]["file"]
    try:
        metadata = read_parquet(meta_path, columns=["id", "path", "content_hash"])
        if metadata.num_rows != table.num_rows:
            result.problems.append(f"{meta_path}: {metadata.num_rows} rows, the shards hold {table.num_rows}")
        else:
            for column in ("id", "path", "content_hash"):
                got, want = metadata[column].to_pylist(), table[column].to_pylist()
                wrong = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), None)
                if wrong is not None:
                    result.problems.append(
                        f"{meta_path}: row {wrong} has {column} {got[wrong]!r}, the shards {want[wrong]!r} "
                        "(rows reordered or changed)"
                    )
                    break
    except IndexFileError as err:
        result.problems.append(_problem(err))
    ondisk = manifest["index"].get("type") == "ivfpq-disk"
    try:
        if ondisk:  # lists on disk: opened as a search opens them (`index.ondisk`)
            from .ondisk import open_checked

            index = open_checked(path, manifest["index"])
        else:
            index = read_faiss(faiss_path)
    except IndexFileError as err:
        result.problems.append(_problem(err))
        return
    if index.ntotal != len(embeddings):
        result.problems.append(f"{faiss_path}: {index.ntotal} vectors, the shards hold {len(embeddings)}")
        return
    rng = np.random.default_rng(0)
    rows = (
        np.arange(len(embeddings))
        if len(embeddings) <= SAMPLE
        else np.sort(rng.choice(len(embeddings), SAMPLE, replace=False))
    )
    # An on-disk index ranks by the float16 vectors it stores: those are compared (its PQ codes only propose).
    stored = index.store.take(rows).astype(np.float32) if ondisk else _vectors(index, rows)
    if ondisk:
        stored /= np.maximum(np.linalg.norm(stored, axis=1, keepdims=True), 1e-12)
    factory = manifest["index"].get("factory", "")
    lossy = not ondisk and ("PQ" in factory or "SQ" in factory)
    if stored is not None:
        cosine = (stored * embeddings[rows]).sum(axis=1)
        bad = (
            ~np.isfinite(cosine) | (cosine < (0.8 if lossy else 0.9999)) | (np.abs(stored).max(axis=1) > 1.5)
        )
    else:  # a type that cannot give vectors back: each vector must find itself
        scores, ids = index.search(np.ascontiguousarray(embeddings[rows]), 1)
        bad = (ids[:, 0] != rows) & ~(np.abs(scores[:, 0] - 1) < 1e-3)
    if bad.any():
        first = int(rows[np.flatnonzero(bad)[0]])
        result.problems.append(
            f"{faiss_path}: {int(bad.sum())} of {len(rows)} vectors checked differ from the shards' (first: row {first})"
        )
    result.rows = len(embeddings)


def verify_index(path: str | Path, *, record: bool = False, repair: bool = False) -> Verification:
    """Check the index folder ``path``: every file against its recorded size and checksum, and the FAISS vectors
    and metadata rows against the shards. ``repair``: rebuild ``index.faiss``, ``metadata.parquet``, ``report.json``
    and the manifest's record from intact shards when something is wrong. ``record``: write the checksums into the
    manifest of an index that has none (after the check against the shards passed)."""
    from ..safe_io import atomic_write_json
    from .build import _runs

    path = Path(path)
    if not (path / "manifest.json").is_file():
        raise FileNotFoundError(f"no index at {path}: {path / 'manifest.json'} not found")
    manifest = read_manifest(path)
    _runs(path, manifest)
    result = Verification(path)
    files = manifest.get("files")
    result.checksums = isinstance(files, dict)
    for name, entry in (files or {}).items():
        try:
            check_file(path, name, entry)
            result.files += 1
        except IndexFileError as err:
            result.problems.append(_problem(err))
            if name.startswith("shards/"):
                result.shards_ok = False
    shards = _shard_rows(path, manifest, result) if result.shards_ok else None
    if shards is not None:
        _compare(path, manifest, shards, result)
    if result.problems and repair:
        if shards is None:
            raise IndexFileError(
                result.summary() + "; the shards are damaged: rebuild with `rsmclip index build`"
            )
        _repair(path, manifest)
        repaired = verify_index(path)
        repaired.repaired = True
        return repaired
    if record and not result.problems and not result.checksums:
        from .ondisk import section_files

        names = [*section_files(manifest["index"]), "metadata.parquet"] + [
            f"shards/{p.name}" for p in sorted((path / "shards").glob("*")) if p.is_file()
        ]
        manifest["files"] = describe_files(path, [n for n in names if (path / n).is_file()])
        atomic_write_json(path / "manifest.json", manifest)
        result.recorded, result.checksums, result.files = True, True, len(manifest["files"])
    return result


def _repair(path: Path, manifest: dict[str, Any]) -> None:
    """Merge the shards again into the FAISS file, the metadata, the report and the manifest (`build.finalize`),
    with the model, processor settings and index type the manifest records."""
    from .build import finalize

    model, embedding, index = manifest["model"], manifest.get("embedding", {}), manifest["index"]
    finalize(
        path,
        model_name=model["name_or_path"],
        fingerprint=model["fingerprint"],
        processor=None,
        dim=int(embedding.get("dim") or 0) or _shard_dim(path),
        index_type=index.get("type", "auto"),
        manifest=manifest,
        backend=embedding.get("backend", "torch"),
        precision=embedding.get("precision", "fp32"),
        family=model.get("family"),
        max_text_length=int(manifest.get("processor", {}).get("tokenizer", {}).get("max_length", 77)),
        retrain=True,  # an on-disk index is written anew from the shards, not appended to its damaged lists
    )


def _shard_dim(path: Path) -> int:
    import pyarrow.parquet as pq

    first = sorted((path / "shards").glob("*.parquet"))[0]
    return int(pq.read_schema(first).field("embedding").type.list_size)


__all__ = ["Verification", "verify_index"]
