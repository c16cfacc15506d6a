"""Typed options: a dataclass field that carries its command-line help and its constraints, and the check of a
value against the field's declared type and those constraints.

A field's type annotation says what a value is (`int`, `float`, `bool`, `str`, `list[...]`, `... | None`); `option()`
adds bounds (`ge`, `gt`, `le`, `lt`, as pydantic's `Field`; on every element of a list), `choices`, the list
length (`nargs`, as argparse), whether a value is required, and what a path must be. `check_value` and
`describe` read only those, so a new option is checked without a line of checking code. The argparse flag of an
option is derived from the same field (`add_option_argument`).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import re
import reprlib
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# What a path option must be: an existing file or folder, or else a Hub id ("input"); an existing folder, or one of
# the option's `keywords` ("folder"); anything but an existing file ("output": the folder is created).
PATH_KINDS = ("input", "folder", "output")

# YAML 1.1 (PyYAML) reads `1e-5` as a string: such a string is taken as the number it writes.
_EXPONENT_NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)[eE][-+]?\d+$")

_SHOW = reprlib.Repr()
_SHOW.maxstring, _SHOW.maxother, _SHOW.maxlist, _SHOW.maxdict, _SHOW.maxlevel = 60, 60, 6, 4, 3


def option(
    default: Any,
    help: str,
    group: str,
    *,
    choices: Sequence[Any] | None = None,
    nargs: int | str | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    required: bool = False,
    path: str | None = None,
    keywords: Sequence[str] = (),
    what: str = "value",
    metavar: str | None = None,
) -> Any:
    """A dataclass field with its help text, `--help` group and constraints (see the module docstring).

    `what` names a choice in messages ("unknown language 'xx'"); `keywords` are values a path option takes as they
    are (`latest`); `required` options may be None in the dataclass (a YAML file may supply them) but not in a
    validated configuration."""
    assert path is None or path in PATH_KINDS, path
    meta = {
        "help": help,
        "group": group,
        "choices": tuple(choices) if choices is not None else None,
        "nargs": nargs,
        "ge": ge,
        "gt": gt,
        "le": le,
        "lt": lt,
        "required": required,
        "path": path,
        "keywords": tuple(keywords),
        "what": what,
        "metavar": metavar,
    }
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class Kind:
    """What a field's annotation declares: the element type, whether it is a list, whether None is allowed."""

    base: type  # bool, int, float or str
    is_list: bool
    optional: bool


@functools.cache
def field_kinds(cls: type) -> dict[str, Kind]:
    """The `Kind` of every field of the dataclass `cls`, from its (string) annotations."""
    hints = typing.get_type_hints(cls)
    kinds = {}
    for f in dataclasses.fields(cls):
        hint, optional = hints[f.name], False
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            optional = len(args) < len(typing.get_args(hint))
            (hint,) = args
        is_list = typing.get_origin(hint) is list
        base = typing.get_args(hint)[0] if is_list else hint
        if base not in (bool, int, float, str):
            raise TypeError(f"{cls.__name__}.{f.name}: unsupported option type {hint!r}")
        kinds[f.name] = Kind(base, is_list, optional)
    return kinds


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def label(name: str) -> str:
    """How a message names an option: its YAML key and its flag."""
    return f"{name} ({flag(name)})"


