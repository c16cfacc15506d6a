"""Search over HTTP: `rsmclip serve INDEX`, a FastAPI application over an archive index.

- `service`: `SearchService`, the model and index loaded once (shared with the Gradio page), checked requests
  (`ServeLimits`, `RequestError`), item metadata and thumbnails, and `public_row`, the one filter every row passes
  before it leaves the server (no server paths).
- `batching`: `QueryBatcher`, concurrent text queries gathered for a few milliseconds into one forward pass.
- `api`: `build_api(service)`, the endpoints (`/search`, `/items/{id}`, `/items/{id}/thumbnail`, `/health`, the page
  at `/app`).
- `server`: uvicorn in the foreground (`run_server`) or in a thread (`BackgroundServer`).
- `cli`: the command.

Needs ``pip install "rsmclip[serve]"`` (FastAPI, uvicorn; the index extra). Names are imported lazily.
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "QueryBatcher": ".batching",
    "QueueFullError": ".batching",
    "RequestError": ".service",
    "SearchQuery": ".service",
    "SearchService": ".service",
    "ServeLimits": ".service",
    "public_row": ".service",
    "build_api": ".api",
    "BackgroundServer": ".server",
    "run_server": ".server",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
