"""Build, resume and extend an index folder; merge its Parquet shards into a FAISS index and a manifest.

Index folder layout::

    INDEX_DIR/
      manifest.json          model id + fingerprint, processor settings, index type and parameters, counts, versions
      index.faiss            FAISS index over the L2-normalised embeddings (inner product = cosine)
      metadata.parquet       one row per FAISS id: id, path, window, footprint, content hash, label, source, ...
      report.json            unreadable files, mostly-nodata tiles, duplicates, unchanged files (with paths); for
                             STAC sources also network errors (by item and window) and items without the bands
      shards/shard-rRRR-SSSSSS.parquet   embeddings (float16) + metadata of run R, shard S (done = exists)
      runs/run-RRR.json      what run R embeds (sources or STAC query, options, work-list digest, shard count)
      runs/listing-RRR.items.json, listing-RRR.report.json   a STAC run's work list and listing report (`index.catalog`)

``metadata.parquet`` is GeoParquet when the index is georeferenced (`index.geoparquet`: the tiles' footprints as a
WKB ``geometry`` column in lon/lat).

A run (``build`` or ``add``) expands its sources into a fixed work list, cut into shards of ``shard_size`` items.
Shard ``S`` is embedded by process ``S % world_size``, so ``accelerate launch`` / ``torchrun`` split the work and
give the same shards as one process. When every shard exists, rank 0 merges them (`finalize`): duplicates across
shards are dropped (the first occurrence in work-list order is kept), the FAISS index is rebuilt over all rows,
and the manifest is written last.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..inference import (
    autocast_precision,
    check_backend,
    load_encoder,
    load_model,
    model_name,
    resolve_device,
    resolve_model_source,
)
from ..inference.families import embedding_dim, model_family, text_rule
from .common import FINGERPRINT_VERSION, index_fingerprint, require_index_dependencies
from .embed import _atomic_write_json, embed_shard, new_progress, shard_name, write_shard
from .search import RSMCLIPIndex
from .sources import SourceOptions, collect_items, worklist_digest

logger = logging.getLogger(__name__)

FORMAT = "rsmclip-index"
FORMAT_VERSION = 1
INDEX_TYPES = ("auto", "flat", "ivf-flat", "ivf-pq", "hnsw", "ivfpq-disk")
EXACT_THRESHOLD = 100_000  # auto: exact search up to this many vectors
IVF_FLAT_MAX = 2_000_000  # auto: IVF-Flat up to this many, IVF-PQ beyond
ONDISK_MIN = 10_000_000  # auto: beyond this many, IVF-PQ on disk with exact re-ranking (`index.ondisk`)
DEFAULT_SHARD_SIZE = 4096
ENGINES = ("local", "ray")  # local: this process, or the processes of accelerate launch / torchrun


# ------------------------------------------------------------------------------------------------ FAISS choice
def _pow2(x: float) -> int:
    return 1 << max(0, round(math.log2(max(1.0, x))))


def index_kind(
    num_vectors: int, index_type: str = "auto", exact_threshold: int = EXACT_THRESHOLD
) -> str | None:
    """The index type ``auto`` stands for at ``num_vectors`` (other types as given; None for a factory string)."""
    kind = index_type.lower() if index_type.lower() in INDEX_TYPES else None
    if kind != "auto":
        return kind
    if num_vectors <= exact_threshold:
        return "flat"
    if num_vectors <= IVF_FLAT_MAX:
        return "ivf-flat"
    return "ivf-pq" if num_vectors <= ONDISK_MIN else "ivfpq-disk"


def choose_index(
    num_vectors: int, dim: int, index_type: str = "auto", exact_threshold: int = EXACT_THRESHOLD
) -> tuple[str, dict[str, int]]:
    """The FAISS factory string and search parameters for ``num_vectors`` vectors of ``dim`` dimensions.

    ``auto``: exact (``Flat``) up to ``exact_threshold`` vectors, ``IVF<nlist>,Flat`` up to 2M, ``IVF<nlist>,PQ<m>``
    up to 10M, with ``nlist`` the power of two nearest ``4 sqrt(n)`` (at most n/39, FAISS's minimum training points
    per list) and ``nprobe = nlist / 32`` (at least 8) lists probed; beyond 10M ``ivfpq-disk``
    (`ondisk.disk_factory`: OPQ, inverted lists on disk, exact re-ranking). ``hnsw``: ``HNSW32,Flat`` with efSearch 128.
    Any other string containing a comma or starting with an upper-case letter is taken as a FAISS factory string.
    """
    kind = index_kind(num_vectors, index_type, exact_threshold)
    if kind is None:
        if not index_type or not (index_type[0].isupper() or "," in index_type):
            raise ValueError(
                f"index type must be one of {INDEX_TYPES} or a FAISS factory string, got {index_type!r}"
            )
        return index_type, {}
    if kind == "ivfpq-disk":
        from .ondisk import disk_factory

        return disk_factory(num_vectors, dim)
    if kind == "flat":
        return "Flat", {}
    if kind == "hnsw":
        return "HNSW32,Flat", {"efSearch": 128}
    nlist = max(1, min(_pow2(4 * math.sqrt(num_vectors)), num_vectors // 39))
    nprobe = min(nlist, max(8, nlist // 32))
    if kind == "ivf-flat":
        return f"IVF{nlist},Flat", {"nprobe": nprobe}
    m = next(m for m in (64, 48, 32, 24, 16, 12, 8, 4, 2, 1) if dim % m == 0 and m <= dim)
    from .ondisk import pq_bits

    bits = pq_bits(num_vectors)  # 256 centroids per sub-quantizer need at least 256 training vectors
    return f"IVF{nlist},PQ{m}" + (f"x{bits}" if bits < 8 else ""), {"nprobe": nprobe}


def build_faiss(embeddings: np.ndarray, factory: str, seed: int = 0, max_train: int | None = None) -> Any:
    """A FAISS inner-product index of ``factory`` over ``embeddings`` (float32, L2-normalised rows), trained on a
    random sample (fixed seed) when the index type needs training."""
    import faiss

    n, dim = embeddings.shape
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        nlist = faiss.extract_index_ivf(index).nlist if "IVF" in factory else 0
        limit = max_train or max(50_000, 64 * nlist)
        sample = embeddings
        if n > limit:
            rows = np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))
            sample = embeddings[rows]
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
    for start in range(0, n, 1 << 16):
        index.add(np.ascontiguousarray(embeddings[start : start + (1 << 16)], dtype=np.float32))
    return index


def check_trainable(factory: str, num_vectors: int) -> None:
    """Refuse, before any work, a FAISS index that cannot be trained on ``num_vectors`` vectors: an inverted file
    needs at least as many vectors as lists (``IVF<nlist>``), product quantisation at least 2^bits per codebook
    (256 for ``PQ<m>``). The automatic types choose their lists from the count and always fit."""
    import re

    if num_vectors < 1:
        return
    need, what = 0, ""
    ivf = re.search(r"IVF(\d+)", factory)
    if ivf and int(ivf.group(1)) > need:
        need, what = int(ivf.group(1)), f"{ivf.group(0)} has {ivf.group(1)} lists"
    pq = re.search(r"PQ\d+(?:x(\d+))?", factory)
    if pq and 2 ** int(pq.group(1) or 8) > need:
        need, what = (
            2 ** int(pq.group(1) or 8),
            f"{pq.group(0)} trains {2 ** int(pq.group(1) or 8)} centroids",
        )
    if num_vectors < need:
        raise ValueError(
            f"the FAISS index {factory!r} cannot be trained on {num_vectors} images: {what}, which needs at least "
            f"{need} vectors; use --index-type auto, flat or ivf-flat (lists chosen from the count), or fewer lists"
        )


def _faiss_factory(index_type: str, num_vectors: int, dim: int, exact_threshold: int) -> str:
    """The factory string an index type gives for ``num_vectors`` vectors, checked by FAISS and `check_trainable`."""
    import faiss

    factory, _ = choose_index(max(1, num_vectors), dim, index_type, exact_threshold)
    try:
        faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else "unknown"
        raise ValueError(
            f"{index_type!r} is not a FAISS index factory string FAISS can build ({reason})"
        ) from err
    check_trainable(factory, num_vectors)
    return factory


def processor_settings(processor: Any, max_text_length: int = 77) -> dict[str, Any]:
    image_processor = getattr(processor, "image_processor", None)
    tokenizer = getattr(processor, "tokenizer", None)
    settings: dict[str, Any] = {}
    if image_processor is not None and hasattr(image_processor, "to_dict"):
        settings["image_processor"] = {
            k: v for k, v in image_processor.to_dict().items() if not k.startswith("_") and k != "auto_map"
        }
    if tokenizer is not None:
        settings["tokenizer"] = {
            "class": type(tokenizer).__name__,
            "vocab_size": len(tokenizer),
            "max_length": int(max_text_length),
        }
    return settings


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    versions = {}
    for name in (
        "rsmclip",
        "torch",
        "transformers",
        "faiss-cpu",
        "faiss-gpu",
        "pyarrow",
        "rasterio",
        "numpy",
    ):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    import faiss

    versions.setdefault("faiss", faiss.__version__)
    return versions


# ----------------------------------------------------------------------------------------------- distribution
class _Processes:
    """Process index / count under ``accelerate launch`` or ``torchrun`` (accelerate's `PartialState`), or one."""

    def __init__(self) -> None:
        self.state = None
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            import torch
            from accelerate import PartialState

            # On CPUs the processes talk over gloo (cpu=True), on GPUs over NCCL.
            self.state = PartialState(cpu=not torch.cuda.is_available())
            if self.state.num_processes != int(os.environ["WORLD_SIZE"]):
                raise RuntimeError(
                    f"WORLD_SIZE is {os.environ['WORLD_SIZE']} but accelerate sees {self.state.num_processes} processes"
                )
        self.rank = self.state.process_index if self.state else 0
        self.world = self.state.num_processes if self.state else 1

    @property
    def device(self) -> Any:
        return self.state.device if self.state else None

    def barrier(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()


# ------------------------------------------------------------------------------------------------------ runs
def _read_json(path: Path) -> Any:
    from .integrity import read_json

    return read_json(path)


RUN_KEYS = (
    "run",
    "kind",
    "sources",
    "digest",
    "fingerprint",
    "num_items",
    "shard_size",
    "num_shards",
    "complete",
)


def _runs(output: Path, manifest: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The run plans of an index folder, each checked (one error naming a damaged file); with the ``manifest``,
    every run it lists must have its plan (a deleted plan would make the next run reuse its shards)."""
    from .integrity import IndexFileError

    runs_dir = output / "runs"
    runs = []
    for i, path in enumerate(sorted(runs_dir.glob("run-*.json")) if runs_dir.is_dir() else []):
        plan = _read_json(path)
        missing = [k for k in RUN_KEYS if not isinstance(plan, dict) or k not in plan]
        if missing:
            raise IndexFileError(f"{path}: damaged run plan (no {', '.join(missing)})")
        if plan["run"] != i or path.name != f"run-{i:03d}.json":
            raise IndexFileError(
                f"{path}: the run plans are not numbered 0, 1, ...: run {i} is missing or renamed"
            )
        runs.append(plan)
    for entry in (manifest or {}).get("runs", []):
        number = entry.get("run") if isinstance(entry, dict) else None
        if isinstance(number, int) and number >= len(runs):
            raise IndexFileError(
                f"{runs_dir / f'run-{number:03d}.json'}: missing (the manifest lists run {number}); restore it, or "
                "rebuild the index with `rsmclip index build`"
            )
    return runs


def _shard_done(output: Path, run: int, shard: int) -> bool:
    return (output / "shards" / f"{shard_name(run, shard)}.parquet").is_file()


def _known_hashes(output: Path) -> dict[str, str]:
    path = output / "metadata.parquet"
    if not path.is_file():
        return {}
    from .integrity import read_parquet

    table = read_parquet(path, columns=["content_hash", "id"])
    return dict(zip(table["content_hash"].to_pylist(), table["id"].to_pylist()))


def _embed_shards_here(
    directory: Path,
    shards: dict[str, Sequence[Any]],
    encoder: Any,
    processor: Any,
    *,
    options: SourceOptions,
    known_hashes: dict[str, str],
    dim: int,
    fingerprint: str,
    batch_size: int,
    num_workers: int | None,
    precision: str,
    device: str,
    progress: bool,
    desc: str,
) -> None:
    """The local engine: embed and write ``shards`` (name -> items) in this process, with data-loader workers."""
    from ..evaluation.embed import Embedder

    embedder = Embedder(
        encoder,
        processor,
        device=device,
        batch_size=batch_size,
        num_workers=num_workers,
        precision=precision,
        cache_dir=None,
        show_progress=False,
        model_key=fingerprint,
    )
    bar = new_progress(sum(len(items) for items in shards.values()), desc, progress)
    try:
        for name, shard_items in shards.items():
            rows, embeddings, report = embed_shard(
                shard_items,
                embedder,
                options,
                known_hashes,
                num_workers=embedder.num_workers,
                batch_size=batch_size,
                progress=bar,
            )
            write_shard(directory, name, rows, embeddings, report, dim)
    finally:
        bar.close()


def _check_run_options(
    shard_size: Any,
    batch_size: Any,
    backend: str,
    precision: str,
    device: str | None,
    engine: str,
    ray_address: str | None,
    ray_actors: int | None,
) -> bool:
    """Refuse bad sizes, backend / precision / device choices and engine options before any work; True when the
    encoder is a CPU inference backend (`inference.check_backend`)."""
    for option, value in (("shard size", shard_size), ("batch size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"the {option} must be a whole number >= 1, got {value!r}")
    wrapped = check_backend(backend, precision, device)
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine != "ray" and (ray_address is not None or ray_actors is not None):
        raise ValueError("a Ray address or actor count needs the ray engine (--engine ray)")
    if ray_actors is not None and ray_actors < 1:
        raise ValueError(f"the number of Ray model actors must be >= 1, got {ray_actors}")
    if engine == "ray":
        from .ray_engine import require_ray

        require_ray()
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError(
                "the ray engine runs from one process: start it without accelerate launch or torchrun"
            )
    return wrapped


def _plan_run(
    kind: str,
    output: Path,
    pending: dict[str, Any] | None,
    *,
    runs: list[dict[str, Any]],
    sources: Sequence[Any],
    stac: Any,
    options: SourceOptions,
    items: list[Any],
    listing: dict[str, list],
    digest: str,
    fingerprint: str,
    shard_size: int,
    index_type: str,
    backend: str,
    precision: str,
    write: bool,
) -> dict[str, Any]:
    """The run to do: the unfinished one of the same sources and model (resumed), or a new run planned and saved
    (by the process that ``write``s) with its work listing."""
    if pending is not None:
        if pending["digest"] != digest or pending["fingerprint"] != fingerprint:
            raise ValueError(
                f"{output} holds an unfinished {pending['kind']} of other sources ({', '.join(pending['sources'])}): "
                f"rerun that command to finish it, or remove {output}/runs/run-{pending['run']:03d}.json"
            )
        logger.info("resuming run %d of %s", pending["run"], output)
        return pending
    plan = {
        "run": len(runs),
        "kind": kind,
        "sources": [str(Path(s).resolve()) for s in sources] if stac is None else [stac.url],
        "options": options.to_dict(),
        "digest": digest,
        "fingerprint": fingerprint,
        "num_items": len(items),
        "shard_size": shard_size,
        "num_shards": math.ceil(len(items) / shard_size),
        "index_type": index_type,
        "backend": backend,
        "precision": precision,
        "complete": False,
        "started": _now(),
    }
    if stac is not None:
        plan["stac"] = stac.to_dict()
    if write:
        _save_listing(output, plan["run"], items, listing, stac is not None)
        (output / "runs").mkdir(parents=True, exist_ok=True)
        _atomic_write_json(output / "runs" / f"run-{plan['run']:03d}.json", plan)
    return plan


def _embed_todo(
    output: Path,
    todo: dict[str, list[Any]],
    model: Any,
    processor: Any,
    *,
    engine: str,
    model_source: Any,
    owned: bool,
    options: SourceOptions,
    known_hashes: dict[str, str],
    dim: int,
    fingerprint: str,
    batch_size: int,
    num_workers: int | None,
    backend: str,
    precision: str,
    device: str,
    actor_device: str | None,
    ray_address: str | None,
    ray_actors: int | None,
    progress: bool,
    procs: _Processes,
) -> Any:
    """Embed this process's shards (``todo``: shard name -> items) on the engine; returns the encoder that ran
    (the model itself for Ray, whose actors load their own)."""
    if engine == "ray":
        from .ray_engine import embed_shards

        embed_shards(
            output / "shards",
            todo,
            model=model_source,
            processor=processor,
            options=options,
            known_hashes=known_hashes,
            dim=dim,
            fingerprint=fingerprint,
            batch_size=batch_size,
            backend=backend,
            precision=precision,
            device=actor_device,
            address=ray_address,
            actors=ray_actors,
            num_workers=num_workers,
            progress=progress,
        )
        return model
    # The fingerprint is the PyTorch model's: an index belongs to the weights, not to how they were run.
    encoder = load_encoder(model, backend, precision, processor, inplace=owned)
    _embed_shards_here(
        output / "shards",
        todo,
        encoder,
        processor,
        options=options,
        known_hashes=known_hashes,
        dim=dim,
        fingerprint=fingerprint,
        batch_size=batch_size,
        num_workers=num_workers,
        precision=autocast_precision(backend, precision),
        device=device,
        progress=progress,
        desc=f"indexing [process {procs.rank}/{procs.world}]" if procs.world > 1 else "indexing",
    )
    return encoder


def _load_index_model(
    model: Any, processor: Any, device: str, output: Path, manifest: dict[str, Any] | None
) -> tuple[Any, Any, str, str]:
    """The model and processor (`inference.load_model`), the name the manifest gives the model, and its
    fingerprint, checked against the index's when there is one."""
    name = str(model) if isinstance(model, str | os.PathLike) else ""
    model, processor = load_model(model, processor, device=device)
    name = name or model_name(model)
    fingerprint = index_fingerprint(model, processor, manifest)
    if manifest is not None and manifest["model"]["fingerprint"] != fingerprint:
        raise ValueError(
            f"{output} was built with another model or processor ({manifest['model']['name_or_path']!r}, "
            f"fingerprint {manifest['model']['fingerprint'][:12]}), not {name!r} (fingerprint {fingerprint[:12]})"
        )
    return model, processor, name, fingerprint


def _run(
    kind: str,
    model: Any,
    output: Path,
    sources: Sequence[str | os.PathLike],
    options: SourceOptions,
    *,
    processor: Any,
    index_type: str,
    batch_size: int,
    num_workers: int | None,
    shard_size: int,
    precision: str,
    device: str | None,
    exact_threshold: int,
    progress: bool,
    backend: str = "torch",
    stac: Any = None,
    engine: str = "local",
    ray_address: str | None = None,
    ray_actors: int | None = None,
) -> Any:
    require_index_dependencies()
    wrapped = _check_run_options(
        shard_size, batch_size, backend, precision, device, engine, ray_address, ray_actors
    )
    # The returned index embeds queries like the images were (a bf16/fp16 GPU build is queried in fp32).
    query_backend = {"backend": backend, "precision": precision} if wrapped else {}
    actor_device = device
    if engine == "ray":
        # The Ray actors embed on their own devices; this process only reads the model's fingerprint, on the CPU.
        device = "cpu"
    procs = _Processes()
    if wrapped:
        device = "cpu"
    device = device or (str(procs.device) if procs.device is not None else resolve_device())
    output = Path(output)
    manifest_path = output / "manifest.json"
    manifest = _checked_manifest(output) if manifest_path.is_file() else None
    if kind == "add" and manifest is None:
        raise _no_index(output)
    if stac is not None:
        items, listing = _stac_items(kind, output, stac, options, progress)
    else:
        items, listing = _local_items(sources, options)
    if kind == "add" and model is None:
        model = manifest["model"]["name_or_path"]
    owned = isinstance(model, str | os.PathLike)  # loaded here: int8 may quantise it in place (one copy)
    model_source = resolve_model_source(model) if owned else None  # what the Ray actors load
    model, processor, name, fingerprint = _load_index_model(model, processor, device, output, manifest)

    digest = worklist_digest(items)
    runs = _runs(output, manifest)
    pending = next((r for r in runs if not r["complete"]), None)
    _faiss_factory(  # an index type that cannot hold this many vectors is refused before anything is planned
        pending.get("index_type", index_type) if pending else index_type,
        len(items) + (manifest["counts"]["items"] if manifest else 0),
        embedding_dim(model),
        exact_threshold,
    )
    if pending is None and kind == "build" and manifest is not None:
        if runs and runs[0]["digest"] == digest:
            logger.info("%s is already built from these sources", output)
            return RSMCLIPIndex.load(output, model=model, processor=processor, **query_backend)
        raise ValueError(
            f"{output} already holds an index: add to it with `rsmclip index add {output} SOURCE...`"
        )
    plan = _plan_run(
        kind,
        output,
        pending,
        runs=runs,
        sources=sources,
        stac=stac,
        options=options,
        items=items,
        listing=listing,
        digest=digest,
        fingerprint=fingerprint,
        shard_size=shard_size,
        index_type=index_type,
        backend=backend,
        precision=precision,
        write=procs.rank == 0,
    )
    procs.barrier()

    run, size = plan["run"], plan["shard_size"]
    mine = [
        s
        for s in range(plan["num_shards"])
        if s % procs.world == procs.rank and not _shard_done(output, run, s)
    ]
    known = _known_hashes(output)
    dim = embedding_dim(model)
    family = model_family(model)
    todo = {shard_name(run, s): items[s * size : (s + 1) * size] for s in mine}
    encoder = _embed_todo(
        output,
        todo,
        model,
        processor,
        engine=engine,
        model_source=model_source if owned else model,
        owned=owned,
        options=options,
        known_hashes=known,
        dim=dim,
        fingerprint=fingerprint,
        batch_size=batch_size,
        num_workers=num_workers,
        backend=backend,
        precision=precision,
        device=device,
        actor_device=actor_device,
        ray_address=ray_address,
        ray_actors=ray_actors,
        progress=progress,
        procs=procs,
    )
    procs.barrier()
    if procs.rank == 0:
        finalize(
            output,
            model_name=name,
            fingerprint=fingerprint,
            processor=processor,
            dim=dim,
            family=family.name,
            max_text_length=text_rule(model).max_length,
            index_type=plan.get("index_type", index_type),
            exact_threshold=exact_threshold,
            manifest=manifest,
            backend=plan.get("backend", backend),
            precision=plan.get("precision", precision),
            progress=progress,
        )
        plan["complete"] = True
        plan["finished"] = _now()
        _atomic_write_json(output / "runs" / f"run-{run:03d}.json", plan)
    procs.barrier()
    if procs.state is not None:
        procs.state.destroy_process_group()
    if encoder is not model and owned and backend == "torch":
        # The model's weights are int8 now: open the index without re-checking them, and query through the
        # encoder the images went through (its fingerprint was checked above, on the fp32 weights).
        index = RSMCLIPIndex.load(output)
        index.adopt(model, processor, encoder, fingerprint)
        return index
    return RSMCLIPIndex.load(output, model=model, processor=processor, **query_backend)


def _no_index(output: Path) -> FileNotFoundError:
    damaged = (output / "metadata.parquet").exists() or (output / "index.faiss").exists()
    return FileNotFoundError(
        f"no index at {output}: {output / 'manifest.json'} not found"
        + (
            " (the folder holds index files without their manifest: build the index again in a new folder)"
            if damaged
            else ": build it first with `rsmclip index build`"
        )
    )


def _local_items(sources: Sequence[Any], options: SourceOptions) -> tuple[list[Any], dict[str, list]]:
    """The work list of folders, files and a dataset, and the listing report: every entry that could not be
    listed (unreadable folders, broken symlinks, symlink loops), for ``report.json``."""
    skipped: list[dict[str, Any]] = []
    items = collect_items(sources, options, skipped)
    if not items:
        why = (
            f" ({len(skipped)} entries could not be read, first: {skipped[0]['path']}: {skipped[0]['error']})"
        )
        raise ValueError(f"no images found in {', '.join(map(str, sources))}{why if skipped else ''}")
    return items, {"unreadable": skipped}


def _save_listing(output: Path, run: int, items: list[Any], listing: dict[str, list], stac: bool) -> None:
    """A STAC run's work list and listing report, or what a run's folders held that could not be listed."""
    from .catalog import save_listing

    if stac:
        save_listing(output, run, items, listing)
    elif listing["unreadable"]:
        (output / "runs").mkdir(parents=True, exist_ok=True)
        _atomic_write_json(output / "runs" / f"listing-{run:03d}.report.json", listing)


def _checked_manifest(output: Path) -> dict[str, Any]:
    """The manifest of an index being extended, after checking every file it lists (`index.integrity`)."""
    from .integrity import IndexFileError, read_manifest, verify_files

    before = (output / "manifest.json").stat()
    try:
        manifest = read_manifest(output)
        verify_files(output, manifest)
    except IndexFileError:
        # Another run finishing meanwhile replaces the files, then the manifest: check them again once.
        after = (output / "manifest.json").stat()
        if (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns):
            raise
        manifest = read_manifest(output)
        verify_files(output, manifest)
    return manifest


def _stac_items(kind: str, output: Path, stac: Any, options: Any, progress: bool) -> tuple[list, dict]:
    """The work list and listing report of a STAC query (`index.catalog`); a build with nothing to embed is an
    error that says why."""
    from .catalog import stac_work_list

    # A build lists every item (a second build of the same query is then recognised as done); an add leaves out
    # the items already indexed.
    items, listing = stac_work_list(output, stac, options, progress=progress, skip_indexed=kind == "add")
    if not items and kind == "build":
        reasons = [
            f"{len(entries)} {key.replace('_', ' ')} (first: {entries[0].get('error') or entries[0].get('reason')})"
            for key, entries in listing.items()
            if entries
        ]
        raise ValueError(
            f"nothing to index from {stac.url}: "
            + (
                "; ".join(reasons)
                if reasons
                else "the query found no items (check --collection, --bbox, --datetime)"
            )
        )
    return items, listing


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


MEMORY_INDEX_TMP = ".index.faiss.tmp"


def _read_shard_metadata(path: Path) -> Any:
    """A shard's rows without their embeddings (read shard by shard when the index is written), or an
    `IndexFileError` naming a damaged shard."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .integrity import read_parquet

    try:
        names = pq.read_schema(path).names
    except (pa.ArrowException, OSError, ValueError):
        names = None  # `read_parquet` names the damage
    table = read_parquet(path, columns=None if names is None else [c for c in names if c != "embedding"])
    return table.drop_columns(["embedding"]) if "embedding" in table.column_names else table


def _write_memory_index(
    output: Path, vectors: Any, n: int, factory: str, params: dict[str, int], index_type: str
) -> dict[str, Any]:
    """Train and fill the in-memory FAISS index of the ``n`` vectors that ``vectors()`` yields, write it to a
    temporary file beside ``index.faiss`` (renamed into place by `finalize`) and return the manifest's section."""
    import faiss

    from . import ondisk

    check_trainable(factory, n)
    embeddings = ondisk.normalized(np.concatenate(list(vectors())))
    try:
        index = build_faiss(embeddings, factory)
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else "unknown"
        raise ValueError(
            f"{output}: the FAISS index {factory!r} cannot be built on {n} vectors ({reason})"
        ) from err
    del embeddings
    faiss.write_index(index, str(output / MEMORY_INDEX_TMP))
    return {
        "type": index_type,
        "factory": factory,
        "search_params": params,
        "ntotal": int(index.ntotal),
        "file": "index.faiss",
    }


def _merge_shards(shard_files: list[Path]) -> tuple[Any, np.ndarray, dict[str, list]]:
    """The shards' rows without embeddings, duplicates dropped (``keep``: the mask of kept rows over all shard
    rows in order), and their reports merged."""
    import pyarrow as pa

    tables = []
    report: dict[str, list] = {
        "unreadable": [],
        "nodata_tiles": [],
        "duplicates": [],
        "unchanged": [],
        "network_errors": [],
        "missing_bands": [],
    }
    for path in shard_files:  # the metadata; the embeddings are read shard by shard below
        tables.append(_read_shard_metadata(path))
        part = _read_json(path.with_name(path.name[: -len(".parquet")] + ".report.json"))
        for key in report:
            report[key].extend(part.get(key, []))
    table = pa.concat_tables(tables, promote_options="default")
    # Duplicates across shards (or processes): keep the first occurrence in work-list order.
    hashes = table["content_hash"].to_pylist()
    first: dict[str, int] = {}
    keep = np.zeros(len(hashes), dtype=bool)
    ids = table["id"].to_pylist()
    paths = table["path"].to_pylist()
    for i, h in enumerate(hashes):
        if h in first:
            report["duplicates"].append({"id": ids[i], "path": paths[i], "duplicate_of": ids[first[h]]})
        else:
            first[h] = i
            keep[i] = True
    if not keep.all():
        table = table.filter(pa.array(keep))
    return table, keep, report


def finalize(
    output: Path,
    *,
    model_name: str,
    fingerprint: str,
    processor: Any,
    dim: int,
    index_type: str = "auto",
    exact_threshold: int = EXACT_THRESHOLD,
    manifest: dict[str, Any] | None = None,
    backend: str = "torch",
    precision: str = "fp32",
    family: str | None = None,
    max_text_length: int = 77,
    retrain: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Merge every shard into ``metadata.parquet``, ``index.faiss``, ``report.json`` and ``manifest.json``
    (``family``: the model family, `inference.families`, recorded with the model; ``processor`` None: the
    manifest's processor settings are kept). An ``ivfpq-disk`` index is appended to unless ``retrain``
    (`ondisk.write_ondisk`)."""
    import pyarrow.parquet as pq

    from .catalog import merge_listing_reports, settle_network_errors
    from .geoparquet import with_geometry
    from .integrity import describe_files

    shard_files = sorted((output / "shards").glob("*.parquet"))
    table, keep, report = _merge_shards(shard_files)
    n = table.num_rows
    merge_listing_reports(output, report)
    if "stac_item" in table.column_names:
        items = zip(table["stac_collection"].to_pylist(), table["stac_item"].to_pylist())
        settle_network_errors(report, table["id"].to_pylist(), items)
    if n == 0:
        _atomic_write_json(output / "report.json", report)
        raise ValueError(f"{output}: nothing could be indexed; see {output / 'report.json'}")
    from . import ondisk

    vectors = ondisk.shard_vectors(shard_files, keep, dim)
    factory, params = choose_index(n, dim, index_type, exact_threshold)
    if index_kind(n, index_type, exact_threshold) == ondisk.ONDISK_TYPE:
        section = ondisk.write_ondisk(
            output,
            vectors,
            n,
            dim,
            previous=(manifest or {}).get("index"),
            retrain=retrain,
            fingerprint=fingerprint,
            progress=progress,
        )
    else:
        section = _write_memory_index(output, vectors, n, factory, params, index_type)
    metadata = with_geometry(table)
    tmp_meta = output / ".metadata.parquet.tmp"
    pq.write_table(metadata, tmp_meta)
    _atomic_write_json(output / "report.json", report)
    os.replace(tmp_meta, output / "metadata.parquet")
    if section["file"] == "index.faiss":
        os.replace(output / MEMORY_INDEX_TMP, output / "index.faiss")
    georeferenced = "bbox" in metadata.column_names and metadata["bbox"].null_count < n
    runs = _runs(output)
    new_manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": {
            "name_or_path": model_name,
            "family": family or (manifest or {}).get("model", {}).get("family"),
            "fingerprint": fingerprint,
            # An index keeps the recipe it was made with (checked against the model above).
            "fingerprint_version": FINGERPRINT_VERSION
            if manifest is None
            else manifest["model"].get("fingerprint_version", 2),
        },
        # (no processor: a repair from the shards, `index.verify`, or a rebuild keeps the recorded settings)
        "processor": processor_settings(processor, max_text_length)
        if processor is not None or manifest is None
        else manifest.get("processor", {}),
        "embedding": {
            "dim": dim,
            "stored_dtype": "float16",
            "normalized": True,
            "metric": "cosine (inner product)",
            # How the latest run embedded its images (each run's is under "runs").
            "backend": backend,
            "precision": precision,
        },
        "index": section,
        "counts": {
            "items": n,
            "shards": len(shard_files),
            "unreadable": len(report["unreadable"]),
            "nodata_tiles": len(report["nodata_tiles"]),
            "duplicates": len(report["duplicates"]),
            "unchanged": len(report["unchanged"]),
            "network_errors": len(report["network_errors"]),
            "missing_bands": len(report["missing_bands"]),
        },
        "georeferenced": bool(georeferenced),
        "columns": [c for c in metadata.column_names],
        "runs": [
            {
                **{k: r[k] for k in ("run", "kind", "sources", "num_items", "num_shards", "options")},
                **{k: r[k] for k in ("backend", "precision", "stac") if k in r},
            }
            for r in runs
        ],
        # Size and checksum of every file the index is read from (`index.integrity`), checked when it is loaded.
        "files": describe_files(
            output,
            [*ondisk.section_files(section), "metadata.parquet"]
            + [f"shards/{p.name}" for p in shard_files]
            + [f"shards/{p.name[: -len('.parquet')]}.report.json" for p in shard_files],
        ),
        "versions": library_versions(),
        "created": (manifest or {}).get("created", _now()),
        "updated": _now(),
    }
    _atomic_write_json(output / "manifest.json", new_manifest)
    ondisk.remove_unreferenced(output, section)
    return new_manifest


def rebuild_index(
    path: str | Path, index_type: str | None = None, *, progress: bool = True
) -> dict[str, Any]:
    """Retrain and rewrite the FAISS index of the index folder ``path`` from its stored float16 shards (no
    re-embedding, no model needed), as ``index_type`` (default: the manifest's). The new files are written beside
    the old ones and the manifest switches to them last, so an interrupted rebuild leaves the old index usable.
    Returns the new manifest."""
    path = Path(path)
    from .integrity import read_manifest, verify_files

    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise _no_index(path)
    manifest = read_manifest(path)
    # The shards are what the index is rebuilt from: refuse damaged ones (their checksums) before any work.
    verify_files(path, manifest, [n for n in manifest.get("files") or {} if n.startswith("shards/")])
    runs = sorted((path / "runs").glob("run-*.json")) if (path / "runs").is_dir() else []
    for run in runs:
        if not _read_json(run).get("complete"):
            raise ValueError(
                f"{path} has an unfinished run ({run.name}): finish it by rerunning its `rsmclip index` command first"
            )
    index_type = index_type or manifest["index"]["type"]
    choose_index(1, 8, index_type)  # validate before any work
    model = manifest["model"]
    embedding = manifest["embedding"]
    return finalize(
        path,
        model_name=model["name_or_path"],
        fingerprint=model["fingerprint"],
        processor=None,
        dim=int(embedding["dim"]),
        index_type=index_type,
        manifest=manifest,
        backend=embedding.get("backend", "torch"),
        precision=embedding.get("precision", "fp32"),
        family=model.get("family"),
        retrain=True,
        progress=progress,
    )


# ---------------------------------------------------------------------------------------------- public entry
def build_index(
    model: Any,
    output: str | os.PathLike,
    sources: Sequence[str | os.PathLike],
    *,
    processor: Any = None,
    dataset: str | None = None,
    split: str | None = None,
    tile_size: int | None = None,
    overlap: int = 0,
    preset: str | None = None,
    bands: list[int] | None = None,
    min_valid: float = 0.5,
    index_type: str = "auto",
    batch_size: int = 64,
    num_workers: int | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    precision: str = "fp32",
    backend: str = "torch",
    device: str | None = None,
    exact_threshold: int = EXACT_THRESHOLD,
    progress: bool = True,
    stac: Any = None,
    retry: Any = None,
    gdal_options: dict[str, Any] | None = None,
    signer: Any = None,
    engine: str = "local",
    ray_address: str | None = None,
    ray_actors: int | None = None,
) -> Any:
    """Embed every image of ``sources`` (folders, image files, GeoTIFF scenes with ``tile_size``) and of a builder
    ``dataset`` split into a new index folder ``output``; resume it if a previous build of the same sources was
    interrupted. Returns the loaded `RSMCLIPIndex`. See the module docstring for the folder layout.

    ``stac``: a `geo.stac.StacQuery` (or its URL) instead of ``sources``: the query's items cut into tiles of
    ``tile_size`` (`index.catalog`), their bands chosen by ``preset`` / ``bands`` from their metadata. Remote files
    are read with ``retry`` (`geo.cloud.RetryPolicy`), ``gdal_options`` and ``signer`` (``href -> href to open``).

    ``precision`` is ``fp32``, ``bf16``/``fp16`` (autocast, GPU) or ``int8``; ``backend`` is ``torch`` or ``onnx``
    (ONNX Runtime). ONNX and int8 run on the CPU through `inference.load_encoder`; the index's fingerprint is that
    of the source model's weights either way, and the manifest records the backend and precision used.

    ``engine`` is ``local`` (this process, or the processes of ``accelerate launch`` / ``torchrun``) or ``ray``:
    a Ray Data pipeline (`ray_engine`) on the cluster at ``ray_address`` (``auto``, ``ray://host:10001``, ...;
    default: an already initialised Ray, else a local one) with ``ray_actors`` model actors (default: one per GPU,
    else one per CPU). Both write the same shards; needs ``pip install "rsmclip[ray]"``."""
    stac = _stac_query(stac, sources, dataset)
    if not sources and not dataset and stac is None:
        raise ValueError("nothing to index: give image folders, files, scenes, a dataset or a STAC query")
    choose_index(1, 8, index_type)  # validate early
    options = SourceOptions(
        tile_size=tile_size,
        overlap=overlap,
        preset=preset,
        bands=bands,
        min_valid=min_valid,
        dataset=dataset,
        split=split,
        retry=retry,
        gdal_options=gdal_options,
        signer=signer,
    )
    return _run(
        "build",
        model,
        Path(output),
        list(sources),
        options,
        processor=processor,
        index_type=index_type,
        batch_size=batch_size,
        num_workers=num_workers,
        shard_size=shard_size,
        precision=precision,
        device=device,
        exact_threshold=exact_threshold,
        progress=progress,
        backend=backend,
        stac=stac,
        engine=engine,
        ray_address=ray_address,
        ray_actors=ray_actors,
    )


def _stac_query(stac: Any, sources: Sequence[Any], dataset: str | None) -> Any:
    """A `geo.stac.StacQuery` from a query or a URL; STAC and other sources do not mix in one run."""
    if stac is None:
        return None
    from ..geo.stac import StacQuery

    if sources or dataset:
        raise ValueError(
            "a run indexes either a STAC query or SOURCEs / a dataset: add the others with another `index add`"
        )
    return stac if isinstance(stac, StacQuery) else StacQuery(str(stac))


def add_to_index(
    index_dir: str | os.PathLike,
    sources: Sequence[str | os.PathLike],
    *,
    model: Any = None,
    processor: Any = None,
    dataset: str | None = None,
    split: str | None = None,
    tile_size: int | None = None,
    overlap: int = 0,
    preset: str | None = None,
    bands: list[int] | None = None,
    min_valid: float = 0.5,
    index_type: str | None = None,
    batch_size: int = 64,
    num_workers: int | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    precision: str = "fp32",
    backend: str = "torch",
    device: str | None = None,
    exact_threshold: int = EXACT_THRESHOLD,
    progress: bool = True,
    stac: Any = None,
    retry: Any = None,
    gdal_options: dict[str, Any] | None = None,
    signer: Any = None,
    engine: str = "local",
    ray_address: str | None = None,
    ray_actors: int | None = None,
) -> Any:
    """Append ``sources`` to an existing index (same model: the manifest's, unless ``model`` is given and has the
    same fingerprint). Files whose content hash is already indexed are not embedded again (listed as unchanged in
    the report). The FAISS index is rebuilt over all rows, so the result equals a build of the union.

    ``stac``: a STAC query instead of ``sources`` (see `build_index`); items already in the index (same id and asset
    hrefs) are not read again, so a query with a later ``datetime`` embeds the new items only. ``engine``,
    ``ray_address`` and ``ray_actors`` as for `build_index`."""
    stac = _stac_query(stac, sources, dataset)
    index_dir = Path(index_dir)
    if index_type is None:
        manifest_path = index_dir / "manifest.json"
        index_type = _read_json(manifest_path)["index"]["type"] if manifest_path.is_file() else "auto"
    options = SourceOptions(
        tile_size=tile_size,
        overlap=overlap,
        preset=preset,
        bands=bands,
        min_valid=min_valid,
        dataset=dataset,
        split=split,
        retry=retry,
        gdal_options=gdal_options,
        signer=signer,
    )
    return _run(
        "add",
        model,
        index_dir,
        list(sources),
        options,
        processor=processor,
        index_type=index_type,
        batch_size=batch_size,
        num_workers=num_workers,
        shard_size=shard_size,
        precision=precision,
        device=device,
        exact_threshold=exact_threshold,
        progress=progress,
        backend=backend,
        stac=stac,
        engine=engine,
        ray_address=ray_address,
        ray_actors=ray_actors,
    )
