"""An index larger than memory: IVF-PQ with OPQ, inverted lists on disk, exact re-ranking from float16 vectors.

Index type ``ivfpq-disk`` (`build.choose_index`). Files, beside the manifest, under ``INDEX_DIR/ondisk/``::

    trained-<tag>.faiss     the trained, empty ``OPQ<m>,IVF<nlist>,PQ<m>x<bits>`` index (appends encode with it)
    index-<tag>.faiss       the same index whose inverted lists are ``lists-<tag>.ivfdata`` (FAISS's
                            `OnDiskInvertedLists`, memory-mapped read-only at search time)
    lists-<tag>.ivfdata     the PQ codes and ids of every vector, list after list
    vectors-<tag>.f16.npy   the stored float16 embeddings, in id order (one file per build and per append)

Search (`OnDiskIndex.search`): the PQ index proposes ``k * rerank`` candidates from ``nprobe`` lists; their float16
vectors are read from the memory-mapped ``vectors-*.npy`` files, re-normalised in float32 and ranked by their exact
cosine, so the scores are those of exact search and the recall is that of the candidate set.

Build (`write_ondisk`): the vectors are copied from the shards into a float16 file (the Parquet shards are
compressed column chunks: reading one row decodes its page, too slow for re-ranking); the index is trained on a
random sample of at most `MAX_TRAIN` vectors; the vectors are encoded in blocks of `CHUNK` rows, each written to a
temporary block file, and the blocks are merged into one on-disk lists file (as FAISS's ``merge_ondisk``). Memory
is bounded by the training sample, one block and the coarse centroids, whatever the number of vectors.

Append: an ``index add`` encodes only the new vectors with the trained index and merges the old lists with the new
blocks into a new lists file (no retraining). Retrain rule: once the vectors added since training exceed
`RETRAIN_FRACTION` times the number the index was trained on (the lists were sized for the smaller archive and the
new images may come from elsewhere), the manifest says ``retrain_needed`` and ``rsmclip index rebuild`` retrains
from the stored float16 shards (no re-embedding). A different model cannot be added to an index at all (its
fingerprint is refused); an index of another model is a new build.

Every file is written under a new name; the manifest, written last by the caller, switches to them, and
`remove_unreferenced` then deletes the old ones: a killed build, append or rebuild leaves the previous index usable.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

ONDISK_TYPE = "ivfpq-disk"
ONDISK_DIR = "ondisk"
RETRAIN_FRACTION = (
    1.0  # retrain once the vectors added since training exceed this fraction of those trained on
)
MAX_TRAIN = 131_072  # at most this many vectors train the coarse quantizer, OPQ and PQ
CHUNK = 65_536  # vectors encoded per block
DEFAULT_RERANK = (
    100  # candidates re-ranked: k * rerank (BENCHMARKS.md: recall grows with it, not with nprobe)
)
PQ_SUBQUANTIZERS = (64, 48, 32, 24, 16, 12, 8, 4, 2, 1)
PQ_MIN_DIMS = (
    4  # dimensions per PQ byte: 48 bytes for 192 dimensions, 64 for 512 (BENCHMARKS.md: 8 recalls far less)
)
OPQ_ITERATIONS = 10
OPQ_MIN_VECTORS = 1024  # OPQ trains 8-bit codes (256 centroids per sub-vector): below this, no rotation
OPQ_MAX_TRAIN = 16_384

VectorChunks = Callable[[], Iterator[np.ndarray]]


# ------------------------------------------------------------------------------------------------ parameters
def _pow2(x: float) -> int:
    return 1 << max(0, round(math.log2(max(1.0, x))))


def pq_bits(num_vectors: int, points_per_centroid: int = 1) -> int:
    """Bits per PQ code: 8 (256 centroids per sub-quantizer), fewer (down to 4) when ``num_vectors`` cannot give
    each centroid ``points_per_centroid`` training points. An in-memory IVF-PQ ranks by its codes: it takes 8 bits
    from 256 vectors on, which FAISS trains (with a warning below 39 points per centroid; on 1,260 real vectors, 8
    bits recall 0.95 at 10 where 5 bits recall 0.72). The on-disk index only proposes candidates with its codes
    (re-ranking scores them exactly): it asks FAISS's 39 points per centroid, which also keeps small builds fast."""
    points = max(2.0, num_vectors / max(1, points_per_centroid))
    return int(min(8, max(4, math.floor(math.log2(points)))))


