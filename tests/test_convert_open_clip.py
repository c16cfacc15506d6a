"""OpenCLIP <-> RS-M-CLIP conversion, checked against the real `open_clip` package.

Reference models are OpenCLIP `CustomTextCLIP`s of the RS-M-CLIP family (ViT image tower + XLM-RoBERTa text tower
built by OpenCLIP's `HFTextEncoder` from a tiny local config folder), with random weights. Converted models must give
the same image embeddings, text embeddings and logits (fp32, 1e-5), the same token ids for texts in all ten
languages, and the same preprocessed pixels up to one 8-bit intensity level.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

import open_clip
import pytest
import torch
from open_clip.tokenizer import HFTokenizer
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoProcessor, XLMRobertaConfig

import modeling_rsmclip  # noqa: F401  (registers the model type)
from modeling_rsmclip import RSMCLIPConfig
from modeling_rsmclip.conversion import (
    ConversionError,
    convert_open_clip,
    export_to_open_clip,
    image_processor_kwargs_from_preprocess_cfg,
    load_open_clip_weights,
    open_clip_to_rsmclip_state_dict,
    rsmclip_config_from_open_clip,
)
from modeling_rsmclip.conversion import cli as conversion_cli
from modeling_rsmclip.conversion.checkpoint import builtin_open_clip_config, parse_source
from modeling_rsmclip.conversion.open_clip_config import known_text_architecture_name, text_architecture
from modeling_rsmclip.errors import run_command
from modeling_rsmclip.processing_rsmclip import RSMCLIPImageProcessor
from modeling_rsmclip.templates import CLASS_NAMES, LANGUAGES, PROMPT_TEMPLATES
from modeling_rsmclip.testing import make_tiny_model_and_processor, make_tiny_tokenizer, sample_dir

ATOL = 1e-5
TEXT_CONFIG = {
    "vocab_size": 1000,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 80,
    "type_vocab_size": 1,
    "layer_norm_eps": 1e-5,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
}
# Not OpenCLIP's defaults, so that a converter ignoring preprocess_cfg fails.
PREPROCESS_CFG = {"mean": [0.5, 0.45, 0.4], "std": [0.22, 0.25, 0.28], "interpolation": "bicubic"}


# ------------------------------------------------------------------------------------------------------ helpers
@pytest.fixture(scope="module")
def text_dir(tmp_path_factory) -> Path:
    """A tiny XLM-R config + tokenizer folder: OpenCLIP's `hf_model_name` and `hf_tokenizer_name`."""
    path = tmp_path_factory.mktemp("tiny-xlmr")
    tokenizer = make_tiny_tokenizer(path, vocab_size=TEXT_CONFIG["vocab_size"])
    layout = tokenizer.convert_ids_to_tokens([0, 1, 2, 3])
    assert layout == ["<s>", "<pad>", "</s>", "<unk>"], (
        f"make_tiny_tokenizer lost XLM-R's id layout: {layout}"
    )
    XLMRobertaConfig(**TEXT_CONFIG).save_pretrained(path)
    return path


def model_cfg(text_dir: Path, **text_overrides) -> dict:
    return {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 16},
        "text_cfg": {
            "hf_model_name": str(text_dir),
            "hf_tokenizer_name": str(text_dir),
            "hf_pooler_type": "mean_pooler",
            "hf_proj_type": "mlp",
            **text_overrides,
        },
    }


def perturb_(module: torch.nn.Module, seed: int, skip: str = "\0") -> None:
    """Random weights everywhere (LayerNorm scales and biases included), so a swapped tensor cannot go unnoticed."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if not name.startswith(skip):
                param.add_(0.05 * torch.randn(param.shape, generator=generator))


def write_open_clip_checkpoint(
    folder: Path, cfg: dict, seed: int, with_tokenizer: Path | None = None, preprocess_cfg: dict | None = None
) -> dict[str, torch.Tensor]:
    """An OpenCLIP checkpoint folder (config + random weights as safetensors) made by open_clip itself."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "model_cfg": cfg,
        "preprocess_cfg": PREPROCESS_CFG if preprocess_cfg is None else preprocess_cfg,
    }
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    torch.manual_seed(seed)
    model = open_clip.create_model(f"local-dir:{folder}", pretrained_text=False)
    perturb_(model, seed)
    with torch.no_grad():
        model.logit_scale.fill_(2.3)
    state_dict = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state_dict, str(folder / "open_clip_model.safetensors"))
    if with_tokenizer is not None:
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(with_tokenizer / name, folder / name)
    return state_dict


