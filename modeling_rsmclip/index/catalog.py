"""STAC catalogs as an index source: the items of a query -> their scenes -> tiles, in a fixed order.

`stac_work_list(output, query, options)` turns a `geo.stac.StacQuery` (a STAC API or a static catalog, with
collections, bbox, datetime, CQL2 filter and max_items) into the work list of an index run:

1. `geo.stac.search_items` finds the items in the fixed order (acquisition time, collection, item id). A catalog
   that is down or answers errors is retried with back-off, then a `geo.stac.StacError` naming it ends the command.
2. Each item's bands come from its own metadata (`geo.stac.select_bands`: the preset's red, green and blue by
   common name or band id, whatever the asset keys). An item without them is left out and listed under
   ``missing_bands`` with the asset keys it has.
3. An item already in the index (same collection, id and asset hrefs, and none of its windows failed) is left out
   without reading anything and listed as ``unchanged``: `index add` with a later ``--datetime`` embeds only the new
   items.
4. The headers of the items' files are read (a few at a time) to lay each scene's tile grid (`geo.tiling.TileGrid`,
   the same grid, footprints and edge rule as a local scene). An item whose files cannot be opened after the retries
   is left out and listed under ``network_errors`` (no window).
5. Each tile becomes a `sources.WorkItem` of kind ``stac-tile``, id ``<collection>/<item id>@<col>,<row>``, whose
   metadata carries the tile's footprints, the item's record (`geo.stac.item_record`: ``stac_item``,
   ``stac_collection``, ``datetime``, ``cloud_cover``, ``stac_item_href``, ``asset_hrefs``, ``item_geometry``,
   ``item_bbox``) and ``stac_bands`` (how to read it: preset, band sources, grid shape).

The work list and this listing report are saved beside the run (``runs/listing-NNN.items.json``,
``runs/listing-NNN.report.json``), so a killed build resumes on the same list even if the catalog changed meanwhile,
and `finalize` merges the report into ``report.json``. Tiles are read in the data-loader workers
(`sources.read_item`, `geo.read_stac_window`): a window that still fails after its retries is listed under ``network_errors`` by item and
window, and the build goes on.
"""

from __future__ import annotations

import hashlib
import json
import urllib.parse
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .embed import _atomic_write_json
from .sources import SourceOptions, WorkItem, tile_content_hash

STAC_TILE = "stac-tile"
LISTING_REPORT_KEYS = ("missing_bands", "network_errors", "unchanged", "unreadable")
# Options that change the work list (a resumed run must have the same).
_LISTING_OPTIONS = ("tile_size", "overlap", "preset", "bands", "min_valid")
HEADER_THREADS = 8


def _empty_report() -> dict[str, list[dict[str, Any]]]:
    return {key: [] for key in LISTING_REPORT_KEYS}


def _without_query(href: str) -> str:
    """An href without its query string (signed URLs carry short-lived tokens there)."""
    parts = urllib.parse.urlsplit(href)
    return urllib.parse.urlunsplit(parts._replace(query="", fragment="")) if parts.scheme else href


def scene_hash(collection: str | None, item_id: str, sources: Sequence[Any]) -> str:
    """What a STAC scene's tiles are hashed from: the item (collection and id) and the files and bands read."""
    key = [collection or "", item_id, [[_without_query(s.href), int(s.band)] for s in sources]]
    return hashlib.sha256(b"rsmclip-stac-scene-v1\0" + json.dumps(key).encode()).hexdigest()


def _item_key(collection: str | None, item_id: str, asset_hrefs: str | None) -> tuple[str, str, str]:
    return collection or "", item_id, asset_hrefs or ""


# ------------------------------------------------------------------------------------------------- listing
def _runs_dir(output: Path) -> Path:
    return Path(output) / "runs"


def _listing_options(options: SourceOptions | dict[str, Any]) -> dict[str, Any]:
    data = options.to_dict() if isinstance(options, SourceOptions) else options
    return {k: data.get(k) for k in _LISTING_OPTIONS}


def _stored_listing(
    output: Path, query: Any, options: SourceOptions
) -> tuple[list[WorkItem], dict[str, list]] | None:
    """The saved work list of an unfinished run of the same query and options, if there is one."""
    runs = _runs_dir(output)
    if not runs.is_dir():
        return None
    for path in sorted(runs.glob("run-[0-9][0-9][0-9].json")):
        plan = json.loads(path.read_text(encoding="utf-8"))
        if plan.get("complete") or plan.get("stac") != query.to_dict():
            continue
        if _listing_options(plan.get("options", {})) != _listing_options(options):
            continue
        stored = runs / f"listing-{plan['run']:03d}.items.json"
        if not stored.is_file():
            return None
        data = json.loads(stored.read_text(encoding="utf-8"))
        report_path = runs / f"listing-{plan['run']:03d}.report.json"
        report = json.loads(report_path.read_text(encoding="utf-8")) if report_path.is_file() else {}
        return [WorkItem.from_dict(d) for d in data["items"]], {**_empty_report(), **report}
    return None


