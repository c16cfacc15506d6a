"""Work list -> Parquet shards of embeddings and metadata; a shard is done when its Parquet file exists.

Items are read and preprocessed in data-loader workers (`read_item` then the image processor), the model embeds
them in the main process (`evaluation.embed.Embedder.embed_pixels`), and the shard is written to a temporary file
and renamed: a killed build leaves either a complete shard or none, and resumes at the first missing shard. An
item whose content hash is already indexed (``index add`` of an unchanged file) or appears earlier in the same
shard is never embedded; it is listed in the shard's report with the reason. Items that cannot be read and
mostly-nodata tiles are listed there too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..inference.families import image_batch_size, image_inputs, select_images
from ..safe_io import atomic_write_json
from .sources import ReadResult, SourceOptions, WorkItem, read_item

SHARD_PREFIX = "shard"


def shard_name(run: int, shard: int) -> str:
    return f"{SHARD_PREFIX}-r{run:03d}-{shard:06d}"


@dataclass
class ShardReport:
    unreadable: list[dict[str, Any]] = field(default_factory=list)
    nodata_tiles: list[dict[str, Any]] = field(default_factory=list)
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    unchanged: list[dict[str, Any]] = field(default_factory=list)
    network_errors: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "unreadable": self.unreadable,
            "nodata_tiles": self.nodata_tiles,
            "duplicates": self.duplicates,
            "unchanged": self.unchanged,
            "network_errors": self.network_errors,
        }


class _ItemDataset(Dataset):
    def __init__(self, items: Sequence[WorkItem], options: SourceOptions) -> None:
        self.items = list(items)
        self.options = options
        self._dataset_cache: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[int, ReadResult]:
        return index, read_item(self.items[index], self.options, self._dataset_cache)


class _Collate:
    """Runs the image processor in the worker on the readable items of a batch."""

    def __init__(self, image_processor: Any) -> None:
        self.image_processor = image_processor

    def __call__(self, batch: list[tuple[int, ReadResult]]) -> tuple[list[tuple[int, ReadResult]], Any]:
        good = [(i, r) for i, r in batch if r.image is not None]
        pixels = None
        if good:
            pixels = image_inputs(self.image_processor, [r.image for _, r in good])
        # The decoded arrays are not needed any further: do not send them back through the worker queue.
        slim = [(i, ReadResult(None, r.content_hash, r.error, r.valid_fraction, r.remote)) for i, r in batch]
        return slim, (pixels, [i for i, _ in good])


def _atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_json(path, data, indent=1, default=str)


def shard_schema(dim: int) -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            ("id", pa.string()),
            ("path", pa.string()),
            ("kind", pa.string()),
            ("window", pa.list_(pa.int32(), 4)),
            ("content_hash", pa.string()),
            ("source", pa.string()),
            ("label", pa.string()),
            ("crs", pa.string()),
            ("bounds", pa.list_(pa.float64(), 4)),
            ("footprint", pa.string()),
            ("footprint_lonlat", pa.string()),
            ("bbox", pa.list_(pa.float64(), 4)),
            ("valid_fraction", pa.float32()),
            ("embedding", pa.list_(pa.float16(), dim)),
        ]
    )


CORE_COLUMNS = ("id", "path", "kind", "window", "content_hash", "embedding")


def write_shard(
    directory: Path,
    name: str,
    rows: list[dict[str, Any]],
    embeddings: np.ndarray,
    report: ShardReport,
    dim: int,
) -> Path:
    """Write ``<name>.report.json`` then ``<name>.parquet`` (atomically, via a temporary file): the Parquet
    file's existence marks the shard done."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    embeddings = embeddings.reshape(len(rows), dim)
    schema = shard_schema(dim)
    extra = sorted({k for row in rows for k in row} - set(schema.names))
    columns: dict[str, Any] = {}
    for f in schema:
        if f.name == "embedding":
            flat = pa.array(embeddings.astype(np.float16).reshape(-1), type=pa.float16())
            columns["embedding"] = pa.FixedSizeListArray.from_arrays(flat, dim)
        else:
            columns[f.name] = pa.array([row.get(f.name) for row in rows], type=f.type)
    for name_ in extra:  # dataset columns (image_id, split, ...)
        columns[name_] = pa.array([row.get(name_) for row in rows])
    table = pa.table(columns)
    directory.mkdir(parents=True, exist_ok=True)
    _atomic_write_json(directory / f"{name}.report.json", report.to_dict())
    tmp = directory / f".{name}.parquet.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, directory / f"{name}.parquet")
    return directory / f"{name}.parquet"


