"""`RasterReader`: windowed reading of any GeoTIFF / COG, local or remote, into 8-bit RGB plus a validity mask.

This is the package's only ``rasterio.open`` for scenes. A window is read on its own (memory follows the window, not
the scene); windows reaching past the raster's edge are padded with invalid pixels, so a tile grid stays regular.
A pixel is valid when every selected band says so in its GDAL mask (which carries nodata values, alpha bands and
internal masks) and its value is finite. Complex bands (SAR) are read as amplitude ``|z|``.

Remote rasters (``https://``, ``s3://``, ``gs://``, ``az://`` URLs of cloud-optimised GeoTIFFs) are read through GDAL
with the settings of `geo.cloud` (only the byte ranges of the blocks a window needs move; opens and window reads are
retried, then fail with a `geo.cloud.RemoteReadError` naming the file and window). ``read_bands(window,
out_shape=...)`` reads a window at a lower resolution, which GDAL takes from the overview whose resolution matches.

The bands may also come from several files: a list of `BandSource` (what a STAC item gives, e.g. one single-band COG
per band, or some bands of a multi-band COG). They are read together on one grid, the finest of them: bands on a
coarser grid of the same CRS (Sentinel-2's 20 m bands beside its 10 m ones) are resampled onto it with
``resampling`` (bilinear by default; ``"nearest"`` keeps the values).

A reader may stand for a part of the raster only: ``window=`` (pixels) or ``bbox=`` (lon/lat degrees, the pixels
covering it). Its grid is then that window's (``width``, ``height``, ``transform`` are the window's), every read is
clipped to it, and nothing outside it is read (a percentile stretch is measured inside it too), so maps made from
it are georeferenced on the window's grid.

Rotated or sheared geotransforms are supported: footprints are computed from the four corners through the affine
transform, and output grids keep the rotation.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .bands import BandSelection, Stretch, get_band_preset, rescale_stretch, resolve_preset
from .cloud import (
    DEFAULT_GDAL_CACHE_MB,
    DEFAULT_RETRY,
    RetryPolicy,
    Signer,
    cloud_env,
    is_remote,
    uncached,
    with_retries,
)

INSTALL_HINT = 'pip install "rsmclip[geo]"'
LONLAT = "EPSG:4326"
WindowLike = Any  # rasterio.windows.Window or (col_off, row_off, width, height)
RESAMPLING = ("nearest", "bilinear", "cubic", "average")


def require_rasterio():
    """Import rasterio, or say which extra to install."""
    try:
        import rasterio
        import rasterio.warp  # noqa: F401
        import rasterio.windows  # noqa: F401
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(f"reading rasters needs rasterio: {INSTALL_HINT}") from err
    return rasterio


def is_gdal_error(error: BaseException) -> bool:
    """Whether ``error`` is rasterio's or GDAL's (``RasterioError``, ``CPLE_*``): a file GDAL cannot read."""
    from rasterio.errors import RasterioError

    return isinstance(error, RasterioError) or any(
        cls.__name__ == "CPLE_BaseError" for cls in type(error).__mro__
    )


def gdal_message(error: BaseException) -> str:
    """The most specific message in a rasterio error's chain: GDAL's own (``TIFFReadEncodedTile() failed``) rather
    than rasterio's ``Read failed. See previous exception for details.``"""
    messages = []
    seen: BaseException | None = error
    while seen is not None and len(messages) < 5:
        text = " ".join(str(seen).split())
        if text and "see previous exception" not in text.lower():
            messages.append(text)
        seen = seen.__cause__ or seen.__context__
    return messages[-1] if messages else type(error).__name__


def gdal_env() -> contextlib.AbstractContextManager:
    """GDAL settings for reading and writing local scenes: the block cache capped at `DEFAULT_GDAL_CACHE_MB` unless
    the user chose a size (``GDAL_CACHEMAX`` in the environment or an enclosing ``rasterio.Env``). Remote reads add
    the settings of `geo.cloud.cloud_env`."""
    require_rasterio()
    return cloud_env(remote=False)


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


