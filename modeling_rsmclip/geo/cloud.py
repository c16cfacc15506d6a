"""Reading rasters from the cloud: the GDAL settings, URL signing and retries behind every remote read.

A cloud-optimised GeoTIFF (COG) keeps its header and overviews first and its pixels in tiles, so GDAL's
``/vsicurl/`` (rasterio opens ``https://...``, ``s3://...``, ``gs://...`` and ``az://...`` itself) reads a window with
a few HTTP Range requests instead of downloading the file. How well that goes depends on a handful of GDAL settings,
which the package sets in one place, `cloud_env` (used by `geo.raster.RasterReader` for every remote path):

=====================================  ===============  ==========================================================
setting                                default here     why
=====================================  ===============  ==========================================================
``GDAL_DISABLE_READDIR_ON_OPEN``       ``EMPTY_DIR``    no directory listing of the bucket on open (one request
                                                        instead of many; sidecar files are not looked for)
``CPL_VSIL_CURL_ALLOWED_EXTENSIONS``   ``.tif,.tiff,``  GDAL only probes files with these endings: no requests
                                       ``.jp2,.vrt``    for ``.aux.xml`` / ``.ovr`` sidecars that do not exist
``GDAL_HTTP_MAX_RETRY``                ``4``            HTTP 429 / 5xx answers are retried ...
``GDAL_HTTP_RETRY_DELAY``              ``0.5``          ... after 0.5 s, then twice as long each time (GDAL's own
                                                        back-off, with jitter)
``GDAL_HTTP_MULTIRANGE``               ``YES``          the blocks of one read are fetched in parallel
``GDAL_HTTP_MERGE_CONSECUTIVE_RANGES`` ``YES``          adjacent blocks in one request
``VSI_CACHE``                          ``TRUE``         a per-file cache of what was already fetched (``VSI_CACHE_SIZE``
                                                        bytes, 25 MB by default)
``GDAL_HTTP_CONNECTTIMEOUT``           ``15``           seconds to connect before an attempt counts as failed
``GDAL_HTTP_TIMEOUT``                  ``60``           seconds for a whole request: a stalled server never hangs
                                                        a build
``AWS_NO_SIGN_REQUEST``                ``YES``          public buckets (Sentinel-2 and Landsat on AWS) are read
                                                        without credentials; left unset when AWS credentials are
                                                        configured (``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``, a web
                                                        identity or ``~/.aws/credentials``)
``GDAL_CACHEMAX``                      256 MB           the block cache (GDAL's default is 5% of the RAM)
=====================================  ===============  ==========================================================

A setting the user already chose wins: one in the environment (``export GDAL_HTTP_MAX_RETRY=10``), or in an
enclosing ``rasterio.Env(...)``, or passed as ``options`` here. Catalogs whose asset URLs need a short-lived token
(Microsoft Planetary Computer's SAS tokens, signed S3 URLs) are read through a *signer*: a callable from an href to
the href to open, called just before each open (and again before each retry, so an expired token is renewed); e.g.
``signer=planetary_computer.sign``.

On top of GDAL's retries of each HTTP request, `with_retries` retries a whole open or window read (a refused or
dropped connection, a read GDAL gave up on) with its own back-off, and then raises a `RemoteReadError` that names the
file, the window and the attempts, so that a caller reading many windows can report it and go on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
Signer = Callable[[str], str]

REMOTE_SCHEMES = ("http://", "https://", "s3://", "gs://", "gcs://", "az://", "azure://", "oss://", "/vsi")
_VSI_PREFIX = {
    "http://": "/vsicurl/http://",
    "https://": "/vsicurl/https://",
    "s3://": "/vsis3/",
    "gs://": "/vsigs/",
    "gcs://": "/vsigs/",
    "az://": "/vsiaz/",
    "azure://": "/vsiaz/",
    "oss://": "/vsioss/",
}

# The GDAL settings for cloud reads (see the module docstring for why each one).
CLOUD_GDAL_OPTIONS: dict[str, str] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.jp2,.vrt",
    "GDAL_HTTP_MAX_RETRY": "4",
    "GDAL_HTTP_RETRY_DELAY": "0.5",
    "GDAL_HTTP_MULTIRANGE": "YES",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "VSI_CACHE": "TRUE",
    "GDAL_HTTP_CONNECTTIMEOUT": "15",
    "GDAL_HTTP_TIMEOUT": "60",
    "AWS_NO_SIGN_REQUEST": "YES",
}
DEFAULT_GDAL_CACHE_MB = 256
_AWS_CREDENTIAL_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_PROFILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)


def is_remote(href: str | os.PathLike) -> bool:
    """True for URLs and GDAL virtual file system paths (read through the network settings)."""
    return isinstance(href, str) and href.lower().startswith(REMOTE_SCHEMES)


def vsi_path(href: str) -> str:
    """The GDAL virtual file system path of a URL (``https://a/b.tif`` -> ``/vsicurl/https://a/b.tif``,
    ``s3://bucket/key`` -> ``/vsis3/bucket/key``); other paths unchanged."""
    for scheme, prefix in _VSI_PREFIX.items():
        if href.lower().startswith(scheme):
            return prefix + href[len(scheme) :]
    return href


def _aws_credentials_configured() -> bool:
    if any(os.environ.get(name) for name in _AWS_CREDENTIAL_VARIABLES):
        return True
    shared = os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or Path.home() / ".aws" / "credentials"
    return Path(shared).is_file()


def _user_settings() -> dict[str, str]:
    """GDAL settings the user chose: an enclosing ``rasterio.Env``, then the process environment."""
    import rasterio

    chosen: dict[str, str] = {}
    if rasterio.env.hasenv():
        chosen.update({str(k).upper(): str(v) for k, v in rasterio.env.getenv().items()})
    return chosen


def gdal_options(options: dict[str, Any] | None = None, *, remote: bool = True) -> dict[str, Any]:
    """The GDAL settings the package adds for a read: `CLOUD_GDAL_OPTIONS` (when ``remote``) and the block cache cap,
    less whatever the user already set (environment or an enclosing ``rasterio.Env``), plus ``options`` (which win
    over everything)."""
    wanted: dict[str, Any] = {"GDAL_CACHEMAX": DEFAULT_GDAL_CACHE_MB * 2**20}
    if remote:
        wanted.update(CLOUD_GDAL_OPTIONS)
        if _aws_credentials_configured():
            del wanted["AWS_NO_SIGN_REQUEST"]
    user = _user_settings()
    result = {k: v for k, v in wanted.items() if k not in os.environ and k not in user}
    result.update({str(k).upper(): v for k, v in (options or {}).items()})
    return result


def cloud_env(
    options: dict[str, Any] | None = None, *, remote: bool = True
) -> contextlib.AbstractContextManager:
    """A ``rasterio.Env`` with `gdal_options` (or nothing to add: a null context)."""
    import rasterio

    settings = gdal_options(options, remote=remote)
    return rasterio.Env(**settings) if settings else contextlib.nullcontext()


# ------------------------------------------------------------------------------------------------------ retries
@dataclass(frozen=True)
class RetryPolicy:
    """How often a whole open or window read is tried (GDAL also retries each HTTP request, see
    ``GDAL_HTTP_MAX_RETRY``): ``attempts`` in all, waiting ``delay`` seconds after the first failure and
    ``backoff`` times longer after each next one."""

    attempts: int = 3
    delay: float = 1.0
    backoff: float = 2.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {self.attempts}")
        if self.delay < 0 or self.backoff < 1:
            raise ValueError(f"delay must be >= 0 and backoff >= 1, got {self.delay} and {self.backoff}")

    def delays(self) -> Iterator[float]:
        """The waits between attempts (``attempts - 1`` of them)."""
        wait = self.delay
        for _ in range(self.attempts - 1):
            yield wait
            wait *= self.backoff


DEFAULT_RETRY = RetryPolicy()


class RemoteReadError(OSError):
    """An open or a window read that still failed after its retries. ``href``, ``window`` (``(col, row, width,
    height)`` or None for the open), ``attempts`` and ``reason`` (the last error) say which and why."""

    def __init__(
        self, href: str, reason: str, *, window: tuple[int, int, int, int] | None = None, attempts: int = 1
    ) -> None:
        self.href, self.reason, self.window, self.attempts = href, reason, window, attempts
        where = f"window {list(window)} of {href}" if window is not None else href
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        super().__init__(f"cannot read {where}{tries}: {reason}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "href": self.href,
            "window": list(self.window) if self.window is not None else None,
            "attempts": self.attempts,
            "error": self.reason,
        }


def error_reason(err: BaseException) -> str:
    """The most telling message of a GDAL / rasterio error: rasterio's "Read failed. See previous exception" points
    at a chained error that holds GDAL's own message."""
    messages = []
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current).strip()
        if text and "see previous exception" not in text.lower():
            messages.append(text)
        current = current.__cause__ or current.__context__
    return "; ".join(dict.fromkeys(messages)) or type(err).__name__