def load_open_clip(folder: Path):
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    return model.eval(), preprocess, open_clip.get_tokenizer(f"local-dir:{folder}")


def texts_in_all_languages() -> list[str]:
    """Prompts with translated UCM class names and real captions, in each of the ten languages."""
    texts = []
    classes = list(CLASS_NAMES["ucm"])[:3]
    captions = {
        "en": [
            s["raw"]
            for e in json.loads((sample_dir() / "ucm" / "dataset.json").read_text())["images"]
            for s in e["sentences"]
        ][:40:10]
    }
    for path in sorted((sample_dir() / "ucm" / "translations").glob("*.json")):
        rows = json.loads(path.read_text(encoding="utf-8"))
        captions[path.stem] = [row["text"] for row in rows[:40:10]]
    for lang in LANGUAGES:
        for template, label in zip(PROMPT_TEMPLATES[lang], classes):
            texts.append(template.format(CLASS_NAMES["ucm"][label][lang]))
        texts += captions[lang]
        texts.append("  ".join(captions[lang] * 6))  # longer than 77 tokens: truncation, doubled spaces
    return texts


def real_images(n: int = 3) -> list[Image.Image]:
    files = sorted((sample_dir() / "ucm" / "images").glob("*.jpg"))[:n]
    return [Image.open(f).convert("RGB") for f in files]


def assert_same_outputs(open_clip_model, model, pixels: torch.Tensor, ids: torch.Tensor) -> None:
    with torch.no_grad():
        ref_image = open_clip_model.encode_image(pixels)
        ref_text = open_clip_model.encode_text(ids)
        ref_logits, _ = open_clip_model.get_logits(pixels, ids)
        image = model.get_image_features(pixel_values=pixels).pooler_output
        text = model.get_text_features(input_ids=ids).pooler_output
        logits = model(input_ids=ids, pixel_values=pixels).logits_per_image
    torch.testing.assert_close(image, ref_image, atol=ATOL, rtol=0)
    torch.testing.assert_close(text, ref_text, atol=ATOL, rtol=0)
    torch.testing.assert_close(logits, ref_logits, atol=ATOL, rtol=0)


def assert_same_token_ids(ours: torch.Tensor, attention_mask: torch.Tensor, reference: torch.Tensor) -> None:
    """Equal ids on our non-pad positions; OpenCLIP's tensor is pad beyond them (it pads to 77)."""
    assert reference.shape[1] == 77
    for row, mask, ref in zip(ours, attention_mask, reference):
        n = int(mask.sum())
        assert row[:n].tolist() == ref[:n].tolist()
        assert (ref[n:] == 1).all()


# ------------------------------------------------------------------------------------- OpenCLIP -> RS-M-CLIP
@pytest.fixture(scope="module")
def converted(tmp_path_factory, text_dir):
    """(OpenCLIP folder, its state dict, converted RS-M-CLIP folder) for the RS-M-CLIP architecture family."""
    root = tmp_path_factory.mktemp("convert")
    state_dict = write_open_clip_checkpoint(
        root / "open_clip", model_cfg(text_dir), seed=1, with_tokenizer=text_dir
    )
    out = convert_open_clip(root / "open_clip", root / "rsmclip", config_overrides={"dino_out_dim": 64})
    return root / "open_clip", state_dict, out


def test_convert_matches_open_clip(converted):
    source, _, out = converted
    reference, preprocess, tokenizer = load_open_clip(source)
    model = AutoModel.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    config = model.config
    assert (config.vision_config.hidden_act, config.text_pooler_type, config.text_projection_type) == (
        "gelu",
        "mean_pooler",
        "mlp",
    )
    assert (config.vision_config.hidden_size, config.vision_config.num_attention_heads) == (64, 4)

    texts = texts_in_all_languages()
    images = real_images()
    pixels = torch.cat([torch.stack([preprocess(im) for im in images]), torch.randn(2, 3, 32, 32)])
    assert_same_outputs(reference, model, pixels, tokenizer(texts))

    # End to end: our processor's own ids and mask give the embeddings OpenCLIP gives for its own tokens.
    batch = processor(text=texts, images=images, return_tensors="pt")
    assert_same_token_ids(batch["input_ids"], batch["attention_mask"], tokenizer(texts))
    with torch.no_grad():
        ours = model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        torch.testing.assert_close(
            ours.pooler_output, reference.encode_text(tokenizer(texts)), atol=ATOL, rtol=0
        )


