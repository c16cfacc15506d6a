"""GeoTIFF scenes for the index: the tile grid, reading a tile as RGB with its valid mask, and its footprint; the
same for the scenes of STAC items (`read_stac_window`, the bands `index.catalog` chose).

Everything goes through `modeling_rsmclip.geo` (`raster.RasterReader`: band presets, stretch, nodata/alpha masks,
footprints from the geotransform; `tiling`: the fixed window order and the rule for the edge), so a tile of the
index is the same tile as in `rsmclip map`: the same pixels, the same valid fraction, the same skip rule.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

Window = tuple[int, int, int, int]  # col_off, row_off, width, height


def _require_rasterio() -> Any:
    try:
        import rasterio
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            'GeoTIFF scenes need rasterio: pip install "rsmclip[index]" (or "rsmclip[geo]")'
        ) from err
    return rasterio


@contextlib.contextmanager
def open_scene(
    path: str | os.PathLike, preset: str | None = None, bands: list[int] | None = None
) -> Iterator[Any]:
    """A `geo.raster.RasterReader` for ``path`` (``.crs``, ``.transform``, ``.width``, ``.height``,
    ``.read_rgb(window)``)."""
    _require_rasterio()
    from ..geo.raster import RasterReader

    with RasterReader(path, preset=preset, bands=bands) as reader:
        yield reader


def tile_windows(width: int, height: int, size: int, overlap: int = 0) -> list[Window]:
    """The tile windows of a ``width`` x ``height`` raster, in `geo.tiling.TileGrid`'s fixed order (a tile's key
    and footprint; `read_window` reads an edge tile moved back inside the raster)."""
    if size is None or size < 1:
        raise ValueError(f"tile size must be a positive number of pixels, got {size}")
    if not 0 <= overlap < size:
        raise ValueError(f"overlap must be in 0..{size - 1} pixels, got {overlap}")
    from ..geo.tiling import TileGrid

    return [_as_window(w) for w in TileGrid(width, height, size, overlap=overlap).windows()]


def _as_window(window: Any) -> Window:
    if hasattr(window, "col_off"):
        return (int(window.col_off), int(window.row_off), int(window.width), int(window.height))
    col_off, row_off, width, height = window
    return (int(col_off), int(row_off), int(width), int(height))


def window_footprint(reader: Any, window: Window) -> tuple[Any, Any, Any, Any]:
    """``(bounds, ring, polygon_lonlat, bbox)`` of the part of a window inside the raster, from the reader's
    geotransform (rotation-aware): ``bounds`` (left, bottom, right, top) and ``ring`` (closed ring of the four
    corners) in the raster's CRS; ``polygon_lonlat`` GeoJSON Polygon coordinates and ``bbox`` (west, south,
    east, north) in lon/lat, None for a raster without a CRS."""
    inside = reader.clip_window(window) or window
    ring = reader.window_footprint(inside)
    bounds = reader.window_bounds(inside)
    return bounds, ring, reader.to_lonlat_polygon(ring), reader.to_lonlat_bounds(bounds)


_READERS: dict[tuple[str, str | None, tuple[int, ...] | None], Any] = {}


def read_window(path: str, window: Window, preset: str | None = None, bands: list[int] | None = None) -> Any:
    """The tile with grid window ``window`` as a `geo.tiling.TilePixels` (``rgb``, ``valid``, ``valid_fraction``,
    ``read_window``), by `geo.tiling`'s rule for the edge: read moved back inside the raster, the fraction counted
    on the tile's part inside it. Readers stay open per process (data-loader worker)."""
    key = (str(path), preset, tuple(bands) if bands is not None else None)
    reader = _READERS.get(key)
    if reader is None:
        _require_rasterio()
        from ..geo.raster import RasterReader

        reader = RasterReader(path, preset=preset, bands=bands).__enter__()
        _READERS[key] = reader
    from ..geo.tiling import read_tile_pixels

    return read_tile_pixels(reader, _as_window(window))


_STAC_READERS: dict[tuple[str, str], Any] = {}


def _stac_reader(scene: str, how: str, name: str, options: Any) -> Any:
    """A STAC scene's reader, opened once per process (data-loader worker). A scene that cannot be opened fails
    every later tile at once with the error of its one open (after its retries), and one whose files changed since
    the work list was made (another grid) is refused."""
    cached = _STAC_READERS.get((scene, how))
    if isinstance(cached, BaseException):
        raise cached
    if cached is not None:
        return cached
    import json

    _require_rasterio()
    from ..geo.raster import BandSource, RasterReader

    spec = json.loads(how)
    try:
        reader = RasterReader(
            [BandSource(**band) for band in spec["bands"]],
            preset=spec["preset"],
            retry=options.retry,
            signer=options.signer,
            gdal_options=options.gdal_options,
            name=name,
        )
        if [reader.height, reader.width] != list(spec["shape"]):
            reader.close()
            raise ValueError(
                f"{name}: its files are {reader.width} x {reader.height} pixels now, {spec['shape'][1]} x "
                f"{spec['shape'][0]} when the work list was made: rebuild the index"
            )
    except Exception as err:
        _STAC_READERS[(scene, how)] = err
        raise
    _STAC_READERS[(scene, how)] = reader
    return reader


def read_stac_window(scene: str, how: str, window: Window, name: str, options: Any) -> Any:
    """The tile with grid window ``window`` of a STAC scene as a `geo.tiling.TilePixels`, by `geo.tiling`'s rule
    for the edge. ``scene``: its hash; ``how``: its ``stac_bands`` (preset, band sources, grid shape) from
    `index.catalog`; ``options``: the `sources.SourceOptions` (remote retry, signer, GDAL settings)."""
    from ..geo.tiling import read_tile_pixels

    return read_tile_pixels(_stac_reader(scene, how, name, options), _as_window(window))
