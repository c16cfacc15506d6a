"""The Ray engine of ``rsmclip index build|add --engine ray``: a run's missing shards embedded by a Ray Data
pipeline, on a local Ray or on a cluster (``ray up``, KubeRay).

The planning (the work list, the run file, which shards are missing) and the merge (`build.finalize`) are the
one-process build's; only the embedding in between runs on Ray::

    chunks of the work list           ray.data.from_items: one row per embedding batch (shard, chunk, its items)
      -> decoding tasks (CPU)         `sources.read_item` + the image processor, as the data-loader workers do
      -> a pool of model actors       one per GPU; each loads the model once (`load_model`, `load_encoder`) and
                                      embeds the items of a chunk that `ShardAssembler` keeps
      -> the shard writer (driver)    a shard's chunks in work-list order through `ShardAssembler`, `write_shard`

Without GPUs the pool has one actor per CPU, and each actor decodes its chunk before embedding it (`plan_actors`).

A chunk is one batch of the one-process build: the same items, cut at the same places, of which the same ones are
embedded in one forward pass. The shards are therefore the same files (names, rows, order, float16 embeddings)
as a one-process build writes. Only the embeddings (2 KB an image) travel back to the driver, which writes the
shards: the index folder needs to be reachable from the driver only; the sources must be readable by every node
(a shared filesystem, or object storage URLs).

Faults are Ray Data's to handle, with its defaults: a decoding task whose worker or node dies is run again, and a
model actor that dies is restarted and its unfinished chunks run again, without limit (nodes come and go on a
cluster); the writer takes each chunk once. A Python error (a model folder the actors cannot read, a GPU out of
memory) stops the run with that error; so does an actor that dies while loading the model. The shards written so
far are kept, and running the command again resumes at the missing ones, with either engine.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..inference import autocast_precision, check_backend, load_encoder, load_model
from ..inference.families import as_image_inputs
from .embed import ShardAssembler, _Collate, embed_selected, new_progress, write_shard
from .sources import SourceOptions, WorkItem, read_item

logger = logging.getLogger(__name__)

MAX_BLOCKS = 4096  # input blocks of the dataset (each block is one decoding task's list of chunks)


def require_ray() -> Any:
    """Import Ray (with Ray Data), or say which command installs it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as err:
        raise ImportError(
            f'the ray engine needs Ray Data ({err.name} is missing): pip install "rsmclip[ray]"'
        ) from err
    return ray


# ------------------------------------------------------------------------------------------ sizing the pool
@dataclass(frozen=True)
class ActorPool:
    """How many model actors run, what each one holds (``gpus``: 0 or 1, ``cpus``, its ``device``), and whether
    each actor decodes its own chunks (``decodes``: without GPUs) instead of separate decoding tasks."""

    actors: int
    gpus: int
    cpus: int
    device: str
    decodes: bool


def plan_actors(
    resources: Mapping[str, float],
    *,
    device: str | None = None,
    cpu_encoder: bool = False,
    actors: int | None = None,
) -> ActorPool:
    """The model actors for a cluster of ``resources`` (`ray.cluster_resources()`).

    With GPUs (unless ``device`` is ``cpu`` or the encoder is a CPU one: ONNX, int8): one actor per GPU, fed by
    decoding tasks on the other CPUs. Without: one actor per CPU, each decoding its chunk then embedding it (the
    two steps in one process, as Ray Data's operator fusion would run them: no pixels through the object store,
    and every CPU busy whatever the share of decoding in the work). ``actors`` overrides the count."""
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
    if actors is not None and actors < 1:
        raise ValueError(f"the number of Ray model actors must be >= 1, got {actors}")
    wants_gpu = not cpu_encoder and (str(device).startswith("cuda") or (device is None and gpus > 0))
    if not wants_gpu:
        if actors is not None and actors > cpus:
            logger.warning(
                "%d actors asked for on a cluster with %d CPUs: the rest wait for CPUs", actors, cpus
            )
        return ActorPool(actors or max(1, cpus), 0, 1, "cpu", True)
    if gpus == 0:
        raise ValueError(
            f"device {device} asked for, but the Ray cluster has no GPU (resources: {dict(resources)})"
        )
    if actors is not None and actors > gpus:
        logger.warning(
            "%d GPU actors asked for on a cluster with %d GPUs: the rest wait for GPUs", actors, gpus
        )
    if cpus <= min(actors or gpus, gpus):
        raise ValueError(
            f"the Ray cluster has {cpus} CPU(s) for {gpus} GPU(s): each GPU actor holds a CPU, and decoding needs "
            "at least one more"
        )
    return ActorPool(actors or gpus, 1, 1, "cuda", False)


