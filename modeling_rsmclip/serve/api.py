"""The HTTP API: `build_api(service) -> FastAPI` (OpenAPI docs at ``/docs``), the Gradio page mounted on request.

Endpoints (all answers JSON unless said otherwise; errors are ``{"detail": "message"}`` with a 4xx status, or 503
when the server is busy or a search runs out of time, never a traceback):

- ``GET /search?query=...&top_k=10&where=...&bbox=w,s,e,n&format=json|geojson``: text search in any of the ten
  languages. ``POST /search`` takes the same fields as a JSON object, or as ``multipart/form-data`` with an
  ``image`` file for a search by image. GeoJSON (RFC 7946, lon/lat footprints) with ``format=geojson`` or
  ``Accept: application/geo+json``.
- ``GET /items/{id}``: an item's metadata; ``GET /items/{id}/thumbnail?size=256&format=png|jpeg``: its picture.
- ``GET /health``: model, index size, fingerprint, backend, batching figures, limits.
- ``/app/``: the Gradio page (``build_api(..., page=True)``), on the same model and index.

FastAPI is imported here only (extra: ``pip install "rsmclip[serve]"``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .service import RequestError, SearchQuery, SearchService, scrub_paths

logger = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "rsmclip[serve]"'
GEOJSON_MEDIA_TYPE = "application/geo+json"
PAGE_PATH = "/app"
# The fields of a POST /search body (JSON or form), besides a form's `image` file.
BODY_FIELDS = ("query", "top_k", "where", "bbox", "format")
FORMATS = ("json", "geojson")


try:
    from fastapi import FastAPI, Query, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from starlette.datastructures import UploadFile
except ImportError as _error:  # pragma: no cover - depends on the installation
    raise ImportError(f"the HTTP API needs FastAPI and uvicorn: {INSTALL_HINT} ({_error})") from _error


def require_serve_dependencies() -> None:
    """Import uvicorn and python-multipart (form uploads), or say which extra to install."""
    try:
        import python_multipart  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as error:
        raise ImportError(f"the HTTP API needs FastAPI and uvicorn: {INSTALL_HINT} ({error})") from error


# ------------------------------------------------------------------------------------------------- limits
class RequestLimitMiddleware:
    """Refuse what is too large before the app reads it: a query string over ``max_query_bytes`` (414), headers
    over ``max_header_bytes`` (431), a body over ``max_bytes`` (413: at once when its Content-Length says so, else,
    for a chunked body, as soon as that many bytes have arrived)."""

    def __init__(
        self, app: Any, max_bytes: int, max_query_bytes: int = 16 * 1024, max_header_bytes: int = 64 * 1024
    ) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)
        self.max_query_bytes = int(max_query_bytes)
        self.max_header_bytes = int(max_header_bytes)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        query = len(scope.get("query_string") or b"")
        if query > self.max_query_bytes:
            message = f"the query string is {query} bytes long; at most {self.max_query_bytes} are allowed"
            await _send_json(send, 414, {"detail": message + " (POST long requests as JSON)"})
            return
        header_bytes = sum(len(k) + len(v) for k, v in scope.get("headers") or [])
        if header_bytes > self.max_header_bytes:
            message = (
                f"the headers are {header_bytes} bytes long; at most {self.max_header_bytes} are allowed"
            )
            await _send_json(send, 431, {"detail": message})
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_large = int(length) > self.max_bytes
            except ValueError:
                await _send_json(send, 400, {"detail": "Content-Length is not a number"})
                return
            if too_large:
                await _send_json(send, 413, {"detail": self._message(int(length))})
                return
            await self.app(scope, receive, send)
            return
        if b"chunked" not in headers.get(b"transfer-encoding", b"").lower():
            await self.app(scope, receive, send)
            return
        # A chunked body: read it here, up to the limit, then hand it to the app.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await _send_json(send, 413, {"detail": self._message(size, at_least=True)})
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _message(self, size: int, at_least: bool = False) -> str:
        from ..app.service import human_size

        what = f"at least {human_size(size)}" if at_least else human_size(size)
        return f"the request body is {what}, more than the {human_size(self.max_bytes)} this server accepts"


async def _send_json(send: Any, status: int, content: dict) -> None:
    body = json.dumps(content).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _validation_message(errors: list[dict[str, Any]]) -> str:
    """FastAPI's validation errors as one line, without echoing the input (a huge query stays out of the answer)."""
    parts = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ())]
        if loc and loc[0] in (
            "query",
            "body",
            "path",
            "header",
            "cookie",
        ):  # where it came from, not its name
            loc = loc[1:]
        parts.append(f"{'.'.join(loc) or 'request'}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


# ---------------------------------------------------------------------------------------------------- app
def build_api(service: SearchService, *, page: bool = False, title: str = "RS-M-CLIP search") -> Any:
    """The FastAPI application of ``service``; ``page=True`` mounts the Gradio page at ``/app`` on the same model
    and index (needs ``pip install "rsmclip[app]"``)."""
    require_serve_dependencies()
    api = FastAPI(
        title=title,
        summary="Multilingual text and image search of a remote-sensing archive index",
        description=(
            "Search an RS-M-CLIP archive index with a text in any of the ten languages (en, pt, es, fr, de, nl, "
            "it, zh, ko, ru) or with an image; filter by metadata (`where`) and by a lon/lat box (`bbox`); get "
            "JSON or GeoJSON. Items are named by their id (relative to their source), never by a server path."
        ),
        version=_package_version(),
    )
    api.state.service = service
    api.add_middleware(RequestLimitMiddleware, max_bytes=service.limits.max_body_bytes)
    _add_error_handlers(api)
    _add_search_routes(api, service)
    _add_item_routes(api, service)
    _add_service_routes(api, service, page=page, title=title)
    if page:
        api = mount_page(api, service)
    return api


def _add_error_handlers(api: Any) -> None:
    """Errors as ``{"detail": message}``: a request's own mistake as 4xx with its message (server paths scrubbed),
    anything else as a 500 that names only the error's class (the log has the rest)."""

    @api.exception_handler(RequestError)
    async def request_error(request: Request, error: RequestError) -> JSONResponse:
        return JSONResponse(
            {"detail": scrub_paths(str(error))}, status_code=error.status, headers=error.headers
        )

    @api.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_message(list(error.errors()))}, status_code=422)

    @api.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        logger.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse(
            {"detail": f"internal error ({error.__class__.__name__}); the server's log has the details"},
            status_code=500,
        )