def test_converted_folder_is_complete(converted):
    source, state_dict, out = converted
    names = {p.name for p in out.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "processor_config.json",
        "tokenizer.json",
        "README.md",
    } <= names
    assert {"configuration_rsmclip.py", "modeling_rsmclip.py", "processing_rsmclip.py"} <= names
    assert all(not name.endswith((".bin", ".pt", ".pth")) for name in names)
    card = (out / "README.md").read_text()
    digest = hashlib.sha256((source / "open_clip_model.safetensors").read_bytes()).hexdigest()
    assert digest in card and str(source.resolve()) in card
    assert f"{len(state_dict)} tensors, every one mapped" in card
    assert "freshly initialised" in card
    # The distillation head is new (not in OpenCLIP checkpoints) and usable: unit-norm rows, finite outputs.
    model = AutoModel.from_pretrained(out).eval()
    assert model.config.dino_out_dim == 64
    with torch.no_grad():
        logits = model.get_distillation_logits(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 64) and torch.isfinite(logits).all()


def test_image_processor_matches_open_clip_preprocess(converted):
    """Pixels equal OpenCLIP's transform up to one 8-bit level (after normalisation: 1 / 255 / std).

    Both resize 8-bit images with antialiased bicubic filters (PIL in OpenCLIP, torchvision here); their
    rounding differs by at most one intensity level on a few pixels.
    """
    source, _, out = converted
    _, preprocess, _ = load_open_clip(source)
    processor = AutoProcessor.from_pretrained(out)
    images = real_images(4) + [real_images(1)[0].crop((0, 0, 256, 200))]
    for cfg, transform, image_processor in [
        (PREPROCESS_CFG, preprocess, processor.image_processor),
        *[
            (
                cfg,
                image_transform_v2(PreprocessCfg(size=224, **cfg), is_train=False),
                RSMCLIPImageProcessor(**image_processor_kwargs_from_preprocess_cfg(cfg, 224)),
            )
            for cfg in ({}, {"interpolation": "bilinear", "resize_mode": "squash"})
        ],
    ]:
        one_level = 1 / 255 / min(cfg.get("std", [0.26862954, 0.26130258, 0.27577711]))
        for image in images:
            expected = transform(image)
            ours = image_processor(images=image, return_tensors="pt")["pixel_values"][0]
            assert ours.shape == expected.shape
            diff = (ours - expected).abs()
            assert diff.max() <= one_level + 1e-5, (cfg, image.size, diff.max())
            assert (diff > 1e-5).float().mean() < 0.01


@pytest.mark.parametrize("fmt", ["bin", "bin-wrapped"])
def test_bin_checkpoint_gives_the_same_model(converted, tmp_path, fmt):
    source, state_dict, out = converted
    folder = tmp_path / "open_clip"
    shutil.copytree(source, folder)
    (folder / "open_clip_model.safetensors").unlink()
    payload = (
        state_dict if fmt == "bin" else {"state_dict": {f"module.{k}": v for k, v in state_dict.items()}}
    )
    torch.save(payload, folder / "open_clip_pytorch_model.bin")
    from_bin = convert_open_clip(folder, tmp_path / "rsmclip", config_overrides={"dino_out_dim": 64})
    a, b = load_file(str(out / "model.safetensors")), load_file(str(from_bin / "model.safetensors"))
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a if not k.startswith("distillation_head."))


class _NotATensor:
    pass


def test_bin_with_arbitrary_pickle_is_refused(tmp_path):
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save({"visual.proj": torch.zeros(2, 2), "payload": _NotATensor()}, path)
    with pytest.raises(ConversionError, match="weights_only=True"):
        load_open_clip_weights(path)


