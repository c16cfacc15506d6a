"""The Search tab: text and image queries of the archive index, the result files, thumbnails, and the index.

`SearchTasks` is a part of `service.AppService`. Every hit leaves as `results.shown_row` (its id, relative to its
source, and a tile's window; never a server path); the index's own rows stay on the server for the thumbnails.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from typing import Any

from PIL import Image

from ..processing_rsmclip import load_image_file, to_rgb
from .language import AUTO
from .results import InputError, SearchResult, shown_row, write_results_csv

logger = logging.getLogger(__name__)


class SearchTasks:
    """Archive search of `AppService`."""

    def result_image(self, row: dict[str, Any], size: int = 256) -> Image.Image:
        """A thumbnail of a search result: the image file, or its tile cut out of the scene (`window`)."""
        window = row.get("window")
        if window:
            from ..geo.raster import RasterReader

            with RasterReader(row["path"]) as reader:
                rgb, _valid = reader.read_rgb(tuple(window))
        else:
            rgb = to_rgb(load_image_file(row["path"]))
        thumb = Image.fromarray(rgb)
        thumb.thumbnail((size, size))
        return thumb

    def result_thumbnail(self, row: dict[str, Any], size: int = 256) -> str:
        """`result_image` as a JPEG file, made once per result and kept (the page shows files without
        re-encoding them on every search)."""
        key = hashlib.sha256(
            json.dumps(
                [row.get("id"), row.get("path"), row.get("window"), row.get("content_hash"), size]
            ).encode()
        ).hexdigest()[:32]
        folder = self.work_dir / "thumbnails"
        path = folder / f"{key}.jpg"
        if not path.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f"{key}.{threading.get_ident()}.tmp"
            self.result_image(row, size).save(tmp, format="JPEG", quality=90)
            os.replace(tmp, path)
        return str(path)

    # --------------------------------------------------------------------------------------------- search
    def search(self, query: str, language: str | None = AUTO, top_k: int = 8) -> SearchResult:
        """Text search of the archive in any of the ten languages."""
        text = (query or "").strip()
        if not text:
            raise InputError("type a query first (any of the ten languages)")
        if len(text) > self.limits.max_query_chars:
            raise InputError(
                f"the query is {len(text)} characters long; at most {self.limits.max_query_chars} are allowed"
            )
        lang = self.language_for(language, text)
        index = self._require_index()
        rows = index.search(text, top_k=self._top_k(top_k))
        return self._finish_search(lang, rows)

    def search_by_image(self, image: str | os.PathLike | None, top_k: int = 8) -> SearchResult:
        """Images of the archive that look like an uploaded one."""
        rgb = self.read_image(image)
        index = self._require_index()
        rows = index.search(rgb, top_k=self._top_k(top_k), image=True)
        return self._finish_search(None, rows)

    def _require_index(self) -> Any:
        if self.index is None:
            raise InputError("this app was started without an archive index; start it with --index INDEX")
        return self.index

    def _top_k(self, top_k: Any) -> int:
        try:
            k = int(top_k)
        except (TypeError, ValueError):
            raise InputError(f"top-k must be a whole number, got {top_k!r}") from None
        if not 1 <= k <= self.limits.max_top_k:
            raise InputError(f"top-k must be between 1 and {self.limits.max_top_k}, got {k}")
        return k

    def _finish_search(self, language: str | None, source_rows: list[dict[str, Any]]) -> SearchResult:
        out = self.request_dir("search")
        rows = [shown_row(row) for row in source_rows]
        csv_path = out / "results.csv"
        write_results_csv(rows, csv_path)
        geojson_path = None
        map_svg = None
        if getattr(self.index, "is_georeferenced", False) and any(row.get("bbox") for row in rows):
            from ..index import to_geojson

            collection = to_geojson(rows)
            geojson_path = out / "results.geojson"
            geojson_path.write_text(json.dumps(collection, ensure_ascii=False))
            from .mapview import footprints_svg

            map_svg = footprints_svg(collection)
        return SearchResult(
            language,
            rows,
            str(geojson_path) if geojson_path else None,
            str(csv_path),
            map_svg,
            source_rows=[dict(row) for row in source_rows],
        )

    def _prune_thumbnails(self, keep: int = 5000) -> None:
        """Keep the `keep` most recently made result thumbnails (disk use stays bounded on a large archive)."""
        folder = self.work_dir / "thumbnails"
        if not folder.is_dir():
            return
        files = []
        for path in folder.glob("*.jpg"):
            try:
                files.append((path.stat().st_mtime, path))
            except FileNotFoundError:
                pass
        for _, path in sorted(files, reverse=True)[keep:]:
            path.unlink(missing_ok=True)


def load_index(
    index: str | None, model: Any, processor: Any, *, default_model: bool, encoder: Any = None
) -> Any:
    """The archive index at `index`, else the bundled samples' index (built on first use) for the demo model.

    The index embeds queries with the app's own model (one copy in memory; its fingerprint is checked against
    the index's manifest), through `encoder` (the app's ONNX Runtime / int8 encoder of it) when one is given.
    Returns None, with a log line, when no index was asked for and the index extra is not installed or the model
    is not the demo model.
    """
    try:
        from ..index import RSMCLIPIndex, bundled_sample_index

        if index is not None:
            archive = RSMCLIPIndex.load(index, model=model, processor=processor)
        elif not default_model:
            logger.warning(
                "archive search is off: the bundled sample index needs the demo model; pass --index"
            )
            return None
        else:
            archive = bundled_sample_index(model=model, processor=processor, progress=True)
        if encoder is not None and encoder is not model:
            archive.set_encoder(encoder)
        return archive
    except ImportError as error:
        if index is not None:
            raise
        logger.warning("archive search is off: %s", error)
        return None