def _links(row: dict[str, Any]) -> dict[str, Any]:
    item = quote(str(row["id"]), safe="/@,")
    return {**row, "item_url": f"/items/{item}", "thumbnail_url": f"/items/{item}/thumbnail"}


def _answer(
    rows: list[dict[str, Any]], described: dict[str, Any], started: float, fmt: str | None, accept: str
) -> Response:
    rows = [_links(row) for row in rows]
    took_ms = round((time.perf_counter() - started) * 1000, 2)
    if _wants_geojson(fmt, accept):
        from ..index import to_geojson

        collection = to_geojson(rows)
        collection["query"] = described
        collection["took_ms"] = took_ms
        return JSONResponse(collection, media_type=GEOJSON_MEDIA_TYPE)
    return JSONResponse({"query": described, "count": len(rows), "took_ms": took_ms, "results": rows})


async def _timed(service: SearchService, work: Any) -> Any:
    """``work`` awaited within the server's time limit, else a 503."""
    timeout_s = service.limits.timeout_s
    try:
        return await asyncio.wait_for(work, timeout_s)
    except asyncio.TimeoutError:
        raise RequestError(
            f"the search took longer than the {timeout_s:g} s this server allows; try again", 503
        ) from None


async def _text_search(service: SearchService, request: SearchQuery) -> list[dict[str, Any]]:
    """A text query: its embedding from the batcher (batched with concurrent queries), then the index search."""
    embedding = await asyncio.wrap_future(service.submit_text(request.text))
    return await run_in_threadpool(service.search_embedding, embedding, request)