def test_unmapped_missing_and_misshaped_keys_are_listed(converted, text_dir):
    _, state_dict, _ = converted
    config = rsmclip_config_from_open_clip(model_cfg(text_dir))
    extra = {
        **state_dict,
        "visual.extra_tokens": torch.zeros(3),
        "text.pooler.dense.weight": torch.zeros(2, 2),
    }
    with pytest.raises(ConversionError) as error:
        open_clip_to_rsmclip_state_dict(extra, config, source="ckpt.safetensors")
    assert "visual.extra_tokens" in str(error.value) and "text.pooler.dense.weight" in str(error.value)
    assert "ckpt.safetensors" in str(error.value)

    missing = {k: v for k, v in state_dict.items() if k not in ("visual.ln_post.bias", "text.proj.2.weight")}
    with pytest.raises(ConversionError) as error:
        open_clip_to_rsmclip_state_dict(missing, config)
    assert "vision_model.post_layernorm.bias" in str(error.value) and "text_projection.2.weight" in str(
        error.value
    )

    misshaped = {**state_dict, "visual.proj": torch.zeros(64, 8)}
    with pytest.raises(ConversionError, match=r"visual_projection.weight \(8, 64\) != \(16, 64\)"):
        open_clip_to_rsmclip_state_dict(misshaped, config)


@pytest.mark.parametrize(
    ("section", "change", "message"),
    [
        ("vision_cfg", {"pool_type": "avg"}, "pool_type"),
        ("vision_cfg", {"ls_init_value": 1e-5}, "ls_init_value"),
        ("vision_cfg", {"timm_model_name": "vit_base_patch32_224"}, "timm_model_name"),
        ("vision_cfg", {"layers": [3, 4, 6, 3]}, "ResNet"),
        ("text_cfg", {"hf_pooler_type": "cls_pooler"}, "pooling layer"),
        ("text_cfg", {"hf_proj_type": None}, "hf_proj_type"),
        ("text_cfg", {"hf_model_name": None}, "hf_model_name"),
        ("text_cfg", {"context_length": 64}, "context_length"),
        (None, {"init_logit_bias": -10.0}, "SigLIP"),
    ],
)
def test_unsupported_architectures_are_refused(text_dir, section, change, message):
    cfg = model_cfg(text_dir)
    (cfg[section] if section else cfg).update(change)
    with pytest.raises(ConversionError, match=message):
        rsmclip_config_from_open_clip(cfg)


def test_unsupported_preprocessing_is_refused():
    with pytest.raises(ConversionError, match="resize_mode='longest'"):
        image_processor_kwargs_from_preprocess_cfg({"resize_mode": "longest"}, 224)


def test_quick_gelu_cls_pooler_linear_projection(tmp_path, text_dir):
    """The other supported variants: QuickGELU image tower, first-token text pooling, linear text projection."""
    cfg = {
        **model_cfg(text_dir, hf_pooler_type="cls_last_hidden_state_pooler", hf_proj_type="linear"),
        "quick_gelu": True,
    }
    write_open_clip_checkpoint(tmp_path / "open_clip", cfg, seed=2, with_tokenizer=text_dir)
    out = convert_open_clip(
        tmp_path / "open_clip", tmp_path / "rsmclip", config_overrides={"dino_out_dim": 64}
    )
    model = AutoModel.from_pretrained(out).eval()
    assert (model.config.vision_config.hidden_act, model.config.text_pooler_type) == (
        "quick_gelu",
        "cls_pooler",
    )
    reference, preprocess, tokenizer = load_open_clip(tmp_path / "open_clip")
    pixels = torch.stack([preprocess(im) for im in real_images()])
    assert_same_outputs(reference, model, pixels, tokenizer(texts_in_all_languages()[:12]))
    # ...and back: OpenCLIP loads the export with the same options.
    export_to_open_clip(out, tmp_path / "back")
    back, _, _ = load_open_clip(tmp_path / "back")
    assert_same_outputs(back, model, pixels, tokenizer(texts_in_all_languages()[:12]))


def test_tokenizer_from_hf_tokenizer_name(tmp_path, text_dir, converted):
    """Without tokenizer files in the checkpoint, the tokenizer named by `hf_tokenizer_name` is used."""
    source, _, _ = converted
    folder = tmp_path / "open_clip"
    folder.mkdir()
    for name in ("open_clip_config.json", "open_clip_model.safetensors"):
        shutil.copy(source / name, folder / name)
    out = convert_open_clip(folder, tmp_path / "rsmclip", config_overrides={"dino_out_dim": 64})
    processor = AutoProcessor.from_pretrained(out)
    texts = texts_in_all_languages()
    batch = processor(text=texts, return_tensors="pt")
    assert_same_token_ids(batch["input_ids"], batch["attention_mask"], HFTokenizer(str(text_dir))(texts))
    assert f"Tokenizer: `{text_dir}`" in (out / "README.md").read_text()