class _NetworkMessages(logging.Handler):
    """Collects GDAL's warnings about HTTP answers and connections (rasterio logs them on ``rasterio._err``): the
    error GDAL finally raises often says only that a block came back empty."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if "HTTP" in text or "CURL" in text or "curl" in text:
            self.messages.append(re.sub(r"^CPLE_\w+:", "", text).split(". Retrying")[0].strip())


@contextlib.contextmanager
def _network_messages() -> Iterator[_NetworkMessages]:
    handler = _NetworkMessages()
    logger = logging.getLogger("rasterio._err")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def with_retries(
    action: Callable[[int], T],
    href: str,
    *,
    retry: RetryPolicy = DEFAULT_RETRY,
    window: tuple[int, int, int, int] | None = None,
    retry_on: tuple[type[BaseException], ...] = (OSError,),
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``action(attempt)`` (attempt counted from 0) until it returns, waiting between failures as ``retry`` says;
    then a `RemoteReadError` naming ``href`` and ``window``. Errors not in ``retry_on`` pass through at once."""
    delays = retry.delays()
    for attempt in range(retry.attempts):
        with _network_messages() as network:
            try:
                return action(attempt)
            except retry_on as err:
                if isinstance(err, RemoteReadError):
                    raise
                last = err
                heard = network.messages[-1:]
        wait = next(delays, None)
        if wait is None:
            break
        sleep(wait)
    reason = error_reason(last)
    if heard and heard[0] not in reason:
        reason = f"{heard[0]}; {reason}"
    raise RemoteReadError(href, reason, window=window, attempts=retry.attempts) from last


