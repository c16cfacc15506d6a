"""Parsers of the geographic command-line values that several commands share (`--bbox`, `--datetime`, `--bands`),
light to import (no numpy, no rasterio) so that command-line parsers can use them."""

from __future__ import annotations

import datetime as _dt
import math
import re


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


def parse_instant(text: str, end: bool = False) -> _dt.datetime | None:
    """One RFC 3339 date-time (``2024-06-01T10:00:00Z``) or date (``2024-06-01``: its first instant, or its last with
    ``end``) in UTC; ``""`` or ``".."`` (an open end) -> None. A date-time without a zone is read as UTC."""
    text = text.strip()
    if text in ("", ".."):
        return None
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            day = _dt.datetime.fromisoformat(text).replace(tzinfo=_dt.timezone.utc)
            return day + _dt.timedelta(days=1, microseconds=-1) if end else day
        value = _dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"cannot read {text!r} as an RFC 3339 date-time (e.g. 2024-06-01 or 2024-06-01T10:00:00Z)"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=_dt.timezone.utc)


def parse_datetime(value: str | None) -> tuple[_dt.datetime | None, _dt.datetime | None] | None:
    """An RFC 3339 instant or interval (``"2024-06-01/2024-08-31"``, ``"2024-06-01/.."``, ``"../2024-01-01"``) ->
    ``(start, end)`` in UTC, open ends None; a bare date covers its whole day. None or blank -> None."""
    if value is None or not str(value).strip():
        return None
    text = str(value).strip()
    if "/" in text:
        first, _, second = text.partition("/")
        if "/" in second:
            raise ValueError(f"a datetime interval is START/END, got {value!r}")
        start, end = parse_instant(first, False), parse_instant(second, True)
        if start is None and end is None:
            raise ValueError(f"a datetime interval needs at least one end, got {value!r}")
    else:
        start, end = parse_instant(text, False), parse_instant(text, True)
    if start is not None and end is not None and end < start:
        raise ValueError(f"datetime interval {value!r} ends before it starts")
    return start, end


def check_datetime(value: str) -> str:
    """``--datetime``: the RFC 3339 instant or interval as given (what a STAC API is sent), once `parse_datetime`
    has read it; raises `ValueError` naming what is wrong."""
    parse_datetime(value)
    return str(value).strip()


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


__all__ = ["check_datetime", "parse_bands", "parse_bbox", "parse_datetime", "parse_instant"]