def save_listing(output: Path, run: int, items: Sequence[WorkItem], report: dict[str, list]) -> None:
    """Save a run's work list and listing report (before its plan, so a run on record always has them)."""
    runs = _runs_dir(output)
    runs.mkdir(parents=True, exist_ok=True)
    _atomic_write_json(runs / f"listing-{run:03d}.report.json", report)
    _atomic_write_json(
        runs / f"listing-{run:03d}.items.json", {"items": [json.loads(i.key()) for i in items]}
    )


def indexed_items(output: Path) -> set[tuple[str, str, str]]:
    """(collection, item id, asset hrefs) of the STAC items in an index, less those with a failed window on record
    (they are listed again, and their tiles already indexed are skipped by content hash)."""
    output = Path(output)
    path = output / "metadata.parquet"
    if not path.is_file():
        return set()
    from .integrity import read_parquet

    table = read_parquet(path)
    if not {"stac_collection", "stac_item", "asset_hrefs"} <= set(table.column_names):
        return set()
    rows = zip(*(table[c].to_pylist() for c in ("stac_collection", "stac_item", "asset_hrefs")))
    indexed = {_item_key(c, i, h) for c, i, h in rows if i is not None}
    report = output / "report.json"
    if report.is_file():
        from .integrity import read_json

        failed = read_json(report).get("network_errors", [])
        broken = {(e.get("stac_collection") or "", e.get("stac_item")) for e in failed}
        indexed = {key for key in indexed if key[:2] not in broken}
    return indexed


def _known_hashes(output: Path) -> set[str]:
    path = Path(output) / "metadata.parquet"
    if not path.is_file():
        return set()
    from .integrity import read_parquet

    return set(read_parquet(path, columns=["content_hash"])["content_hash"].to_pylist())


def stac_work_list(
    output: str | Path,
    query: Any,
    options: SourceOptions,
    *,
    progress: bool = False,
    skip_indexed: bool = True,
) -> tuple[list[WorkItem], dict[str, list[dict[str, Any]]]]:
    """``(work list, listing report)`` of ``query`` for the index at ``output`` (see the module doc); an unfinished
    run of the same query and options gets its saved list back. ``skip_indexed``: leave out what the index holds
    (step 3 of the module doc)."""
    from ..geo.stac import search_items

    if options.tile_size is None:
        raise ValueError("a STAC source is cut into tiles: give a tile size (--tile-size)")
    output = Path(output)
    stored = _stored_listing(output, query, options)
    if stored is not None:
        return stored
    found = search_items(query)
    items, report = list_item_tiles(
        found,
        options,
        indexed=indexed_items(output) if skip_indexed else None,
        known_hashes=_known_hashes(output) if skip_indexed else None,
        progress=progress,
    )
    return items, report


