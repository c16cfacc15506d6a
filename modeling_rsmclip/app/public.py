"""What of a search result may leave the server, for the web page and the HTTP API alike.

`public_row` is the one filter every result row passes before it is shown, downloaded (CSV, GeoJSON) or answered:
the ``path`` column and any other value holding an absolute path are dropped, so a row is named by its ``id``,
relative to its source (``<source>/<file>``, ``<scene id>@<col>,<row>`` for a tile, ``<dataset>/<split>/<row>``),
never by where files live on the server. `window_text` says which window of its scene a tile is.
"""

from __future__ import annotations

import math
import re
from typing import Any

# Metadata columns that never leave the server (where an item's file lives).
PRIVATE_COLUMNS = frozenset({"path"})

_WINDOWS_ABSOLUTE = re.compile(r"^[A-Za-z]:[\\/]")
# An absolute path inside a message: a separator, then at least two components (so "/search" stays).
_PATH_IN_TEXT = re.compile(
    r"(?<![\w.~-])(?:[A-Za-z]:)?[/\\](?:[^\s'\"<>|:,;()\[\]{}/\\]+[/\\])+[^\s'\"<>|:,;()\[\]{}]*"
)


def is_server_path(value: Any) -> bool:
    """Whether a metadata value is an absolute file path or a file URI (which must not leave the server)."""
    if not isinstance(value, str):
        return False
    text = value.strip()
    return text.startswith(("/", "\\", "file:", "~")) or bool(_WINDOWS_ABSOLUTE.match(text))


def _is_binary(value: Any) -> bool:
    """Bytes (the GeoParquet WKB ``geometry``, a dataset's image bytes) have no JSON form: rows leave without them
    (the footprint goes out as GeoJSON coordinates instead)."""
    return isinstance(value, bytes | bytearray | memoryview)


def _public_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN
    if isinstance(value, list | tuple):
        return [_public_value(v) for v in value if not _is_binary(v)]
    if isinstance(value, dict):
        return {k: _public_value(v) for k, v in value.items() if not is_server_path(v) and not _is_binary(v)}
    return value


def public_row(row: dict[str, Any]) -> dict[str, Any]:
    """A result or metadata row as it may leave the server: without the ``path`` column, without any value that is
    an absolute path (a dataset's own columns could hold some), without bytes (JSON has none), and with NaN as null.
    Every row of every response, and every row the web page shows or writes, passes here."""
    return {
        key: _public_value(value)
        for key, value in row.items()
        if key not in PRIVATE_COLUMNS and not is_server_path(value) and not _is_binary(value)
    }


def scrub_paths(text: str) -> str:
    """A message with every absolute path in it replaced by ``<server path>`` (errors from libraries name files)."""
    return _PATH_IN_TEXT.sub("<server path>", str(text))


def window_text(window: Any) -> str:
    """Which window of its scene a tile is, in pixels: ``(256, 0, 256, 128)`` -> ``"col 256, row 0, 256 x 128 px"``
    (column and row offset of its upper-left pixel, then width x height); ``""`` for a whole image."""
    if not window:
        return ""
    col, row, width, height = (int(v) for v in window)
    return f"col {col}, row {row}, {width} x {height} px"
