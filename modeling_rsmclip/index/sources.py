"""What an index is built from: image folders, a builder dataset, GeoTIFF scenes cut into tiles, and the scenes of a
STAC query (`index.catalog`).

Every source is expanded into a fixed, ordered work list of `WorkItem`s before anything is embedded; the order is
what makes shards reproducible (shard ``i`` is always the same items), so a killed build resumes, and a build
split across processes gives the same index as one process. Reading an item (`read_item`) happens later, in the
data-loader workers, and returns the decoded RGB image plus its content hash, or the reason it was skipped.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from ..processing_rsmclip import load_image_file
from ..processing_rsmclip import to_rgb as _to_rgb

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
GEOTIFF_EXTENSIONS = (".tif", ".tiff")
LABELS_FILE = "labels.csv"


@dataclass
class WorkItem:
    """One image to embed: a file, a dataset row, or a window of a scene.

    ``id`` is unique in an index (the file's path relative to its source folder, prefixed by the source name;
    ``<scene id>@<col>,<row>`` for a tile; ``<dataset>/<split>/<row>`` for a dataset row). ``meta`` holds the
    metadata columns known before reading (label, source, geographic footprint of a tile, ...).
    """

    id: str
    kind: str  # "file" | "tile" | "dataset" | "stac-tile"
    path: str
    row: int | None = None
    window: tuple[int, int, int, int] | None = None  # col_off, row_off, width, height
    scene_hash: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, default=str)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorkItem:
        """The item `key` / a stored work list describes (JSON turns the window into a list: back to a tuple)."""
        window = data.get("window")
        return cls(**{**data, "window": tuple(int(v) for v in window) if window is not None else None})


@dataclass
class SourceOptions:
    """How sources are read: tiling of scenes and band selection; for remote files (STAC assets) also ``retry``
    (`geo.cloud.RetryPolicy`, None: its default), ``gdal_options`` (over the package's cloud settings) and
    ``signer`` (``href -> href to open``; not recorded)."""

    tile_size: int | None = None
    overlap: int = 0
    preset: str | None = None
    bands: list[int | str] | None = None
    min_valid: float = 0.5
    dataset: str | None = None
    split: str | None = None
    retry: Any = None
    gdal_options: dict[str, Any] | None = None
    signer: Any = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("signer", "retry")}
        if self.retry is not None:
            data["retry"] = asdict(self.retry)
        if self.signer is not None:
            data["signer"] = (
                f"{getattr(self.signer, '__module__', '?')}:{getattr(self.signer, '__qualname__', '?')}"
            )
        return data


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------- listing
def _labels_table(folder: Path) -> dict[str, str]:
    """``filename -> label`` from a ``labels.csv`` (``filename,label[,...]``) in ``folder``, if there is one."""
    path = folder / LABELS_FILE
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"filename", "label"} <= set(reader.fieldnames):
            return {}
        return {row["filename"]: row["label"] for row in reader if row.get("filename")}


def _is_scene(path: Path, options: SourceOptions) -> bool:
    return options.tile_size is not None and path.suffix.lower() in GEOTIFF_EXTENSIONS


def list_folder(
    root: Path, options: SourceOptions, skipped: list[dict[str, Any]] | None = None
) -> list[WorkItem]:
    """Image files under ``root`` (recursive, following symlinked folders, sorted by relative path).

    The ``label`` of a file comes from a ``labels.csv`` in ``root`` (``filename,label``: UC Merced's layout) or,
    for an ImageFolder layout, from its first sub-folder under ``root``. With ``tile_size``, TIFF files are cut
    into tiles (`list_scene_tiles`). What cannot be listed (an unreadable folder, a broken symlink, a symlink loop)
    is appended to ``skipped`` as ``{"id", "path", "error"}`` (the report's ``unreadable`` entries).
    """
    name = root.resolve().name
    table = _labels_table(root)
    items: list[WorkItem] = []
    files = sorted(
        _walk_images(root, skipped if skipped is not None else []),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    for path in files:
        rel = path.relative_to(root).as_posix()
        if _is_scene(path, options):
            items.extend(list_scene_tiles(path, options, scene_id=f"{name}/{rel}"))
            continue
        label = table.get(path.name) or table.get(rel)
        if label is None and len(path.relative_to(root).parts) > 1:
            label = path.relative_to(root).parts[0]
        items.append(
            WorkItem(
                id=f"{name}/{rel}",
                kind="file",
                path=str(path.resolve()),
                meta={"source": name, "label": label},
            )
        )
    return items


def _walk_images(root: Path, skipped: list[dict[str, Any]]) -> list[Path]:
    """Image files under ``root``, through symlinked folders; every entry that cannot be listed is put in
    ``skipped`` with the reason: a folder that cannot be read, a symlink whose target is missing, a symlink loop
    (a link to itself, or a folder link back to a folder above it)."""
    name = root.resolve().name
    found: list[Path] = []

    def skip(path: str, reason: str) -> None:
        rel = os.path.relpath(path, root)
        skipped.append({"id": f"{name}/{Path(rel).as_posix()}", "path": str(path), "error": reason})

    def failed(err: OSError) -> None:
        skip(err.filename or str(root), f"unreadable folder ({err.strerror or err})")

    ancestors: dict[str, set[str]] = {}
    for folder, dirs, names in os.walk(root, onerror=failed, followlinks=True):
        real = os.path.realpath(folder)
        above = ancestors.get(folder, set()) | {real}
        kept = []
        for sub in sorted(dirs):
            path = os.path.join(folder, sub)
            if os.path.realpath(path) in above:
                skip(path, f"symlink loop (leads back to {os.path.realpath(path)})")
                continue
            ancestors[path] = above
            kept.append(sub)
        dirs[:] = kept
        for entry in names:
            path = os.path.join(folder, entry)
            if os.path.islink(path) and not os.path.exists(path):
                try:
                    os.stat(path)
                    reason = "broken symlink"
                except OSError as err:
                    loop = err.errno == errno.ELOOP
                    reason = "symlink loop" if loop else f"broken symlink (to {os.readlink(path)}: missing)"
                skip(path, reason)
            elif Path(entry).suffix.lower() in IMAGE_EXTENSIONS:
                if os.path.isfile(path):
                    found.append(Path(path))
                else:
                    skip(path, "not a regular file")
    return found


def list_dataset(path_or_id: str, split: str | None) -> list[WorkItem]:
    """One item per row of a builder dataset split; its scalar columns (label, source, image_id, ...) become
    metadata columns."""
    from ..evaluation.retrieval import load_split

    ds = load_split(path_or_id, split)
    if "image" not in ds.column_names:
        raise ValueError(f"{path_or_id}: split {split!r} has no 'image' column (columns: {ds.column_names})")
    scalar = [
        c
        for c, feature in ds.features.items()
        if c != "image"
        and getattr(feature, "dtype", None) in ("string", "int64", "int32", "float32", "float64", "bool")
    ]
    columns = {c: list(ds[c]) for c in scalar}
    for c in scalar:  # class ids become their names
        names = getattr(ds.features[c], "names", None)
        if names:
            columns[c] = [names[v] if v is not None and v >= 0 else None for v in columns[c]]
    ids = columns.get("image_id")
    name = Path(path_or_id).name if Path(path_or_id).exists() else path_or_id
    items = []
    for row in range(len(ds)):
        meta = {c: columns[c][row] for c in scalar}
        meta.setdefault("source", name)
        if "label" in meta and meta["label"] is not None:
            meta["label"] = str(meta["label"])
        item_id = f"{name}/{split}/{ids[row] if ids is not None else row}"
        items.append(WorkItem(id=item_id, kind="dataset", path=str(path_or_id), row=row, meta=meta))
    return items


def collect_items(
    sources: Sequence[str | os.PathLike],
    options: SourceOptions,
    skipped: list[dict[str, Any]] | None = None,
) -> list[WorkItem]:
    """The ordered work list of all sources (folders, single image files, scenes), then the dataset; what a folder
    holds that cannot be listed goes to ``skipped`` (`list_folder`)."""
    items: list[WorkItem] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            items.extend(list_folder(path, options, skipped))
        elif path.is_file():
            if _is_scene(path, options):
                items.extend(list_scene_tiles(path, options, scene_id=path.name))
            elif path.suffix.lower() in IMAGE_EXTENSIONS:
                items.append(
                    WorkItem(
                        id=path.name,
                        kind="file",
                        path=str(path.resolve()),
                        meta={"source": path.parent.name, "label": None},
                    )
                )
            else:
                raise ValueError(f"{path}: not an image file ({', '.join(IMAGE_EXTENSIONS)}) or a folder")
        else:
            raise FileNotFoundError(f"source not found: {path}")
    if options.dataset:
        items.extend(list_dataset(options.dataset, options.split))
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        if item.id in seen:  # the same file named twice (e.g. two sources overlap): keep ids unique
            item.id = f"{item.id}#{i}"
        seen[item.id] = i
    return items


def worklist_digest(items: Sequence[WorkItem]) -> str:
    h = hashlib.sha256(b"rsmclip-worklist-v1")
    for item in items:
        h.update(item.key().encode() + b"\n")
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------- scenes
def list_scene_tiles(path: Path, options: SourceOptions, scene_id: str) -> list[WorkItem]:
    """One item per tile of a GeoTIFF scene (fixed grid order), each with its footprint: ``bounds`` and
    ``footprint`` (closed ring of the corners, JSON) in the raster's CRS (``crs``), ``footprint_lonlat`` (GeoJSON
    Polygon coordinates, JSON) and ``bbox`` (west, south, east, north) in lon/lat, of the part of the tile inside
    the raster. Mostly-nodata tiles are found when the tile is read (`geo.tiling`'s rule for the edge)."""
    from .geo import open_scene, tile_windows, window_footprint

    scene_hash = file_sha256(path)
    items = []
    with open_scene(path, preset=options.preset, bands=options.bands) as reader:
        crs = reader.crs.to_string() if reader.crs is not None else None
        for index, window in enumerate(
            tile_windows(reader.width, reader.height, options.tile_size, options.overlap)
        ):
            bounds, ring, polygon, bbox = window_footprint(reader, window)
            items.append(
                WorkItem(
                    id=f"{scene_id}@{window[0]},{window[1]}",
                    kind="tile",
                    path=str(path.resolve()),
                    window=tuple(int(v) for v in window),
                    scene_hash=scene_hash,
                    meta={
                        "source": path.name,
                        "label": None,
                        "tile_index": index,
                        "crs": crs,
                        "bounds": list(bounds),
                        "footprint": json.dumps(ring),
                        "footprint_lonlat": json.dumps(polygon) if polygon is not None else None,
                        "bbox": list(bbox) if bbox is not None else None,
                    },
                )
            )
    return items


def tile_content_hash(
    scene_hash: str, window: Sequence[int], read_window: Sequence[int] | None = None
) -> str:
    """The content hash of a scene's tile: its scene, its grid window and, for an edge tile read moved back inside
    the scene (`geo.tiling.clamp_window`), the window its pixels come from."""
    window = tuple(int(v) for v in window)
    key = f"{scene_hash}@{window}"
    if read_window is not None and tuple(int(v) for v in read_window) != window:
        key += f"<-{tuple(int(v) for v in read_window)}"
    return hashlib.sha256(key.encode()).hexdigest()


# ------------------------------------------------------------------------------------------------- reading
@dataclass
class ReadResult:
    """A decoded item (``image`` HxWx3 uint8) with its content hash, or ``error``/``nodata`` saying why not.
    ``remote``: for a remote read that failed after its retries, `geo.cloud.RemoteReadError.to_dict` (href,
    window, attempts, error)."""

    image: np.ndarray | None
    content_hash: str | None
    error: str | None = None
    valid_fraction: float | None = None
    remote: dict[str, Any] | None = None


def read_item(
    item: WorkItem, options: SourceOptions, dataset_cache: dict[str, Any] | None = None
) -> ReadResult:
    """Decode one item through the package's one decoding path (`processing_rsmclip.load_image_file` / `to_rgb`;
    scenes through `geo.raster`). Never raises for bad input: the error names the file and is reported."""
    try:
        if item.kind == "file":
            content_hash = file_sha256(item.path)
            return ReadResult(_to_rgb(load_image_file(item.path), bands=options.bands), content_hash)
        if item.kind in ("tile", "stac-tile"):
            from ..geo.tiling import keep_tile
            from .geo import read_stac_window, read_window

            if item.kind == "tile":
                pixels = read_window(item.path, item.window, preset=options.preset, bands=options.bands)
            else:  # the bands index.catalog chose from the item's metadata
                name = f"STAC item {item.meta.get('stac_item')}"
                pixels = read_stac_window(
                    item.scene_hash, item.meta["stac_bands"], item.window, name, options
                )
            # An edge tile is read moved inside the raster: its hash says so.
            content_hash = tile_content_hash(item.scene_hash, item.window, pixels.read_window)
            fraction = pixels.valid_fraction
            if not keep_tile(fraction, options.min_valid):
                return ReadResult(None, content_hash, error="nodata", valid_fraction=fraction)
            return ReadResult(pixels.rgb, content_hash, valid_fraction=fraction)
        if item.kind == "dataset":
            return _read_dataset_row(item, options, dataset_cache if dataset_cache is not None else {})
        raise ValueError(f"unknown item kind {item.kind!r}")
    except Exception as err:  # reported with the item's path, never silently dropped
        message = str(err)
        if item.path not in message:
            message = f"{item.path}: {message}"
        remote = err.to_dict() if hasattr(err, "to_dict") and hasattr(err, "href") else None
        return ReadResult(None, None, error=f"{type(err).__name__}: {message}", remote=remote)


def _read_dataset_row(item: WorkItem, options: SourceOptions, cache: dict[str, Any]) -> ReadResult:
    import datasets

    from ..evaluation.retrieval import load_split

    key = f"{item.path}\0{options.split}"
    if key not in cache:
        ds = load_split(item.path, options.split)
        cache[key] = ds.cast_column("image", datasets.Image(decode=False))
    value = cache[key][int(item.row)]["image"]
    if value is None:
        raise ValueError(f"row {item.row} has no image")
    data = value.get("bytes")
    if data is None and value.get("path"):
        with open(value["path"], "rb") as f:
            data = f.read()
    if not data:
        raise ValueError(f"row {item.row}: empty image")
    try:
        image = load_image_file(io.BytesIO(data))
    except ValueError as err:
        raise ValueError(f"row {item.row} ({item.id}): {err}") from err
    return ReadResult(_to_rgb(image, bands=options.bands), hashlib.sha256(data).hexdigest())
