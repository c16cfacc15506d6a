"""The package's one lazy-import mechanism.

Every sub-package exports its public names through `lazy_exports`, so ``import modeling_rsmclip.index`` (or the
``rsmclip`` command building its parser) imports none of torch, transformers, faiss, rasterio or gradio until a name
that needs them is used. `after_import` runs a callback once a module has been imported, by whoever imports it: the
package uses it to register the ``"rsmclip"`` model type with transformers' Auto classes at the moment transformers'
auto module is loaded, instead of importing transformers (and torch) itself on ``import modeling_rsmclip``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import threading
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any


def lazy_exports(
    module_name: str, exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for a module whose public names live in submodules, imported on first use.

    ``exports`` maps each name to the module that defines it, relative (``".build"``) or absolute. Use as::

        __getattr__, __dir__ = lazy_exports(__name__, {"build_index": ".build", ...})
        __all__ = sorted(_EXPORTS)
    """
    module = sys.modules[module_name]

    def __getattr__(name: str) -> Any:
        target = exports.get(name)
        if target is None:
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(target, module_name), name)
        setattr(module, name, value)  # later look-ups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(module), *exports})

    return __getattr__, __dir__


class _AfterImportFinder(importlib.abc.MetaPathFinder):
    """A meta-path finder that finds nothing itself. While callbacks wait, it wraps the loader of every module of
    a watched package (e.g. ``transformers``) to know which of them are executing; when the outermost of those
    imports has finished and the module a callback waits for is loaded, the callback runs.

    Running at the end of the outermost import, not right after the awaited module, matters: transformers loads its
    Auto module in the middle of importing other modules (``processing_utils``, ``modeling_utils``, a model's
    ``modeling_*``), and a callback that imports classes from a module still executing would fail.
    """

    def __init__(self) -> None:
        self.pending: list[
            tuple[tuple[str, ...], str, Callable[[ModuleType], None]]
        ] = []  # (packages, module, fn)
        self.executing: set[str] = set()
        self.lock = threading.RLock()

    def watches(self, fullname: str) -> bool:
        return any(
            fullname == package or fullname.startswith(package + ".")
            for packages, _, _ in self.pending
            for package in packages
        )

    def find_spec(
        self, fullname: str, path: Any, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        if not self.watches(fullname):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is None:
                continue
            if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                spec.loader = _TrackingLoader(spec.loader, self)
            return spec
        return None

    def started(self, name: str) -> None:
        with self.lock:
            self.executing.add(name)

    def finished(self, name: str) -> None:
        with self.lock:
            self.executing.discard(name)
        self.run_ready()

    def run_ready(self) -> None:
        while True:
            with self.lock:
                if self.executing:
                    return
                ready = next((entry for entry in self.pending if entry[1] in sys.modules), None)
                if ready is None:
                    if not self.pending and self in sys.meta_path:
                        sys.meta_path.remove(self)
                    return
                self.pending.remove(ready)
            ready[2](sys.modules[ready[1]])


class _TrackingLoader(importlib.abc.Loader):
    def __init__(self, loader: Any, finder: _AfterImportFinder) -> None:
        self.loader = loader
        self.finder = finder

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.finder.started(module.__name__)
        try:
            self.loader.exec_module(module)
        finally:
            self.finder.finished(module.__name__)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


_FINDER = _AfterImportFinder()


def after_import(
    module_name: str, callback: Callable[[ModuleType], None], settle: tuple[str, ...] = ()
) -> None:
    """Call ``callback(module)`` once ``module_name`` has been imported, by whoever imports it, and the import that
    loaded it has finished: the outermost import of any module of its top-level package or of the packages in
    ``settle`` (those whose modules the callback imports). Now, if that is so already."""
    packages = (module_name.partition(".")[0], *settle)
    with _FINDER.lock:
        _FINDER.pending.append((packages, module_name, callback))
        if _FINDER not in sys.meta_path:
            sys.meta_path.insert(0, _FINDER)
    _FINDER.run_ready()
