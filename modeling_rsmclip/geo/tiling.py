"""Tiling of a raster: a regular grid of square windows with overlap, in a fixed order.

`TileGrid` knows its length up front and its windows in row-major order, so a tile index is a stable key (for
resuming, sharding, and the cells of a tile-resolution output grid). The last row and column of the grid may reach
past the raster's edge, which keeps the grid regular.

One rule for the edge, used by the maps and the archive index alike (`read_tile_pixels`, `keep_tile`):

- A tile is its grid window; its **area** is the part of that window inside the raster (its footprint, the cell
  it stands for).
- Its pixels are read from its **read window**: the grid window moved back inside the raster at the right and
  bottom edges (`clamp_window`), so the model sees a whole tile of the scene, not a sliver padded with black. Only
  a raster smaller than the tile is padded (with invalid pixels).
- Its **valid fraction** is the share of valid pixels (GDAL mask: nodata, alpha, internal masks; finite values)
  in its area: the raster's edge is not nodata.
- A tile is kept when that fraction is at least ``min_valid`` and above zero; the others are skipped and counted.

`iter_tiles` reads the tiles of a `RasterReader` one at a time (memory = one tile), skips tiles by that rule and
lists them in ``skipped``, and gives each tile its footprint in the raster CRS and lon/lat.
With ``read_size`` (e.g. the model's 224 pixels), a tile larger than that is read at that size: from a COG, GDAL
takes it from the overview whose resolution matches the tile's ground size, so a coarse tiling of a remote scene
moves the overview's bytes, not the full-resolution ones.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from tqdm.auto import tqdm

from .raster import RasterReader


def parse_length(value: int | float | str) -> tuple[float, str]:
    """``224`` / ``"224"`` / ``"224px"`` -> ``(224, "px")``; ``"500m"`` -> ``(500, "m")``."""
    if isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool):
        return float(value), "px"
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(px|m)?\s*", str(value))
    if not match:
        raise ValueError(f"cannot read length {value!r}: give pixels (224, '224px') or metres ('500m')")
    return float(match.group(1)), match.group(2) or "px"


def length_to_pixels(value: int | float | str, reader: RasterReader | None = None, minimum: int = 1) -> int:
    """A length in pixels or metres (at the raster's resolution) as a whole number of pixels, at least ``minimum``
    (1 for a tile or window size, 0 for an overlap)."""
    amount, unit = parse_length(value)
    if not math.isfinite(amount) or amount < 0 or (amount == 0 and minimum > 0):
        raise ValueError(
            f"a length must be a {'positive' if minimum else 'finite, not negative'} number of pixels or metres, "
            f"got {value!r}"
        )
    if unit == "px":
        if amount != int(amount):
            raise ValueError(f"a length in pixels must be a whole number, got {value!r}")
        return int(amount)
    if reader is None:
        raise ValueError(f"a length in metres ({value!r}) needs the raster to convert it")
    crs = reader.crs
    factor = crs.linear_units_factor[1] if crs is not None and crs.is_projected else None
    if factor is None:
        raise ValueError(
            f"{reader.path}: a length in metres ({value!r}) needs a projected CRS; this raster's CRS is "
            f"{'missing' if crs is None else 'geographic (degrees)'}: give the length in pixels"
        )
    pixel_metres = reader.pixel_size[0] * factor
    return max(minimum, int(round(amount / pixel_metres)))


def clamp_window(window: tuple[int, int, int, int], width: int, height: int) -> tuple[int, int, int, int]:
    """``window`` (col_off, row_off, width, height) moved back inside a ``width`` x ``height`` raster, same size
    (so it still contains the window's part inside the raster):
    along an axis where the raster is at least as long as the window, the window ends at the raster's edge at the
    latest; along a shorter axis it starts at 0 (and reaches past the edge)."""
    col, row, w, h = window

    def inside(offset: int, size: int, extent: int) -> int:
        return max(0, min(offset, extent - size)) if extent >= size else 0

    return inside(col, w, width), inside(row, h, height), w, h


def keep_tile(fraction: float, min_valid: float) -> bool:
    """The one skip rule: a tile is used when its valid fraction is at least ``min_valid`` and above zero."""
    return fraction > 0.0 and fraction >= min_valid


class TilePixels(NamedTuple):
    """A tile as read: ``rgb`` (uint8 HxWx3) and ``valid`` (HxW) of ``read_window`` (at ``out_shape`` when read
    smaller), and the tile's valid fraction (share of valid pixels in the part of its grid window inside the
    raster)."""

    rgb: np.ndarray
    valid: np.ndarray
    valid_fraction: float
    read_window: tuple[int, int, int, int]
    out_shape: tuple[int, int] | None = None


def read_tile_pixels(
    reader: RasterReader, window: tuple[int, int, int, int], out_shape: tuple[int, int] | None = None
) -> TilePixels:
    """The pixels of the tile with grid window ``window``, by the module's rule for the edge; ``out_shape``: read
    at that size (from the matching overview of a COG)."""
    read = clamp_window(tuple(int(v) for v in window), reader.width, reader.height)
    rgb, valid = reader.read_rgb(read, out_shape)
    inside = reader.clip_window(window)
    if inside is None:
        return TilePixels(rgb, valid, 0.0, read, out_shape)
    col, row, width, height = inside
    # The tile's area inside the raster, in the pixels as read (scaled when read at out_shape).
    sy, sx = valid.shape[0] / read[3], valid.shape[1] / read[2]
    top, left = round((row - read[1]) * sy), round((col - read[0]) * sx)
    bottom = max(top + 1, round((row - read[1] + height) * sy))
    right = max(left + 1, round((col - read[0] + width) * sx))
    return TilePixels(rgb, valid, float(valid[top:bottom, left:right].mean()), read, out_shape)


@dataclass(frozen=True)
class TileGrid:
    """A grid of ``size`` x ``size`` pixel windows over a ``width`` x ``height`` raster, neighbours sharing
    ``overlap`` pixels (stride = size - overlap). Windows are in row-major order; the last row/column may extend past
    the raster."""

    width: int
    height: int
    size: int
    overlap: int = 0

    def __post_init__(self) -> None:
        if self.width < 1 or self.height < 1:
            raise ValueError(f"raster size must be positive, got {self.width}x{self.height}")
        if self.size < 1:
            raise ValueError(f"tile size must be at least 1 pixel, got {self.size}")
        if not 0 <= self.overlap < self.size:
            raise ValueError(
                f"overlap must be in 0..{self.size - 1} pixels (less than the tile), got {self.overlap}"
            )

    @property
    def stride(self) -> int:
        return self.size - self.overlap

    def _count(self, extent: int) -> int:
        return 1 if extent <= self.size else math.ceil((extent - self.size) / self.stride) + 1

    @property
    def n_cols(self) -> int:
        return self._count(self.width)

    @property
    def n_rows(self) -> int:
        return self._count(self.height)

    def __len__(self) -> int:
        return self.n_rows * self.n_cols

    def position(self, index: int) -> tuple[int, int]:
        """``(row, col)`` of tile ``index`` in the grid."""
        if not 0 <= index < len(self):
            raise IndexError(f"tile index {index} out of range 0..{len(self) - 1}")
        return divmod(index, self.n_cols)

    def window(self, index: int) -> tuple[int, int, int, int]:
        """``(col_off, row_off, width, height)`` of tile ``index``."""
        row, col = self.position(index)
        return col * self.stride, row * self.stride, self.size, self.size

    def windows(self) -> list[tuple[int, int, int, int]]:
        return [self.window(i) for i in range(len(self))]

    def read_window(self, index: int) -> tuple[int, int, int, int]:
        """The pixels tile ``index`` is read from: its window moved back inside the raster (`clamp_window`)."""
        return clamp_window(self.window(index), self.width, self.height)

    def read_windows(self) -> list[tuple[int, int, int, int]]:
        return [self.read_window(i) for i in range(len(self))]

    def __iter__(self) -> Iterator[tuple[int, int, int, int]]:
        return (self.window(i) for i in range(len(self)))

    def cell_transform(self, transform: Any) -> Any:
        """Geotransform of a raster with one pixel per tile: cell (row, col) is the ``stride``-wide square centred
        on tile (row, col) (with no overlap: exactly the tile)."""
        from affine import Affine

        half = self.overlap / 2.0
        return transform @ Affine.translation(half, half) @ Affine.scale(self.stride)


@dataclass
class Tile:
    """One tile read from a raster (see module doc). ``window`` is the grid window (the tile's cell); ``bounds`` and
    the footprints cover its part inside the raster, and ``valid_fraction`` is measured there. ``rgb`` and ``valid``
    are the pixels of ``read_window`` (the grid window moved inside the raster at the right and bottom edges), and
    ``transform`` is that window's geotransform."""

    index: int
    row: int
    col: int
    window: tuple[int, int, int, int]
    read_window: tuple[int, int, int, int]
    rgb: np.ndarray
    valid: np.ndarray
    valid_fraction: float
    bounds: tuple[float, float, float, float]
    footprint: list[tuple[float, float]]
    footprint_lonlat: list[list[list[float]]] | None
    bbox_lonlat: tuple[float, float, float, float] | None
    transform: Any

    def geojson_feature(self, properties: dict[str, Any] | None = None) -> dict[str, Any]:
        """A GeoJSON Feature (lon/lat, RFC 7946) of the tile's footprint."""
        props = {"tile": self.index, "row": self.row, "col": self.col, "window": list(self.window)}
        props["read_window"] = list(self.read_window)
        props["valid_fraction"] = round(self.valid_fraction, 4)
        props.update(properties or {})
        geometry = (
            {"type": "Polygon", "coordinates": self.footprint_lonlat} if self.footprint_lonlat else None
        )
        feature: dict[str, Any] = {"type": "Feature", "geometry": geometry, "properties": props}
        if self.bbox_lonlat:
            feature["bbox"] = list(self.bbox_lonlat)
        return feature


@dataclass
class TileIterator:
    """Iterates the tiles of a grid over a reader; ``skipped`` lists the indices of mostly-nodata tiles (valid
    fraction below ``min_valid``, see `keep_tile`) and ``valid_fractions`` the valid fraction of every tile read,
    skipped or not."""

    reader: RasterReader
    grid: TileGrid
    min_valid: float = 0.5
    progress: bool = False
    indices: Sequence[int] | None = None
    read_size: int | None = None
    skipped: list[int] = field(default_factory=list)
    valid_fractions: dict[int, float] = field(default_factory=dict)
    n_yielded: int = 0

    def __len__(self) -> int:
        return len(self.indices) if self.indices is not None else len(self.grid)

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)

    def report(self) -> dict[str, Any]:
        return {
            "tiles": len(self),
            "read": self.n_yielded,
            "skipped_mostly_nodata": self.n_skipped,
            "min_valid": self.min_valid,
            "skipped_tiles": list(self.skipped),
        }

    def __iter__(self) -> Iterator[Tile]:
        self.skipped.clear()
        self.valid_fractions.clear()
        self.n_yielded = 0
        indices = self.indices if self.indices is not None else range(len(self.grid))
        for index in tqdm(indices, desc="tiles", unit="tile", disable=not self.progress):
            pixels = read_tile_pixels(
                self.reader, self.grid.window(index), _out_shape(self.grid, self.read_size)
            )
            self.valid_fractions[index] = pixels.valid_fraction
            if not keep_tile(pixels.valid_fraction, self.min_valid):
                self.skipped.append(index)
                continue
            self.n_yielded += 1
            yield _tile(self.reader, self.grid, index, pixels)


def _out_shape(grid: TileGrid, read_size: int | None) -> tuple[int, int] | None:
    return (read_size, read_size) if read_size is not None and read_size < grid.size else None


def read_tile(
    reader: RasterReader, grid: TileGrid, index: int, min_valid: float = 0.0, *, read_size: int | None = None
) -> Tile | None:
    """Tile ``index`` of ``grid``, or None when its valid fraction is below ``min_valid`` (or zero): the module's
    rule for the edge. With ``read_size`` smaller than the tile, the tile is read at ``read_size`` x ``read_size``
    pixels (from the matching overview; ``transform`` is then that of the smaller pixels)."""
    pixels = read_tile_pixels(reader, grid.window(index), _out_shape(grid, read_size))
    if not keep_tile(pixels.valid_fraction, min_valid):
        return None
    return _tile(reader, grid, index, pixels)


def _tile(reader: RasterReader, grid: TileGrid, index: int, pixels: TilePixels) -> Tile:
    window = grid.window(index)
    inside = reader.clip_window(window) or window
    ring = reader.window_footprint(inside)
    bounds = reader.window_bounds(inside)
    row, col = grid.position(index)
    return Tile(
        index=index,
        row=row,
        col=col,
        window=window,
        read_window=pixels.read_window,
        rgb=pixels.rgb,
        valid=pixels.valid,
        valid_fraction=pixels.valid_fraction,
        bounds=bounds,
        footprint=ring,
        footprint_lonlat=reader.to_lonlat_polygon(ring),
        bbox_lonlat=reader.to_lonlat_bounds(bounds),
        transform=reader.window_transform(pixels.read_window, pixels.out_shape),
    )


def iter_tiles(
    reader: RasterReader,
    size: int | str,
    overlap: int | str = 0,
    min_valid: float = 0.5,
    *,
    progress: bool = False,
    indices: Sequence[int] | None = None,
    read_size: int | None = None,
) -> TileIterator:
    """Tiles of ``size`` (pixels, or ``"500m"``) with ``overlap`` over a reader, skipping tiles with a valid
    fraction below ``min_valid``; each read at most ``read_size`` pixels a side (see the module doc). The returned
    iterator's ``skipped`` / ``report()`` count the skipped tiles."""
    if not 0.0 <= min_valid <= 1.0:
        raise ValueError(f"min_valid is a fraction in 0..1, got {min_valid}")
    if read_size is not None and read_size < 1:
        raise ValueError(f"read_size must be a positive number of pixels, got {read_size}")
    grid = TileGrid(
        reader.width,
        reader.height,
        length_to_pixels(size, reader),
        length_to_pixels(overlap, reader, minimum=0),
    )
    return TileIterator(reader, grid, min_valid, progress, indices, read_size)


__all__ = [
    "Tile",
    "TileGrid",
    "TileIterator",
    "TilePixels",
    "clamp_window",
    "iter_tiles",
    "keep_tile",
    "length_to_pixels",
    "parse_length",
    "read_tile",
    "read_tile_pixels",
]