# ------------------------------------------------------------------------------------- RS-M-CLIP -> OpenCLIP
def test_export_matches_open_clip(tmp_path):
    """A model made here (not converted) serves OpenCLIP users: same embeddings, logits, tokens and pixels."""
    model, processor = make_tiny_model_and_processor(tmp_path / "tiny", dino_out_dim=64)
    perturb_(model, seed=3, skip="distillation_head.")
    model.save_pretrained(tmp_path / "rsmclip")
    processor.save_pretrained(tmp_path / "rsmclip")
    out = export_to_open_clip(tmp_path / "rsmclip", tmp_path / "open_clip")

    saved = json.loads((out / "open_clip_config.json").read_text())
    # A non-standard text tower: OpenCLIP reads its architecture from the folder's own config.json.
    assert saved["model_cfg"]["text_cfg"]["hf_model_name"] == str(out.resolve())
    assert XLMRobertaConfig.from_pretrained(out).hidden_size == model.config.text_config.hidden_size
    assert not any(k.startswith("distillation") for k in load_file(str(out / "open_clip_model.safetensors")))

    reference, preprocess, tokenizer = load_open_clip(out)
    texts = texts_in_all_languages()
    images = real_images()
    batch = processor(text=texts, images=images, return_tensors="pt")
    assert_same_token_ids(batch["input_ids"], batch["attention_mask"], tokenizer(texts))
    pixels = torch.cat([torch.stack([preprocess(im) for im in images]), torch.randn(2, 3, 32, 32)])
    assert_same_outputs(reference, model.eval(), pixels, tokenizer(texts))
    one_level = 1 / 255 / min(processor.image_processor.image_std)
    assert (batch["pixel_values"] - pixels[:3]).abs().max() <= one_level + 1e-5


def test_round_trip_is_exact(converted, tmp_path):
    """OpenCLIP -> RS-M-CLIP -> OpenCLIP gives back every tensor bit for bit and an equivalent configuration."""
    source, state_dict, out = converted
    back = export_to_open_clip(
        out,
        tmp_path / "back",
        hf_model_name=json.loads((source / "open_clip_config.json").read_text())["model_cfg"]["text_cfg"][
            "hf_model_name"
        ],
    )
    exported = load_file(str(back / "open_clip_model.safetensors"))
    assert set(exported) == set(state_dict)
    assert all(torch.equal(exported[k], state_dict[k]) for k in state_dict)
    original = json.loads((source / "open_clip_config.json").read_text())
    saved = json.loads((back / "open_clip_config.json").read_text())
    assert (
        rsmclip_config_from_open_clip(saved["model_cfg"]).to_dict()
        == rsmclip_config_from_open_clip(original["model_cfg"]).to_dict()
    )
    for key in ("mean", "std", "interpolation"):
        assert saved["preprocess_cfg"][key] == PREPROCESS_CFG[key]
    assert not (back / "config.json").exists()  # hf_model_name given: no text config needed in the folder