async def _form_search(
    service: SearchService, request: Request, format: str | None, started: float
) -> Response:
    """``POST /search`` with a form: a text query in its fields, or an image upload."""
    limits = service.limits
    accept = request.headers.get("accept", "")
    form = await request.form(max_files=1, max_fields=8, max_part_size=2**16)
    _refuse_unknown(form.keys(), (*BODY_FIELDS, "image"))
    fields = {key: form.get(key) for key in BODY_FIELDS}
    upload = form.get("image")
    for key, value in fields.items():
        if isinstance(value, UploadFile):
            raise RequestError(f"{key} must be a form field, not a file")
    if upload is not None and not isinstance(upload, UploadFile):
        raise RequestError("image must be a file upload (multipart/form-data)")
    image = upload is not None
    top_k = fields["top_k"] if fields["top_k"] not in (None, "") else 10
    if image and fields["query"]:
        raise RequestError("give a query text or an image, not both")
    fmt = _check_format(format or fields["format"])
    checked = service.search_request(fields["query"], top_k, fields["where"], fields["bbox"], image=image)
    if not image:
        rows = await _timed(service, _text_search(service, checked))
        return _answer(rows, checked.describe(), started, fmt, accept)
    data = await upload.read(limits.max_upload_bytes + 1)
    rows = await _timed(service, run_in_threadpool(service.search_image, data, checked, upload.filename))
    name = Path(upload.filename or "upload").name or "upload"
    return _answer(rows, checked.describe(image_name=name), started, fmt, accept)