# ------------------------------------------------------------------------------------------ pipeline stages
_DATASET_CACHE: dict[str, Any] = {}  # builder datasets opened by the decoding tasks of this worker process


def chunk_rows(shards: Mapping[str, Sequence[WorkItem]], batch_size: int) -> list[dict[str, Any]]:
    """The pipeline's input: one row per batch of each shard (the one-process build's batches)."""
    rows = []
    for name, items in shards.items():
        for chunk, start in enumerate(range(0, len(items), batch_size)):
            rows.append(
                {
                    "shard": name,
                    "chunk": chunk,
                    "items": pickle.dumps(list(items[start : start + batch_size])),
                }
            )
    return rows


def decode_chunks(
    batch: dict[str, np.ndarray], options: SourceOptions, image_processor: Any
) -> dict[str, Any]:
    """Ray Data task: read and preprocess each chunk's items (`read_item`, then the image processor, as the
    data-loader workers do). Adds ``results`` (pickled: the read results without their images, and the positions of
    the decoded items) and ``inputs`` (pickled: the image tower's inputs of the decoded items, numpy arrays)."""
    collate = _Collate(image_processor)
    results, inputs = [], []
    for blob in batch["items"]:
        items: list[WorkItem] = pickle.loads(blob)
        slim, (values, good) = collate(
            [(i, read_item(item, options, _DATASET_CACHE)) for i, item in enumerate(items)]
        )
        results.append(pickle.dumps(([r for _, r in slim], good)))
        arrays = {k: v.numpy() for k, v in as_image_inputs(values).items()} if values is not None else None
        inputs.append(pickle.dumps(arrays, protocol=pickle.HIGHEST_PROTOCOL))
    return {
        "shard": batch["shard"],
        "chunk": batch["chunk"],
        "items": batch["items"],
        "results": np.array(results, dtype=object),
        "inputs": np.array(inputs, dtype=object),
    }


class EmbedActor:
    """Ray Data actor: loads the model once, then embeds the kept items of each chunk in one forward pass (after
    decoding the chunk itself when ``decode`` holds `decode_chunks`' arguments)."""

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        backend: str,
        precision: str,
        device: str,
        fingerprint: str,
        known_hashes: Mapping[str, str],
        threads: int,
        decode: dict[str, Any] | None = None,
    ) -> None:
        import torch

        from ..evaluation.embed import Embedder

        torch.set_num_threads(max(1, threads))
        self.known_hashes = known_hashes
        net, processor = load_model(model, processor, device=device)
        encoder = load_encoder(net, backend, precision, processor, inplace=True)
        self.embedder = Embedder(
            encoder,
            processor,
            device=device,
            num_workers=0,
            precision=autocast_precision(backend, precision),
            cache_dir=None,
            show_progress=False,
            model_key=fingerprint,
        )
        self.pid = os.getpid()
        self.decode = decode  # `decode_chunks` arguments, when this actor decodes its chunks itself

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        import torch

        if self.decode is not None:
            batch = decode_chunks(batch, **self.decode)

        kept_column, embeddings = [], []
        for blob, result_blob, input_blob in zip(batch["items"], batch["results"], batch["inputs"]):
            items: list[WorkItem] = pickle.loads(blob)
            results, good = pickle.loads(result_blob)
            assembler = ShardAssembler(self.known_hashes)  # the chunk alone: what the shard keeps is a subset
            kept = [p for p, (item, result) in enumerate(zip(items, results)) if assembler.add(item, result)]
            arrays = pickle.loads(input_blob)
            inputs = {k: torch.from_numpy(v) for k, v in arrays.items()} if arrays is not None else None
            values = embed_selected(self.embedder, inputs, [good.index(p) for p in kept])
            kept_column.append(pickle.dumps(kept))
            embeddings.append(pickle.dumps(values.numpy() if values is not None else None))
        return {
            "shard": batch["shard"],
            "chunk": batch["chunk"],
            "results": batch["results"],
            "kept": np.array(kept_column, dtype=object),
            "embeddings": np.array(embeddings, dtype=object),
            "pid": np.full(len(kept_column), self.pid, dtype=np.int64),
        }