def disk_factory(num_vectors: int, dim: int) -> tuple[str, dict[str, int]]:
    """The FAISS factory string and search parameters of an ``ivfpq-disk`` index of ``num_vectors`` vectors.

    ``nlist``: the power of two nearest ``sqrt(n)`` (at most n/39, FAISS's minimum training points per list):
    re-ranking makes up for coarse lists, and fewer lists keep training and encoding cheap. ``m``: the largest of
    64, 48, 32, ... dividing ``dim`` into sub-vectors of at least `PQ_MIN_DIMS` dimensions (one byte each with
    8-bit codes; fewer bits below ~10k vectors, 39 training points per centroid): the codes only pick the
    candidates, which re-ranking scores exactly. OPQ (a rotation balancing the sub-vectors) from `OPQ_MIN_VECTORS`
    vectors on. ``nprobe``: nlist / 32, at least 16 (all lists when fewer); ``rerank``:
    `DEFAULT_RERANK` (``k * rerank`` candidates get their exact score)."""
    n = max(1, int(num_vectors))
    nlist = max(1, min(_pow2(math.sqrt(n)), n // 39))
    m = next(m for m in PQ_SUBQUANTIZERS if dim % m == 0 and (dim // m >= PQ_MIN_DIMS or m == 1))
    bits = pq_bits(n, points_per_centroid=39)
    nprobe = min(nlist, max(16, nlist // 32))
    opq = f"OPQ{m}," if n >= OPQ_MIN_VECTORS else ""
    return f"{opq}IVF{nlist},PQ{m}x{bits}", {"nprobe": nprobe, "rerank": DEFAULT_RERANK}


# ------------------------------------------------------------------------------------------------ vectors
def shard_vectors(shard_files: list[Path], keep: np.ndarray, dim: int) -> VectorChunks:
    """The float16 embeddings of the kept rows of ``shard_files`` (``keep``: a mask over their rows in order),
    one shard at a time."""

    def chunks() -> Iterator[np.ndarray]:
        from .integrity import read_parquet

        offset = 0
        for path in shard_files:
            column = read_parquet(path, columns=["embedding"])["embedding"].combine_chunks()
            rows = len(column)
            flat = column.flatten().to_numpy(zero_copy_only=False)
            x = np.asarray(flat, dtype=np.float16).reshape(rows, dim)
            yield x[keep[offset : offset + rows]]
            offset += rows

    return chunks


def normalized(x: np.ndarray) -> np.ndarray:
    """float32, L2-normalised rows (what the index searches)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class VectorStore:
    """The stored float16 vectors, memory-mapped: segments of consecutive ids (``[{"file", "start", "count"}]``)."""

    def __init__(self, folder: Path, segments: list[dict[str, Any]]) -> None:
        self.segments = segments
        self.starts = np.array([s["start"] for s in segments], dtype=np.int64)
        self.arrays = [np.load(folder / s["file"], mmap_mode="r") for s in segments]
        for segment, array in zip(segments, self.arrays):
            if array.shape[0] != segment["count"]:
                raise ValueError(
                    f"{folder / segment['file']} holds {array.shape[0]} vectors, the manifest says "
                    f"{segment['count']}: an interrupted update? Rerun the last `rsmclip index` command"
                )

    def __len__(self) -> int:
        return int(sum(s["count"] for s in self.segments))

    def take(self, ids: np.ndarray) -> np.ndarray:
        """float16 rows of ``ids`` (any order), read from the memory maps."""
        ids = np.asarray(ids, dtype=np.int64)
        which = np.searchsorted(self.starts, ids, side="right") - 1
        out = np.empty((len(ids), self.arrays[0].shape[1]), dtype=np.float16)
        for seg in np.unique(which):
            rows = np.flatnonzero(which == seg)
            local = ids[rows] - self.starts[seg]
            order = np.argsort(local, kind="stable")  # read the file forwards
            out[rows[order]] = self.arrays[seg][local[order]]
        return out

    def chunks(self, start: int = 0, size: int = CHUNK) -> Iterator[tuple[int, np.ndarray]]:
        """(first id, float16 rows) blocks of at most ``size`` rows from id ``start`` on."""
        for seg_start, array in zip(self.starts.tolist(), self.arrays):
            for lo in range(max(0, start - seg_start), array.shape[0], size):
                yield seg_start + lo, np.asarray(array[lo : lo + size])


def _write_segment(folder: Path, chunks: Iterable[np.ndarray], count: int, dim: int, tag: str) -> dict:
    name = f"vectors-{tag}.f16.npy"
    out = np.lib.format.open_memmap(folder / name, mode="w+", dtype=np.float16, shape=(count, dim))
    at = 0
    for x in chunks:
        if at + len(x) > count:
            raise ValueError(f"more vectors than the {count} expected")
        out[at : at + len(x)] = x
        at += len(x)
    if at != count:
        raise ValueError(f"{at} vectors written, {count} expected")
    out.flush()
    del out
    return {"file": name, "count": count}


def _skip(chunks: Iterator[np.ndarray], rows: int) -> Iterator[np.ndarray]:
    """``chunks`` without their first ``rows`` rows."""
    for x in chunks:
        if rows >= len(x):
            rows -= len(x)
            continue
        yield x[rows:]
        rows = 0


@contextmanager
def _faiss_quiet() -> Iterator[None]:
    """FAISS's on-disk lists print progress lines on the C stdout (``resizing ...``, ``updating ondisk filename``):
    send them to stderr, so ``--json`` output on stdout stays parseable."""
    import ctypes
    import os
    import sys

    sys.stdout.flush()
    libc = ctypes.CDLL(None)
    libc.fflush(None)
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        libc.fflush(None)
        os.dup2(saved, 1)
        os.close(saved)


# ------------------------------------------------------------------------------------------------ training
def train_index(store: VectorStore, factory: str, seed: int = 0, max_train: int = MAX_TRAIN) -> Any:
    """The trained, empty inner-product index of ``factory``, trained on a random sample (fixed ``seed``) of at
    most ``max_train`` of the stored vectors."""
    import faiss

    n = len(store)
    dim = store.arrays[0].shape[1]
    rows = np.arange(n)
    if n > max_train:
        rows = np.sort(np.random.default_rng(seed).choice(n, size=max_train, replace=False))
    sample = normalized(store.take(rows))
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    if factory.startswith("OPQ"):  # FAISS's defaults (50 iterations on 65k vectors) take minutes on 2 cores
        opq = faiss.downcast_VectorTransform(index.chain.at(0))
        opq.niter, opq.max_train_points = OPQ_ITERATIONS, OPQ_MAX_TRAIN
    index.train(sample)
    return index


def encode_blocks(
    trained: Any, store: VectorStore, start: int, folder: Path, progress: Any = None
) -> list[Path]:
    """Encode the stored vectors from id ``start`` on in blocks of `CHUNK` (ids = their row numbers), each written
    to its own index file in ``folder``."""
    import faiss

    blocks = []
    for first, x in store.chunks(start):
        block = faiss.clone_index(trained)
        block.add_with_ids(normalized(x), np.arange(first, first + len(x), dtype=np.int64))
        path = folder / f"block-{len(blocks):06d}.faiss"
        faiss.write_index(block, str(path))
        blocks.append(path)
        del block
        if progress is not None:
            progress.update(len(x))
    return blocks


def merge_lists(trained: Any, sources: list[Any], lists_path: Path) -> Any:
    """``trained`` (empty) with the inverted lists of ``sources`` (FAISS indexes) merged into one on-disk lists
    file at ``lists_path``, as FAISS's ``contrib.ondisk.merge_ondisk``."""
    import faiss

    invlists = []
    for source in sources:
        ivf = faiss.extract_index_ivf(source)
        invlists.append(ivf.invlists)
    index = faiss.clone_index(trained)
    ivf = faiss.extract_index_ivf(index)
    if index.ntotal != 0:
        raise ValueError("the trained index must be empty")
    ondisk = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(lists_path))
    vector = faiss.InvertedListsPtrVector()
    for lists in invlists:
        vector.push_back(lists)
    ntotal = ondisk.merge_from_multiple(vector.data(), vector.size(), False, False)
    index.ntotal = ivf.ntotal = ntotal
    ivf.replace_invlists(ondisk, True)
    ondisk.this.disown()
    return index


def read_ondisk(path: Path) -> Any:
    """An ``index-*.faiss`` with its lists memory-mapped read-only from the same folder."""
    import faiss

    with _faiss_quiet():
        return faiss.read_index(str(path), faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY)


# ------------------------------------------------------------------------------------------------- writing
def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def can_append(previous: dict[str, Any] | None, fingerprint: str | None) -> bool:
    """Whether an update may encode its new vectors with ``previous``'s trained index (no retraining)."""
    if not previous or previous.get("type") != ONDISK_TYPE or "trained" not in previous:
        return False
    return fingerprint is None or previous["trained"].get("fingerprint") in (None, fingerprint)


def write_ondisk(
    output: Path,
    vectors: VectorChunks,
    num_vectors: int,
    dim: int,
    *,
    previous: dict[str, Any] | None = None,
    retrain: bool = False,
    fingerprint: str | None = None,
    seed: int = 0,
    max_train: int = MAX_TRAIN,
    progress: bool = False,
    search_params: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Write an ``ivfpq-disk`` index of the ``num_vectors`` float16 vectors that ``vectors()`` yields (in id
    order) under ``output/ondisk`` and return the manifest's ``index`` section (the caller writes the manifest,
    then calls `remove_unreferenced`).

    With ``previous`` (the current manifest's ``index`` section, of this type and trained with the same model)
    and not ``retrain``, the first ``previous["ntotal"]`` vectors are the indexed ones: only the rest are stored,
    encoded with the trained index and merged with the old lists. Otherwise the index is trained anew."""
    import faiss
    from tqdm.auto import tqdm  # not `embed.new_progress`: its module imports torch (400 MB), unneeded here

    folder = output / ONDISK_DIR
    folder.mkdir(parents=True, exist_ok=True)
    tag = secrets.token_hex(4)
    append = not retrain and can_append(previous, fingerprint)
    old = int(previous["ntotal"]) if append else 0
    if append and old > num_vectors:
        raise ValueError(f"{output}: {num_vectors} vectors, fewer than the {old} indexed")
    segments = [dict(s) for s in previous["vectors"]] if append else []
    if num_vectors > old or not segments:
        segment = _write_segment(folder, _skip(vectors(), old), num_vectors - old, dim, tag)
        segments.append({**segment, "start": old})
    store = VectorStore(folder, segments)
    if append:
        trained = faiss.read_index(str(folder / previous["trained_file"]))
        trained_file, factory = previous["trained_file"], previous["factory"]
        info = dict(previous["trained"])
    else:
        factory, default_params = disk_factory(num_vectors, dim)
        trained = train_index(store, factory, seed=seed, max_train=max_train)
        trained_file = f"trained-{tag}.faiss"
        faiss.write_index(trained, str(folder / trained_file))
        info = {
            "at": _now(),
            "num_vectors": num_vectors,
            "sample": min(num_vectors, max_train),
            "seed": seed,
            "fingerprint": fingerprint,
        }
    params = dict(previous["search_params"]) if append else {**default_params, **(search_params or {})}
    work = Path(folder / f".blocks-{tag}")
    work.mkdir()
    bar = tqdm(total=num_vectors - old, desc="encoding (IVF-PQ)", unit="vec", disable=not progress)
    try:
        blocks = encode_blocks(trained, store, old, work, bar)
        sources = [faiss.read_index(str(p), faiss.IO_FLAG_MMAP) for p in blocks]
        if append:
            sources.insert(0, read_ondisk(folder / Path(previous["file"]).name))
        with _faiss_quiet():
            index = merge_lists(trained, sources, folder / f"lists-{tag}.ivfdata")
        faiss.write_index(index, str(folder / f"index-{tag}.faiss"))
        ntotal = int(index.ntotal)
        del index, sources
    finally:
        bar.close()
        shutil.rmtree(work, ignore_errors=True)
    if ntotal != num_vectors:
        raise RuntimeError(f"the on-disk index holds {ntotal} vectors, {num_vectors} expected")
    added = num_vectors - int(info["num_vectors"])
    retrain_needed = bool(added > RETRAIN_FRACTION * int(info["num_vectors"]))
    if retrain_needed:
        logger.warning(
            "%s: %d vectors added since the index was trained on %d: retrain it with `rsmclip index rebuild %s`",
            output,
            added,
            info["num_vectors"],
            output,
        )
    return {
        "type": ONDISK_TYPE,
        "factory": factory,
        "search_params": params,
        "ntotal": ntotal,
        "file": f"{ONDISK_DIR}/index-{tag}.faiss",
        "lists_file": f"lists-{tag}.ivfdata",
        "trained_file": trained_file,
        "vectors": segments,
        "trained": info,
        "added_since_training": added,
        "retrain_fraction": RETRAIN_FRACTION,
        "retrain_needed": retrain_needed,
    }


def section_files(section: dict[str, Any]) -> list[str]:
    """The files (relative to the index folder) that the manifest's ``index`` section names: ``index.faiss``, or
    the on-disk index's index, trained index, lists and vector files."""
    if section.get("type") != ONDISK_TYPE:
        return [section["file"]]
    return [
        section["file"],
        f"{ONDISK_DIR}/{section['trained_file']}",
        f"{ONDISK_DIR}/{section['lists_file']}",
        *(f"{ONDISK_DIR}/{s['file']}" for s in section["vectors"]),
    ]


def remove_unreferenced(output: Path, section: dict[str, Any]) -> None:
    """After the manifest names ``section``'s files: delete the files of earlier versions (and the in-memory
    ``index.faiss`` when the index is on disk now, or the ``ondisk`` folder when it is not)."""
    folder = output / ONDISK_DIR
    if section.get("type") != ONDISK_TYPE:
        if folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
        return
    (output / "index.faiss").unlink(missing_ok=True)
    keep = {
        Path(section["file"]).name,
        section["lists_file"],
        section["trained_file"],
        *(s["file"] for s in section["vectors"]),
    }
    for path in folder.iterdir():
        if path.name not in keep:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------- search
def open_checked(path: Path, section: dict[str, Any]) -> OnDiskIndex:
    """`OnDiskIndex.open` with every file the section names kept inside the index folder and each damaged file
    named in one `IndexFileError` (FAISS's and numpy's errors on a damaged file, vectors of the wrong shape)."""
    from .integrity import IndexFileError, inside

    names = section_files(section)
    for name in names:
        inside(path, name, "on-disk index file")
    try:
        opened = OnDiskIndex.open(path, section)
    except (RuntimeError, ValueError, OSError, KeyError, TypeError) as err:
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise IndexFileError(
            f"{path / section.get('file', 'ondisk')}: the on-disk index cannot be opened ({reason}); "
            "`rsmclip index rebuild INDEX` writes it again from the shards"
        ) from err
    dim = opened.d
    for segment, array in zip(section["vectors"], opened.store.arrays):
        if array.ndim != 2 or array.shape != (int(segment["count"]), dim) or array.dtype != np.float16:
            raise IndexFileError(
                f"{path / ONDISK_DIR / segment['file']}: damaged, {array.dtype} {array.shape} where float16 "
                f"({segment['count']}, {dim}) was written; `rsmclip index rebuild INDEX` writes it again"
            )
    return opened


class OnDiskIndex:
    """An ``ivfpq-disk`` index opened for search: FAISS-like ``search(x, k, params=None)`` over the memory-mapped
    lists, with the ``k * rerank`` candidates re-ranked by their exact cosine from the float16 vectors."""

    def __init__(self, index: Any, store: VectorStore, nprobe: int, rerank: int) -> None:
        import faiss

        self.index = index
        self.store = store
        self.ivf = faiss.extract_index_ivf(index)
        self.ivf.nprobe = int(nprobe)
        self.rerank = max(1, int(rerank))

    @classmethod
    def open(cls, path: Path, section: dict[str, Any]) -> OnDiskIndex:
        params = section.get("search_params", {})
        index = read_ondisk(path / section["file"])
        store = VectorStore(path / ONDISK_DIR, section["vectors"])
        return cls(index, store, params.get("nprobe", 16), params.get("rerank", DEFAULT_RERANK))

    @property
    def d(self) -> int:
        return int(self.index.d)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def candidates(self, x: np.ndarray, k: int, params: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """The PQ index's own top ``k`` (approximate scores, ids; -1 where fewer), no re-ranking. ``params``: a
        ``faiss.SearchParametersIVF`` (an id selector, nprobe) or None for the index's nprobe."""
        import faiss

        if params is not None and not isinstance(params, faiss.SearchParametersPreTransform):
            wrapped = faiss.SearchParametersPreTransform()
            wrapped.index_params = params  # the caller keeps ``params`` alive during the search
            params = wrapped
        x = np.ascontiguousarray(x, dtype=np.float32)
        return self.index.search(x, int(k), params=params)

    def search(self, x: np.ndarray, k: int, params: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """The top ``k`` (exact cosine scores, ids) of each row of ``x`` among the ``k * rerank`` candidates."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        k = int(k)
        _, cand = self.candidates(x, min(self.ntotal, k * self.rerank), params)
        scores = np.full((len(x), k), -np.inf, dtype=np.float32)
        ids = np.full((len(x), k), -1, dtype=np.int64)
        for row, (q, c) in enumerate(zip(x, cand)):
            c = c[c >= 0]
            if len(c) == 0:
                continue
            v = self.store.take(c).astype(np.float32)
            exact = (v @ q) / np.maximum(np.sqrt(np.einsum("ij,ij->i", v, v)), 1e-12)
            top = np.argpartition(-exact, k - 1)[:k] if len(c) > k else np.arange(len(c))
            top = top[np.argsort(-exact[top], kind="stable")]
            scores[row, : len(top)] = exact[top]
            ids[row, : len(top)] = c[top]
        return scores, ids
