"""The one model resolver: a name (a model folder, a Hub id, ``"demo"``) or a loaded model -> (model, processor).

Every command, the web app, the index and the evaluation load models through `load_model`, so the same name means
the same model everywhere and a damaged or missing file gets the same clear error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..cache_dirs import user_cache_dir
from ..safe_io import find_damaged_file

DEMO_MODEL_DIR = Path(__file__).resolve().parents[1] / "demo_model"
DEMO_NAME = "demo"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


def converted_models_dir() -> Path:
    """Where known OpenCLIP models are kept once converted: ``$RSMCLIP_MODELS_CACHE``, else
    ``~/.cache/rsmclip/models``."""
    return user_cache_dir("models", "RSMCLIP_MODELS_CACHE")


def resolve_known_model(name: str) -> str:
    """The folder or Hub id of a known model (`known_models`): a transformers-native model's Hub id; an OpenCLIP
    checkpoint converted once into `converted_models_dir()` (downloaded from the Hub the first time; offline, the
    error says what to download and how). A tower this project cannot hold is refused, saying why."""
    from ..known_models import get_known_model

    known = get_known_model(name)
    if not known.supported:
        raise ValueError(f"{known.name} ({known.title}) cannot be used: {known.note}")
    if known.format == "transformers":
        return str(known.hub_id)
    folder = converted_models_dir() / known.name
    if (folder / "config.json").is_file():
        return str(folder)
    # The one conversion path (`rsmclip convert`): it resolves the known name to its Hub file and architecture.
    from ..conversion.convert import convert_open_clip

    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    try:
        convert_open_clip(known.name, tmp)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return str(folder)


def resolve_model_source(model: str | os.PathLike) -> str:
    """Where `load_model` reads ``model`` from: the bundled demo model's folder for ``"demo"``, a local folder
    (checked), a known model (`known_models`, e.g. ``"remoteclip-vit-b-32"``; see `resolve_known_model`), or a
    Hub id as given. An existing folder wins over a known name.

    A name that can only be a local path (absolute, starting with ``.`` or ``~``, or with more than one ``/``) and
    does not exist raises `FileNotFoundError`; a folder without ``config.json`` raises `ValueError`.
    """
    from ..known_models import is_known_model

    name = os.fspath(model)
    if name == DEMO_NAME:
        return str(DEMO_MODEL_DIR)
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(
                f"{path} is a file; give the model folder that holds config.json and the weights"
            )
        if not (path / "config.json").is_file():
            raise ValueError(f"{path} is not a model folder: it has no config.json")
        return str(path)
    if is_known_model(name):
        return resolve_known_model(name)
    if path.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1 or "\\" in name:
        raise FileNotFoundError(
            f"model folder not found: {name} (give a model folder, a Hub id org/name or 'demo')"
        )
    return name


def local_model_folder(model: Any) -> Path | None:
    """The local folder a model is (or was) read from: for a name, the folder `resolve_model_source` finds (None for
    a Hub id); for a loaded model, the folder it was loaded from, if local. Commands list it among their inputs
    (`safe_io.check_outputs_not_inputs`) so that no output lands in it."""
    if model is None:
        return None
    source = model_name(model) if not isinstance(model, str | os.PathLike) else resolve_model_source(model)
    return Path(source) if source and Path(source).is_dir() else None


def model_name(model: Any) -> str:
    """A loaded model's folder or Hub id, as recorded by ``from_pretrained`` (empty when unknown)."""
    return str(
        getattr(model, "name_or_path", None)
        or getattr(getattr(model, "config", None), "_name_or_path", "")
        or ""
    )


def portable_config_json(config: Any) -> str:
    """The config as JSON without what depends on where or by which version it was loaded (``_name_or_path``,
    ``transformers_version``, other ``_`` fields), so copies of one model in two folders compare equal."""

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {
                k: clean(v)
                for k, v in value.items()
                if not str(k).startswith("_") and k != "transformers_version"
            }
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    data = json.loads(config.to_json_string(use_diff=False))
    return json.dumps(clean(data), sort_keys=True, ensure_ascii=False)


def _weights_file(source: str) -> str:
    """The weights file of a local model folder (the folder when it has none; a Hub id as given)."""
    folder = Path(source)
    names = [name for name in WEIGHT_FILES if (folder / name).exists()] if folder.is_dir() else []
    return str(folder / names[0]) if names else source


