"""Parsers of the geographic command-line values that several commands share (`--bbox`, `--bands`), light to
import (no numpy, no rasterio) so that command-line parsers can use them."""

from __future__ import annotations

import math


def parse_bbox(value: str) -> tuple[float, float, float, float]:
    """``"west,south,east,north"`` in degrees (lon/lat, WGS 84) -> a tuple; negative values (west of Greenwich,
    south of the equator) included. Raises `ValueError` naming what is wrong."""
    parts = [part.strip() for part in str(value).split(",")]
    if len(parts) != 4:
        raise ValueError(f"expected four numbers west,south,east,north (degrees), got {value!r}")
    try:
        west, south, east, north = (float(part) for part in parts)
    except ValueError:
        raise ValueError(f"expected four numbers west,south,east,north (degrees), got {value!r}") from None
    if not all(math.isfinite(v) for v in (west, south, east, north)):
        raise ValueError(f"bbox values must be finite numbers, got {value!r}")
    if not (-180 <= west <= 180 and -180 <= east <= 180):
        raise ValueError(f"bbox longitudes must lie in [-180, 180], got west {west}, east {east}")
    if not (-90 <= south <= 90 and -90 <= north <= 90):
        raise ValueError(f"bbox latitudes must lie in [-90, 90], got south {south}, north {north}")
    if south > north:
        raise ValueError(f"bbox south ({south}) is north of its north ({north})")
    if west > east:
        raise ValueError(
            f"bbox west ({west}) is east of its east ({east}): a box across the antimeridian must be given as two "
            "boxes, one on each side"
        )
    return west, south, east, north


def parse_bands(value: str) -> list[int | str]:
    """``"3,2,1"`` (0-based band indices) or ``"B4,B3,B2"`` / ``"red,green,blue"`` (band names of the raster) ->
    one or three bands, used as red, green and blue (one band: grey). Raises `ValueError`."""
    items = [item.strip() for item in str(value).split(",")]
    if any(not item for item in items) or len(items) not in (1, 3):
        raise ValueError(f"give 1 or 3 comma-separated bands (red,green,blue), got {value!r}")
    bands: list[int | str] = []
    for item in items:
        if item.isascii() and item.lstrip("+-").isdigit():  # "²" or "٣" are digits to str.isdigit
            index = int(item)
            if index < 0:
                raise ValueError(f"band indices are 0-based and not negative, got {item} in {value!r}")
            bands.append(index)
        else:
            bands.append(item)
    return bands


__all__ = ["parse_bands", "parse_bbox"]