async def _json_search(
    service: SearchService, request: Request, format: str | None, started: float
) -> Response:
    """``POST /search`` with a JSON object of the query fields."""
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise RequestError("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise RequestError('send a JSON object such as {"query": "uma praia", "top_k": 10}')
    _refuse_unknown(body.keys(), BODY_FIELDS)
    fmt = _check_format(format or body.get("format"))
    checked = service.search_request(
        body.get("query"), body.get("top_k", 10), body.get("where"), body.get("bbox")
    )
    rows = await _timed(service, _text_search(service, checked))
    return _answer(rows, checked.describe(), started, fmt, request.headers.get("accept", ""))


def _add_search_routes(api: Any, service: SearchService) -> None:
    """``GET /search`` (a text in the query string) and ``POST /search`` (JSON, a form, or an image upload)."""
    limits = service.limits
    format_query = Query(
        None,
        description="`json` (default) or `geojson` (also chosen by `Accept: application/geo+json`)",
        pattern="^(json|geojson)$",
    )

    @api.get("/search", summary="Search with a text", tags=["search"])
    async def search_get(
        request: Request,
        query: str = Query(
            ..., description="text in any of the ten languages", max_length=limits.max_query_chars
        ),
        top_k: int = Query(10, ge=1, le=limits.max_top_k, description="number of results"),
        where: str | None = Query(
            None,
            max_length=limits.max_where_chars,
            description="metadata filter, e.g. `label == 'beach'` or `valid_fraction >= 0.9` (pandas-query style)",
        ),
        bbox: str | None = Query(None, description="lon/lat box `west,south,east,north` (degrees)"),
        format: str | None = format_query,
    ) -> Response:
        started = time.perf_counter()
        checked = service.search_request(query, top_k, where, bbox)
        rows = await _timed(service, _text_search(service, checked))
        return _answer(rows, checked.describe(), started, format, request.headers.get("accept", ""))

    @api.post(
        "/search",
        summary="Search with a text (JSON) or an image (multipart upload)",
        tags=["search"],
        openapi_extra={"requestBody": _search_body_schema(limits)},
    )
    async def search_post(request: Request, format: str | None = format_query) -> Response:
        started = time.perf_counter()
        content_type = request.headers.get("content-type", "").lower()
        if content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
            return await _form_search(service, request, format, started)
        if content_type.startswith("application/json") or not content_type:
            return await _json_search(service, request, format, started)
        raise RequestError(
            "send JSON (application/json), a form, or an upload (multipart/form-data), not "
            f"{content_type.split(';')[0]!r}",
            415,
        )


def _add_item_routes(api: Any, service: SearchService) -> None:
    """``GET /items/{id}`` (metadata) and ``GET /items/{id}/thumbnail`` (a picture read on demand)."""
    limits = service.limits

    @api.get(
        "/items/{item_id:path}/thumbnail",
        summary="An item's picture (read now: the image file, or its tile of the scene)",
        tags=["items"],
        response_class=Response,
        responses={200: {"content": {"image/png": {}, "image/jpeg": {}}}},
    )
    async def thumbnail(
        item_id: str,
        size: int = Query(256, ge=16, le=limits.max_thumbnail_px, description="longest side in pixels"),
        format: str = Query("png", pattern="^(png|jpeg|jpg)$", description="png or jpeg"),
    ) -> Response:
        data, media_type = await _timed(service, run_in_threadpool(service.thumbnail, item_id, size, format))
        return Response(data, media_type=media_type, headers={"Cache-Control": "max-age=3600"})

    @api.get("/items/{item_id:path}", summary="An item's metadata", tags=["items"])
    async def item(item_id: str) -> dict[str, Any]:
        return _links(await run_in_threadpool(service.item, item_id))


def _add_service_routes(api: Any, service: SearchService, *, page: bool, title: str) -> None:
    """``GET /health`` and ``GET /``."""

    @api.get("/health", summary="What is loaded, and the batching figures", tags=["service"])
    async def health() -> dict[str, Any]:
        return {**service.health(), "page": PAGE_PATH + "/" if page else None}

    @api.get("/", include_in_schema=False)
    async def root() -> dict[str, Any]:
        return {
            "name": title,
            "docs": "/docs",
            "health": "/health",
            "page": PAGE_PATH + "/" if page else None,
        }


def mount_page(api: Any, service: SearchService) -> Any:
    """Mount the web app's Gradio page at ``/app`` on ``api``, on the service's own model, encoder and index."""
    try:
        import gradio as gr

        from ..app.ui import build_demo, launch_kwargs
    except ImportError as error:
        raise ImportError(f'the page (--app) needs Gradio: pip install "rsmclip[app]" ({error})') from error
    demo = build_demo(service.app)
    return gr.mount_gradio_app(api, demo, path=PAGE_PATH, **launch_kwargs(service.app))


def _refuse_unknown(keys: Any, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(keys) - set(allowed))
    if unknown:
        raise RequestError(f"unknown field(s) {', '.join(map(repr, unknown))}: use {', '.join(allowed)}")


def _check_format(value: Any) -> str | None:
    if value in (None, ""):
        return None
    if value not in FORMATS:
        raise RequestError(f"format must be json or geojson, got {str(value)[:40]!r}", 422)
    return value


def _wants_geojson(fmt: str | None, accept: str) -> bool:
    if fmt:
        return fmt == "geojson"
    return GEOJSON_MEDIA_TYPE in (accept or "").lower()


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("rsmclip")
    except Exception:  # a checkout that is not installed
        return "0"


def _search_body_schema(limits: Any) -> dict[str, Any]:
    """The OpenAPI description of POST /search's two kinds of body."""
    common = {
        "top_k": {"type": "integer", "minimum": 1, "maximum": limits.max_top_k, "default": 10},
        "where": {"type": "string", "maxLength": limits.max_where_chars, "example": "label == 'airport'"},
        "bbox": {"type": "string", "example": "-8.7,41.1,-8.5,41.2", "description": "west,south,east,north"},
        "format": {"type": "string", "enum": list(FORMATS), "default": "json"},
    }
    return {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["query"],
                    "properties": {
                        "query": {
                            "type": "string",
                            "maxLength": limits.max_query_chars,
                            "example": "muitos aviões estacionados no aeroporto",
                        },
                        **common,
                        "bbox": {
                            "oneOf": [
                                common["bbox"],
                                {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4},
                            ]
                        },
                    },
                }
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "image": {"type": "string", "format": "binary", "description": "an image file"},
                        "query": {"type": "string", "description": "a text instead of the image"},
                        **common,
                    },
                }
            },
        },
    }


__all__ = ["RequestLimitMiddleware", "build_api", "mount_page", "require_serve_dependencies"]
