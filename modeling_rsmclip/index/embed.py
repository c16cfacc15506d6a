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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

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

    def to_dict(self) -> dict[str, Any]:
        return {
            "unreadable": self.unreadable,
            "nodata_tiles": self.nodata_tiles,
            "duplicates": self.duplicates,
            "unchanged": self.unchanged,
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
            pixels = self.image_processor(images=[r.image for _, r in good], return_tensors="pt")[
                "pixel_values"
            ]
        # The decoded arrays are not needed any further: do not send them back through the worker queue.
        slim = [(i, ReadResult(None, r.content_hash, r.error, r.valid_fraction)) for i, r in batch]
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
    report = ShardReport()
    rows: list[dict[str, Any]] = []
    chunks: list[torch.Tensor] = []
    seen: dict[str, str] = {}
    for batch, (pixels, good_indices) in loader:
        keep_rows: list[int] = []
        for index, result in batch:
            item = items[index]
            if result.error == "nodata":
                report.nodata_tiles.append(
                    {
                        "id": item.id,
                        "path": item.path,
                        "window": list(item.window or ()),
                        "valid_fraction": result.valid_fraction,
                    }
                )
            elif result.error is not None:
                report.unreadable.append({"id": item.id, "path": item.path, "error": result.error})
            elif result.content_hash in known_hashes:
                report.unchanged.append(
                    {"id": item.id, "path": item.path, "indexed_as": known_hashes[result.content_hash]}
                )
            elif result.content_hash in seen:
                report.duplicates.append(
                    {"id": item.id, "path": item.path, "duplicate_of": seen[result.content_hash]}
                )
            else:
                seen[result.content_hash] = item.id
                keep_rows.append(good_indices.index(index))
                rows.append(
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
        if keep_rows:
            selected = pixels if len(keep_rows) == pixels.shape[0] else pixels[torch.tensor(keep_rows)]
            chunks.append(embedder.embed_pixels(selected))
        if progress is not None:
            progress.update(len(batch))
    embeddings = torch.cat(chunks).numpy() if chunks else np.zeros((0, 0), dtype=np.float32)
    return rows, embeddings, report


def new_progress(total: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar counting items, with items/s and ETA."""
    return tqdm(total=total, desc=desc, unit="img", unit_scale=False, smoothing=0.1, disable=not enabled)