@dataclass(frozen=True)
class BandSource:
    """One band of a raster file as a catalog describes it: ``href`` (path or URL), ``band`` (counted from 1 in that
    file), ``name`` (what the band is called, e.g. ``"B4"`` or ``"red"``), and the catalog's ``scale``, ``offset``
    (physical value = digital number x scale + offset) and ``nodata``. ``key``: the catalog's asset key."""

    href: str
    band: int = 1
    name: str | None = None
    scale: float | None = None
    offset: float | None = None
    nodata: float | None = None
    key: str | None = None


@dataclass
class _Group:
    """Bands read from one dataset (or a warped view of it on the reader's grid) in one call."""

    reader: Any
    href: str
    indexes: list[int]  # 1-based bands of ``reader``
    positions: list[int]  # where they go among the selected bands
    nodata: list[float | None]  # catalog nodata per band (None: the file's own mask only)


class _Bands:
    """What `bands.resolve_preset` needs to know of bands gathered from several files."""

    def __init__(self, names: Sequence[str | None], dtypes: Sequence[str]) -> None:
        from rasterio.enums import ColorInterp

        self.descriptions = tuple(names)
        self.dtypes = tuple(dtypes)
        self.count = len(self.descriptions)
        self.colorinterp = [ColorInterp.undefined] * self.count

    def tags(self, band: int = 0) -> dict[str, str]:
        return {}