# ------------------------------------------------------------------------------------------------ the writer
@dataclass
class RayRunStats:
    """What a Ray run did: chunks and items embedded, chunks per actor process, chunks delivered twice, and when
    (seconds from the start of the pipeline to the first chunk back, i.e. its start-up, and to the end)."""

    chunks: int = 0
    items: int = 0
    shards: int = 0
    workers: Counter = field(default_factory=Counter)
    repeated: int = 0
    first_chunk_seconds: float = 0.0
    first_chunk_items: int = 0
    seconds: float = 0.0


class _ShardWriter:
    """Collects each shard's chunks as they arrive (in any order) and writes the shard when it is complete."""

    def __init__(
        self,
        directory: Path,
        shards: Mapping[str, Sequence[WorkItem]],
        *,
        batch_size: int,
        known_hashes: Mapping[str, str],
        dim: int,
        progress: Any,
    ) -> None:
        self.directory, self.shards, self.batch_size = directory, shards, batch_size
        self.known_hashes, self.dim, self.progress = known_hashes, dim, progress
        self.expected = {name: math.ceil(len(items) / batch_size) for name, items in shards.items()}
        self.pending: dict[str, dict[int, tuple[list[Any], list[int], np.ndarray | None]]] = {
            n: {} for n in shards
        }
        self.stats = RayRunStats()
        self.started = time.perf_counter()

    def add(
        self,
        shard: str,
        chunk: int,
        results: list[Any],
        kept: list[int],
        embeddings: np.ndarray | None,
        pid: int,
    ) -> None:
        if shard not in self.pending or chunk in self.pending[shard]:
            self.stats.repeated += 1  # a retried chunk whose first result arrived too: keep the first
            logger.warning("chunk %d of %s delivered twice: the second copy is ignored", chunk, shard)
            return
        self.pending[shard][chunk] = (results, kept, embeddings)
        if not self.stats.chunks:
            self.stats.first_chunk_seconds = time.perf_counter() - self.started
            self.stats.first_chunk_items = len(results)
        self.stats.chunks += 1
        self.stats.items += len(results)
        self.stats.workers[pid] += 1
        if self.progress is not None:
            self.progress.update(len(results))
        if len(self.pending[shard]) == self.expected[shard]:
            self.write(shard)

    def write(self, shard: str) -> None:
        """Write a complete shard: its chunks in order through one `ShardAssembler`, as `embed_shard` does."""
        items, chunks = self.shards[shard], self.pending.pop(shard)
        assembler = ShardAssembler(self.known_hashes)
        vectors: list[np.ndarray] = []
        for chunk in range(self.expected[shard]):
            results, kept, embeddings = chunks[chunk]
            start = chunk * self.batch_size
            if len(results) != len(items[start : start + self.batch_size]):
                raise RuntimeError(f"chunk {chunk} of {shard} came back with {len(results)} results")
            row_of = {position: row for row, position in enumerate(kept)}
            for position, result in enumerate(results):
                if assembler.add(items[start + position], result):
                    vectors.append(embeddings[row_of[position]])
        array = np.stack(vectors) if vectors else np.zeros((0, self.dim), dtype=np.float32)
        write_shard(self.directory, shard, assembler.rows, array, assembler.report, self.dim)
        self.stats.shards += 1

    def check_complete(self) -> None:
        missing = {name: self.expected[name] - len(chunks) for name, chunks in self.pending.items()}
        if missing:
            raise RuntimeError(
                f"the Ray pipeline ended with {sum(missing.values())} chunk(s) of {len(missing)} shard(s) missing "
                f"({', '.join(sorted(missing)[:5])}...): run the command again to resume"
            )


# ---------------------------------------------------------------------------------------------------- entry
def _connect(ray: Any, address: str | None) -> bool:
    """Join the cluster at ``address``, or use an initialised Ray, or start a local one; True if started here."""
    if ray.is_initialized():
        if address is not None:
            logger.warning("Ray is already initialised in this process: %s is not connected to", address)
        return False
    if address is not None:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        ray.init(
            address="local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.WARNING
        )
    return True


