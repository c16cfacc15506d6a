"""`RangeServer`: a static file server on 127.0.0.1 that honours HTTP Range requests, counts what it sends, and can
misbehave on purpose.

It stands in for object storage (S3, GCS, Azure Blob behind HTTPS) in tests and benchmarks: GDAL's ``/vsicurl/``
reads a cloud-optimised GeoTIFF from it exactly as from a bucket, one Range request per block run, so the bytes the
server sent per file say how much of a scene a read really moved. Faults are set per file: answer an HTTP error
``n`` times then recover (`fail`), serve only the first bytes of a file as if it were all of it (`truncate`), or
close the connection without answering (`drop`). `refused_url` gives an address where nothing accepts connections.

Standard library only (``http.server``, one thread per connection, HTTP/1.1 keep-alive as GDAL expects).
"""

from __future__ import annotations

import os
import re
import socket
import threading
import urllib.parse
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$")
_CONTENT_TYPES = {
    ".tif": "image/tiff; application=geotiff; profile=cloud-optimized",
    ".tiff": "image/tiff; application=geotiff; profile=cloud-optimized",
    ".json": "application/json",
    ".geojson": "application/geo+json",
}


@dataclass
class _Fault:
    status: int = 0  # answer this HTTP status ...
    times: int = 0  # ... this many more times (then serve normally)
    truncate: int | None = None  # serve only the first N bytes, as if the file had N bytes
    drop: bool = False  # close the connection without an answer


