"""Footprints of search results drawn as an inline SVG map: no tiles, no scripts, nothing fetched.

The app must work offline (and inside a Space without outbound network), so the map is the footprints
themselves in an equirectangular projection (x = lon * cos(mid-latitude), y = -lat) fitted to their extent, with
a graticule in degrees and each footprint numbered by its rank. The frame is fitted to every hit; hits in regions
far apart (two cities) make each footprint a fraction of a pixel at that scale, so a footprint drawn smaller than
`MIN_MARKER_PX` also gets a circle of that size at its centre: every hit stays visible and numbered.
"""

from __future__ import annotations

import html
import math
from typing import Any

MIN_MARKER_PX = 12.0
_PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324")


def _rings(geometry: dict[str, Any]) -> list[list[tuple[float, float]]]:
    if not geometry:
        return []
    kind, coords = geometry.get("type"), geometry.get("coordinates") or []
    if kind == "Polygon":
        return [[(float(x), float(y)) for x, y, *_ in coords[0]]] if coords else []
    if kind == "MultiPolygon":
        return [[(float(x), float(y)) for x, y, *_ in poly[0]] for poly in coords if poly]
    return []


class Projection:
    """lon/lat <-> SVG pixels for a lon/lat box fitted (aspect kept) into `width` x `height` with a margin."""

    def __init__(
        self, west: float, south: float, east: float, north: float, width: int, height: int, margin=28
    ):
        self.cos = max(math.cos(math.radians((south + north) / 2)), 1e-6)
        span_x = max((east - west) * self.cos, 1e-9)
        span_y = max(north - south, 1e-9)
        self.scale = min((width - 2 * margin) / span_x, (height - 2 * margin) / span_y)
        self.west, self.north = west, north
        # Centre the drawing in the frame.
        self.off_x = (width - span_x * self.scale) / 2
        self.off_y = (height - span_y * self.scale) / 2

    def to_px(self, lon: float, lat: float) -> tuple[float, float]:
        return (
            self.off_x + (lon - self.west) * self.cos * self.scale,
            self.off_y + (self.north - lat) * self.scale,
        )

    def to_lonlat(self, x: float, y: float) -> tuple[float, float]:
        return (
            self.west + (x - self.off_x) / (self.cos * self.scale),
            self.north - (y - self.off_y) / self.scale,
        )


def _nice_step(span: float) -> float:
    raw = span / 4 if span > 0 else 1.0
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def footprints_svg(collection: dict[str, Any], width: int = 560, height: int = 360) -> str:
    """An SVG (as a string) of the FeatureCollection's polygons, numbered by their `rank` property."""
    features = [f for f in collection.get("features", []) if _rings(f.get("geometry"))]
    if not features:
        return '<p class="rsmclip-map-empty">No footprints to draw.</p>'
    points = [pt for f in features for ring in _rings(f["geometry"]) for pt in ring]
    west, east = min(p[0] for p in points), max(p[0] for p in points)
    south, north = min(p[1] for p in points), max(p[1] for p in points)
    pad_x, pad_y = max((east - west) * 0.08, 1e-4), max((north - south) * 0.08, 1e-4)
    west, east, south, north = west - pad_x, east + pad_x, south - pad_y, north + pad_y
    proj = Projection(west, south, east, north, width, height)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="rsmclip-map" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" data-west="{west}" data-south="{south}" data-east="{east}" '
        f'data-north="{north}" style="background:#f4f6f8;font:11px sans-serif">'
    ]
    step = _nice_step(max(east - west, north - south))
    decimals = max(0, -math.floor(math.log10(step)))
    lon = math.ceil(west / step) * step
    while lon <= east:
        x, _ = proj.to_px(lon, north)
        parts.append(
            f'<line x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{height}" stroke="#d0d5db" stroke-width="1"/>'
        )
        parts.append(f'<text x="{x + 2:.1f}" y="{height - 4}" fill="#555">{lon:.{decimals}f}°</text>')
        lon += step
    lat = math.ceil(south / step) * step
    while lat <= north:
        _, y = proj.to_px(west, lat)
        parts.append(
            f'<line x1="0" y1="{y:.1f}" x2="{width}" y2="{y:.1f}" stroke="#d0d5db" stroke-width="1"/>'
        )
        parts.append(f'<text x="2" y="{y - 2:.1f}" fill="#555">{lat:.{decimals}f}°</text>')
        lat += step
    # Draw the lowest-ranked first so the best match ends on top.
    ordered = sorted(features, key=lambda f: -(f.get("properties", {}).get("rank") or 0))
    for feature in ordered:
        props = feature.get("properties", {})
        rank = props.get("rank")
        colour = _PALETTE[((rank or 1) - 1) % len(_PALETTE)]
        title = html.escape(
            f"#{rank} score {props.get('score', float('nan')):.3f} {props.get('label', '')} {props.get('path', '')}"
        )
        for ring in _rings(feature["geometry"]):
            pts = " ".join(f"{x:.2f},{y:.2f}" for x, y in (proj.to_px(*p) for p in ring))
            parts.append(
                f'<polygon class="footprint" data-rank="{rank}" points="{pts}" fill="{colour}" fill-opacity="0.35" '
                f'stroke="{colour}" stroke-width="1.5"><title>{title}</title></polygon>'
            )
            cx = sum(p[0] for p in ring[:-1] or ring) / len(ring[:-1] or ring)
            cy = sum(p[1] for p in ring[:-1] or ring) / len(ring[:-1] or ring)
            tx, ty = proj.to_px(cx, cy)
            pixels = [proj.to_px(*p) for p in ring]
            drawn = max(
                max(x for x, _ in pixels) - min(x for x, _ in pixels),
                max(y for _, y in pixels) - min(y for _, y in pixels),
            )
            if drawn < MIN_MARKER_PX:
                parts.append(
                    f'<circle class="footprint-marker" data-rank="{rank}" cx="{tx:.2f}" cy="{ty:.2f}" '
                    f'r="{MIN_MARKER_PX / 2:.1f}" fill="{colour}" fill-opacity="0.5" stroke="{colour}" '
                    f'stroke-width="1.5"><title>{title}</title></circle>'
                )
            parts.append(
                f'<text x="{tx:.1f}" y="{ty + 4:.1f}" text-anchor="middle" font-weight="bold" fill="#111">{rank}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)
