"""Locating and reading an OpenCLIP checkpoint: a local folder or file, or a Hugging Face Hub repository.

An OpenCLIP checkpoint folder holds `open_clip_config.json` (`model_cfg`, `preprocess_cfg`) and the weights,
`open_clip_model.safetensors` or, for older uploads, `open_clip_pytorch_model.bin`. Many remote-sensing models are
published instead as a bare state dict (`RemoteCLIP-ViT-B-32.pt`, `ckpt/RS5M_ViT-B-32.pt`, an OpenCLIP training
checkpoint `epoch_20.pt`) to load into one of OpenCLIP's built-in architectures: name the file (`weights_file`) and
the architecture (`open_clip_model`), or let a file of the known-model table (`modeling_rsmclip.known_models`) be
recognised by its name. A `.bin` / `.pt` file is read with `torch.load(weights_only=True)` and nothing else: a
pickle that needs arbitrary code is refused.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ..known_models import KnownModel, find_known_checkpoint_file
from .open_clip_keys import ConversionError

CONFIG_FILE = "open_clip_config.json"
SAFETENSORS_FILE = "open_clip_model.safetensors"
BIN_FILE = "open_clip_pytorch_model.bin"
WEIGHT_FILES = (SAFETENSORS_FILE, BIN_FILE)
# Tokenizer files an OpenCLIP repository may carry next to the weights (then they win over hf_tokenizer_name).
TOKENIZER_FILES = (
    "tokenizer_config.json",
    "tokenizer.json",
    "special_tokens_map.json",
    "sentencepiece.bpe.model",
    "added_tokens.json",
)
CARD_FILE = "README.md"
HF_HUB_PREFIX = "hf-hub:"
# Extensions of bare state dicts and training checkpoints (looked for when a folder has no standard weights file).
CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class CheckpointNotFoundError(ConversionError):
    """The checkpoint is neither on disk nor in the Hugging Face cache, and cannot be downloaded (offline)."""


@dataclass
class OpenCLIPCheckpoint:
    """An OpenCLIP checkpoint read into memory, with where it came from."""

    folder: Path
    model_cfg: dict[str, Any]
    preprocess_cfg: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    weights_file: Path
    weights_sha256: str
    source: str
    repo_id: str | None = None
    revision: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def has_tokenizer(self) -> bool:
        return (self.folder / "tokenizer_config.json").is_file()


def parse_source(source: str) -> tuple[str, str]:
    """Classify `source`: `("local", path)` for an existing folder, `("hub", repo_id)` for `hf-hub:org/name` or
    `org/name`. Anything else is an error (a weights file is named with `weights_file` inside its folder)."""
    if source.startswith(HF_HUB_PREFIX):
        repo_id = source[len(HF_HUB_PREFIX) :]
        if not _REPO_ID_RE.match(repo_id):
            raise ConversionError(f"{source!r}: expected hf-hub:org/name")
        return "hub", repo_id
    path = Path(source).expanduser()
    if path.is_dir():
        return "local", str(path)
    if path.exists():
        raise ConversionError(
            f"{source}: expected an OpenCLIP checkpoint folder, got a file (for a weights file, convert its folder "
            f"with --weights {path.name})"
        )
    if _REPO_ID_RE.match(source):
        return "hub", source
    raise ConversionError(f"{source}: no such folder, and not a Hub id (org/name or hf-hub:org/name)")


def _offline(hub_kwargs: dict[str, Any]) -> bool:
    from huggingface_hub import constants

    return bool(hub_kwargs.get("local_files_only")) or bool(constants.HF_HUB_OFFLINE)


def _download(repo_id: str, filename: str, required: bool = True, **hub_kwargs: Any) -> Path | None:
    """Download one file of a Hub repository into the cache; None when the repository has no such file (or, for a
    file that is not `required`, when it is not cached and the Hub is offline)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id, filename, **hub_kwargs))
    except LocalEntryNotFoundError:  # (a subclass of EntryNotFoundError) not cached and not downloadable
        if hub_kwargs.get("local_files_only") or (not required and _offline(hub_kwargs)):
            return None
        raise
    except EntryNotFoundError:  # the repository has no such file
        return None


