"""What the HTTP API does, without HTTP: the model and the index loaded once, every request checked and answered
with plain Python values.

`SearchService` wraps the web app's `AppService` (one model, one encoder and one index for the API and the Gradio
page mounted beside it) and adds what programs need: checked limits with HTTP status codes (`RequestError`),
batched text queries (`batching.QueryBatcher` over `RSMCLIPIndex.embed_queries`), item metadata by id, and
thumbnails read on demand (a tile through `geo.raster.RasterReader`, with the band choice its index run used).

What leaves the server goes through one filter, `app.public.public_row` (the web page's too): the ``path`` column and any other value holding an
absolute path are dropped, so responses carry ids relative to their source, never where files live on the server.
Nothing in a request names a file: ids are looked up in the index's metadata, never joined to a folder.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import threading
import time
import warnings
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..app.public import PRIVATE_COLUMNS, is_server_path, public_row, scrub_paths
from ..app.service import AppLimits, AppService, InputError, human_size
from .batching import QueryBatcher, QueueFullError

logger = logging.getLogger(__name__)

THUMBNAIL_FORMATS = {
    "png": ("PNG", "image/png"),
    "jpeg": ("JPEG", "image/jpeg"),
    "jpg": ("JPEG", "image/jpeg"),
}
MIN_THUMBNAIL_PX = 16


class RequestError(InputError):
    """A request the server will not answer as asked: ``status`` is its HTTP status (4xx, or 503 when busy)."""

    def __init__(self, message: str, status: int = 400, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


@dataclass(frozen=True)
class ServeLimits:
    """What one request may ask for and how long it may take; larger requests are refused with a message.

    Status codes: 413 for a body or upload over ``max_upload_mb`` (or an image over ``max_image_pixels``), 422 for
    values out of range (query or ``where`` too long, ``top_k`` outside 1..``max_top_k``, thumbnail size), 503
    when a search takes longer than ``timeout_s`` or more than ``max_pending`` text queries wait.
    """

    max_query_chars: int = 300
    max_where_chars: int = 500
    max_top_k: int = 100
    max_upload_mb: float = 25.0
    max_image_pixels: int = 50_000_000
    max_thumbnail_px: int = 512
    timeout_s: float = 30.0
    max_pending: int = 256

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    @property
    def max_body_bytes(self) -> int:
        """An upload plus the multipart envelope and the other form fields."""
        return self.max_upload_bytes + 2**16

    def app_limits(self) -> AppLimits:
        """The same limits for the Gradio page (whose result slider stops at its own maximum)."""
        return AppLimits(
            max_upload_mb=self.max_upload_mb,
            max_image_pixels=self.max_image_pixels,
            max_query_chars=self.max_query_chars,
            max_top_k=min(self.max_top_k, AppLimits.max_top_k),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "max_query_chars": self.max_query_chars,
            "max_where_chars": self.max_where_chars,
            "max_top_k": self.max_top_k,
            "max_upload_bytes": self.max_upload_bytes,
            "max_image_pixels": self.max_image_pixels,
            "max_thumbnail_px": self.max_thumbnail_px,
            "timeout_s": self.timeout_s,
            "max_pending": self.max_pending,
        }


@dataclass(frozen=True)
class SearchQuery:
    """A checked search request: a text (None for an image query), the number of results and the filters."""

    text: str | None
    top_k: int
    where: str | None = None
    bbox: tuple[float, float, float, float] | None = None

    def describe(self, image_name: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"text": self.text} if image_name is None else {"image": image_name}
        out.update(top_k=self.top_k, where=self.where, bbox=list(self.bbox) if self.bbox else None)
        return out


def public_model_name(name: str) -> str:
    """How responses name the model: ``demo`` for the bundled one, a folder's own name, a Hub id as it is."""
    from ..inference import DEMO_MODEL_DIR

    text = str(name or "")
    if not text:
        return "unknown"
    path = Path(text)
    if path.parts[-2:] == DEMO_MODEL_DIR.parts[-2:]:
        return "demo"
    if is_server_path(text) or path.exists():
        return path.name
    return text


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