def _weights_error(source: str, error: BaseException) -> ValueError:
    return ValueError(
        f"{_weights_file(source)}: cannot read the model weights ({type(error).__name__}: {error})"
    )


def load_model(model: Any, processor: Any = None, *, device: Any = None) -> tuple[Any, Any]:
    """``(model, processor)`` in eval mode, from:

    - a loaded model (a `PreTrainedModel`), with its ``processor`` (when None, the processor is read from the
      folder the model was loaded from, if that is a local folder);
    - a model folder or Hub id (the processor is read from the same place unless given);
    - ``"demo"``: the bundled demo model (`DEMO_MODEL_DIR`).

    ``device`` moves the model there. Errors name the folder or file: a missing folder (`FileNotFoundError`), a
    folder that is not a model, or damaged weights (`ValueError`).
    """
    import torch

    if isinstance(model, torch.nn.Module):
        if processor is None:
            source = model_name(model)
            if not source or not Path(source).is_dir():
                raise ValueError("a loaded model needs its processor: pass processor=...")
            processor = _load_processor(source)
        net = model
    else:
        import modeling_rsmclip  # noqa: F401  (registers the "rsmclip" model type with the Auto classes)

        source = resolve_model_source(model)
        net = _load_weights(source)
        if processor is None:
            processor = _load_processor(source)
    if device is not None:
        net.to(device)
    return net.eval(), processor


def _load_weights(source: str) -> Any:
    from safetensors import SafetensorError
    from transformers import AutoModel

    try:
        # Mismatched shapes are collected (and refused below) instead of raised as a RuntimeError.
        net, info = AutoModel.from_pretrained(source, output_loading_info=True, ignore_mismatched_sizes=True)
    except SafetensorError as error:
        raise _weights_error(source, error) from error
    except (OSError, ValueError) as error:
        if isinstance(error.__cause__, SafetensorError) or "safetensors" in str(error).lower():
            raise _weights_error(source, error) from error
        damaged = find_damaged_file(source, ("config.json",))
        if damaged:
            raise ValueError(damaged) from error
        raise
    check_loaded_weights(source, net, info)
    return net


def check_loaded_weights(source: str, net: Any, info: dict[str, Any]) -> None:
    """Refuse a model whose weights do not fit its ``config.json`` (missing, unexpected or differently shaped
    tensors: ``from_pretrained`` would leave those parameters randomly initialised) or hold NaN / infinite values
    (a damaged file; a model folder carries no checksum, so finite but changed values cannot be told)."""
    import torch

    weights = _weights_file(source)
    problems = []
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        keys = sorted(str(key[0] if isinstance(key, tuple) else key) for key in info.get(kind) or ())
        if keys:
            problems.append(f"{len(keys)} {kind.replace('_keys', '')} (e.g. {keys[0]})")
    if problems:
        raise ValueError(
            f"{weights}: the weights do not fit the architecture in {Path(source) / 'config.json'}: "
            f"{', '.join(problems)} tensors; one of the two files is damaged or from another model"
        )
    with torch.no_grad():
        for name, tensor in [*net.named_parameters(), *net.named_buffers()]:
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise ValueError(
                    f"{weights}: the tensor {name} holds NaN or infinite values: the file is damaged"
                )


# The processor's files in a model folder, in the order they are checked when the processor does not load.
PROCESSOR_FILES = (
    "processor_config.json",
    "preprocessor_config.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.json",
    "sentencepiece.bpe.model",
)


def _load_processor(source: str) -> Any:
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(source)
    except Exception as error:  # tokenizers/sentencepiece raise plain exceptions on damaged files
        damaged = find_damaged_file(source, PROCESSOR_FILES)
        if damaged:
            raise ValueError(damaged) from error
        folder = Path(source)
        if folder.is_dir() and not any((folder / name).is_file() for name in PROCESSOR_FILES[:2]):
            raise ValueError(
                f"{folder / PROCESSOR_FILES[0]} not found: the folder has no image processor settings; save the "
                "processor with the model (processor.save_pretrained(folder))"
            ) from error
        if isinstance(error, OSError | ValueError):
            raise
        raise ValueError(
            f"{source}: cannot read the processor files ({type(error).__name__}: {error})"
        ) from error


__all__ = [
    "DEMO_MODEL_DIR",
    "DEMO_NAME",
    "converted_models_dir",
    "resolve_known_model",
    "PROCESSOR_FILES",
    "check_loaded_weights",
    "load_model",
    "local_model_folder",
    "model_name",
    "portable_config_json",
    "resolve_model_source",
]