def show(value: Any) -> str:
    """A value as a message shows it: YAML words for None and booleans, bounded in length."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = _SHOW.repr(value)
    return f"{text} (a string)" if isinstance(value, str) else text


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _bounds(meta: dict[str, Any]) -> str:
    ge, gt, le, lt = (meta[k] for k in ("ge", "gt", "le", "lt"))
    low = (ge, "[") if ge is not None else (gt, "(") if gt is not None else None
    high = (le, "]") if le is not None else (lt, ")") if lt is not None else None
    if low and high:
        return f" in {low[1]}{_number(low[0])}, {_number(high[0])}{high[1]}"
    if low:
        return f" {'>=' if low[1] == '[' else '>'} {_number(low[0])}"
    if high:
        return f" {'<=' if high[1] == ']' else '<'} {_number(high[0])}"
    return ""


def describe(kind: Kind, meta: dict[str, Any]) -> str:
    """What a valid value is, in words: 'an integer >= 1', 'a list of 2 numbers in (0, 1]', 'true or false'."""
    if meta["choices"]:
        one = "one of " + ", ".join(map(str, meta["choices"]))
    elif kind.base is bool:
        one = "true or false"
    else:
        noun = {int: "integer", float: "number", str: "non-empty string"}[kind.base]
        one = ("an " if noun[0] in "aeiou" else "a ") + noun + _bounds(meta)
    if kind.is_list:
        nargs = meta["nargs"]
        count = f"{nargs} " if isinstance(nargs, int) else "one or more " if nargs == "+" else ""
        one = f"a list of {count}values, each {one}"
    if meta["required"]:
        return one
    return one + " (or null)" if kind.optional else one


def _element_ok(value: Any, kind: Kind, meta: dict[str, Any]) -> bool:
    if kind.base is bool:
        return type(value) is bool
    if kind.base is str:
        ok = isinstance(value, str) and value != "" and "\x00" not in value
    elif kind.base is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        try:
            ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        except OverflowError:  # an integer too large for a float
            ok = False
    if not ok:
        return False
    if meta["choices"]:
        return value in meta["choices"]
    ge, gt, le, lt = (meta[k] for k in ("ge", "gt", "le", "lt"))
    return not (
        (ge is not None and value < ge)
        or (gt is not None and value <= gt)
        or (le is not None and value > le)
        or (lt is not None and value >= lt)
    )


def check_value(name: str, value: Any, kind: Kind, meta: dict[str, Any]) -> str | None:
    """None when `value` fits the field; else the problem, naming the key, the value and what is expected."""
    if value is None:
        if meta["required"]:
            return f"{flag(name)} is required (YAML key: {name})"
        if kind.optional:
            return None
    elif kind.is_list:
        nargs = meta["nargs"]
        if isinstance(value, list | tuple) and (
            (isinstance(nargs, int) and len(value) == nargs)
            or (nargs == "+" and value)
            or nargs in (None, "*")
        ):
            bad = [v for v in value if not _element_ok(v, kind, meta)]
            if not bad:
                return None
            if meta["choices"] and all(isinstance(v, str) for v in bad):
                known = ", ".join(map(str, meta["choices"]))
                return f"{label(name)}: unknown {meta['what']} {bad[0]!r} (known: {known})"
    elif _element_ok(value, kind, meta):
        return None
    elif meta["choices"] and isinstance(value, str) and kind.base is str:
        known = ", ".join(map(str, meta["choices"]))
        return f"{label(name)}: unknown {meta['what']} {value!r} (known: {known})"
    return f"{label(name)}: expected {describe(kind, meta)}, got {show(value)}"


def parse_value(value: Any, kind: Kind) -> Any:
    """A value read from YAML, as the field takes it: a number written `1e-5` (a string for YAML 1.1) becomes a
    float; a single string becomes a one-element list for a list option. Anything else is left as it is for
    `check_value` to judge."""
    if kind.is_list:
        if isinstance(value, str):
            value = [value]
        elif isinstance(value, tuple):  # from Python; YAML writes lists
            value = list(value)
        if isinstance(value, list):
            return [parse_value(v, Kind(kind.base, False, False)) for v in value]
        return value
    if kind.base is float and isinstance(value, str) and _EXPONENT_NUMBER.match(value.strip()):
        return float(value)
    return value


def check_path(name: str, value: Any, meta: dict[str, Any]) -> str | None:
    """None when the path option's value can be what its kind says (see PATH_KINDS); else the problem."""
    kind = meta["path"]
    if kind is None or not isinstance(value, str) or value in meta["keywords"]:
        return None
    path = Path(value)  # as the loaders take it: no `~` expansion (a shell does that)
    shown = repr(value) if len(value) <= 500 else _SHOW.repr(value)
    try:
        if kind == "output":
            return f"{label(name)}: {shown} is a file, not a folder" if path.is_file() else None
        if kind == "folder":
            others = "".join(f" or {k!r}" for k in meta["keywords"])
            return (
                None
                if path.is_dir()
                else f"{label(name)}: no folder {shown} (expected an existing folder{others})"
            )
        if path.exists():
            return None
    except OSError as error:  # a name too long for the file system, ...
        return f"{label(name)}: {shown} cannot be a path ({error.strerror or error})"
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(value)
    except HFValidationError:
        return f"{label(name)}: no file or folder {shown}, and it is not a Hub id either"
    return None


def add_option_argument(group: Any, f: dataclasses.Field, kind: Kind) -> None:
    """The argparse flag of one field: `--name VALUE` (a `--name/--no-name` switch for a boolean). The flag
    defaults to "not given" (argparse.SUPPRESS) so that a YAML file can supply the value; `--help` shows the
    built-in default."""
    meta = f.metadata
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    shown = " ".join(map(str, default)) if isinstance(default, list) else default
    kwargs: dict[str, Any] = {
        "dest": f.name,
        "default": argparse.SUPPRESS,
        "help": f"{meta['help']} (default: {shown})",
    }
    if kind.base is bool and not kind.is_list:
        kwargs["action"] = argparse.BooleanOptionalAction
    else:
        kwargs["type"] = kind.base
        if meta["choices"]:
            kwargs["choices"] = meta["choices"]
        if kind.is_list:
            kwargs["nargs"] = meta["nargs"] or "*"
        if meta["metavar"] or not meta["choices"]:
            kwargs["metavar"] = meta["metavar"] or {int: "N", float: "X"}.get(kind.base, "VALUE")
    group.add_argument(flag(f.name), **kwargs)
