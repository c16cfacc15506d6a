"""The web app's plain values: request limits, the user-mistake error, each tab's result, and the search files.

Importable without a model or Gradio; `service.AppService` returns these, `ui` shows them, `serve` reuses the limits.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..templates import LANGUAGE_NAMES, LANGUAGES
from .language import AUTO
from .public import public_row, window_text


class InputError(ValueError):
    """A problem with what the user gave (shown in the page); the server keeps serving."""


@dataclass(frozen=True)
class AppLimits:
    """What one request may ask for; larger inputs are refused with a message, not processed."""

    max_upload_mb: float = 25.0
    max_image_pixels: int = 50_000_000
    max_labels: int = 24
    max_label_chars: int = 80
    max_query_chars: int = 300
    max_top_k: int = 48
    max_scene_pixels: int = 150_000_000
    max_scene_tiles: int = 1024

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)


@dataclass
class ClassifyResult:
    """Class probabilities of one image (or of a whole scene: the mean over its tiles)."""

    language: str
    labels: list[str]
    probabilities: list[float]
    preview: str | None = None  # a picture of what was classified (for a scene: the tile class map)
    scene: dict[str, Any] | None = None  # GeoTIFF only: tile count, files written

    def as_label_dict(self) -> dict[str, float]:
        return dict(zip(self.labels, self.probabilities))


@dataclass
class SearchResult:
    """The ranked rows of one search, the language used, and the files written for download.

    ``rows`` are what the page shows and the downloads hold: `public.public_row` of each hit (named by its ``id``,
    relative to its source; no server path), with ``tile`` saying which window of its scene a tile is.
    ``source_rows`` are the index's own rows (with ``path``), for thumbnails only: they never leave the server.
    """

    language: str | None
    rows: list[dict[str, Any]]
    geojson_path: str | None = None
    csv_path: str | None = None
    map_svg: str | None = None
    notes: list[str] = field(default_factory=list)
    source_rows: list[dict[str, Any]] = field(default_factory=list, repr=False)


@dataclass
class SegmentResult:
    """A per-pixel class map of a scene: overlay picture, legend, class shares and the GeoTIFF written."""

    language: str
    labels: list[str]
    overlay_path: str
    legend: list[tuple[str, str]]  # (label, "#rrggbb")
    class_fractions: dict[str, float]
    geotiff_path: str | None


def human_size(n_bytes: int) -> str:
    """1536 -> '1.5 KB', 3 * 2**20 -> '3.0 MB'."""
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes} bytes"


def split_labels(text: str) -> list[str]:
    """Labels typed in one box: separated by commas, semicolons, new lines or CJK commas; blanks dropped."""
    return [part.strip() for part in re.split(r"[,;\n，、；]", text or "") if part.strip()]


def band_preset_choices() -> list[tuple[str, str]]:
    """(shown name, value) pairs for a band-preset drop-down (automatic first); only automatic without geo."""
    try:
        from ..geo.bands import list_band_presets

        presets = list_band_presets()
    except ImportError:
        presets = []
    return [("Automatic (band names, 3-band RGB)", AUTO)] + [(name, name) for name in presets]


def language_choices() -> list[tuple[str, str]]:
    """(shown name, code) pairs for a language drop-down: auto-detect first, then the ten languages."""
    return [("Detect automatically", AUTO)] + [(f"{LANGUAGE_NAMES[c]} ({c})", c) for c in LANGUAGES]


def shown_row(row: dict[str, Any]) -> dict[str, Any]:
    """A search hit as the page, the downloads and the page's API give it: `public_row` (no server path), and for a
    tile, ``tile``: which window of its scene it is (`window_text`)."""
    shown = public_row(row)
    if shown.get("window"):
        shown["tile"] = window_text(shown["window"])
    return shown


def write_results_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    """Search results as CSV: rank, score, id, tile first (then the window as four pixel columns: window_col, window_row,
    window_width, window_height), then the other columns; lists as JSON. Rows pass `shown_row`: no server path."""
    rows = [_with_window_columns(shown_row(row)) for row in rows]
    leading = ["rank", "score", "id", "tile", *_WINDOW_COLUMNS]
    present = {key for row in rows for key in row}
    first = [key for key in leading if key in present or key in ("rank", "score", "id")]
    columns = first + sorted(present - set(first))
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {
                    key: json.dumps(value) if isinstance(value, list | tuple | dict) else value
                    for key, value in row.items()
                }
            )
    return path


_WINDOW_COLUMNS = ("window_col", "window_row", "window_width", "window_height")


def _with_window_columns(row: dict[str, Any]) -> dict[str, Any]:
    window = row.get("window")
    if not window:
        return row
    return {**row, **dict(zip(_WINDOW_COLUMNS, (int(v) for v in window)))}
