"""`rsmclip serve INDEX`: search an archive index over HTTP (FastAPI; the Gradio page beside it with --app)."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
from pathlib import Path

from ..errors import UserError

DEFAULT_HOST = "127.0.0.1"  # the same as server.DEFAULT_HOST, without importing it for --help
DEFAULT_PORT = 8000


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    from ..inference.options import add_backend_arguments

    parser = subparsers.add_parser(
        "serve",
        help="search an index over HTTP (FastAPI, OpenAPI docs at /docs)",
        description=(
            "Serve an archive index as an HTTP API: GET/POST /search (a text in any of the ten languages, or an "
            "uploaded image; top_k, where, bbox; JSON or GeoJSON), /items/{id} and its /thumbnail, /health. The "
            "model is loaded once and concurrent text queries are embedded in batches. Binds to 127.0.0.1 unless "
            "--host says otherwise. See docs/serve.md."
        ),
    )
    parser.add_argument("index", type=Path, help="index folder (`rsmclip index build`)")
    parser.add_argument(
        "--model", default=None, help="query model (default: the one in the index's manifest)"
    )
    parser.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address to listen on (default {DEFAULT_HOST}: this machine only)",
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument(
        "--app",
        action="store_true",
        help="also serve the web page (Gradio) at /app on the same model and index",
    )
    batching = parser.add_argument_group("batching of text queries")
    batching.add_argument(
        "--max-batch", type=int, default=32, help="text queries per forward pass (1: no batching; default 32)"
    )
    batching.add_argument(
        "--batch-wait-ms",
        type=float,
        default=5.0,
        help="how long a batch waits for more queries, in milliseconds (default 5)",
    )
    limits = parser.add_argument_group("request limits")
    limits.add_argument("--max-upload-mb", type=float, default=25.0, help="largest upload (default 25)")
    limits.add_argument("--max-top-k", type=int, default=100, help="most results per search (default 100)")
    limits.add_argument(
        "--timeout", type=float, default=30.0, help="seconds a search may take before a 503 (default 30)"
    )
    limits.add_argument(
        "--max-connections",
        type=int,
        default=256,
        help="connections served at once, 503 beyond (default 256)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads of the model's forward passes (default: the CPU cores but one, which is left to the HTTP "
        "side; at least 1)",
    )
    parser.add_argument("--quiet", action="store_true", help="no log line per request")
    add_backend_arguments(parser.add_argument_group("query embedding"), device=False)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not 0 < args.port < 65536:
        raise UserError(f"--port must be between 1 and 65535, got {args.port}")
    for value, name in (
        (1 if args.threads is None else args.threads, "--threads"),
        (args.max_batch, "--max-batch"),
        (args.max_top_k, "--max-top-k"),
        (args.max_connections, "--max-connections"),
    ):
        if value < 1:
            raise UserError(f"{name} must be at least 1, got {value}")
    for value, name in (
        (args.batch_wait_ms, "--batch-wait-ms"),
        (args.max_upload_mb, "--max-upload-mb"),
        (args.timeout, "--timeout"),
    ):
        if not value >= 0 or (name != "--batch-wait-ms" and value == 0):
            raise UserError(f"{name} must be a positive number, got {value}")
    if not (args.index / "manifest.json").is_file():  # before the seconds of loading a model
        raise UserError(
            f"no index at {args.index}: manifest.json not found (build one with `rsmclip index build`)"
        )
    from ..index.integrity import check_index_files

    check_index_files(args.index)  # a damaged index is named before the model is loaded
    from .api import build_api, require_serve_dependencies

    require_serve_dependencies()
    if args.app:
        from ..app import ui  # noqa: F401  (Gradio installed?)
    import torch

    from .server import run_server
    from .service import SearchService, ServeLimits

    torch.set_num_threads(args.threads if args.threads is not None else default_threads())
    limits = ServeLimits(max_upload_mb=args.max_upload_mb, max_top_k=args.max_top_k, timeout_s=args.timeout)
    service = SearchService.load(
        args.index,
        args.model,
        backend=args.backend,
        precision=args.precision,
        limits=limits,
        max_batch=args.max_batch,
        max_wait_ms=args.batch_wait_ms,
    )
    try:
        app = build_api(service, page=args.app)
        if not _is_loopback(args.host):
            logging.getLogger(__name__).warning(
                "listening on %s: anyone who can reach this machine on port %d can search the index",
                args.host,
                args.port,
            )
        run_server(app, args.host, args.port, max_connections=args.max_connections, access_log=not args.quiet)
    finally:
        service.close()
    return 0


def default_threads() -> int:
    """The CPU cores this process may use, but one: a forward pass of a small model gains little from a second
    thread, and loses much when its threads wait for the core that the event loop and JSON encoding hold."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
