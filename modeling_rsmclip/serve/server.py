"""Running the API with uvicorn: in the foreground (`run_server`, the command) or in a thread (`BackgroundServer`, for
tests, benchmarks and notebooks), with the same settings."""

from __future__ import annotations

import threading
import time
from typing import Any

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
# Connections served at once; uvicorn answers 503 beyond it instead of letting them pile up.
DEFAULT_MAX_CONNECTIONS = 256


def uvicorn_config(
    app: Any,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    log_level: str = "info",
    access_log: bool = True,
) -> Any:
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        limit_concurrency=max_connections,
        timeout_keep_alive=5,
        log_level=log_level,
        access_log=access_log,
        server_header=False,
    )


def run_server(app: Any, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, **options: Any) -> None:
    """Serve ``app`` until interrupted (Ctrl-C)."""
    import uvicorn

    uvicorn.Server(uvicorn_config(app, host, port, **options)).run()


class BackgroundServer:
    """``app`` served by uvicorn in a thread on ``host:port`` (a free port when None); stopped by `stop` or at the
    end of a ``with`` block, also when the block fails.

        with BackgroundServer(app) as server:
            httpx.get(server.url + "/health")
    """

    def __init__(self, app: Any, host: str = DEFAULT_HOST, port: int | None = None, **options: Any) -> None:
        from ..app.cli import free_port

        self.host = host
        self.port = port or free_port(host)
        options.setdefault("log_level", "warning")
        options.setdefault("access_log", False)
        self.config = uvicorn_config(app, host, self.port, **options)
        self.server: Any = None
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 60.0) -> BackgroundServer:
        import uvicorn

        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, name=f"uvicorn-{self.port}", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError(f"the server on {self.url} stopped while starting (is the port free?)")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"the server on {self.url} did not start within {timeout:g} s")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        if self.server is not None:
            self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout)
            self.thread = None

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


__all__ = ["BackgroundServer", "DEFAULT_HOST", "DEFAULT_PORT", "run_server", "uvicorn_config"]