def load_signer(spec: str) -> Signer:
    """The signer named ``"module:function"`` (e.g. ``"planetary_computer:sign"``), imported; a ValueError or the
    ImportError names what is missing."""
    import importlib

    module_name, _, attribute = str(spec).partition(":")
    if not module_name or not attribute:
        raise ValueError(f"a signer is given as module:function (e.g. planetary_computer:sign), got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ImportError(f"cannot import the signer's module {module_name!r} ({spec}): {err}") from err
    signer = module
    for part in attribute.split("."):
        signer = getattr(signer, part, None)
        if signer is None:
            raise ValueError(f"{module_name} has no {attribute!r} (signer {spec!r})")
    if not callable(signer):
        raise ValueError(f"the signer {spec!r} is not callable")
    return signer


def uncached(href: str) -> dict[str, str]:
    """GDAL settings that make ``href`` be fetched again instead of answered from GDAL's cache of earlier answers
    (GDAL remembers that a URL failed; a retry must not believe it)."""
    return {"CPL_VSIL_CURL_NON_CACHED": vsi_path(href)} if is_remote(href) else {}


__all__ = [
    "CLOUD_GDAL_OPTIONS",
    "DEFAULT_GDAL_CACHE_MB",
    "DEFAULT_RETRY",
    "RemoteReadError",
    "RetryPolicy",
    "Signer",
    "cloud_env",
    "error_reason",
    "gdal_options",
    "is_remote",
    "load_signer",
    "uncached",
    "vsi_path",
    "with_retries",
]