# ------------------------------------------------------------------------------------------------ service
class SearchService:
    """The archive index and its model, loaded once, behind the HTTP API.

    Args:
        app: the web app's service (model, processor, encoder, index), shared with the Gradio page when mounted.
        limits: request limits.
        max_batch: text queries per forward pass (1: each query alone, one at a time).
        max_wait_ms: how long a batch waits for more queries.
        model_name: how responses name the model (default: the index manifest's, without its folder).
    """

    def __init__(
        self,
        app: AppService,
        *,
        limits: ServeLimits | None = None,
        max_batch: int = 32,
        max_wait_ms: float = 5.0,
        model_name: str | None = None,
    ) -> None:
        if app.index is None:
            raise ValueError("the HTTP API searches an archive index: give one (`rsmclip index build`)")
        self.app = app
        self.index = app.index
        self.limits = limits or ServeLimits()
        self.model_name = public_model_name(model_name or self.index.manifest["model"]["name_or_path"])
        self.public_columns = [c for c in self.index.columns if c not in PRIVATE_COLUMNS]
        self.batcher: QueryBatcher[str, np.ndarray] = QueryBatcher(
            self._embed_texts,
            max_batch=max_batch,
            max_wait_s=max_wait_ms / 1000.0,
            max_pending=self.limits.max_pending,
        )
        self._ids: dict[str, int] | None = None
        self._ids_lock = threading.Lock()
        self._owned_work_dir: Path | None = None
        self.started = time.time()

    # ------------------------------------------------------------------------------------------- loading
    @classmethod
    def load(
        cls,
        index: str | os.PathLike,
        model: str | None = None,
        *,
        backend: str = "torch",
        precision: str = "fp32",
        limits: ServeLimits | None = None,
        max_batch: int = 32,
        max_wait_ms: float = 5.0,
    ) -> SearchService:
        """Open ``index`` with ``model`` (default: the model named in its manifest), embedding queries with
        ``backend`` / ``precision`` (see `inference.load_encoder`)."""
        limits = limits or ServeLimits()
        model = model or _manifest_model(Path(index))
        app = AppService.load(
            model, str(index), limits=limits.app_limits(), backend=backend, precision=precision
        )
        service = cls(app, limits=limits, max_batch=max_batch, max_wait_ms=max_wait_ms)
        service._owned_work_dir = app.work_dir
        return service

    def close(self) -> None:
        """Stop the query batcher and remove the page's output folder made by `load`."""
        self.batcher.close()
        if self._owned_work_dir is not None:
            shutil.rmtree(self._owned_work_dir, ignore_errors=True)
            self._owned_work_dir = None

    # ------------------------------------------------------------------------------------------ checking
    def check_text(self, query: Any) -> str:
        text = query.strip() if isinstance(query, str) else ""
        if not text:
            raise RequestError(
                "the query is empty: give a text (any of the ten languages) or upload an image"
            )
        if len(text) > self.limits.max_query_chars:
            raise RequestError(
                f"the query is {len(text)} characters long; at most {self.limits.max_query_chars} are allowed",
                422,
            )
        return text

    def check_top_k(self, top_k: Any) -> int:
        if isinstance(top_k, bool):
            top_k = None
        try:
            k = int(top_k) if not isinstance(top_k, float) or top_k.is_integer() else None
        except (TypeError, ValueError, OverflowError):
            k = None
        if k is None:
            raise RequestError(f"top_k must be a whole number, got {_short(top_k)}", 422)
        if not 1 <= k <= self.limits.max_top_k:
            raise RequestError(f"top_k must be between 1 and {self.limits.max_top_k}, got {k}", 422)
        return k

    def check_where(self, where: Any) -> str | None:
        from ..index import parse_where

        if where is None or (isinstance(where, str) and not where.strip()):
            return None
        if not isinstance(where, str):
            raise RequestError(f"where must be a text (a filter expression), got {_short(where)}")
        if len(where) > self.limits.max_where_chars:
            raise RequestError(
                f"where is {len(where)} characters long; at most {self.limits.max_where_chars} are allowed",
                422,
            )
        try:  # the columns a request may name: `path` is not one of them
            parse_where(where, self.public_columns)
        except ValueError as error:
            raise RequestError(_as_api_message(error)) from None
        return where

    def check_bbox(self, bbox: Any) -> tuple[float, float, float, float] | None:
        from ..geo.options import parse_bbox

        if bbox is None or (isinstance(bbox, str) and not bbox.strip()):
            return None
        if isinstance(bbox, list | tuple):
            if len(bbox) != 4 or not all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in bbox
            ):
                raise RequestError(f"bbox must be four numbers west,south,east,north, got {_short(bbox)}")
            bbox = ",".join(repr(float(v)) for v in bbox)
        if not isinstance(bbox, str):
            raise RequestError(f"bbox must be west,south,east,north in degrees, got {_short(bbox)}")
        try:
            box = parse_bbox(bbox)
        except ValueError as error:
            raise RequestError(f"bbox: {error}") from None
        if not self.index.is_georeferenced:
            raise RequestError(
                "this index is not georeferenced (no footprints): a bbox cannot select anything"
            )
        return box

    def search_request(
        self, query: Any = None, top_k: Any = 10, where: Any = None, bbox: Any = None, *, image: bool = False
    ) -> SearchQuery:
        """A checked `SearchQuery` (a text query unless ``image``); raises `RequestError`."""
        text = None if image else self.check_text(query)
        return SearchQuery(text, self.check_top_k(top_k), self.check_where(where), self.check_bbox(bbox))

    # --------------------------------------------------------------------------------------------- search
    def _embed_texts(self, texts: list[str]) -> list[np.ndarray]:
        return list(self.index.embed_queries(texts))

    def submit_text(self, text: str) -> Future[np.ndarray]:
        """The embedding of a checked query text, computed in a batch with the other texts waiting."""
        try:
            return self.batcher.submit(text)
        except QueueFullError as error:
            raise RequestError(str(error), 503, {"Retry-After": "1"}) from None

    def search_embedding(self, embedding: np.ndarray, query: SearchQuery) -> list[dict[str, Any]]:
        """The public rows of the ``query.top_k`` best matches of ``embedding`` under the query's filters."""
        try:
            rows = self.index.search_embedding(embedding, query.top_k, where=query.where, bbox=query.bbox)
        except (
            ValueError
        ) as error:  # a filter that parses but cannot run (e.g. a number compared with a text)
            raise RequestError(_as_api_message(error)) from None
        return [public_row(row) for row in rows]

    def search_text(
        self, query: Any, top_k: Any = 10, *, where: Any = None, bbox: Any = None
    ) -> list[dict[str, Any]]:
        """Search with a text (any of the ten languages), through the batcher; waits at most the time limit."""
        request = self.search_request(query, top_k, where, bbox)
        embedding = self.submit_text(request.text).result(self.limits.timeout_s)
        return self.search_embedding(embedding, request)

    def read_upload(self, data: bytes, filename: str | None = None) -> np.ndarray:
        """An uploaded image file (its bytes) as HxWx3 uint8 RGB, decoded as the Python API decodes image files
        (`processing_rsmclip.load_image_file`, then `to_rgb`)."""
        from PIL import Image

        from ..processing_rsmclip import load_image_file, to_rgb

        name = Path(str(filename or "upload")).name or "upload"
        if len(data) > self.limits.max_upload_bytes:
            raise RequestError(
                f"{name}: the upload is {human_size(len(data))}, more than the "
                f"{human_size(self.limits.max_upload_bytes)} this server accepts",
                413,
            )
        if not data:
            raise RequestError(f"{name}: the upload is empty")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Image.open(
                    io.BytesIO(data)
                ) as probe:  # the header only: refuse huge images before decoding
                    width, height = probe.size
        except Exception as error:
            raise RequestError(f"{name}: not a readable image ({error.__class__.__name__})") from None
        if width * height > self.limits.max_image_pixels:
            raise RequestError(
                f"{name}: {width} x {height} pixels is more than the {self.limits.max_image_pixels:,} this server "
                "accepts",
                413,
            )
        try:
            return to_rgb(load_image_file(io.BytesIO(data)))
        except (ValueError, OSError) as error:
            message = str(error).replace("<in-memory image>", name)
            raise RequestError(f"{name}: cannot use this image: {scrub_paths(message)}") from None

    def search_image(
        self, data: bytes, query: SearchQuery, filename: str | None = None
    ) -> list[dict[str, Any]]:
        """Search with an uploaded image (its file's bytes)."""
        rgb = self.read_upload(data, filename)
        embedding = self.index.embed_query(rgb, image=True)
        return self.search_embedding(embedding, query)

    # ---------------------------------------------------------------------------------------------- items
    def _row_number(self, item_id: str) -> int:
        if self._ids is None:
            with self._ids_lock:
                if self._ids is None:
                    self._ids = {
                        value: i for i, value in enumerate(self.index.metadata.column("id").to_pylist())
                    }
        number = self._ids.get(item_id) if isinstance(item_id, str) else None
        if number is None:
            raise RequestError(f"no item with id {_short(item_id, 200)} in this index", 404)
        return number

    def item(self, item_id: str) -> dict[str, Any]:
        """The public metadata of an item (footprints as GeoJSON coordinates)."""
        row = dict(self.index.row(self._row_number(item_id)))
        for key in ("footprint", "footprint_lonlat"):
            if isinstance(row.get(key), str):
                row[key] = json.loads(row[key])
        return public_row(row)

    def thumbnail(self, item_id: str, size: Any = 256, fmt: str = "png") -> tuple[bytes, str]:
        """A picture of an item at most ``size`` pixels on its longest side, as ``(bytes, media type)``: the image
        file, or the tile's window of its scene, read now."""
        from PIL import Image

        try:
            px = int(size)
        except (TypeError, ValueError):
            raise RequestError(f"size must be a whole number of pixels, got {_short(size)}", 422) from None
        if not MIN_THUMBNAIL_PX <= px <= self.limits.max_thumbnail_px:
            raise RequestError(
                f"size must be between {MIN_THUMBNAIL_PX} and {self.limits.max_thumbnail_px} pixels, got {px}",
                422,
            )
        fmt_key = str(fmt or "png").lower()
        if fmt_key not in THUMBNAIL_FORMATS:
            raise RequestError(f"format must be png or jpeg, got {_short(fmt)}", 422)
        row = self.index.row(self._row_number(item_id))
        if row.get("kind") == "dataset":
            raise RequestError(
                f"item {_short(item_id, 200)} is a row of a dataset: thumbnails are served for image files and "
                "scene tiles",
                404,
            )
        try:
            rgb = self._read_rgb(row, px)
        except (
            Exception
        ) as error:  # the file moved or broke since the index was built: logged here, not shown
            logger.warning("thumbnail of %s: %s: %s", item_id, error.__class__.__name__, error)
            raise RequestError(
                f"the image of item {_short(item_id, 200)} cannot be read on the server", 404
            ) from None
        picture = Image.fromarray(rgb)
        picture.thumbnail((px, px))
        out = io.BytesIO()
        pil_format, media_type = THUMBNAIL_FORMATS[fmt_key]
        picture.save(out, format=pil_format, **({"quality": 90} if pil_format == "JPEG" else {}))
        return out.getvalue(), media_type

    def _read_rgb(self, row: dict[str, Any], size: int) -> np.ndarray:
        """An item's pixels as the index read them (its run's band preset and bands); a tile through
        `geo.raster.RasterReader`, at about ``size`` pixels (from the scene's overviews where it has them)."""
        options = self._source_options(str(row["path"]))
        if row.get("window"):
            from ..geo.raster import RasterReader

            col, row_off, width, height = (int(v) for v in row["window"])
            scale = size / max(width, height)
            out_shape = None if scale >= 1 else (max(1, round(height * scale)), max(1, round(width * scale)))
            with RasterReader(
                row["path"], preset=options.get("preset"), bands=options.get("bands")
            ) as reader:
                rgb, _valid = reader.read_rgb((col, row_off, width, height), out_shape)
            return rgb
        from ..processing_rsmclip import load_image_file, to_rgb

        return to_rgb(load_image_file(row["path"]), bands=options.get("bands"))

    def _source_options(self, path: str) -> dict[str, Any]:
        """The source options (preset, bands) of the first index run whose sources hold ``path``."""
        for run in self.index.manifest.get("runs", []):
            for source in run.get("sources", []):
                if path == source or path.startswith(source.rstrip("/\\") + os.sep):
                    return run.get("options") or {}
        return {}

    # --------------------------------------------------------------------------------------------- health
    def health(self) -> dict[str, Any]:
        manifest = self.index.manifest
        return {
            "status": "ok",
            "model": self.model_name,
            "fingerprint": manifest["model"]["fingerprint"],
            "backend": self.app.backend,
            "precision": self.app.precision,
            "index": {
                "items": len(self.index),
                "type": manifest.get("index", {}).get("factory"),
                "dim": manifest.get("embedding", {}).get("dim"),
                "georeferenced": self.index.is_georeferenced,
                "columns": self.public_columns,
            },
            "batching": {
                "max_batch": self.batcher.max_batch,
                "max_wait_ms": round(self.batcher.max_wait_s * 1000, 3),
                "pending": self.batcher.pending,
                **self.batcher.stats.as_dict(),
            },
            "threads": _torch_threads(),
            "limits": self.limits.as_dict(),
            "uptime_s": round(time.time() - self.started, 1),
        }


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _manifest_model(index: Path) -> str | None:
    """The model named in an index's manifest (None when there is no readable manifest: loading says why)."""
    try:
        return json.loads((index / "manifest.json").read_text(encoding="utf-8"))["model"]["name_or_path"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _as_api_message(error: BaseException) -> str:
    """A library's message for a request value, with the command line's option names as the API's fields."""
    return scrub_paths(str(error).replace("--where", "where").replace("--bbox", "bbox"))


__all__ = [
    "PRIVATE_COLUMNS",
    "RequestError",
    "SearchQuery",
    "SearchService",
    "ServeLimits",
    "is_server_path",
    "public_model_name",
    "public_row",
    "scrub_paths",
]