def download_open_clip_repo(
    repo_id: str,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    weights_file: str | None = None,
) -> Path:
    """Fetch the files of an OpenCLIP Hub repository that conversion needs; returns the snapshot folder.

    Only one weights file is downloaded: `weights_file` when given (a path in the repository), else safetensors
    when present, else the `.bin`; plus `open_clip_config.json`, the tokenizer files and the model card when the
    repository has them (older OpenCLIP uploads and bare checkpoints have no config file: their architecture is one
    of OpenCLIP's built-in model configs). Raises `CheckpointNotFoundError` when the files are not in the cache and
    the Hub cannot be reached.
    """
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    kwargs: dict[str, Any] = {
        "revision": revision,
        "cache_dir": cache_dir,
        "token": token,
        "local_files_only": local_files_only,
    }
    where = "in the local Hugging Face cache (offline)" if _offline(kwargs) else "in the repository"
    try:
        if weights_file is not None:
            weights = _download(repo_id, weights_file, **kwargs)
            if weights is None:
                raise CheckpointNotFoundError(f"hf-hub:{repo_id}: no file {weights_file} {where}")
        else:
            weights = _download(repo_id, SAFETENSORS_FILE, **kwargs) or _download(repo_id, BIN_FILE, **kwargs)
            if weights is None:
                raise CheckpointNotFoundError(
                    f"hf-hub:{repo_id}: neither {SAFETENSORS_FILE} nor {BIN_FILE} {where}; is it an OpenCLIP "
                    f"checkpoint?"
                )
        for name in (CONFIG_FILE, *TOKENIZER_FILES, CARD_FILE):
            _download(repo_id, name, required=False, **kwargs)
    except RepositoryNotFoundError as error:
        raise ConversionError(
            f"hf-hub:{repo_id}: repository not found (or private without a token)"
        ) from error
    except LocalEntryNotFoundError as error:
        raise CheckpointNotFoundError(
            f"hf-hub:{repo_id}: cannot download (offline, or the Hub is unreachable) and the files are not in the "
            f"local cache: {error}"
        ) from error
    except HfHubHTTPError as error:
        raise ConversionError(f"hf-hub:{repo_id}: download failed: {error}") from error
    # The snapshot folder: the weights file's path without its path in the repository.
    return weights.parents[len(Path(weights_file or weights.name).parts) - 1]


