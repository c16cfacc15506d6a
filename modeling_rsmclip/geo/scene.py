"""What a map command reads as its scene: a raster file, a raster URL (a COG over HTTP(S) or object storage), or a
STAC item (a pystac ``Item``, its dict, or the URL / path of its JSON), optionally cut to a lon/lat box.

`open_scene` gives a `raster.RasterReader` for any of them. A STAC item's bands are chosen from its own metadata
(`stac.select_bands`: ``preset`` / ``bands`` by common name or band id). With ``bbox`` the reader stands for the
window of whole pixels covering the box (see `raster.RasterReader`): only that window is read, and every output is
georeferenced on its grid.

Which of the two a path or URL is: a ``.json`` / ``.geojson`` file, or a URL whose path ends so, has no file suffix
at all, or is a STAC API's ``.../collections/C/items/ID``, is a STAC item; anything else is a raster.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from .cloud import RetryPolicy, Signer, is_remote
from .raster import RasterReader

STAC_SUFFIXES = (".json", ".geojson")
RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".vrt", ".img")


def is_stac_item_ref(scene: Any) -> bool:
    """Whether ``scene`` names a STAC item rather than a raster (see the module doc)."""
    if isinstance(scene, dict) or type(scene).__name__ == "Item":
        return True
    text = str(scene)
    if is_remote(text) and not text.startswith("/vsi"):
        path = PurePosixPath(urllib.parse.urlsplit(text).path)
        suffix = path.suffix.lower()
        in_api = (
            len(path.parts) >= 3 and path.parts[-2] == "items"
        )  # .../collections/C/items/ID (ids may hold dots)
        return suffix in STAC_SUFFIXES or suffix == "" or (in_api and suffix not in RASTER_SUFFIXES)
    return Path(text).suffix.lower() in STAC_SUFFIXES


def load_stac_item(scene: Any, *, retry: RetryPolicy | None = None) -> Any:
    """A pystac ``Item`` from an ``Item``, a dict, or the URL / path of one item's JSON (read with the retries of
    `stac.search_items`; an item collection or catalog is refused, naming how many items it holds)."""
    from .stac import DEFAULT_STAC_RETRY, StacError, StacQuery, require_stac, search_items

    pystac, _ = require_stac()
    if isinstance(scene, pystac.Item):
        return scene
    if isinstance(scene, dict):
        return pystac.Item.from_dict(scene)
    items = search_items(StacQuery(str(scene)), retry=retry or DEFAULT_STAC_RETRY)
    if len(items) != 1:
        raise StacError(
            f"{scene} holds {len(items)} STAC items: a map is made from one item (give its own URL or JSON)"
        )
    return items[0]


def open_scene(
    scene: str | os.PathLike | Any,
    *,
    preset: str | None = None,
    bands: Sequence[int | str] | None = None,
    stretch: Any = None,
    bbox: Sequence[float] | None = None,
    signer: Signer | None = None,
    retry: RetryPolicy | None = None,
    gdal_options: dict[str, Any] | None = None,
) -> RasterReader:
    """A `RasterReader` over ``scene`` (raster path or URL, or STAC item: see the module doc), cut to the lon/lat
    ``bbox`` when given. ``signer``, ``retry`` and ``gdal_options`` are those of `RasterReader` (remote reads)."""
    options: dict[str, Any] = {"signer": signer, "retry": retry, "gdal_options": gdal_options, "bbox": bbox}
    if is_stac_item_ref(scene):
        from .stac import open_item

        if bands is not None and any(isinstance(b, int) for b in bands):
            raise ValueError(
                f"a STAC item's bands are named (red,green,blue or B04,B03,B02), not numbered: got {list(bands)}"
            )
        return open_item(load_stac_item(scene, retry=retry), preset, bands, stretch, **options)
    return RasterReader(scene, preset=preset, bands=bands, stretch=stretch, **options)


def scene_label(scene: Any) -> str | Path:
    """How outputs name a scene: a local path as a ``Path``, a URL as it is, a STAC item by its self link or id."""
    if isinstance(scene, dict):
        return str(scene.get("id"))
    if type(scene).__name__ == "Item":
        return scene.get_self_href() or scene.id
    text = str(scene)
    return text if is_remote(text) else Path(text)


__all__ = ["is_stac_item_ref", "load_stac_item", "open_scene", "scene_label"]