class ShardAssembler:
    """The rows and report of one shard, fed its items' read results in work-list order.

    `add` decides for each item whether it is embedded (readable, content not already in the index, not a repeat
    of an earlier item of the shard) or reported (unreadable, mostly nodata, unchanged, duplicate), and records its
    row or report entry. The one-process loop (`embed_shard`) and the Ray engine (`ray_engine`) both go through it,
    so they keep the same rows in the same order.
    """

    def __init__(self, known_hashes: Mapping[str, str]) -> None:
        self.known_hashes = known_hashes  # content hash already in the index -> its id
        self.rows: list[dict[str, Any]] = []
        self.report = ShardReport()
        self._seen: dict[str, str] = {}

    def add(self, item: WorkItem, result: ReadResult) -> bool:
        """Record ``item``; True when it is embedded (its embedding is the next row's)."""
        if result.error == "nodata":
            self.report.nodata_tiles.append(
                {
                    "id": item.id,
                    "path": item.path,
                    "window": list(item.window or ()),
                    "valid_fraction": result.valid_fraction,
                }
            )
        elif result.remote is not None:
            self.report.network_errors.append(network_error_entry(item, result.remote))
        elif result.error is not None:
            self.report.unreadable.append({"id": item.id, "path": item.path, "error": result.error})
        elif result.content_hash in self.known_hashes:
            self.report.unchanged.append(
                {"id": item.id, "path": item.path, "indexed_as": self.known_hashes[result.content_hash]}
            )
        elif result.content_hash in self._seen:
            self.report.duplicates.append(
                {"id": item.id, "path": item.path, "duplicate_of": self._seen[result.content_hash]}
            )
        else:
            self._seen[result.content_hash] = item.id
            self.rows.append(
                {
                    "id": item.id,
                    "path": item.path,
                    "kind": item.kind,
                    "window": list(item.window) if item.window is not None else None,
                    "content_hash": result.content_hash,
                    "valid_fraction": result.valid_fraction,
                    **item.meta,
                }
            )
            return True
        return False


def embed_selected(embedder: Any, pixels: Any, rows: Sequence[int]) -> torch.Tensor | None:
    """Embeddings of the rows ``rows`` of a batch of image inputs (`inference.families.image_inputs`, or a
    ``pixel_values`` tensor) in one forward pass (the whole batch when every row is kept), or None."""
    if not rows:
        return None
    selected = pixels if len(rows) == image_batch_size(pixels) else select_images(pixels, rows)
    return embedder.embed_pixels(selected)


def embed_shard(
    items: Sequence[WorkItem],
    embedder: Any,
    options: SourceOptions,
    known_hashes: dict[str, str],
    *,
    num_workers: int,
    batch_size: int,
    progress: Any = None,
) -> tuple[list[dict[str, Any]], np.ndarray, ShardReport]:
    """Read and embed the items of one shard; returns its rows, their embeddings (float32) and its report.

    ``known_hashes`` maps the content hashes already in the index to their ids: such items are not embedded.
    """
    loader = DataLoader(
        _ItemDataset(items, options),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_Collate(embedder.image_processor),
        persistent_workers=False,
    )
    shard = ShardAssembler(known_hashes)
    chunks: list[torch.Tensor] = []
    for batch, (pixels, good_indices) in loader:
        keep_rows = [good_indices.index(index) for index, result in batch if shard.add(items[index], result)]
        embedded = embed_selected(embedder, pixels, keep_rows)
        if embedded is not None:
            chunks.append(embedded)
        if progress is not None:
            progress.update(len(batch))
    embeddings = torch.cat(chunks).numpy() if chunks else np.zeros((0, 0), dtype=np.float32)
    return shard.rows, embeddings, shard.report


def network_error_entry(item: WorkItem, remote: dict[str, Any]) -> dict[str, Any]:
    """A ``network_errors`` entry of the report: the tile (id, STAC item and collection when it has them, its grid
    window) and the read that failed (`geo.cloud.RemoteReadError.to_dict`: href, window read, attempts, error)."""
    entry: dict[str, Any] = {"id": item.id, "path": item.path}
    for key in ("stac_item", "stac_collection"):
        if item.meta.get(key) is not None:
            entry[key] = item.meta[key]
    entry["tile_window"] = list(item.window) if item.window is not None else None
    entry.update({k: remote.get(k) for k in ("href", "window", "attempts", "error")})
    return entry


def new_progress(total: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar counting items, with items/s and ETA."""
    return tqdm(total=total, desc=desc, unit="img", unit_scale=False, smoothing=0.1, disable=not enabled)