class RangeServer:
    """Serve the files under ``root`` at ``http://127.0.0.1:PORT/<relative path>`` (context manager).

    Counters (per relative path, reset with `reset_counts`): ``bytes_sent`` (response bodies), ``requests`` (GET and
    HEAD), ``failures`` (answers given by an injected fault).
    """

    def __init__(self, root: str | os.PathLike, host: str = "127.0.0.1", port: int = 0) -> None:
        self.root = Path(root).resolve()
        self._lock = threading.Lock()
        self._faults: dict[str, _Fault] = {}
        self.bytes_sent: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.ranges: list[tuple[str, int, int]] = []  # (path, first, last) of every ranged answer
        self.targets: list[str] = []  # every request target as sent (path and query string)
        self._httpd = ThreadingHTTPServer((host, port), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None
        self._refusers: list[socket.socket] = []

    # ------------------------------------------------------------------------------------------------ lifecycle
    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> RangeServer:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, name="range-server", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._httpd.server_close()
        for sock in self._refusers:
            sock.close()
        self._refusers.clear()

    def __enter__(self) -> RangeServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ---------------------------------------------------------------------------------------------------- paths
    def url(self, path: str | os.PathLike) -> str:
        """The URL of a file under ``root`` (an absolute path inside ``root``, or a path relative to it)."""
        rel = Path(path)
        if rel.is_absolute():
            rel = rel.resolve().relative_to(self.root)
        return f"{self.base_url}/{urllib.parse.quote(rel.as_posix())}"

    def refused_url(self, name: str = "scene.tif") -> str:
        """A URL on 127.0.0.1 where connections are refused: a port bound by a socket that never listens (kept
        until `stop`), so no other server can take it meanwhile."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self._refusers.append(sock)
        return f"http://127.0.0.1:{sock.getsockname()[1]}/{name}"

    @staticmethod
    def _target_key(target: str) -> str:
        """The file a request target (``/a/b.tif?x=1``) asks for, relative to the root."""
        return urllib.parse.unquote(target.split("?", 1)[0]).lstrip("/")

    def key(self, path: str | os.PathLike) -> str:
        """The counters' and faults' key of a file: its path relative to the root, from a URL, an absolute path
        inside the root, or a relative path."""
        text = str(path)
        if "://" in text:
            return self._target_key(urllib.parse.urlsplit(text).path)
        candidate = Path(text)
        if candidate.is_absolute():
            return candidate.resolve().relative_to(self.root).as_posix()
        return candidate.as_posix()

    # --------------------------------------------------------------------------------------------------- faults
    def fail(self, path: str | os.PathLike, times: int, status: int = 500) -> None:
        """Answer the next ``times`` requests for ``path`` (see `key`) with HTTP ``status``."""
        with self._lock:
            self._faults.setdefault(self.key(path), _Fault()).__dict__.update(status=status, times=times)

    def truncate(self, path: str | os.PathLike, size: int) -> None:
        """Serve ``path`` as if it held only its first ``size`` bytes (a partly uploaded or cut file)."""
        with self._lock:
            self._faults.setdefault(self.key(path), _Fault()).truncate = int(size)

    def drop(self, path: str | os.PathLike, enabled: bool = True) -> None:
        """Close every connection asking for ``path`` without an answer."""
        with self._lock:
            self._faults.setdefault(self.key(path), _Fault()).drop = enabled

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def reset_counts(self) -> None:
        with self._lock:
            self.bytes_sent.clear()
            self.requests.clear()
            self.failures.clear()
            self.ranges.clear()
            self.targets.clear()

    def sent(self, path: str | os.PathLike) -> int:
        """Bytes of response bodies sent for ``path`` (see `key`) since the last `reset_counts`."""
        with self._lock:
            return self.bytes_sent[self.key(path)]

    # ------------------------------------------------------------------------------------------------- serving
    def _take_fault(self, key: str) -> _Fault | None:
        with self._lock:
            fault = self._faults.get(key)
            if fault is None:
                return None
            taken = _Fault(truncate=fault.truncate, drop=fault.drop)
            if fault.times > 0:
                fault.times -= 1
                taken.status, taken.times = fault.status, 1
            return taken

    def _count(self, key: str, nbytes: int = 0, failure: bool = False) -> None:
        with self._lock:
            self.requests[key] += 1
            self.bytes_sent[key] += nbytes
            if failure:
                self.failures[key] += 1


def _handler_for(server: RangeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "rsmclip-range/1"

        def setup(self) -> None:
            super().setup()
            # Headers and body go out in separate writes: without this, Nagle's algorithm and the client's delayed
            # ACK add ~40 ms to every keep-alive request.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _plain(self, status: int, text: str, key: str, failure: bool = False) -> None:
            data = text.encode()
            server._count(key, len(data) if self.command == "GET" else 0, failure)
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command == "GET":
                self.wfile.write(data)

        def _serve(self, body: bool) -> None:
            key = RangeServer._target_key(self.path)
            with server._lock:
                server.targets.append(self.path)
            fault = server._take_fault(key)
            if fault is not None and fault.drop:
                server._count(key, failure=True)
                self.close_connection = True
                return
            if fault is not None and fault.times:
                self._plain(fault.status, f"injected fault {fault.status}\n", key, failure=True)
                return
            path = (server.root / key).resolve()
            if server.root not in path.parents or not path.is_file():
                self._plain(404, "not found\n", key)
                return
            size = path.stat().st_size
            if fault is not None and fault.truncate is not None:
                size = min(size, fault.truncate)
            first, last, status = 0, size - 1, 200
            header = self.headers.get("Range")
            if header:
                match = _RANGE.match(header)
                if (
                    match is None
                ):  # several ranges or another unit: answer with the whole file (RFC 9110 allows it)
                    pass
                else:
                    start, end = match.groups()
                    if start == "" and end == "":
                        self._plain(416, "bad range\n", key)
                        return
                    if start == "":
                        first, last = max(0, size - int(end)), size - 1
                    else:
                        first = int(start)
                        last = min(int(end), size - 1) if end else size - 1
                    if first >= size or first > last:
                        server._count(key)
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{size}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    status = 206
            length = last - first + 1
            # Counted before anything goes out: a client that has its bytes sees them counted.
            server._count(key, length if body else 0)
            if status == 206:
                with server._lock:
                    server.ranges.append((key, first, last))
            self.send_response(status)
            self.send_header(
                "Content-Type", _CONTENT_TYPES.get(path.suffix.lower(), "application/octet-stream")
            )
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(length))
            if status == 206:
                self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
            self.end_headers()
            if body:
                with open(path, "rb") as f:
                    f.seek(first)
                    remaining = length
                    while remaining > 0:
                        chunk = f.read(min(remaining, 1 << 16))
                        if not chunk:
                            break
                        self.wfile.write(chunk)
                        remaining -= len(chunk)

    return Handler


__all__ = ["RangeServer"]