# ------------------------------------------------------------------------------------------ sources and CLI
def test_hub_id_is_read_from_the_hugging_face_cache(converted, tmp_path):
    """`hf-hub:org/name` goes through huggingface_hub (here offline, from a cache laid out as the Hub's)."""
    source, _, out = converted
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--org--tiny-open-clip"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(source, repo / "snapshots" / commit)
    (repo / "snapshots" / commit / "README.md").write_text("---\nlicense: mit\n---\n# tiny\n")
    from_hub = convert_open_clip(
        "hf-hub:org/tiny-open-clip",
        tmp_path / "rsmclip",
        cache_dir=tmp_path / "cache",
        local_files_only=True,
        config_overrides={"dino_out_dim": 64},
    )
    card = (from_hub / "README.md").read_text()
    assert "`hf-hub:org/tiny-open-clip` at revision `0123456789abcdef0123456789abcdef01234567`" in card
    assert "license: mit" in card and "base_model: org/tiny-open-clip" in card
    a, b = load_file(str(out / "model.safetensors")), load_file(str(from_hub / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a if not k.startswith("distillation_head."))

    with pytest.raises(ConversionError, match="not in the local cache|local Hugging Face cache"):
        convert_open_clip(
            "org/not-cached", tmp_path / "x", cache_dir=tmp_path / "cache", local_files_only=True
        )


def test_builtin_config_of_the_rs_m_clip_start_point():
    """The LAION start point is recognised by its Hub id (OpenCLIP's pretrained tag) and derives exactly the
    `rs-m-clip` preset: ViT-B/32 with exact GELU, XLM-R base, mean pooling, MLP 768 -> 640 -> 512."""
    name, cfg, preprocess_cfg = builtin_open_clip_config(
        repo_id="laion/CLIP-ViT-B-32-xlm-roberta-base-laion5B-s13B-b90k"
    )
    assert name == "xlm-roberta-base-ViT-B-32"
    derived = rsmclip_config_from_open_clip(cfg)
    preset = RSMCLIPConfig.from_preset("rs-m-clip")
    vision_fields = (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "image_size",
        "patch_size",
        "hidden_act",
        "layer_norm_eps",
    )
    for field in vision_fields:
        assert getattr(derived.vision_config, field) == getattr(preset.vision_config, field), field
    assert text_architecture(derived.text_config) == text_architecture(preset.text_config)
    for field in ("projection_dim", "text_pooler_type", "text_projection_type", "text_projection_hidden_dim"):
        assert getattr(derived, field) == getattr(preset, field), field
    assert derived.text_projection_hidden_dim == 640
    # ...so exporting such a model names the text tower as the original OpenCLIP config does.
    assert known_text_architecture_name(derived.text_config) == "xlm-roberta-base"
    assert known_text_architecture_name(XLMRobertaConfig(**TEXT_CONFIG)) is None
    kwargs = image_processor_kwargs_from_preprocess_cfg(preprocess_cfg, derived.vision_config.image_size)
    assert kwargs["size"] == {"shortest_edge": 224} and kwargs["crop_size"] == {"height": 224, "width": 224}
    assert kwargs["image_mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])


def test_folder_without_open_clip_config_needs_an_architecture(converted, tmp_path):
    source, _, _ = converted
    folder = tmp_path / "open_clip"
    folder.mkdir()
    shutil.copy(source / "open_clip_model.safetensors", folder)
    with pytest.raises(ConversionError, match="--open-clip-model"):
        convert_open_clip(folder, tmp_path / "out")
    # A built-in architecture that does not fit the weights: every mismatching tensor is named.
    with pytest.raises(
        ConversionError,
        match=r"missing from the checkpoint \(\d+\).*shape mismatch \(\d+\): .*"
        r"patch_embedding.weight \(64, 3, 8, 8\) != \(768, 3, 32, 32\)",
    ):
        convert_open_clip(folder, tmp_path / "out", open_clip_model="xlm-roberta-base-ViT-B-32")


def test_parse_source(tmp_path):
    assert parse_source(str(tmp_path)) == ("local", str(tmp_path))
    assert parse_source("hf-hub:joaodaniel/RS-M-CLIP") == ("hub", "joaodaniel/RS-M-CLIP")
    assert parse_source("laion/CLIP-ViT-B-32-xlm-roberta-base-laion5B-s13B-b90k")[0] == "hub"
    for bad in ("hf-hub:no-slash", str(tmp_path / "missing" / "deep" / "path")):
        with pytest.raises(ConversionError):
            parse_source(bad)
    (tmp_path / "file.bin").write_bytes(b"")
    with pytest.raises(ConversionError, match="got a file"):
        parse_source(str(tmp_path / "file.bin"))


def test_cli_convert_and_export(converted, tmp_path, capsys):
    source, _, _ = converted
    parser = argparse.ArgumentParser(prog="rsmclip")
    subparsers = parser.add_subparsers(dest="command")
    conversion_cli.add_subparser(subparsers)

    args = parser.parse_args(["convert", str(source), str(tmp_path / "rsmclip"), "--dino-out-dim", "32"])
    assert args.func(args) == 0
    assert AutoModel.from_pretrained(tmp_path / "rsmclip").config.dino_out_dim == 32
    args = parser.parse_args(["export", str(tmp_path / "rsmclip"), str(tmp_path / "oc"), "--to-open-clip"])
    assert args.func(args) == 0
    assert "local-dir:" in capsys.readouterr().out
    assert (tmp_path / "oc" / "open_clip_model.safetensors").is_file()

    # user errors: one `error: ...` line on stderr, exit status 2 (as `rsmclip` runs every command)
    args = parser.parse_args(["convert", str(tmp_path / "nowhere" / "x" / "y"), str(tmp_path / "z")])
    assert run_command(args.func, args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no such folder" in err and len(err.splitlines()) == 1
    args = parser.parse_args(["export", str(tmp_path / "rsmclip"), str(tmp_path / "oc2")])
    assert run_command(args.func, args) == 2