def _model_for_actors(model: Any) -> Any:
    """A model folder as an absolute path (the actors' working directory is not this one); others as given."""
    if isinstance(model, str | os.PathLike) and Path(model).expanduser().is_dir():
        return str(Path(model).expanduser().resolve())
    return model


def embed_shards(
    directory: str | os.PathLike,
    shards: Mapping[str, Sequence[WorkItem]],
    *,
    model: Any,
    processor: Any,
    options: SourceOptions,
    known_hashes: Mapping[str, str],
    dim: int,
    fingerprint: str,
    batch_size: int = 64,
    backend: str = "torch",
    precision: str = "fp32",
    device: str | None = None,
    address: str | None = None,
    actors: int | None = None,
    num_workers: int | None = None,
    progress: bool = True,
) -> RayRunStats:
    """Embed ``shards`` (shard name -> its items, in work-list order) on Ray and write them into ``directory``.

    ``model`` is what each actor loads (a folder, a Hub id, ``"demo"``, or a model object, sent to the actors),
    with ``processor``. ``address``: a Ray cluster (``auto``, ``ray://head:10001``, ``head:6379``); default: the
    Ray initialised in this process, else a local one using every core (shut down at the end). ``actors``: model
    actors (default `plan_actors`); ``num_workers``: at most this many decoding tasks at once (default: as many as
    the free CPUs allow). Returns what was done (`RayRunStats`)."""
    ray = require_ray()
    stats = RayRunStats()
    if not shards:
        return stats
    cpu_encoder = check_backend(backend, precision, device)
    started = _connect(ray, address)
    bar = new_progress(sum(len(items) for items in shards.values()), "indexing [ray]", progress)
    try:
        pool = plan_actors(ray.cluster_resources(), device=device, cpu_encoder=cpu_encoder, actors=actors)
        logger.info("ray engine: %d model actor(s) on %s", pool.actors, pool.device)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the bar above counts the images
        context.print_on_execution_start = False
        rows = chunk_rows(shards, batch_size)
        decode = {"options": options, "image_processor": getattr(processor, "image_processor", processor)}
        dataset = ray.data.from_items(rows, override_num_blocks=min(len(rows), MAX_BLOCKS))
        if not pool.decodes:
            dataset = dataset.map_batches(
                decode_chunks,
                batch_size=1,
                batch_format="numpy",
                fn_kwargs=decode,
                compute=ray.data.TaskPoolStrategy(size=num_workers) if num_workers else None,
                num_cpus=1,
            )
        dataset = dataset.map_batches(
            EmbedActor,
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=pool.actors),
            num_cpus=pool.cpus,
            num_gpus=pool.gpus,
            fn_constructor_kwargs={
                "model": _model_for_actors(model),
                # A model named by folder or Hub id brings its processor; a model object needs its own.
                "processor": None if isinstance(model, str | os.PathLike) else processor,
                "backend": backend,
                "precision": precision,
                "device": pool.device,
                "fingerprint": fingerprint,
                "known_hashes": dict(known_hashes),
                "threads": pool.cpus,
                "decode": decode if pool.decodes else None,
            },
        )
        writer = _ShardWriter(
            Path(directory), shards, batch_size=batch_size, known_hashes=known_hashes, dim=dim, progress=bar
        )
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            for i in range(len(batch["shard"])):
                results, _ = pickle.loads(batch["results"][i])
                writer.add(
                    str(batch["shard"][i]),
                    int(batch["chunk"][i]),
                    results,
                    pickle.loads(batch["kept"][i]),
                    pickle.loads(batch["embeddings"][i]),
                    int(batch["pid"][i]),
                )
        writer.check_complete()
        stats = writer.stats
        stats.seconds = time.perf_counter() - writer.started
    finally:
        bar.close()
        if started:
            ray.shutdown()
    logger.info(
        "ray engine: %d items in %d chunks, %d shards, %.1f s, %d actor process(es), %d repeated chunk(s)",
        stats.items,
        stats.chunks,
        stats.shards,
        stats.seconds,
        len(stats.workers),
        stats.repeated,
    )
    return stats
