"""The index's metadata as GeoParquet: every row's footprint as a WKB polygon in lon/lat.

`with_geometry(table)` adds a ``geometry`` column (WKB, ISO little-endian Polygons, exterior rings counter-clockwise)
built from each row's ``footprint_lonlat`` (GeoJSON Polygon coordinates), else its ``bbox``, and the ``geo`` file
metadata of the GeoParquet specification (version 1.1.0): primary column, encoding, geometry types, the CRS as
PROJJSON (EPSG:4326; coordinates are longitude, latitude, as GeoParquet's WKB always is) and the bounding box of all
footprints. GeoPandas (`geopandas.read_parquet`), QGIS, GDAL's Parquet driver and DuckDB's spatial extension open
``metadata.parquet`` of a georeferenced index directly. A row without a footprint has a null geometry; an index
without any footprint gets no geometry column.

WKB is written here with `struct` (no geometry library needed): byte order 1 (little endian), type 3 (Polygon),
the number of rings, and per ring the number of points and their x, y doubles.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Sequence
from typing import Any

GEOPARQUET_VERSION = "1.1.0"
GEOMETRY_COLUMN = "geometry"
_WKB_POLYGON = 3

Ring = Sequence[Sequence[float]]


def counter_clockwise(ring: list[list[float]]) -> list[list[float]]:
    """RFC 7946's right-hand rule for an exterior ring: counter-clockwise (same first point)."""
    area = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring, ring[1:]))
    return ring if area >= 0 else ring[::-1]


def polygon_wkb(rings: Sequence[Ring]) -> bytes:
    """ISO WKB (little endian) of a Polygon given as rings of ``(x, y)`` points (each ring closed)."""
    out = [struct.pack("<BII", 1, _WKB_POLYGON, len(rings))]
    for ring in rings:
        points = [(float(p[0]), float(p[1])) for p in ring]
        if len(points) < 4 or points[0] != points[-1]:
            raise ValueError(f"a polygon ring is closed and has at least 4 points, got {points}")
        out.append(struct.pack("<I", len(points)))
        out.append(struct.pack(f"<{2 * len(points)}d", *(v for p in points for v in p)))
    return b"".join(out)


def _polygon(footprint: str | None, bbox: Sequence[float] | None) -> list[list[list[float]]] | None:
    if footprint:
        rings = json.loads(footprint)
    elif bbox is not None and all(v is not None and math.isfinite(v) for v in bbox):
        west, south, east, north = bbox
        rings = [[[west, south], [east, south], [east, north], [west, north], [west, south]]]
    else:
        return None
    return [counter_clockwise([list(map(float, p)) for p in rings[0]])] + [
        [list(map(float, p)) for p in ring] for ring in rings[1:]
    ]


def crs_projjson() -> dict[str, Any]:
    """PROJJSON of EPSG:4326 (from PROJ, through rasterio)."""
    from rasterio.crs import CRS

    return CRS.from_epsg(4326).to_dict(projjson=True)


def geo_metadata(polygons: Sequence[list | None]) -> dict[str, Any]:
    """The GeoParquet ``geo`` metadata of a ``geometry`` column holding ``polygons`` (lon/lat)."""
    xs = [p[0] for rings in polygons if rings for p in rings[0]]
    ys = [p[1] for rings in polygons if rings for p in rings[0]]
    column: dict[str, Any] = {
        "encoding": "WKB",
        "geometry_types": ["Polygon"],
        "crs": crs_projjson(),
        "orientation": "counterclockwise",
        "edges": "planar",
    }
    if xs:
        column["bbox"] = [min(xs), min(ys), max(xs), max(ys)]
    return {
        "version": GEOPARQUET_VERSION,
        "primary_column": GEOMETRY_COLUMN,
        "columns": {GEOMETRY_COLUMN: column},
    }


def with_geometry(table: Any) -> Any:
    """``table`` with a WKB ``geometry`` column and the GeoParquet ``geo`` metadata (see the module doc); unchanged
    when no row has a footprint."""
    import pyarrow as pa

    names = table.column_names
    if GEOMETRY_COLUMN in names:
        table = table.drop_columns([GEOMETRY_COLUMN])
    footprints = (
        table["footprint_lonlat"].to_pylist() if "footprint_lonlat" in names else [None] * table.num_rows
    )
    boxes = table["bbox"].to_pylist() if "bbox" in names else [None] * table.num_rows
    polygons = [_polygon(f, b) for f, b in zip(footprints, boxes)]
    if not any(polygons):
        return table
    wkb = pa.array([polygon_wkb(p) if p else None for p in polygons], type=pa.binary())
    table = table.append_column(pa.field(GEOMETRY_COLUMN, pa.binary()), wkb)
    metadata = dict(table.schema.metadata or {})
    metadata[b"geo"] = json.dumps(geo_metadata(polygons)).encode()
    return table.replace_schema_metadata(metadata)


__all__ = ["GEOMETRY_COLUMN", "counter_clockwise", "geo_metadata", "polygon_wkb", "with_geometry"]
