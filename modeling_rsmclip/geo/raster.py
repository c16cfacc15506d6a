"""`RasterReader`: windowed reading of any GeoTIFF / COG into 8-bit RGB plus a validity mask.

This is the package's only ``rasterio.open`` for scenes. A window is read on its own (memory follows the window, not
the scene); windows reaching past the raster's edge are padded with invalid pixels, so a tile grid stays regular.
A pixel is valid when every selected band says so in its GDAL mask (which carries nodata values, alpha bands and
internal masks) and its value is finite. Complex bands (SAR) are read as amplitude ``|z|``.

Rotated or sheared geotransforms are supported: footprints are computed from the four corners through the affine
transform, and output grids keep the rotation.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .bands import BandSelection, Stretch, resolve_preset

INSTALL_HINT = 'pip install "rsmclip[geo]"'
LONLAT = "EPSG:4326"
# GDAL's block cache defaults to 5% of the machine's RAM; a scene read window by window needs far less.
DEFAULT_GDAL_CACHE_MB = 256
WindowLike = Any  # rasterio.windows.Window or (col_off, row_off, width, height)


def require_rasterio():
    """Import rasterio, or say which extra to install."""
    try:
        import rasterio
        import rasterio.warp  # noqa: F401
        import rasterio.windows  # noqa: F401
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(f"reading rasters needs rasterio: {INSTALL_HINT}") from err
    return rasterio


def gdal_env() -> contextlib.AbstractContextManager:
    """GDAL settings for reading and writing scenes: the block cache capped at `DEFAULT_GDAL_CACHE_MB` unless the
    user chose a size (``GDAL_CACHEMAX`` in the environment or an enclosing ``rasterio.Env``)."""
    rasterio = require_rasterio()
    if "GDAL_CACHEMAX" in os.environ:
        return contextlib.nullcontext()
    if rasterio.env.hasenv() and "GDAL_CACHEMAX" in rasterio.env.getenv():
        return contextlib.nullcontext()
    return rasterio.Env(GDAL_CACHEMAX=DEFAULT_GDAL_CACHE_MB * 2**20)


def as_window_tuple(window: WindowLike) -> tuple[int, int, int, int]:
    """``(col_off, row_off, width, height)`` as ints from a rasterio Window or a 4-sequence."""
    if hasattr(window, "col_off"):
        values = (window.col_off, window.row_off, window.width, window.height)
    else:
        values = tuple(window)
        if len(values) != 4:
            raise ValueError(f"a window is (col_off, row_off, width, height), got {window!r}")
    col, row, width, height = (int(round(float(v))) for v in values)
    if width <= 0 or height <= 0:
        raise ValueError(f"window {window!r} is empty")
    return col, row, width, height


class RasterReader:
    """Open a raster and read windows of it as RGB (context manager).

    Args:
        path: GeoTIFF / COG (or any GDAL raster) path.
        preset, bands, stretch: band choice and stretch, see `geo.bands.resolve_preset`.
        sample_size: longest side of the decimated whole-scene read used to resolve a percentile stretch into
            fixed limits (so that every window of the scene is stretched alike).

    Attributes:
        crs, transform, width, height, count, dtypes, band_descriptions, selection (`BandSelection`).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        preset: str | None = None,
        bands: Sequence[int | str] | None = None,
        stretch: Any = None,
        *,
        sample_size: int = 1024,
    ) -> None:
        rasterio = require_rasterio()
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"raster not found: {self.path}")
        try:
            with gdal_env():
                self._src = rasterio.open(self.path)
        except rasterio.errors.RasterioIOError as err:
            raise ValueError(f"cannot read raster {self.path}: {err}") from err
        try:
            if self._src.transform.is_identity and self._src.gcps[0]:
                raise ValueError(
                    "georeferenced by ground control points only (no geotransform): warp it to a grid first, "
                    "e.g. `gdalwarp -r bilinear IN.tif OUT.tif`"
                )
            selection = resolve_preset(self._src, preset, bands, stretch)
            if selection.stretch.kind == "percentile":
                selection = selection.with_stretch(self._percentile_limits(selection, sample_size))
        except ValueError as err:
            self._src.close()
            raise ValueError(f"{self.path}: {err}") from None
        self.selection: BandSelection = selection
        self._indexes = [i + 1 for i in selection.indices]
        self._is_lonlat = self.crs is not None and self.crs.to_epsg() == 4326

    # ------------------------------------------------------------------------------------------------ lifecycle
    def __enter__(self) -> RasterReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._src.close()

    def __repr__(self) -> str:
        return f"RasterReader({str(self.path)!r}, {self.width}x{self.height}, {self.selection.describe()})"

    # ----------------------------------------------------------------------------------------------- properties
    @property
    def crs(self):
        return self._src.crs

    @property
    def transform(self):
        return self._src.transform

    @property
    def width(self) -> int:
        return self._src.width

    @property
    def height(self) -> int:
        return self._src.height

    @property
    def count(self) -> int:
        return self._src.count

    @property
    def dtypes(self) -> tuple[str, ...]:
        return tuple(self._src.dtypes)

    @property
    def band_descriptions(self) -> tuple[str | None, ...]:
        return tuple(self._src.descriptions)

    @property
    def nodata(self) -> float | None:
        return self._src.nodata

    @property
    def is_rotated(self) -> bool:
        """True when the geotransform has rotation or shear terms."""
        return not self.transform.is_rectilinear

    @property
    def pixel_size(self) -> tuple[float, float]:
        """Pixel width and height in CRS units (rotation-aware)."""
        t = self.transform
        return float(np.hypot(t.a, t.d)), float(np.hypot(t.b, t.e))

    @property
    def dataset(self):
        """The underlying rasterio dataset (read-only use)."""
        return self._src

    # -------------------------------------------------------------------------------------------------- reading
    def read_bands(self, window: WindowLike | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The selected bands of a window, ``(n_bands, H, W)`` in the file's dtype, and the valid mask ``(H, W)``.

        Pixels outside the raster (a window past its edge) are 0 and invalid.
        """
        from rasterio.windows import Window

        col, row, width, height = as_window_tuple(window or (0, 0, self.width, self.height))
        dtype = np.dtype(self.dtypes[self._indexes[0] - 1])
        data = np.zeros((len(self._indexes), height, width), dtype=dtype)
        valid = np.zeros((height, width), dtype=bool)
        c0, r0 = max(col, 0), max(row, 0)
        c1, r1 = min(col + width, self.width), min(row + height, self.height)
        if c1 <= c0 or r1 <= r0:
            return data, valid
        inner = Window(c0, r0, c1 - c0, r1 - r0)
        with gdal_env():
            part = self._src.read(self._indexes, window=inner)
            masks = self._src.read_masks(self._indexes, window=inner)
        ok = (masks > 0).all(axis=0)
        if part.dtype.kind in "fc":
            ok &= np.isfinite(part).all(axis=0)
        data[:, r0 - row : r1 - row, c0 - col : c1 - col] = part
        valid[r0 - row : r1 - row, c0 - col : c1 - col] = ok
        return data, valid

    def read_rgb(self, window: WindowLike | None = None) -> tuple[np.ndarray, np.ndarray]:
        """A window as ``(rgb uint8 HxWx3, valid bool HxW)``; invalid pixels are black."""
        data, valid = self.read_bands(window)
        return self.selection.to_rgb(data, valid), valid

    def preview(self, max_size: int = 1024) -> tuple[np.ndarray, np.ndarray, float]:
        """The whole scene decimated so its longest side is at most ``max_size``: ``(rgb, valid, factor)`` where
        ``factor`` is scene pixels per preview pixel."""
        data, valid, factor = self._decimated(max_size)
        return self.selection.to_rgb(data, valid), valid, factor

    def _decimated(self, max_size: int) -> tuple[np.ndarray, np.ndarray, float]:
        from rasterio.enums import Resampling

        factor = max(1.0, max(self.width, self.height) / max_size)
        shape = (max(1, round(self.height / factor)), max(1, round(self.width / factor)))
        indexes = [i + 1 for i in self.selection.indices]
        out_shape = (len(indexes), *shape)
        with gdal_env():
            data = self._src.read(indexes, out_shape=out_shape, resampling=Resampling.nearest)
            masks = self._src.read_masks(indexes, out_shape=out_shape, resampling=Resampling.nearest)
        valid = (masks > 0).all(axis=0)
        if data.dtype.kind in "fc":
            valid &= np.isfinite(data).all(axis=0)
        return data, valid, factor

    def _percentile_limits(self, selection: BandSelection, sample_size: int) -> Stretch:
        self.selection = selection
        data, valid, _ = self._decimated(sample_size)
        if not valid.any():
            raise ValueError("no valid pixel in the raster (all nodata / masked): nothing to stretch")
        channels = selection.channels(data)[:, valid]
        low = np.percentile(channels, selection.stretch.low[0], axis=1)
        high = np.percentile(channels, selection.stretch.high[0], axis=1)
        high = np.where(high > low, high, low + 1.0)
        return Stretch.fixed(tuple(low), tuple(high))

    # ------------------------------------------------------------------------------------------------ geometry
    def window_transform(self, window: WindowLike):
        """The geotransform of a window (its top-left pixel corner, same pixel size and rotation)."""
        from affine import Affine

        col, row, _, _ = as_window_tuple(window)
        return self.transform @ Affine.translation(col, row)

    def clip_window(self, window: WindowLike) -> tuple[int, int, int, int] | None:
        """The part of a window inside the raster, or None."""
        col, row, width, height = as_window_tuple(window)
        c0, r0 = max(col, 0), max(row, 0)
        c1, r1 = min(col + width, self.width), min(row + height, self.height)
        if c1 <= c0 or r1 <= r0:
            return None
        return c0, r0, c1 - c0, r1 - r0

    def window_footprint(self, window: WindowLike) -> list[tuple[float, float]]:
        """Closed ring of the window's four corners in the raster CRS (rotation-aware)."""
        col, row, width, height = as_window_tuple(window)
        t = self.transform
        corners = [(col, row), (col + width, row), (col + width, row + height), (col, row + height)]
        ring = [tuple(float(v) for v in t @ c) for c in corners]
        return [*ring, ring[0]]

    def window_bounds(self, window: WindowLike) -> tuple[float, float, float, float]:
        """``(left, bottom, right, top)`` envelope of the window in the raster CRS."""
        ring = self.window_footprint(window)
        xs, ys = [p[0] for p in ring], [p[1] for p in ring]
        return min(xs), min(ys), max(xs), max(ys)

    def to_lonlat_polygon(self, ring: list[tuple[float, float]]) -> list[list[list[float]]] | None:
        """GeoJSON Polygon coordinates in lon/lat of a ring in the raster CRS (None without a CRS)."""
        if self.crs is None:
            return None
        from rasterio.warp import transform_geom

        geom = {"type": "Polygon", "coordinates": [[list(p) for p in ring]]}
        if not self._is_lonlat:
            geom = transform_geom(self.crs, LONLAT, geom)
        return [[[float(x), float(y)] for x, y in geom["coordinates"][0]]]

    def to_lonlat_bounds(
        self, bounds: tuple[float, float, float, float]
    ) -> tuple[float, float, float, float] | None:
        """``(west, south, east, north)`` in lon/lat of raster-CRS bounds (None without a CRS)."""
        if self.crs is None:
            return None
        if self._is_lonlat:
            return tuple(float(v) for v in bounds)
        from rasterio.warp import transform_bounds

        return tuple(float(v) for v in transform_bounds(self.crs, LONLAT, *bounds, densify_pts=21))


__all__ = [
    "DEFAULT_GDAL_CACHE_MB",
    "INSTALL_HINT",
    "RasterReader",
    "as_window_tuple",
    "gdal_env",
    "require_rasterio",
]
