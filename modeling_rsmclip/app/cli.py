"""`rsmclip app`: serve the web app (Search, Classify, Segment) on this machine."""

from __future__ import annotations

import argparse
import logging
import socket
from pathlib import Path

from ..errors import UserError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    from ..inference.options import add_backend_arguments
    from .ui_defaults import DEFAULT_CONCURRENCY, DEFAULT_QUEUE_SIZE

    parser = subparsers.add_parser(
        "app",
        help="serve the web app: multilingual archive search, zero-shot classification, scene maps",
        description=(
            "Serve the RS-M-CLIP web app. With no arguments it runs offline on the bundled demo model and an "
            "index of the bundled sample images (built on first start)."
        ),
    )
    parser.add_argument(
        "--model", default=None, help="model folder or Hub id (default: the bundled demo model)"
    )
    parser.add_argument(
        "--index",
        default=None,
        help="archive index folder (`rsmclip index build`; default: the bundled samples)",
    )
    parser.add_argument("--no-index", action="store_true", help="serve without the Search tab's archive")
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        help=f"requests computed at once; more wait in the queue (default {DEFAULT_CONCURRENCY})",
    )
    parser.add_argument(
        "--max-queue",
        type=int,
        default=DEFAULT_QUEUE_SIZE,
        help=f"queued requests (default {DEFAULT_QUEUE_SIZE})",
    )
    parser.add_argument(
        "--max-upload-mb", type=float, default=25.0, help="largest upload accepted (default 25)"
    )
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    parser.add_argument(
        "--write-space",
        metavar="DIR",
        default=None,
        help="write a Hugging Face Space of the app into DIR (new or empty: README.md with the Space settings, "
        "app.py, requirements.txt, .gitattributes for Git LFS, the package and samples), then exit",
    )
    add_backend_arguments(parser, device=False)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.write_space:
        from .space import write_space

        written = write_space(args.write_space)
        print(
            f"wrote a Gradio {written['gradio']} Space to {written['folder']} "
            f"(Git LFS: {', '.join(written['lfs_files']) or 'no weights'}); push it to a new Space with git"
        )
        return 0
    for value, name in ((args.concurrency, "--concurrency"), (args.max_queue, "--max-queue")):
        if value < 1:
            raise UserError(f"{name} must be at least 1, got {value}")
    if not 0 < args.port < 65536:
        raise UserError(f"--port must be between 1 and 65535, got {args.port}")
    if args.index is not None and not Path(args.index).is_dir():  # before the minutes of loading a model
        raise UserError(f"index folder not found: {args.index}")
    # A missing Gradio (ImportError) or a bad model/index (ValueError, OSError) is reported by `errors.run_command`.
    from . import ui  # noqa: F401  (Gradio installed?)
    from .service import AppLimits, AppService

    service = AppService.load(
        args.model,
        args.index,
        with_index=not args.no_index,
        limits=AppLimits(max_upload_mb=args.max_upload_mb),
        backend=args.backend,
        precision=args.precision,
    )
    serve(
        service,
        args.host,
        args.port,
        concurrency=args.concurrency,
        max_queue=args.max_queue,
        share=args.share,
    )
    return 0


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port nobody listens on right now (for tests and benchmarks)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def serve(
    service,
    host: str = DEFAULT_HOST,
    port: int | None = None,
    *,
    block: bool = True,
    concurrency: int | None = None,
    max_queue: int | None = None,
    **launch_options,
):
    """Build the page for `service` and serve it on host:port (a free port when None).

    With `block=False` it returns at once with `(demo, url)`; `demo.close()` stops the server.
    """
    from .ui import build_demo, launch_kwargs
    from .ui_defaults import DEFAULT_CONCURRENCY, DEFAULT_QUEUE_SIZE

    demo = build_demo(
        service, concurrency=concurrency or DEFAULT_CONCURRENCY, max_queue=max_queue or DEFAULT_QUEUE_SIZE
    )
    port = port or free_port(host)
    demo.launch(
        **launch_kwargs(
            service,
            server_name=host,
            server_port=port,
            prevent_thread_lock=not block,
            quiet=not block,
            **launch_options,
        )
    )
    return demo, f"http://{host}:{port}/"
