"""Tiling of a raster: a regular grid of square windows with overlap, in a fixed order.

`TileGrid` knows its length up front and its windows in row-major order, so a tile index is a stable key (for
resuming, sharding, and the cells of a tile-resolution output grid). The last row and column may reach past the
raster's edge: those pixels are read as invalid (see `RasterReader.read_bands`), which keeps the grid regular.

`iter_tiles` reads the tiles of a `RasterReader` one at a time (memory = one tile), skips tiles whose valid fraction
is below ``min_valid`` and lists them in ``skipped``, and gives each tile its footprint in the raster CRS and lon/lat.
With ``read_size`` (e.g. the model's 224 pixels), a tile larger than that is read at that size: from a COG, GDAL
takes it from the overview whose resolution matches the tile's ground size, so a coarse tiling of a remote scene
moves the overview's bytes, not the full-resolution ones.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

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


def length_to_pixels(value: int | float | str, reader: RasterReader | None = None) -> int:
    """A length in pixels or metres (at the raster's resolution) as a whole number of pixels."""
    amount, unit = parse_length(value)
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
    return max(1, int(round(amount / pixel_metres)))


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
    """One tile read from a raster (see module doc). ``window`` is the grid window; ``bounds`` and the footprints
    cover its part inside the raster."""

    index: int
    row: int
    col: int
    window: tuple[int, int, int, int]
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
    """Iterates the tiles of a grid over a reader; ``skipped`` lists the indices of mostly-nodata tiles."""

    reader: RasterReader
    grid: TileGrid
    min_valid: float = 0.5
    progress: bool = False
    indices: Sequence[int] | None = None
    read_size: int | None = None
    skipped: list[int] = field(default_factory=list)
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
        self.n_yielded = 0
        indices = self.indices if self.indices is not None else range(len(self.grid))
        for index in tqdm(indices, desc="tiles", unit="tile", disable=not self.progress):
            tile = read_tile(self.reader, self.grid, index, self.min_valid, read_size=self.read_size)
            if tile is None:
                self.skipped.append(index)
                continue
            self.n_yielded += 1
            yield tile


def read_tile(
    reader: RasterReader, grid: TileGrid, index: int, min_valid: float = 0.0, *, read_size: int | None = None
) -> Tile | None:
    """Tile ``index`` of ``grid``, or None when its valid fraction is below ``min_valid`` (or zero). With
    ``read_size`` smaller than the tile, the tile is read at ``read_size`` x ``read_size`` pixels (from the matching
    overview; ``transform`` is then that of the smaller pixels)."""
    window = grid.window(index)
    out_shape = (read_size, read_size) if read_size is not None and read_size < grid.size else None
    rgb, valid = reader.read_rgb(window, out_shape)
    fraction = float(valid.mean())
    if fraction == 0.0 or fraction < min_valid:
        return None
    inside = reader.clip_window(window) or window
    ring = reader.window_footprint(inside)
    bounds = reader.window_bounds(inside)
    row, col = grid.position(index)
    return Tile(
        index=index,
        row=row,
        col=col,
        window=window,
        rgb=rgb,
        valid=valid,
        valid_fraction=fraction,
        bounds=bounds,
        footprint=ring,
        footprint_lonlat=reader.to_lonlat_polygon(ring),
        bbox_lonlat=reader.to_lonlat_bounds(bounds),
        transform=reader.window_transform(window, out_shape),
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
        reader.width, reader.height, length_to_pixels(size, reader), length_to_pixels(overlap, reader)
    )
    return TileIterator(reader, grid, min_valid, progress, indices, read_size)


__all__ = ["Tile", "TileGrid", "TileIterator", "iter_tiles", "length_to_pixels", "parse_length", "read_tile"]
