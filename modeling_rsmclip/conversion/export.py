"""`rsmclip export --to-open-clip`: an RS-M-CLIP model as an OpenCLIP checkpoint folder (`--to-onnx`: see
`modeling_rsmclip.inference.onnx_export`).

The folder loads with `open_clip.create_model_and_transforms("local-dir:FOLDER")` (or `"hf-hub:org/name"` once
uploaded) and `open_clip.get_tokenizer(...)` the same way. It holds `open_clip_config.json`,
`open_clip_model.safetensors`, the tokenizer files and a model card. The distillation head is dropped (OpenCLIP
has no place for it), so exporting and converting back gives a model with a new, untrained head.

OpenCLIP builds an XLM-RoBERTa text tower from `text_cfg.hf_model_name` with `AutoConfig`. For a text tower with
the exact XLM-RoBERTa base (or large) architecture that name is `xlm-roberta-base` (as in the original OpenCLIP
configs); for any other architecture the folder carries the text tower's `config.json` and `hf_model_name` points
at the folder itself (its absolute path) or, with `--push-to-hub`, at the uploaded repository. A CLIP text tower
becomes OpenCLIP's standard `CLIP` (its own text transformer and tokenizer), described entirely by
`open_clip_config.json`; the folder then carries no tokenizer files (OpenCLIP does not read them).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from ..modeling_rsmclip import RSMCLIPModel
from ..safe_io import atomic_folder, check_outputs_not_inputs
from .checkpoint import CONFIG_FILE, SAFETENSORS_FILE
from .convert import upload_folder
from .open_clip_config import (
    known_text_architecture_name,
    open_clip_model_cfg_from_rsmclip,
    preprocess_cfg_from_image_processor,
)
from .open_clip_keys import ConversionError, rsmclip_to_open_clip_state_dict


def _load_model_and_processor(model: Any, processor: Any) -> tuple[RSMCLIPModel, Any, str]:
    """The RS-M-CLIP model to export, its processor and a name for the card (`inference.load_model`)."""
    from ..inference import load_model, model_name

    name = model_name(model) if isinstance(model, RSMCLIPModel) else str(model)
    try:
        net, processor = load_model(model, processor)
    except ValueError as error:
        raise ConversionError(str(error)) from error
    except OSError as error:
        raise ConversionError(
            f"cannot load an RS-M-CLIP model and processor from {name!r}: {error}"
        ) from error
    if not isinstance(net, RSMCLIPModel):
        raise ConversionError(
            f"{name or type(net).__name__} is a {type(net).__name__}, not an RS-M-CLIP model"
        )
    return net, processor, name or "an RSMCLIPModel"


def _write_card(out: Path, model_cfg: dict[str, Any], source: str, load_name: str) -> None:
    from huggingface_hub import ModelCardData

    clip_text = "hf_model_name" not in model_cfg["text_cfg"]
    card_data = ModelCardData(
        library_name="open_clip",
        pipeline_tag="zero-shot-image-classification",
        tags=["rs-m-clip", "clip", "open_clip", "remote-sensing", *([] if clip_text else ["multilingual"])],
    )
    lines = [
        "---",
        card_data.to_yaml(),
        "---",
        "",
        "# CLIP (OpenCLIP format)" if clip_text else "# RS-M-CLIP (OpenCLIP format)",
        "",
        f"A model in RS-M-CLIP's format exported from `{source}` with `rsmclip export --to-open-clip`.",
        "The self-distillation head of the RS-M-CLIP model is not part of this checkpoint (OpenCLIP has no place "
        "for it); the image and text towers, projections and temperature are complete.",
        "",
        "```python",
        "import open_clip",
        "",
        f'model, _, preprocess = open_clip.create_model_and_transforms("{load_name}")',
        f'tokenizer = open_clip.get_tokenizer("{load_name}")',
        "```",
        "",
        "OpenCLIP configuration:",
        "",
        "```json",
        json.dumps(model_cfg, indent=2),
        "```",
        "",
    ]
    (out / "README.md").write_text("\n".join(lines), encoding="utf-8")


def export_to_open_clip(
    model: RSMCLIPModel | str | Path,
    output_dir: str | Path,
    *,
    processor: Any = None,
    hf_model_name: str | None = None,
    hf_tokenizer_name: str | None = None,
    push_to_hub: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
) -> Path:
    """Write `model` (an `RSMCLIPModel`, or a model folder / Hub id) as an OpenCLIP checkpoint folder.

    Args:
        model: the model, or where to load it (and its processor) from.
        output_dir: the OpenCLIP folder to write.
        processor: the model's `RSMCLIPProcessor` (image preprocessing and tokenizer); loaded with the model when
            not given.
        hf_model_name: OpenCLIP's `text_cfg.hf_model_name` (see the module doc for the default).
        hf_tokenizer_name: OpenCLIP's `text_cfg.hf_tokenizer_name`, used when loading from the Hub; defaults to
            the `push_to_hub` repository, else this folder. `local-dir:` loading always uses the folder's own
            tokenizer files.
        push_to_hub: a Hub repository id to upload the folder to.
    """
    from ..inference import local_model_folder

    out = Path(output_dir)
    check_outputs_not_inputs([], [local_model_folder(model)], owned=[out])
    net, processor, source = _load_model_and_processor(model, processor)
    config = net.config
    self_reference = push_to_hub or str(out.resolve())
    write_text_config = False
    if config.is_clip_text:
        hf_model_name = hf_tokenizer_name = None  # OpenCLIP's own text transformer and tokenizer
    elif hf_model_name is None:
        hf_model_name = known_text_architecture_name(config.text_config)
        if hf_model_name is None:
            hf_model_name, write_text_config = self_reference, True
    model_cfg = open_clip_model_cfg_from_rsmclip(
        config, hf_model_name, None if config.is_clip_text else hf_tokenizer_name or self_reference
    )
    preprocess_cfg = preprocess_cfg_from_image_processor(processor.image_processor)
    state_dict = rsmclip_to_open_clip_state_dict(net.state_dict(), config, source=source)

    load_name = f"hf-hub:{push_to_hub}" if push_to_hub else f"local-dir:{out.resolve()}"
    with atomic_folder(out) as tmp:  # the files reach `out` only once all are written
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in state_dict.items()},
            str(tmp / SAFETENSORS_FILE),
            metadata={"format": "pt"},
        )
        (tmp / CONFIG_FILE).write_text(
            json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}, indent=2) + "\n",
            encoding="utf-8",
        )
        if not config.is_clip_text:  # a CLIP text tower uses OpenCLIP's own tokenizer
            processor.tokenizer.save_pretrained(tmp)
        if write_text_config:
            # OpenCLIP reads the text tower's architecture from here (AutoConfig.from_pretrained(hf_model_name)).
            config.text_config.to_json_file(str(tmp / "config.json"))
        _write_card(tmp, model_cfg, source, load_name)
    if push_to_hub:
        upload_folder(out, push_to_hub, private=private, token=token, message=f"Export {source} to OpenCLIP")
    return out


__all__ = ["export_to_open_clip"]