def list_item_tiles(
    stac_items: Iterable[Any],
    options: SourceOptions,
    *,
    indexed: set[tuple[str, str, str]] | None = None,
    known_hashes: set[str] | None = None,
    progress: bool = False,
) -> tuple[list[WorkItem], dict[str, list[dict[str, Any]]]]:
    """The tiles of pystac items, in their order, and the listing report (steps 2-5 of the module doc)."""
    from ..geo.stac import MissingBandsError, item_record, select_bands

    report = _empty_report()
    indexed = indexed or set()
    chosen = []
    for item in stac_items:
        collection = item.collection_id
        try:
            preset, sources = select_bands(item, options.preset, options.bands)
        except MissingBandsError as err:
            report["missing_bands"].append(
                {
                    "stac_item": item.id,
                    "stac_collection": collection,
                    "path": item.get_self_href(),
                    "wanted": err.wanted,
                    "assets": err.assets,
                    "error": str(err),
                }
            )
            continue
        record = item_record(item, sources)
        path = record["stac_item_href"] or sources[0].href
        if _item_key(collection, item.id, record["asset_hrefs"]) in indexed:
            report["unchanged"].append(
                {
                    "id": f"{collection}/{item.id}",
                    "path": path,
                    "stac_item": item.id,
                    "stac_collection": collection,
                    "indexed_as": f"{collection}/{item.id}@*",
                    "reason": "already indexed (same item id and asset hrefs)",
                }
            )
            continue
        chosen.append((item, preset, sources, record, path))

    def lay_out(entry: tuple) -> tuple[list[WorkItem], dict[str, Any] | None, str | None]:
        return _scene_tiles(*entry, options)

    workers = max(1, min(HEADER_THREADS, len(chosen)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        laid = list(
            tqdm(
                pool.map(lay_out, chosen),
                total=len(chosen),
                desc="reading STAC item headers",
                unit="item",
                disable=not progress,
            )
        )
    work: list[WorkItem] = []
    for tiles, network_error, unreadable in laid:
        if network_error is not None:
            report["network_errors"].append(network_error)
        if unreadable is not None:
            report["unreadable"].append(unreadable)
        for tile in tiles:
            if known_hashes and tile.meta["content_hash_at_listing"] in known_hashes:
                report["unchanged"].append(
                    {
                        "id": tile.id,
                        "path": tile.path,
                        "stac_item": tile.meta["stac_item"],
                        "stac_collection": tile.meta["stac_collection"],
                        "indexed_as": tile.id,
                        "reason": "already indexed (same content hash)",
                    }
                )
                continue
            work.append(tile)
    for tile in work:
        tile.meta.pop("content_hash_at_listing", None)
    return work, report


def _scene_tiles(
    item: Any, preset: str, sources: list[Any], record: dict[str, Any], path: str, options: SourceOptions
) -> tuple[list[WorkItem], dict[str, Any] | None, dict[str, Any] | None]:
    """One item's tiles, or the reason it has none: ``(tiles, network error entry, unreadable entry)``."""
    from ..geo.cloud import RemoteReadError
    from ..geo.raster import RasterReader
    from ..geo.tiling import clamp_window
    from .geo import tile_windows, window_footprint

    collection = item.collection_id
    try:
        # A fixed stretch: the grid is all that is needed here (a percentile stretch would read the scene).
        with RasterReader(
            sources,
            preset=preset,
            stretch=(0, 1),
            retry=options.retry,
            signer=options.signer,
            gdal_options=options.gdal_options,
            name=f"STAC item {item.id}",
        ) as reader:
            crs = reader.crs.to_string() if reader.crs is not None else None
            shape = (reader.height, reader.width)
            windows = tile_windows(reader.width, reader.height, options.tile_size, options.overlap)
            footprints = [window_footprint(reader, window) for window in windows]
    except RemoteReadError as err:
        entry = {"id": None, "path": path, "stac_item": item.id, "stac_collection": collection}
        entry["tile_window"] = None
        entry.update({k: err.to_dict()[k] for k in ("href", "window", "attempts", "error")})
        return [], entry, None
    except (OSError, ValueError) as err:
        return (
            [],
            None,
            {"id": f"{collection}/{item.id}", "path": path, "error": f"{type(err).__name__}: {err}"},
        )
    scene = scene_hash(collection, item.id, sources)
    how = json.dumps(
        {
            "preset": preset,
            "bands": [{k: v for k, v in vars(s).items()} for s in sources],
            "shape": list(shape),
        }
    )
    tiles = []
    for index, (window, (bounds, ring, polygon, bbox)) in enumerate(zip(windows, footprints)):
        read = clamp_window(window, shape[1], shape[0])
        tiles.append(
            WorkItem(
                id=f"{collection}/{item.id}@{window[0]},{window[1]}",
                kind=STAC_TILE,
                path=path,
                window=tuple(int(v) for v in window),
                scene_hash=scene,
                meta={
                    "source": collection,
                    "label": None,
                    "tile_index": index,
                    "crs": crs,
                    "bounds": list(bounds),
                    "footprint": json.dumps(ring),
                    "footprint_lonlat": json.dumps(polygon) if polygon is not None else None,
                    "bbox": list(bbox) if bbox is not None else None,
                    **record,
                    "stac_bands": how,
                    "content_hash_at_listing": tile_content_hash(scene, window, read),
                },
            )
        )
    return tiles, None, None


# ------------------------------------------------------------------------------------------------- report
def merge_listing_reports(output: Path, report: dict[str, list]) -> None:
    """Add every run's listing report (``runs/listing-NNN.report.json``) to ``report`` (`build.finalize`)."""
    runs = _runs_dir(output)
    if not runs.is_dir():
        return
    for path in sorted(runs.glob("listing-*.report.json")):
        from .integrity import read_json

        part = read_json(path)
        for key, entries in part.items():
            report.setdefault(key, []).extend(entries)


def settle_network_errors(
    report: dict[str, list], ids: Iterable[str], items: Iterable[tuple[Any, Any]]
) -> None:
    """Drop the network errors a later run recovered from: a tile now in the index, or an item (no window) of which
    tiles are in the index. ``ids``: the index's ids; ``items``: its (collection, STAC item id) pairs."""
    ids, items = set(ids), {(c or "", i) for c, i in items}
    kept = []
    for entry in report.get("network_errors", []):
        if entry.get("id") is not None and entry["id"] in ids:
            continue
        if entry.get("id") is None and (entry.get("stac_collection") or "", entry.get("stac_item")) in items:
            continue
        kept.append(entry)
    report["network_errors"] = kept


__all__ = [
    "STAC_TILE",
    "indexed_items",
    "list_item_tiles",
    "merge_listing_reports",
    "save_listing",
    "scene_hash",
    "settle_network_errors",
    "stac_work_list",
]
