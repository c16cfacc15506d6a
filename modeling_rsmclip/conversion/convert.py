"""`rsmclip convert`: an OpenCLIP checkpoint (e.g. the released RS-M-CLIP, `joaodaniel/RS-M-CLIP`, or a standard
CLIP such as RemoteCLIP or GeoRSCLIP) as a native transformers RS-M-CLIP model folder.

The source is a checkpoint folder or file, a Hub id, or a name of the known-model table
(`modeling_rsmclip.known_models`, e.g. `remoteclip-vit-b-32`). The folder holds `config.json`, `model.safetensors`,
the processor (image processor + tokenizer), the code files for `trust_remote_code` and a model card that records
where the weights came from. The distillation head has no OpenCLIP counterpart: a converted model gets a freshly
initialised one (used only to continue training with self-distillation; inference never touches it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from ..configuration_rsmclip import RSMCLIPConfig
from ..known_models import KnownModel, get_known_model, is_known_model
from ..modeling_rsmclip import RSMCLIPModel
from ..processing_rsmclip import RSMCLIPImageProcessor, RSMCLIPProcessor
from ..safe_io import atomic_folder, check_outputs_not_inputs
from .checkpoint import CONFIG_FILE, CheckpointNotFoundError, OpenCLIPCheckpoint, load_open_clip_checkpoint
from .clip_tokenizer import BPE_FILE, clip_bpe_tokenizer
from .open_clip_config import image_processor_kwargs_from_preprocess_cfg, rsmclip_config_from_open_clip
from .open_clip_keys import ConversionError, open_clip_to_rsmclip_state_dict


def load_tokenizer(
    checkpoint: OpenCLIPCheckpoint,
    tokenizer: str | PreTrainedTokenizerBase | None = None,
    clip_text: bool = False,
) -> tuple[PreTrainedTokenizerBase, str]:
    """The text tokenizer of a checkpoint, and where it came from.

    In order: `tokenizer` when given (an object, a folder or a Hub id); for a CLIP text tower (`clip_text`),
    OpenAI CLIP's BPE tokenizer built from the vocabulary that open_clip ships (what OpenCLIP itself uses for these
    models, whatever tokenizer files the repository carries); the tokenizer files stored with the checkpoint;
    OpenCLIP's `text_cfg.hf_tokenizer_name` (a Hub id, downloaded when online, or a folder).
    """
    if isinstance(tokenizer, PreTrainedTokenizerBase):
        return tokenizer, getattr(tokenizer, "name_or_path", "") or "the given tokenizer"
    if tokenizer is None and clip_text:
        return (
            clip_bpe_tokenizer(),
            f"OpenAI CLIP's BPE vocabulary ({BPE_FILE} of open_clip), as OpenCLIP tokenizes",
        )
    if tokenizer is not None:
        location, description = str(tokenizer), str(tokenizer)
    elif checkpoint.has_tokenizer:
        location, description = (
            str(checkpoint.folder),
            f"{checkpoint.source} (the checkpoint's own tokenizer files)",
        )
    else:
        text_cfg = checkpoint.model_cfg.get("text_cfg", {})
        location = text_cfg.get("hf_tokenizer_name") or text_cfg.get("hf_model_name")
        if not location:
            raise ConversionError(
                f"{checkpoint.source}: text_cfg names no tokenizer; pass one with --tokenizer"
            )
        description = location
    try:
        loaded = AutoTokenizer.from_pretrained(location)
    except (OSError, ValueError) as error:
        raise ConversionError(
            f"cannot load the tokenizer {location!r} ({error}). Offline, pass a local copy of it with "
            f"--tokenizer PATH (tokenizer=... in Python)"
        ) from error
    return loaded, description


def _check_tokenizer(tokenizer: PreTrainedTokenizerBase, config: RSMCLIPConfig, where: str) -> None:
    text = config.text_config
    if config.is_clip_text:
        # The text tower pools at the argmax of the ids: the end-of-text token must be the highest id.
        if tokenizer.eos_token_id != text.vocab_size - 1:
            raise ConversionError(
                f"tokenizer {where}: end-of-text id {tokenizer.eos_token_id}, but the CLIP text tower pools at the "
                f"highest id, {text.vocab_size - 1} (OpenAI CLIP's tokenizer)"
            )
    elif tokenizer.pad_token_id != text.pad_token_id:
        raise ConversionError(
            f"tokenizer {where}: pad token id {tokenizer.pad_token_id} differs from the text tower's "
            f"{text.pad_token_id} (the text pooling mask depends on it)"
        )
    if len(tokenizer) > text.vocab_size:
        raise ConversionError(
            f"tokenizer {where}: {len(tokenizer)} tokens, more than the text tower's vocabulary ({text.vocab_size})"
        )


def _read_license(checkpoint: OpenCLIPCheckpoint) -> str | None:
    card_path = checkpoint.folder / "README.md"
    if not card_path.is_file():
        return None
    from huggingface_hub import ModelCard

    try:
        return ModelCard.load(card_path).data.to_dict().get("license")
    except Exception:  # a card without (valid) metadata has no licence to carry over
        return None


def _known_model_of(checkpoint: OpenCLIPCheckpoint) -> KnownModel | None:
    name = checkpoint.extra.get("known_model")
    return get_known_model(name) if name else None


def write_model_card(
    out_dir: Path,
    checkpoint: OpenCLIPCheckpoint,
    config: RSMCLIPConfig,
    tokenizer_source: str,
    repo_id: str | None,
) -> Path:
    """`README.md` of a converted folder: metadata, provenance (source, revision, file, sha256) and usage."""
    from huggingface_hub import ModelCardData

    known = _known_model_of(checkpoint)
    license_name = _read_license(checkpoint) or (known.license if known else None)
    clip_text = config.is_clip_text
    multilingual = not (known.english_only if known else clip_text)
    card_data = ModelCardData(
        license=license_name,
        library_name="transformers",
        pipeline_tag="zero-shot-image-classification",
        tags=[
            "rs-m-clip",
            "clip",
            "remote-sensing",
            *(["multilingual"] if multilingual else []),
            "zero-shot-image-classification",
        ],
        base_model=checkpoint.repo_id,
    )
    model_id = repo_id or str(out_dir)
    vision, text = config.vision_config, config.text_config
    if clip_text:
        intro = (
            "A CLIP model (ViT image tower, CLIP text transformer) in the native transformers format of RS-M-CLIP, "
            "converted from an OpenCLIP checkpoint with `rsmclip convert`."
        )
        text_line = (
            f"- Text tower: CLIP text transformer, {text.num_hidden_layers} layers, width {text.hidden_size}, "
            f"{text.num_attention_heads} heads, vocabulary {text.vocab_size}, activation `{text.hidden_act}`; "
            f"pooled at the end-of-text token (`{config.text_pooler_type}`), `{config.text_projection_type}` "
            f"projection."
        )
    else:
        intro = (
            "An RS-M-CLIP model (multilingual CLIP for remote-sensing imagery) in the native transformers format, "
            "converted from an OpenCLIP checkpoint with `rsmclip convert`."
        )
        text_line = (
            f"- Text tower: XLM-RoBERTa, {text.num_hidden_layers} layers, width {text.hidden_size}, vocabulary "
            f"{text.vocab_size}; `{config.text_pooler_type}` pooling, `{config.text_projection_type}` projection."
        )
    if known is not None:
        intro += f" Source model: {known.title} (`{known.name}` in `modeling_rsmclip.known_models`)."
        if known.english_only:
            intro += " It was trained on English captions only."
    if known is not None:
        citation = [known.paper]
    elif not clip_text:
        citation = [
            "Silva, Magalhães, Tuia, Martins. *Multilingual Vision-Language Pre-training for the Remote Sensing "
            "Domain.* SIGSPATIAL 2024. arXiv:2410.23370."
        ]
    else:
        citation = ["Cite the paper of the source checkpoint."]
    lines = [
        "---",
        card_data.to_yaml(),
        "---",
        "",
        f"# {Path(model_id).name if repo_id is None else repo_id}",
        "",
        intro,
        "",
        "## Provenance",
        "",
        f"- Source: `{checkpoint.source}`"
        + (f" at revision `{checkpoint.revision}`" if checkpoint.revision else ""),
        f"- Weights file: `{checkpoint.weights_file.name}` (sha256 `{checkpoint.weights_sha256}`), "
        f"{len(checkpoint.state_dict)} tensors, every one mapped",
        (
            f"- OpenCLIP configuration (OpenCLIP's built-in `{checkpoint.extra['open_clip_model']}`):"
            if "open_clip_model" in checkpoint.extra
            else f"- OpenCLIP configuration (`{CONFIG_FILE}`):"
        ),
        "",
        "```json",
        json.dumps(
            {"model_cfg": checkpoint.model_cfg, "preprocess_cfg": checkpoint.preprocess_cfg}, indent=2
        ),
        "```",
        "",
        f"- Tokenizer: `{tokenizer_source}`",
        f"- Licence: {license_name or 'not stated by the source; check it before redistributing'}",
        "",
        "## Architecture",
        "",
        f"- Image tower: ViT, {vision.num_hidden_layers} layers, width {vision.hidden_size}, "
        f"{vision.num_attention_heads} heads, patch {vision.patch_size}, {vision.image_size} px, "
        f"activation `{vision.hidden_act}`.",
        text_line,
        f"- Joint embedding: {config.projection_dim} dimensions.",
        "- The self-distillation head (`distillation_head`) has no OpenCLIP counterpart and is **freshly "
        "initialised**: it only matters to continue training with self-distillation, never for inference.",
        "",
        "## Use",
        "",
        "```python",
        "import torch",
        "from PIL import Image",
        "from transformers import AutoModel, AutoProcessor",
        "",
        f'model = AutoModel.from_pretrained("{model_id}", trust_remote_code=True).eval()',
        f'processor = AutoProcessor.from_pretrained("{model_id}", trust_remote_code=True)',
        'texts = ["an aerial image of a harbour with boats", "uma imagem aérea de uma floresta"]',
        'inputs = processor(images=Image.open("scene.jpg"), text=texts, return_tensors="pt")',
        "with torch.no_grad():",
        "    probs = model(**inputs).logits_per_image.softmax(dim=-1)",
        "```",
        "",
        "## Citation",
        "",
        *citation,
        "",
    ]
    path = out_dir / "README.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _convert_command(model: KnownModel, folder: str, output_dir: str | Path) -> str:
    command = f"rsmclip convert {folder} {output_dir}"
    return command + (f" --open-clip-model {model.open_clip_model}" if model.open_clip_model else "")


def resolve_known_model(name: str, output_dir: str | Path) -> KnownModel:
    """The known model `name`, checked to be convertible; a `ConversionError` that says why not (a tower this
    project cannot hold, a transformers-native model, weights that are not on the Hub: then how to get them)."""
    model = get_known_model(name)
    if not model.supported:
        raise ConversionError(f"{model.name} ({model.title}) cannot be converted: {model.note}")
    if not model.convertible:
        raise ConversionError(
            f"{model.name} ({model.title}) is a transformers-native checkpoint (family {model.family}, "
            f"hf-hub:{model.hub_id}); `rsmclip convert` turns OpenCLIP checkpoints into this format"
        )
    if model.hub_id is None:
        folder = f"{model.name}-checkpoint"
        steps = " && ".join(model.download_commands(folder))
        raise ConversionError(
            f"{model.name} ({model.title}) is not on the Hugging Face Hub; download its archive from the authors: "
            f"`{steps}`, then convert the folder: `{_convert_command(model, folder, output_dir)}`"
        )
    return model


def _offline_instructions(model: KnownModel, output_dir: str | Path) -> str:
    folder = f"{model.name}-checkpoint"
    return (
        f"{model.name} ({model.title}) is {model.source}, which is not in the local Hugging Face cache and cannot "
        f"be downloaded now (offline, or the Hub is unreachable). Where the Hub is reachable, download it: "
        f"`{' && '.join(model.download_commands(folder))}`, then convert the folder here: "
        f"`{_convert_command(model, folder, output_dir)}`"
    )


def convert_open_clip(
    source: str | Path,
    output_dir: str | Path,
    *,
    tokenizer: str | PreTrainedTokenizerBase | None = None,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    open_clip_model: str | None = None,
    weights_file: str | None = None,
    push_to_hub: str | None = None,
    private: bool | None = None,
    config_overrides: dict[str, Any] | None = None,
) -> Path:
    """Convert an OpenCLIP checkpoint into a complete RS-M-CLIP model folder; returns the folder.

    Args:
        source: a local OpenCLIP checkpoint folder, a Hub id (`hf-hub:org/name` or `org/name`), or
            the name of a known model (`modeling_rsmclip.known_models`, e.g. "remoteclip-vit-b-32"), which resolves
            to its Hub repository, checkpoint file and architecture. An existing path wins over a known name.
        output_dir: where to write the model folder (created; existing files of the same names are replaced).
        tokenizer: the text tokenizer (object, folder or Hub id); by default, for a CLIP text tower OpenAI CLIP's
            tokenizer built from open_clip's BPE vocabulary, otherwise the one stored with the checkpoint, else
            OpenCLIP's `hf_tokenizer_name`.
        revision, cache_dir, token, local_files_only: Hub download options.
        open_clip_model: an OpenCLIP built-in model name (e.g. "ViT-B-32-quickgelu") to use instead of the
            checkpoint's `open_clip_config.json`; needed only for a checkpoint without that file that is neither an
            OpenCLIP pretrained tag's Hub repository nor a known checkpoint file.
        weights_file: the weights file inside the folder or Hub repository (e.g. "RemoteCLIP-ViT-B-32.pt").
        push_to_hub: a Hub repository id to upload the folder to (created if needed).
        private: visibility of a repository created by `push_to_hub`.
        config_overrides: other `RSMCLIPConfig` fields, e.g. the distillation head's `dino_out_dim`.
    """
    out = Path(output_dir)
    local_inputs = [source, tokenizer if isinstance(tokenizer, str | os.PathLike) else None]
    check_outputs_not_inputs([], local_inputs, owned=[out])
    known = None
    if not Path(str(source)).expanduser().exists() and is_known_model(str(source)):
        known = resolve_known_model(str(source), output_dir)
        source, weights_file = f"hf-hub:{known.hub_id}", weights_file or known.file
    try:
        checkpoint = load_open_clip_checkpoint(
            source,
            revision,
            cache_dir,
            token,
            local_files_only,
            open_clip_model,
            weights_file,
            default_open_clip_model=known.open_clip_model if known else None,
        )
    except CheckpointNotFoundError as error:
        if known is None:
            raise
        raise CheckpointNotFoundError(_offline_instructions(known, output_dir)) from error
    if known is not None:
        checkpoint.extra["known_model"] = known.name
    config = rsmclip_config_from_open_clip(
        checkpoint.model_cfg, where=f"{checkpoint.source} {CONFIG_FILE}", **(config_overrides or {})
    )
    state_dict = open_clip_to_rsmclip_state_dict(
        checkpoint.state_dict, config, source=str(checkpoint.weights_file)
    )
    text_tokenizer, tokenizer_source = load_tokenizer(checkpoint, tokenizer, clip_text=config.is_clip_text)
    _check_tokenizer(text_tokenizer, config, tokenizer_source)
    image_processor = RSMCLIPImageProcessor(
        **image_processor_kwargs_from_preprocess_cfg(
            checkpoint.preprocess_cfg, config.vision_config.image_size
        )
    )

    model = RSMCLIPModel(config)
    with torch.no_grad():
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
    # open_clip_to_rsmclip_state_dict already checked names and shapes; this guards the model itself.
    not_loaded = [k for k in missing if not k.startswith("distillation_head.")]
    if not_loaded or unexpected:
        raise ConversionError(
            f"model did not take the converted weights: missing {not_loaded}, unexpected {unexpected}"
        )
    model.eval()

    with atomic_folder(out) as tmp:  # the files reach `out` only once all are written
        model.save_pretrained(tmp)
        RSMCLIPProcessor(image_processor=image_processor, tokenizer=text_tokenizer).save_pretrained(tmp)
        write_model_card(tmp, checkpoint, config, tokenizer_source, push_to_hub)
    if push_to_hub:
        upload_folder(out, push_to_hub, private=private, token=token, message=f"Convert {checkpoint.source}")
    return out


def upload_folder(
    folder: Path, repo_id: str, private: bool | None, token: str | bool | None, message: str
) -> str:
    """Create `repo_id` if needed and upload `folder` to it; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=message)
    return str(getattr(commit, "commit_url", commit))


__all__ = [
    "convert_open_clip",
    "load_tokenizer",
    "resolve_known_model",
    "upload_folder",
    "write_model_card",
]
