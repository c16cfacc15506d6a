"""Atomic training checkpoints: `accelerator.save_state` plus the state of named modules that live outside
`prepare` (the EMA teacher, the DINO loss and its center) and the loop position.

A checkpoint is written to `checkpoint-N.tmp` and renamed to `checkpoint-N` only once every file is on disk, so a
crash mid-write leaves the previous checkpoints untouched and usable; a leftover `.tmp` folder is never loaded.
The named modules are passed as keywords, as DINO's `restart_from_checkpoint(path, teacher=..., dino_loss=...)`
takes them (a new piece of state changes no signature); their tensors are stored in one safetensors file, each
under its module's prefix (`teacher.`, `dino_`: the DINO center is `dino_center`), and the loop position as JSON
(no pickles of ours).

A checkpoint damaged afterwards (a truncated `model.safetensors`, a corrupt `trainer_state.json`, ...) is found by
`check_checkpoint` before anything is restored from it; resuming from the latest checkpoint then warns, naming the
file, and falls back to the previous valid one (`resume_latest_checkpoint`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

logger = logging.getLogger(__name__)

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
TEACHER_FILE = "teacher.safetensors"  # the named modules' tensors (the teacher's, the DINO center)
STATE_FILE = "trainer_state.json"
# Key prefix of each named module's tensors in TEACHER_FILE; another name `x` is stored under `x.`.
STATE_PREFIXES = {"teacher": "teacher.", "dino_loss": "dino_"}


def _prefix(name: str) -> str:
    return STATE_PREFIXES.get(name, f"{name}.")


def _module_tensors(modules: dict[str, nn.Module | None]) -> dict[str, torch.Tensor]:
    """Every tensor of the named modules' state dicts, on the CPU, under their prefixes."""
    tensors: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        if module is not None:
            prefix = _prefix(name)
            tensors.update(
                {prefix + k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
            )
    return tensors


def _load_module_tensors(path: Path, modules: dict[str, nn.Module | None]) -> None:
    """Restore each named module (strictly: every tensor it has, nothing else) from `path/TEACHER_FILE`."""
    modules = {name: module for name, module in modules.items() if module is not None}
    if not modules:
        return
    tensors_path = path / TEACHER_FILE
    if not tensors_path.is_file():
        raise FileNotFoundError(
            f"{path} has no {TEACHER_FILE}: it was saved without distillation and cannot resume a run with it"
        )
    tensors = load_file(str(tensors_path), device="cpu")
    for name, module in modules.items():
        prefix = _prefix(name)
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        if not state and module.state_dict():
            raise KeyError(f"{tensors_path} has no {name} state (no {prefix}* tensor)")
        module.load_state_dict(state, strict=True)


@dataclass
class TrainerState:
    """Where the loop stands (saved with every checkpoint)."""

    step: int = 0  # optimiser steps done
    epoch: int = 0  # current epoch
    batches_in_epoch: int = 0  # batches of the current epoch already consumed (on each process)
    nonfinite_steps: int = 0  # skipped steps in total
    consecutive_nonfinite: int = 0
    samples_seen: int = 0  # image-caption pairs over all processes
    log_history: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> TrainerState:
        return cls(**json.loads(text))


class CorruptCheckpointError(ValueError):
    """A checkpoint that cannot be restored; `file` is the file at fault (or the folder)."""

    def __init__(self, file: str | Path, reason: str) -> None:
        super().__init__(f"{file}: {reason}")
        self.file = Path(file)


def check_checkpoint(path: str | Path) -> None:
    """Check that every file of ours and every safetensors file of a checkpoint is readable, before any state is
    restored from it: `trainer_state.json` and `position_*.json` parse into what the loop saved, and each
    `*.safetensors` file's header covers the file exactly (a truncated file does not). Raises
    `CorruptCheckpointError` naming the first bad file."""
    path = Path(path)
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise CorruptCheckpointError(state_file, "missing: the checkpoint is incomplete")
    try:
        TrainerState.from_json(state_file.read_text(encoding="utf-8"))
    except (ValueError, TypeError, UnicodeDecodeError) as error:
        raise CorruptCheckpointError(state_file, f"not a trainer state ({error})") from error
    for position_file in sorted(path.glob("position_*.json")):
        try:
            position = json.loads(position_file.read_text(encoding="utf-8"))
            int(position["epoch"]), int(position["batches_in_epoch"])
        except (ValueError, TypeError, KeyError, UnicodeDecodeError) as error:
            raise CorruptCheckpointError(position_file, f"not a loop position ({error!r})") from error
    if not any(path.glob("model*.safetensors")) and not any(path.glob("pytorch_model*.bin")):
        raise CorruptCheckpointError(
            path / "model.safetensors", "missing: the checkpoint has no model weights"
        )
    for weights in sorted(path.rglob("*.safetensors")):
        try:
            with safe_open(str(weights), framework="pt") as handle:
                handle.keys()
        except (SafetensorError, OSError) as error:
            raise CorruptCheckpointError(weights, f"unreadable safetensors file ({error})") from error


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def list_checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under `root`, oldest first (`.tmp` folders and folders without a state excluded)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = CHECKPOINT_RE.match(child.name)
        if match and child.is_dir() and (child / STATE_FILE).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(root: str | Path) -> Path | None:
    checkpoints = list_checkpoints(root)
    return checkpoints[-1][1] if checkpoints else None


def save_checkpoint(
    accelerator: Accelerator,
    root: str | Path,
    state: TrainerState,
    *,
    total_limit: int | None = None,
    extra_files: dict[str, str] | None = None,
    **modules: nn.Module | None,
) -> Path:
    """Write `root/checkpoint-<step>` atomically on every process (collective: all processes must call it).

    `modules` are the named modules outside `accelerator.prepare` whose state is saved too (`teacher=`,
    `dino_loss=`; None is skipped); `total_limit` keeps only the newest checkpoints; `extra_files` maps a file
    name to its text."""
    root = Path(root)
    final = root / f"checkpoint-{state.step}"
    tmp = root / f"checkpoint-{state.step}.tmp"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    # Each process's own place in its data (they differ only when a stream is split between processes).
    position = {"epoch": state.epoch, "batches_in_epoch": state.batches_in_epoch}
    (tmp / f"position_{accelerator.process_index}.json").write_text(json.dumps(position), encoding="utf-8")
    if accelerator.is_main_process:
        tensors = _module_tensors(modules)
        if tensors:
            save_file(tensors, str(tmp / TEACHER_FILE))
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        # The state file is written last: its presence marks a complete checkpoint.
        with open(tmp / STATE_FILE, "w", encoding="utf-8") as handle:
            handle.write(state.to_json())
            handle.flush()
            os.fsync(handle.fileno())
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():  # left by an earlier run that got further: replace it
            old = root / f"checkpoint-{state.step}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(root)
        if total_limit is not None and total_limit > 0:
            for _, path in list_checkpoints(root)[:-total_limit]:
                shutil.rmtree(path, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, path: str | Path, **modules: nn.Module | None) -> TrainerState:
    """Restore model, optimiser, scheduler, scaler and RNG states (accelerate) and the named `modules` (`teacher=`,
    `dino_loss=`, as saved by `save_checkpoint`; None is skipped).

    The checkpoint is checked first (`check_checkpoint`); a damaged one raises `CorruptCheckpointError` naming the
    file, before anything is restored when the damage is in a JSON or safetensors file.
    """
    path = Path(path)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {STATE_FILE})")
    check_checkpoint(path)
    try:
        accelerator.load_state(str(path))
    except Exception as error:  # a damaged pickle of accelerate's (optimizer.bin, random_states_0.pkl, ...)
        missing = getattr(error, "filename", None) if isinstance(error, FileNotFoundError) else None
        reason = f"{missing} is missing" if missing else repr(error)
        raise CorruptCheckpointError(path, f"accelerate could not restore it ({reason})") from error
    _load_module_tensors(path, modules)
    state = TrainerState.from_json((path / STATE_FILE).read_text(encoding="utf-8"))
    position_file = path / f"position_{accelerator.process_index}.json"
    if position_file.is_file():
        position = json.loads(position_file.read_text(encoding="utf-8"))
        state.epoch, state.batches_in_epoch = position["epoch"], position["batches_in_epoch"]
    return state


def resume_latest_checkpoint(
    accelerator: Accelerator, root: str | Path, **modules: nn.Module | None
) -> tuple[Path | None, TrainerState]:
    """Restore the newest checkpoint under `root` that can be restored; `(None, TrainerState())` when there is none.

    A damaged checkpoint is skipped with a warning naming the file, and the previous one is tried. When a
    checkpoint failed after accelerate had started restoring it and no older one can be restored, the model is
    left half-restored: that raises instead of starting from scratch.
    """
    half_restored = []
    candidates = [path for _, path in reversed(list_checkpoints(root))]
    for index, path in enumerate(candidates):
        try:
            return path, load_checkpoint(accelerator, path, **modules)
        except CorruptCheckpointError as error:
            if error.file == path:
                half_restored.append(str(error))
            fallback = candidates[index + 1] if index + 1 < len(candidates) else "no earlier checkpoint"
            logger.warning("cannot resume from %s: %s; falling back to %s", path, error, fallback)
    if half_restored:
        raise RuntimeError(
            "no checkpoint could be restored, and restoring one failed part-way: " + "; ".join(half_restored)
        )
    return None, TrainerState()