class RasterReader:
    """Open a raster and read windows of it as RGB (context manager).

    Args:
        path: GeoTIFF / COG (or any GDAL raster) path or URL, or a list of `BandSource` (the bands to show, in
            R, G, B order: or VV, VH for the ``sentinel1`` preset).
        preset, bands, stretch: band choice and stretch, see `geo.bands.resolve_preset` (``bands`` only with a
            single file: a `BandSource` list is the band choice). With `BandSource`s that declare ``scale`` and
            ``offset``, a preset's fixed stretch is converted to their digital numbers (`bands.rescale_stretch`).
        sample_size: longest side of the decimated whole-scene read used to resolve a percentile stretch into
            fixed limits (so that every window of the scene is stretched alike).
        resampling: how bands on a coarser grid are brought onto the finest one (`BandSource` lists).
        signer: for remote files, ``href -> href to open`` (short-lived tokens), called before each open attempt.
        retry: how often a remote open or window read is tried (`geo.cloud.RetryPolicy`).
        gdal_options: GDAL settings for this reader, over the package's (`geo.cloud.gdal_options`).
        name: what messages call the raster (default: its path, or the first band's href).
        window: ``(col_off, row_off, width, height)`` of the raster's grid: the reader stands for that part only.
        bbox: ``(west, south, east, north)`` in lon/lat degrees: the reader stands for the window of whole pixels
            covering it (clipped to the raster; one outside the raster is refused, naming both).

    Attributes:
        crs, transform, width, height, count, dtypes, band_descriptions, selection (`BandSelection`).
    """

    def __init__(
        self,
        path: str | os.PathLike | Sequence[BandSource],
        preset: str | None = None,
        bands: Sequence[int | str] | None = None,
        stretch: Any = None,
        *,
        sample_size: int = 1024,
        resampling: str = "bilinear",
        signer: Signer | None = None,
        retry: RetryPolicy | None = None,
        gdal_options: dict[str, Any] | None = None,
        name: str | None = None,
        window: WindowLike | None = None,
        bbox: Sequence[float] | None = None,
    ) -> None:
        require_rasterio()
        if window is not None and bbox is not None:
            raise ValueError("give a window or a bbox, not both")
        from rasterio.enums import Resampling

        if resampling not in RESAMPLING:
            raise ValueError(f"resampling must be one of {RESAMPLING}, got {resampling!r}")
        self._resampling = Resampling[resampling]
        self._signer = signer
        self._retry = retry or DEFAULT_RETRY
        self._options = dict(gdal_options or {})
        self._opened: list[Any] = []
        self._view: tuple[int, int, int, int] | None = None
        if isinstance(path, str | os.PathLike):
            sources = None
            self.path: Path | str = str(path) if is_remote(str(path)) else Path(path)
            self._remote = is_remote(str(path))
        else:
            sources = list(path)
            if not sources or not all(isinstance(s, BandSource) for s in sources):
                raise ValueError("a raster is a path, a URL or a non-empty list of BandSource")
            if bands is not None:
                raise ValueError(
                    "bands=... chooses bands of one file; with BandSource lists the list is the choice"
                )
            self.path = name or sources[0].href
            self._remote = any(is_remote(s.href) for s in sources)
        self.name = name or str(self.path)
        try:
            if sources is None:
                selection = self._open_file(preset, bands, stretch)
            else:
                selection = self._open_sources(sources, preset, stretch)
            if bbox is not None:
                window = self.bbox_window(bbox)
            if window is not None:
                self._view = self._checked_view(window)
            self.selection: BandSelection = selection
            if selection.stretch.kind == "percentile":
                self.selection = selection.with_stretch(self._percentile_limits(selection, sample_size))
        except ValueError as err:
            self.close()
            message = str(err)
            raise ValueError(message if self.name in message else f"{self.name}: {message}") from None
        except BaseException:
            self.close()
            raise
        self._is_lonlat = self.crs is not None and self.crs.to_epsg() == 4326

    # ------------------------------------------------------------------------------------------------- opening
    def _env(self, extra: dict[str, Any] | None = None) -> contextlib.AbstractContextManager:
        return cloud_env({**self._options, **(extra or {})}, remote=self._remote)

    def _open(self, href: str) -> Any:
        """Open one file: a local path at once, a remote one through the signer with retries."""
        rasterio = require_rasterio()
        if not is_remote(href):
            if not Path(href).exists():
                raise FileNotFoundError(f"raster not found: {href}")
            try:
                with self._env():
                    src = rasterio.open(href)
            except rasterio.errors.RasterioIOError as err:
                raise ValueError(f"cannot read raster {href}: {err}") from err
        else:

            def attempt(number: int) -> Any:
                target = self._signer(href) if self._signer is not None else href
                # After a failure GDAL would answer from its cache of that failure: fetch again.
                with self._env(uncached(target) if number else None):
                    return rasterio.open(target)

            src = with_retries(attempt, href, retry=self._retry, retry_on=(rasterio.errors.RasterioIOError,))
        self._opened.append(src)
        if src.transform.is_identity and src.gcps[0]:
            raise ValueError(
                f"{href}: georeferenced by ground control points only (no geotransform): warp it to a grid "
                "first, e.g. `gdalwarp -r bilinear IN.tif OUT.tif`"
            )
        return src

    def _open_file(self, preset: str | None, bands: Any, stretch: Any) -> BandSelection:
        self._src = self._open(str(self.path))
        self._facts: Any = self._src
        selection = resolve_preset(self._src, preset, bands, stretch)
        indexes = [i + 1 for i in selection.indices]
        self._groups = [
            _Group(self._src, str(self.path), indexes, list(range(len(indexes))), [None] * len(indexes))
        ]
        self._dtype = np.dtype(self._src.dtypes[indexes[0] - 1])
        return selection

    def _open_sources(self, sources: list[BandSource], preset: str | None, stretch: Any) -> BandSelection:
        from rasterio.vrt import WarpedVRT

        files: dict[str, Any] = {}
        for source in sources:
            if source.href not in files:
                files[source.href] = self._open(source.href)
            src = files[source.href]
            if not 1 <= source.band <= src.count:
                raise ValueError(f"{source.href} has {src.count} band(s), no band {source.band}")
        crs = {href: src.crs for href, src in files.items()}
        first_href, first_crs = next(iter(crs.items()))
        for href, other in crs.items():
            if other != first_crs:
                raise ValueError(
                    f"the bands are in different CRSs ({first_href}: {first_crs}, {href}: {other}): "
                    "reading them on one grid would need a warp; choose bands of one CRS"
                )
        # The finest grid of the chosen bands is the reader's grid (first file on ties).
        self._src = min(
            files.values(), key=lambda s: abs(s.transform.a * s.transform.e - s.transform.b * s.transform.d)
        )
        ref = self._src
        self._groups = []
        for href, src in files.items():
            positions = [i for i, s in enumerate(sources) if s.href == href]
            same_grid = src.transform == ref.transform and (src.width, src.height) == (ref.width, ref.height)
            view = src
            if not same_grid:
                view = WarpedVRT(
                    src,
                    crs=ref.crs,
                    transform=ref.transform,
                    width=ref.width,
                    height=ref.height,
                    resampling=self._resampling,
                )
                self._opened.append(view)
            self._groups.append(
                _Group(
                    view,
                    href,
                    [sources[i].band for i in positions],
                    positions,
                    [sources[i].nodata for i in positions],
                )
            )
        names = [s.name or s.key or f"band {i + 1}" for i, s in enumerate(sources)]
        dtypes = [files[s.href].dtypes[s.band - 1] for s in sources]
        self._facts = _Bands(names, dtypes)
        self._dtype = np.result_type(*[np.dtype(d) for d in dtypes])
        explicit = None if len(sources) == 2 else list(range(len(sources)))
        selection = resolve_preset(self._facts, preset, explicit, stretch)
        chosen = get_band_preset(preset) if preset else None
        scales = [s.scale for s in sources]
        offsets = [s.offset for s in sources]
        declared = any(v is not None for v in scales + offsets)
        if stretch is None and chosen is not None and declared and selection.stretch.kind == "fixed":
            selection = selection.with_stretch(rescale_stretch(chosen, selection.stretch, scales, offsets))
        return selection

    # ------------------------------------------------------------------------------------------------ lifecycle
    def __enter__(self) -> RasterReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        for dataset in reversed(self._opened):
            dataset.close()
        self._opened.clear()

    def __repr__(self) -> str:
        return f"RasterReader({self.name!r}, {self.width}x{self.height}, {self.selection.describe()})"

    # ----------------------------------------------------------------------------------------------- properties
    @property
    def crs(self):
        return self._src.crs

    @property
    def transform(self):
        if self._view is None:
            return self._src.transform
        from affine import Affine

        return self._src.transform @ Affine.translation(self._view[0], self._view[1])

    @property
    def width(self) -> int:
        return self._src.width if self._view is None else self._view[2]

    @property
    def height(self) -> int:
        return self._src.height if self._view is None else self._view[3]

    @property
    def view_window(self) -> tuple[int, int, int, int] | None:
        """The part of the raster this reader stands for, ``(col_off, row_off, width, height)`` of the raster's own
        grid (the finest file of a `BandSource` list), or None for the whole raster."""
        return self._view

    @property
    def count(self) -> int:
        return self._facts.count

    @property
    def dtypes(self) -> tuple[str, ...]:
        return tuple(self._facts.dtypes)

    @property
    def band_descriptions(self) -> tuple[str | None, ...]:
        return tuple(self._facts.descriptions)

    @property
    def nodata(self) -> float | None:
        return self._src.nodata

    @property
    def is_remote(self) -> bool:
        return self._remote

    @property
    def hrefs(self) -> tuple[str, ...]:
        """The files the selected bands are read from."""
        return tuple(group.href for group in self._groups)

    @property
    def overview_factors(self) -> list[int]:
        """Decimation factors of the overviews of the reader's grid (its finest file), e.g. ``[2, 4, 8]``."""
        return list(self._src.overviews(1))

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
        """The underlying rasterio dataset (read-only use): the finest file of a `BandSource` list."""
        return self._src

    # -------------------------------------------------------------------------------------------------- reading
    def read_bands(
        self,
        window: WindowLike | None = None,
        out_shape: tuple[int, int] | None = None,
        resampling: str = "nearest",
    ) -> tuple[np.ndarray, np.ndarray]:
        """The selected bands of a window, ``(n_bands, H, W)``, and the valid mask ``(H, W)``.

        Values keep the file's dtype. Pixels outside the raster (a window past its edge) are 0 and invalid. With
        ``out_shape=(H, W)`` the window is read at that size (``resampling``; masks always nearest): GDAL reads it
        from the overview whose resolution matches, so a coarse read of a COG moves only that overview's bytes.
        """
        from rasterio.enums import Resampling
        from rasterio.windows import Window

        if resampling not in RESAMPLING:
            raise ValueError(f"resampling must be one of {RESAMPLING}, got {resampling!r}")
        col, row, width, height = as_window_tuple(window or (0, 0, self.width, self.height))
        out_h, out_w = (height, width) if out_shape is None else (int(out_shape[0]), int(out_shape[1]))
        if out_h < 1 or out_w < 1:
            raise ValueError(f"out_shape must be positive, got {out_shape}")
        n = len(self.selection.indices)
        data = np.zeros((n, out_h, out_w), dtype=self._dtype)
        valid = np.zeros((out_h, out_w), dtype=bool)
        c0, r0 = max(col, 0), max(row, 0)
        c1, r1 = min(col + width, self.width), min(row + height, self.height)
        if c1 <= c0 or r1 <= r0:
            return data, valid
        sx, sy = out_w / width, out_h / height
        oc0, oc1 = round((c0 - col) * sx), round((c1 - col) * sx)
        or0, or1 = round((r0 - row) * sy), round((r1 - row) * sy)
        if oc1 <= oc0 or or1 <= or0:
            return data, valid
        dx, dy = self._view[:2] if self._view is not None else (0, 0)
        inner = Window(c0 + dx, r0 + dy, c1 - c0, r1 - r0)
        shape = (or1 - or0, oc1 - oc0)
        resized = shape != (r1 - r0, c1 - c0)
        ok = np.ones(shape, dtype=bool)
        for group in self._groups:
            part, masks = self._read_group(group, inner, shape if resized else None, Resampling[resampling])
            ok &= (masks > 0).all(axis=0)
            if part.dtype.kind in "fc":
                ok &= np.isfinite(part).all(axis=0)
            for k, nodata in enumerate(group.nodata):
                if nodata is not None:
                    ok &= ~np.isnan(part[k]) if np.isnan(nodata) else part[k] != nodata
            data[group.positions, or0:or1, oc0:oc1] = part
        valid[or0:or1, oc0:oc1] = ok
        return data, valid

    def _read_group(self, group: _Group, inner: Any, shape: tuple[int, int] | None, resampling: Any) -> tuple:
        from rasterio.enums import Resampling

        def read(attempt: int = 0) -> tuple[np.ndarray, np.ndarray]:
            sized: dict[str, Any] = {}
            if shape is not None:
                sized = {"out_shape": (len(group.indexes), *shape)}
            with self._env():
                part = group.reader.read(group.indexes, window=inner, resampling=resampling, **sized)
                masks = group.reader.read_masks(
                    group.indexes, window=inner, resampling=Resampling.nearest, **sized
                )
            return part, masks

        if not is_remote(group.href):
            try:
                return read()
            except Exception as err:  # GDAL: a truncated or corrupt file fails when its blocks are read
                if not is_gdal_error(err):
                    raise
                window = (int(inner.col_off), int(inner.row_off), int(inner.width), int(inner.height))
                raise ValueError(
                    f"cannot read window {window} of raster {group.href}: {gdal_message(err)} (the file is "
                    "damaged or truncated)"
                ) from err
        from rasterio.errors import RasterioIOError

        window = (int(inner.col_off), int(inner.row_off), int(inner.width), int(inner.height))
        return with_retries(read, group.href, retry=self._retry, window=window, retry_on=(RasterioIOError,))

    def read_rgb(
        self, window: WindowLike | None = None, out_shape: tuple[int, int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """A window as ``(rgb uint8 HxWx3, valid bool HxW)``; invalid pixels are black. ``out_shape``: read at that
        size (from the matching overview; averaged), see `read_bands`."""
        data, valid = self.read_bands(
            window, out_shape, resampling="nearest" if out_shape is None else "average"
        )
        return self.selection.to_rgb(data, valid), valid

    def preview(self, max_size: int = 1024) -> tuple[np.ndarray, np.ndarray, float]:
        """The whole scene decimated so its longest side is at most ``max_size``: ``(rgb, valid, factor)`` where
        ``factor`` is scene pixels per preview pixel."""
        data, valid, factor = self._decimated(max_size)
        return self.selection.to_rgb(data, valid), valid, factor

    def _decimated(self, max_size: int) -> tuple[np.ndarray, np.ndarray, float]:
        factor = max(1.0, max(self.width, self.height) / max_size)
        shape = (max(1, round(self.height / factor)), max(1, round(self.width / factor)))
        data, valid = self.read_bands(None, out_shape=shape, resampling="nearest")
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

    # --------------------------------------------------------------------------------------------------- views
    def bbox_window(self, bbox: Sequence[float]) -> tuple[int, int, int, int]:
        """The window of the raster's own grid (whole pixels, clipped to the raster) covering a lon/lat
        ``(west, south, east, north)`` box; a ValueError when the box misses the raster."""
        from rasterio.warp import transform_bounds

        values = [float(v) for v in bbox]
        if len(values) != 4 or values[0] > values[2] or values[1] > values[3]:
            raise ValueError(f"bbox must be west,south,east,north (degrees), got {list(bbox)}")
        src = self._src
        if src.crs is None:
            raise ValueError("has no CRS: a lon/lat bbox cannot be placed on it (give a pixel window)")
        if src.crs.to_epsg() == 4326:
            left, bottom, right, top = values
        else:
            left, bottom, right, top = transform_bounds(LONLAT, src.crs, *values, densify_pts=21)
        inverse = ~src.transform
        points = [inverse * (x, y) for x in (left, right) for y in (bottom, top)]
        cols, rows = [p[0] for p in points], [p[1] for p in points]
        eps = 1e-6  # a box edge on a pixel edge does not take the next pixel
        c0, r0 = max(0, math.floor(min(cols) + eps)), max(0, math.floor(min(rows) + eps))
        c1, r1 = min(src.width, math.ceil(max(cols) - eps)), min(src.height, math.ceil(max(rows) - eps))
        if c1 <= c0 or r1 <= r0:
            ring = [
                src.transform * c for c in ((0, 0), (src.width, 0), (src.width, src.height), (0, src.height))
            ]
            xs, ys = [p[0] for p in ring], [p[1] for p in ring]
            own = (min(xs), min(ys), max(xs), max(ys))
            scene = (
                own if src.crs.to_epsg() == 4326 else transform_bounds(src.crs, LONLAT, *own, densify_pts=21)
            )
            raise ValueError(
                f"the bbox {','.join(f'{v:g}' for v in values)} does not overlap the raster (its lon/lat bounds: "
                f"{','.join(f'{v:.6f}' for v in scene)})"
            )
        return c0, r0, c1 - c0, r1 - r0

    def _checked_view(self, window: WindowLike) -> tuple[int, int, int, int]:
        col, row, width, height = as_window_tuple(window)
        src = self._src
        if col < 0 or row < 0 or col + width > src.width or row + height > src.height:
            raise ValueError(
                f"window {[col, row, width, height]} is not inside the raster ({src.width} x {src.height} pixels)"
            )
        return col, row, width, height

    # ------------------------------------------------------------------------------------------------ geometry
    def window_transform(self, window: WindowLike, out_shape: tuple[int, int] | None = None):
        """The geotransform of a window (its top-left pixel corner, same pixel size and rotation), or of the window
        read at ``out_shape`` (pixels scaled accordingly)."""
        from affine import Affine

        col, row, width, height = as_window_tuple(window)
        transform = self.transform @ Affine.translation(col, row)
        if out_shape is not None:
            transform = transform @ Affine.scale(width / out_shape[1], height / out_shape[0])
        return transform

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
    "BandSource",
    "RasterReader",
    "as_window_tuple",
    "gdal_env",
    "require_rasterio",
]