def builtin_open_clip_config(
    model_name: str | None = None, repo_id: str | None = None
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """`(model name, model_cfg, preprocess_cfg)` from OpenCLIP's built-in registry (needs `open_clip`).

    By architecture name (e.g. "xlm-roberta-base-ViT-B-32"), or by the Hub repository of one of OpenCLIP's
    pretrained tags (e.g. "laion/CLIP-ViT-B-32-xlm-roberta-base-laion5B-s13B-b90k"), for checkpoints uploaded
    without an `open_clip_config.json`.
    """
    try:
        import open_clip
    except ImportError as error:
        raise ImportError(
            "this checkpoint has no open_clip_config.json; reading OpenCLIP's built-in model configs needs the "
            'open_clip_torch package (pip install "rsmclip[convert]")'
        ) from error
    preprocess_cfg: dict[str, Any] = {}
    quick_gelu = False
    if model_name is None and repo_id is not None:
        for name, tag in open_clip.list_pretrained():
            pretrained = open_clip.get_pretrained_cfg(name, tag)
            if pretrained.get("hf_hub", "").rstrip("/") == repo_id:
                model_name = name
                preprocess_cfg = {
                    k: pretrained[k]
                    for k in ("mean", "std", "interpolation", "resize_mode")
                    if k in pretrained
                }
                # OpenCLIP switches the architecture to QuickGELU for such tags (e.g. OpenAI's weights).
                quick_gelu = bool(pretrained.get("quick_gelu", False))
                break
    if model_name is None:
        raise ConversionError(
            f"no {CONFIG_FILE} and no OpenCLIP pretrained tag for {repo_id or 'this folder'}: name its "
            f"architecture with --open-clip-model (e.g. xlm-roberta-base-ViT-B-32)"
        )
    model_cfg = open_clip.get_model_config(model_name)
    if model_cfg is None:
        raise ConversionError(f"{model_name!r} is not one of OpenCLIP's built-in model configs")
    model_cfg = dict(model_cfg)
    if quick_gelu:
        model_cfg["quick_gelu"] = True
    return model_name, model_cfg, preprocess_cfg


def read_open_clip_config(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """`(model_cfg, preprocess_cfg)` of an `open_clip_config.json` (a bare model config is accepted as OpenCLIP
    does)."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConversionError(f"{path}: not found; an OpenCLIP checkpoint folder has {CONFIG_FILE}") from None
    except json.JSONDecodeError as error:
        raise ConversionError(f"{path}: invalid JSON ({error})") from error
    if not isinstance(config, dict):
        raise ConversionError(f"{path}: expected a JSON object")
    model_cfg = config.get("model_cfg", config)
    if not all(k in model_cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise ConversionError(f"{path}: model_cfg needs embed_dim, vision_cfg and text_cfg")
    return dict(model_cfg), dict(config.get("preprocess_cfg", {}))


def load_open_clip_weights(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of an OpenCLIP weights file (safetensors, or a `.bin` read with `weights_only=True`).

    A `{"state_dict": ...}` wrapper and a DistributedDataParallel `module.` prefix are removed, as OpenCLIP does.
    """
    if path.suffix == ".safetensors":
        try:
            state_dict: Any = load_file(str(path), device="cpu")
        except Exception as error:  # safetensors raises its own error types for corrupt headers
            raise ConversionError(f"{path}: cannot read safetensors file: {error}") from error
    else:
        try:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # pickle / zip errors, including refused globals
            raise ConversionError(
                f"{path}: cannot read with torch.load(weights_only=True) (corrupt, or a pickle that needs "
                f"arbitrary code, which is refused): {error}"
            ) from error
        if isinstance(state_dict, dict) and isinstance(state_dict.get("state_dict"), dict):
            state_dict = state_dict["state_dict"]
    if not isinstance(state_dict, dict) or not state_dict:
        raise ConversionError(f"{path}: expected a non-empty mapping of tensor names to tensors")
    not_tensors = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ConversionError(f"{path}: entries that are not tensors: {sorted(not_tensors)[:20]}")
    if all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module.") :]: v for k, v in state_dict.items()}
    return dict(state_dict)


def sha256_of(path: Path, chunk_size: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _known_checkpoints_in(folder: Path) -> list[tuple[Path, KnownModel]]:
    """The files under `folder` that are checkpoint files of the known-model table (`hf download REPO FILE
    --local-dir FOLDER` keeps the file's path in the repository)."""
    found = []
    for path in sorted(folder.rglob("*")):
        if path.suffix in CHECKPOINT_SUFFIXES and path.is_file() and ".cache" not in path.parts:
            known = find_known_checkpoint_file(path.relative_to(folder).as_posix())
            if known is not None:
                found.append((path, known))
    return found


def _find_weights(folder: Path, weights_file: str | None) -> tuple[Path, KnownModel | None]:
    """The weights file of a local checkpoint folder, and the known model it is (if its file name says so)."""
    if weights_file is not None:
        path = folder / weights_file
        if not path.is_file():
            raise ConversionError(f"{path}: no such weights file")
        return path, find_known_checkpoint_file(weights_file)
    standard = next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)
    if standard is not None:
        return standard, None
    known = _known_checkpoints_in(folder)
    if len(known) == 1:
        return known[0]
    if len(known) > 1:
        names = ", ".join(f"{path.relative_to(folder)} ({model.name})" for path, model in known)
        raise ConversionError(
            f"{folder}: several known checkpoints ({names}); choose one with --weights FILE"
        )
    others = [
        p
        for p in sorted(folder.rglob("*"))
        if p.suffix in CHECKPOINT_SUFFIXES and p.is_file() and ".cache" not in p.parts
    ]
    if len(others) == 1:  # e.g. the epoch_N.pt of an unpacked training-checkpoint archive
        return others[0], None
    names = ", ".join(str(p.relative_to(folder)) for p in others[:5])
    hint = f"; found {names}: name one with --weights FILE" if others else ""
    config = "" if (folder / CONFIG_FILE).is_file() else f"no {CONFIG_FILE} and "
    raise ConversionError(
        f"{folder}: {config}no weights file; expected {SAFETENSORS_FILE} or {BIN_FILE}{hint}"
    )


def load_open_clip_checkpoint(
    source: str | Path,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    open_clip_model: str | None = None,
    weights_file: str | None = None,
    *,
    default_open_clip_model: str | None = None,
) -> OpenCLIPCheckpoint:
    """Read an OpenCLIP checkpoint from a local folder or a Hub id (`hf-hub:org/name` or `org/name`).

    The architecture comes from the checkpoint's `open_clip_config.json`; `open_clip_model` (an OpenCLIP built-in
    model name) replaces it. Without either: a Hub repository of an OpenCLIP pretrained tag gets that tag's built-in
    config, and a checkpoint file of the known-model table (e.g. `RemoteCLIP-ViT-B-32.pt`) its known architecture.
    `weights_file` names the weights inside the folder or repository (default: `open_clip_model.safetensors`, else
    `open_clip_pytorch_model.bin`, else the folder's one known checkpoint file, else its one weights file).
    `default_open_clip_model` is the architecture when the checkpoint does not say it (no `open_clip_config.json`).
    """
    kind, where = parse_source(str(source))
    repo_id = None
    commit = None
    known: KnownModel | None = None
    if kind == "hub":
        repo_id = where
        folder = download_open_clip_repo(repo_id, revision, cache_dir, token, local_files_only, weights_file)
        # The snapshot folder of the Hub cache is named after the commit it holds.
        commit = folder.name if re.fullmatch(r"[0-9a-f]{40}", folder.name) else revision
        description = f"hf-hub:{repo_id}" + (f" ({weights_file})" if weights_file else "")
        weights, known = _find_weights(folder, weights_file)
    else:
        folder = Path(where)
        weights, known = _find_weights(folder, weights_file)
        description = str(folder.resolve())
    extra: dict[str, Any] = {}
    if known is not None:
        extra["known_model"] = known.name
    has_config = (folder / CONFIG_FILE).is_file()
    if open_clip_model is None and not has_config:
        open_clip_model = default_open_clip_model or (known.open_clip_model if known is not None else None)
    if open_clip_model is not None or not has_config:
        name, model_cfg, preprocess_cfg = builtin_open_clip_config(open_clip_model, repo_id)
        extra["open_clip_model"] = name
    else:
        model_cfg, preprocess_cfg = read_open_clip_config(folder / CONFIG_FILE)
    return OpenCLIPCheckpoint(
        folder=folder,
        model_cfg=model_cfg,
        preprocess_cfg=preprocess_cfg,
        state_dict=load_open_clip_weights(weights),
        weights_file=weights,
        weights_sha256=sha256_of(weights),
        source=description,
        repo_id=repo_id,
        revision=commit,
        extra=extra,
    )


__all__ = [
    "CheckpointNotFoundError",
    "OpenCLIPCheckpoint",
    "builtin_open_clip_config",
    "download_open_clip_repo",
    "load_open_clip_checkpoint",
    "load_open_clip_weights",
    "parse_source",
    "read_open_clip_config",
]
