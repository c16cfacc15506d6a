"""One error style for every command line entry point.

A user error (a missing file, a bad option value, input the program cannot use) prints one line,
``error: <message>``, on stderr and exits with status 2, without a traceback. Commands raise `UserError` (or the
usual `ValueError` / `OSError` family, which library code raises with a message naming the file or value); the
`rsmclip` command and the stand-alone scripts run every sub-command through `run_command`, so a new sub-command
gets this behaviour by registering itself in `cli.SUBCOMMAND_MODULES`. Set ``RSMCLIP_DEBUG=1`` to see the
traceback instead.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable
from typing import Any

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class UserError(ValueError):
    """A mistake in what the user asked for; the CLI prints ``error: <message>`` and exits with status 2."""


# What counts as a user error at the command line. ValueError and OSError are what this package (and transformers,
# huggingface_hub, PIL) raise for bad input, with messages that name the file or value; ImportError is a missing
# optional extra, whose message names the `pip install` to run; programming errors (TypeError, KeyError,
# AttributeError, ...) keep their traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, ValueError, OSError, ImportError)

# Errors that libraries raise on damaged or unreadable data and that derive from none of the above, named by class
# (matched along the error's class hierarchy, so that none of these libraries is imported here). Commands catch them
# where they open the file, to name it; this list is the net under those places, so that a damaged file is always
# reported as one line. Only data errors belong here, never a library's programming errors.
LIBRARY_DATA_ERRORS: frozenset[str] = frozenset(
    {
        "safetensors._safetensors_rust.SafetensorError",  # damaged weights
        "safetensors_rust.SafetensorError",
        "rasterio.errors.RasterioError",  # GDAL/rasterio: unreadable or truncated rasters, bad CRS or window
        "rasterio._err.CPLE_BaseError",  # GDAL's own errors (CPLE_AppDefinedError on a truncated TIFF, ...)
        "yaml.error.YAMLError",  # YAML syntax
        "PIL.Image.DecompressionBombError",  # an image over the pixel limit
        "pyarrow.lib.ArrowException",  # Arrow / Parquet files
        "datasets.exceptions.DatasetsError",  # a damaged or incomplete datasets folder
        "google.protobuf.message.DecodeError",  # a damaged ONNX graph read by onnx
        "onnxruntime.capi.onnxruntime_pybind11_state.Fail",  # ONNX Runtime: damaged or wrong graphs
        "onnxruntime.capi.onnxruntime_pybind11_state.InvalidGraph",
        "onnxruntime.capi.onnxruntime_pybind11_state.InvalidProtobuf",
        "onnxruntime.capi.onnxruntime_pybind11_state.NoSuchFile",
    }
)


def is_user_error(error: BaseException) -> bool:
    """Whether the command line reports ``error`` as one ``error:`` line (`USER_ERRORS` and `LIBRARY_DATA_ERRORS`)."""
    if isinstance(error, USER_ERRORS):
        return True
    return any(f"{cls.__module__}.{cls.__qualname__}" in LIBRARY_DATA_ERRORS for cls in type(error).__mro__)


def one_line(error: BaseException) -> str:
    """The error's message on one line: the lines of a multi-line message (e.g. a list of problems) joined by "; ".

    A library's data error (`LIBRARY_DATA_ERRORS`) is prefixed with its class name, which says which library failed.
    """
    text = str(error).strip() or type(error).__name__
    if not isinstance(error, USER_ERRORS) and type(error).__name__ not in text:
        text = f"{type(error).__name__}: {text}"
    out = ""
    for line in text.splitlines():
        line = line.strip().removeprefix("- ").removeprefix("* ").strip()
        if line:
            out = line if not out else out + (" " if out.endswith(":") else "; ") + line
    return out


def report_user_error(error: BaseException | str) -> int:
    """Print ``error: <message>`` on stderr; returns the exit status for a user error (2)."""
    message = error if isinstance(error, str) else one_line(error)
    # A message quoting undecodable input (a non-UTF-8 file name) is printed with escapes, never fails to print.
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    print(f"error: {message}", file=sys.stderr, flush=True)
    return EXIT_USER_ERROR


def run_command(func: Callable[[argparse.Namespace], Any], args: argparse.Namespace) -> int:
    """Run a sub-command's function; a user error becomes one ``error:`` line and exit status 2."""
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except Exception as error:
        if os.environ.get("RSMCLIP_DEBUG") or not is_user_error(error):
            raise
        return report_user_error(error)


def cli_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse ``type=`` from a parser function that raises `ValueError`: argparse then shows the function's own
    message (``error: argument --bbox: bbox south (5.0) is north of its north (1.0)``) instead of a generic one."""

    def convert(value: str) -> Any:
        try:
            return parse(value)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the same one-line error style (``error: <message> (see PROG --help)``, exit status 2).

    Sub-parsers created with ``add_subparsers().add_parser(...)`` are of this class too.

    Values that start with a minus sign and are numbers or comma-separated numbers (``--bbox -9.5,38.6,-9.0,38.9``,
    ``--stretch -25,0``) are read as values, not as unknown options: every area west of Greenwich or south of the
    equator starts so.
    """

    # argparse's own rule accepts a single negative number only.
    NEGATIVE_NUMBERS = re.compile(
        r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?(\s*,\s*-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?)*$"
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = self.NEGATIVE_NUMBERS

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        args = sys.argv[1:] if args is None else list(args)
        for value in args:
            if isinstance(value, str) and not _is_utf8(value):
                shown = value.encode("utf-8", "surrogateescape")
                self.error(
                    f"the argument {shown!r} is not UTF-8 text: give texts, labels and file names in UTF-8 (rename "
                    "such a file, or convert the text with iconv)"
                )
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> Any:
        message = message.encode("utf-8", "backslashreplace").decode("utf-8")
        self.exit(EXIT_USER_ERROR, f"error: {message} (see {self.prog} --help)\n")


def _is_utf8(text: str) -> bool:
    """False for a command-line argument holding bytes that are not UTF-8 (Python keeps them as surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


__all__ = [
    "ArgumentParser",
    "EXIT_USER_ERROR",
    "LIBRARY_DATA_ERRORS",
    "USER_ERRORS",
    "UserError",
    "cli_type",
    "is_user_error",
    "report_user_error",
    "run_command",
]
