"""The standard CLIP (OpenAI CLIP, RemoteCLIP, GeoRSCLIP, SkyCLIP) <-> RS-M-CLIP with a CLIP text tower, checked
against the real `open_clip` package.

Reference models are OpenCLIP `CLIP`s (ViT image tower, OpenCLIP's own causal text transformer) built by open_clip
itself with random weights, with the real patch and image sizes of ViT-B/32, ViT-B/16, ViT-L/14 and ViT-H/14 (and
ViT-H/14's 80-wide heads) and tiny widths and depths, with and without QuickGELU. Converted models must give the same
image embeddings, text embeddings and logits (fp32, 1e-5) on real images and on texts in all ten languages, the
export must give back every tensor bit for bit, and the tokenizer built from open_clip's BPE vocabulary must give
`open_clip.tokenize`'s ids on multilingual and edge-case texts. The full-size configurations are checked without
running them: the converted configuration and every tensor shape follow from OpenCLIP's own model config.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from safetensors.torch import load_file
from test_convert_open_clip import (
    ATOL,
    load_open_clip,
    perturb_,
    real_images,
    texts_in_all_languages,
    write_open_clip_checkpoint,
)
from test_hub_loading import _check, _run_fresh
from transformers import AutoModel, AutoProcessor, AutoTokenizer, CLIPProcessor, CLIPTextConfig, CLIPTokenizer

import modeling_rsmclip  # noqa: F401  (registers the model type)
from modeling_rsmclip import RSMCLIPBPETokenizer, RSMCLIPConfig, RSMCLIPModel
from modeling_rsmclip.conversion import (
    ConversionError,
    clip_bpe_tokenizer,
    convert_open_clip,
    export_to_open_clip,
    load_open_clip_checkpoint,
    open_clip_to_rsmclip_state_dict,
    rsmclip_config_from_open_clip,
)
from modeling_rsmclip.conversion.open_clip_keys import expected_rsmclip_shapes
from modeling_rsmclip.known_models import (
    FAMILIES,
    KNOWN_MODELS,
    get_known_model,
    list_known_models,
)
from modeling_rsmclip.processing_rsmclip import clean_clip_text
from modeling_rsmclip.templates import LANGUAGES

# (OpenCLIP architecture, QuickGELU): the four shapes, and QuickGELU where OpenAI-trained weights use it.
ARCHITECTURES = [
    ("ViT-B-32", False),
    ("ViT-B-32", True),
    ("ViT-B-16", False),
    ("ViT-L-14", False),
    ("ViT-L-14", True),
    ("ViT-H-14", False),
]
FULL_SIZE = [
    "ViT-B-32",
    "ViT-B-32-quickgelu",
    "ViT-B-16",
    "ViT-B-16-quickgelu",
    "ViT-L-14",
    "ViT-L-14-quickgelu",
    "ViT-H-14",
    "ViT-H-14-quickgelu",
]
# Texts where a tokenizer that only splits on whitespace and lower-cases would go wrong: OpenCLIP's cleaning (ftfy,
# HTML entities), the special tokens' strings typed as text, the padding token "!", truncation, and scripts.
EDGE_TEXTS = [
    "!!! ??? ... --- !",
    "<|endoftext|> inside a caption <|startoftext|>",
    "&amp; &lt;tag&gt; &quot;quoted&quot; &amp;lt;",
    "<b>a bold</b> &amp; html caption",
    "&ldquo;curly&rdquo; quotes \u201cdouble\u201d and \u2018single\u2019 it\u2019s",
    "\ufb01elds and \ufb02ooded \ufb00ice, \u0132sselmeer",
    "\uff26\uff35\uff2c\uff2c width \uff11\uff12\uff13\uff0c\u3000ideographic space",
    "停满飞机的机场，旁边有跑道。",
    "테니스 코트가 있는 주거 지역",
    "Спутниковый снимок реки",
    "ΟΔΟΣ ΚΑΙ ΣΠΙΤΙΑ ΣΤΗΝ ΠΟΛΗ",
    "İstanbul Straße ÆØÅ café naïve",
    "e\u0301cole e\u0301te\u0301 (combining accents)",
    "  many   spaces\tand\nnewlines\r\n  ",
    "zero\u200bwidth\u200b spaces and\u00a0no-break\u00a0spaces",
    "control\x00chars\x07 and \x1b[31mterminal colours\x1b[0m",
    "windows-1252 \x93quotes\x94 and \x96 dash",
    "emoji 🛰️🌍🏖️ satellite",
    "numbers 12345 3.14 1,000 km² 50%",
    "it's they're we've I'm you'll he'd",
    "UPPER lower MiXeD",
    "a " * 100,
]


def parity_texts() -> list[str]:
    """The texts fed to both models: a prompt and a caption in each of the ten languages, a text longer than 77
    tokens, and the edge cases (the tokenizer test takes every text of `texts_in_all_languages`)."""
    texts = texts_in_all_languages()
    per_language = len(texts) // len(LANGUAGES)
    picked = [t for i in range(len(LANGUAGES)) for t in texts[i * per_language : i * per_language + 4 : 3]]
    return picked + [texts[per_language - 1]] + EDGE_TEXTS


def cleaning_free(text: str) -> bool:
    """Whether OpenCLIP's cleaning changes nothing that a plain `CLIPTokenizer` does not do itself (collapse
    whitespace, lower-case character by character: Python's `str.lower` also turns a final sigma into "ς")."""
    return clean_clip_text(text) == "".join(ch.lower() for ch in " ".join(text.split()))


def tiny_cfg(name: str, quick_gelu: bool) -> dict:
    """OpenCLIP's `name` with its real image size, patch size and head width, 2 layers and tiny widths."""
    real = open_clip.get_model_config(name)
    vision = real["vision_cfg"]
    head_width = vision.get("head_width", 64)
    cfg = {
        "embed_dim": 32,
        "vision_cfg": {
            "image_size": vision["image_size"],
            "patch_size": vision["patch_size"],
            "layers": 2,
            "width": 2 * head_width,
            "head_width": head_width,
        },
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 2},
    }
    if quick_gelu:
        cfg["quick_gelu"] = True
    return cfg


def arch_id(arch: tuple[str, bool]) -> str:
    return arch[0] + ("-quickgelu" if arch[1] else "")


def max_differences(open_clip_model, model, pixels: torch.Tensor, ids: torch.Tensor) -> dict[str, float]:
    """Largest |difference| of image embeddings, text embeddings and logits; OpenCLIP's logits as its `get_logits`
    computes them, from its own embeddings (one pass of each tower per model)."""
    with torch.no_grad():
        ref_image = open_clip_model.encode_image(pixels)
        ref_text = open_clip_model.encode_text(ids)
        ref_logits = (
            open_clip_model.logit_scale.exp()
            * F.normalize(ref_image, dim=-1)
            @ F.normalize(ref_text, dim=-1).T
        )
        output = model(input_ids=ids, pixel_values=pixels)
    return {
        "image": (output.vision_model_output.pooler_output - ref_image).abs().max().item(),
        "text": (output.text_model_output.pooler_output - ref_text).abs().max().item(),
        "logits": (output.logits_per_image - ref_logits).abs().max().item(),
    }


@pytest.fixture(scope="module")
def bpe_tokenizer() -> RSMCLIPBPETokenizer:
    return clip_bpe_tokenizer()


@pytest.fixture(scope="module")
def all_texts() -> list[str]:
    return texts_in_all_languages() + EDGE_TEXTS


# ---------------------------------------------------------------------------------------------------- tokenizer
def test_tokenizer_ids_equal_open_clip(bpe_tokenizer, all_texts):
    """Every id, padding included, on captions and prompts in the ten languages and on the edge cases."""
    ours = bpe_tokenizer(all_texts, padding="max_length", truncation=True, max_length=77, return_tensors="pt")
    reference = open_clip.tokenize(all_texts)
    assert ours["input_ids"].shape == reference.shape == (len(all_texts), 77)
    for text, row, ref in zip(all_texts, ours["input_ids"], reference):
        assert row.tolist() == ref.tolist(), text
    # The end-of-text token is the argmax of every row (what the model pools), also for truncated texts.
    assert (reference.argmax(-1) == (reference == 49407).int().argmax(-1)).all()
    assert (reference[:, -1] == 49407).any()  # one text is truncated at 77 tokens


def test_text_cleaning_is_open_clips(all_texts):
    clean = open_clip.tokenizer.get_clean_fn("lower")
    for text in all_texts:
        assert clean_clip_text(text) == clean(text), text


def test_tokenizer_saved_loads_as_clip_tokenizer(bpe_tokenizer, all_texts, tmp_path):
    """The files load back as the same tokenizer, and as a stock `CLIPTokenizer` that pads with 0 and keeps "!"
    and "<|endoftext|>" typed in a text as text; only OpenCLIP's text cleaning is this class's own."""
    bpe_tokenizer.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)  # found by the class name that the package registers
    assert type(again) is RSMCLIPBPETokenizer
    stock = CLIPTokenizer.from_pretrained(tmp_path)
    assert (stock.pad_token_id, stock.eos_token_id, stock.model_max_length) == (0, 49407, 77)
    kwargs = {"padding": "max_length", "truncation": True, "max_length": 77}
    assert again(all_texts, **kwargs)["input_ids"] == bpe_tokenizer(all_texts, **kwargs)["input_ids"]
    plain = [t for t in all_texts if cleaning_free(t)]
    assert len(plain) > 30 and "!!! ??? ... --- !" in plain
    assert stock(plain, **kwargs)["input_ids"] == open_clip.tokenize(plain).tolist()


def test_empty_texts_are_refused(bpe_tokenizer):
    with pytest.raises(ValueError, match="empty"):
        bpe_tokenizer(["a beach", "  "])
    with pytest.raises(ValueError, match="no texts"):
        bpe_tokenizer([])


# ------------------------------------------------------------------------------------------------- the model
def test_clip_text_tower_config():
    config = RSMCLIPConfig.from_preset("clip-vit-b-32")
    assert isinstance(config.text_config, CLIPTextConfig) and config.is_clip_text
    assert (config.text_pooler_type, config.text_projection_type) == ("argmax_pooler", "linear")
    # A saved config comes back with the same tower; the XLM-R default is untouched.
    again = RSMCLIPConfig.from_dict(config.to_dict())
    assert again.to_dict() == config.to_dict() and again.is_clip_text
    default = RSMCLIPConfig()
    assert (default.text_tower_type, default.text_pooler_type, default.text_projection_type) == (
        "xlm-roberta",
        "mean_pooler",
        "mlp",
    )
    with pytest.raises(ValueError, match="does not apply"):
        RSMCLIPConfig.from_preset("clip-vit-b-32", text_pooler_type="mean_pooler")
    with pytest.raises(ValueError, match="does not apply"):
        RSMCLIPConfig(text_pooler_type="argmax_pooler")


def test_clip_text_pooling_is_the_eot_token_and_ignores_padding():
    config = RSMCLIPConfig.from_preset(
        "clip-vit-b-32",
        vision_config={
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
        },
        text_config={
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
        },
        projection_dim=16,
        dino_out_dim=64,
    )
    torch.manual_seed(0)
    model = RSMCLIPModel(config).eval()
    ids = torch.tensor([[49406, 320, 2533, 49407]])
    padded = torch.cat([ids, torch.zeros(1, 5, dtype=torch.long)], dim=1)
    mask = (torch.arange(9) < 4).long()[None]
    with torch.no_grad():
        base = model.get_text_features(input_ids=ids).pooler_output
        hidden = model.text_model(input_ids=ids).last_hidden_state
        by_hand = model.text_projection(hidden[:, 3])
        for kwargs in ({"input_ids": padded}, {"input_ids": padded, "attention_mask": mask}):
            torch.testing.assert_close(
                model.get_text_features(**kwargs).pooler_output, base, atol=1e-6, rtol=0
            )
    torch.testing.assert_close(base, by_hand, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------- OpenCLIP <-> RS-M-CLIP parity
def convert_tiny(arch: tuple[str, bool], root: Path) -> tuple[Path, dict[str, torch.Tensor], Path]:
    """(OpenCLIP folder, its state dict, converted folder) of a tiny model of `arch` made by open_clip."""
    state_dict = write_open_clip_checkpoint(root / "open_clip", tiny_cfg(*arch), seed=7)
    out = convert_open_clip(root / "open_clip", root / "rsmclip", config_overrides={"dino_out_dim": 64})
    return root / "open_clip", state_dict, out


@pytest.fixture(scope="module")
def b32_quickgelu(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny ViT-B/32 with QuickGELU (OpenAI CLIP's shape): (OpenCLIP folder, converted folder)."""
    source, _, out = convert_tiny(("ViT-B-32", True), tmp_path_factory.mktemp("b32-quickgelu"))
    return source, out


@pytest.mark.parametrize("arch", ARCHITECTURES, ids=arch_id)
def test_convert_and_export_match_open_clip(arch, tmp_path):
    name, quick_gelu = arch
    source, state_dict, out = convert_tiny(arch, tmp_path)
    texts = parity_texts()
    model = AutoModel.from_pretrained(out).eval()
    config = model.config
    real = open_clip.get_model_config(name)["vision_cfg"]
    act = "quick_gelu" if quick_gelu else "gelu"
    assert type(model.text_model).__name__ == "CLIPTextModel" and config.is_clip_text
    assert (config.vision_config.patch_size, config.vision_config.image_size) == (
        real["patch_size"],
        real["image_size"],
    )
    assert (config.vision_config.hidden_act, config.text_config.hidden_act) == (act, act)

    reference, preprocess, tokenizer = load_open_clip(source)
    images = real_images()
    pixels = torch.cat([torch.stack([preprocess(im) for im in images]), torch.randn(2, 3, 224, 224)])
    ids = tokenizer(texts)
    diffs = max_differences(reference, model, pixels, ids)
    print(f"\n{arch_id((name, quick_gelu))} OpenCLIP -> RS-M-CLIP max |diff|: {diffs}")
    assert max(diffs.values()) <= ATOL, diffs

    # ...and back: the export is OpenCLIP's standard CLIP with every tensor bit for bit.
    back = export_to_open_clip(out, tmp_path / "back")
    saved = json.loads((back / "open_clip_config.json").read_text())
    assert "hf_model_name" not in saved["model_cfg"]["text_cfg"]
    assert saved["model_cfg"].get("quick_gelu", False) == quick_gelu
    exported = load_file(str(back / "open_clip_model.safetensors"))
    assert set(exported) == set(state_dict)
    assert all(torch.equal(exported[k], state_dict[k]) for k in state_dict)
    reloaded, _, back_tokenizer = load_open_clip(back)
    assert torch.equal(back_tokenizer(texts), ids)
    diffs = max_differences(reloaded, model, pixels, ids)
    print(f"{arch_id((name, quick_gelu))} RS-M-CLIP -> OpenCLIP max |diff|: {diffs}")
    assert max(diffs.values()) <= ATOL, diffs


def test_processor_matches_open_clip(b32_quickgelu):
    """The converted folder's processor: OpenCLIP's ids (padded to the longest here, with the attention mask), the
    same text embeddings as OpenCLIP's on its 77-long rows, and pixels within one 8-bit level of its transform."""
    source, out = b32_quickgelu
    model = AutoModel.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    assert type(processor.tokenizer) is RSMCLIPBPETokenizer
    reference, preprocess, tokenizer = load_open_clip(source)
    texts, images = parity_texts(), real_images()
    ids = tokenizer(texts)
    batch = processor(text=texts, images=images, return_tensors="pt")
    length = batch["input_ids"].shape[1]
    assert batch["input_ids"].tolist() == ids[:, :length].tolist()
    with torch.no_grad():
        text = model.get_text_features(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).pooler_output
        torch.testing.assert_close(text, reference.encode_text(ids), atol=ATOL, rtol=0)
    pixels = torch.stack([preprocess(im) for im in images])
    one_level = 1 / 255 / min(processor.image_processor.image_std)
    assert (batch["pixel_values"] - pixels).abs().max() <= one_level + 1e-5


def test_stock_clip_processor_gives_the_same_embeddings(b32_quickgelu):
    """A stock `CLIPProcessor` with the folder's image processor and a plain `CLIPTokenizer` works with the model:
    on texts that OpenCLIP's cleaning leaves alone, the same embeddings (padding changes nothing)."""
    _, out = b32_quickgelu
    processor = AutoProcessor.from_pretrained(out)
    stock = CLIPProcessor(
        image_processor=processor.image_processor, tokenizer=CLIPTokenizer.from_pretrained(out)
    )
    model = AutoModel.from_pretrained(out).eval()
    texts = [t for t in texts_in_all_languages() if cleaning_free(t)]
    images = real_images(2)
    ours = processor(text=texts, images=images, return_tensors="pt")
    theirs = stock(text=texts, images=images, padding=True, truncation=True, return_tensors="pt")
    assert torch.equal(ours["input_ids"], theirs["input_ids"])
    with torch.no_grad():
        a = model(**ours).logits_per_image
        b = model(**{k: theirs[k] for k in ("input_ids", "attention_mask", "pixel_values")}).logits_per_image
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_converted_clip_folder_loads_with_trust_remote_code(b32_quickgelu, tmp_path):
    """In a fresh process without this package: AutoModel, AutoProcessor (the BPE tokenizer from the folder's code)
    and both pipelines, on a converted CLIP folder."""
    _, out = b32_quickgelu
    from PIL import Image

    files = sorted((Path(__file__).parents[1] / "examples" / "sample" / "ucm" / "images").glob("*.jpg"))[:3]
    model = AutoModel.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    inputs = processor(
        images=[Image.open(f) for f in files],
        text=["a beach", "uma floresta densa", "网球场"],
        return_tensors="pt",
    )
    with torch.no_grad():
        expected = model(**inputs).logits_per_image
    result = _run_fresh(str(out), files, tmp_path, {})
    _check(result, expected)


# ------------------------------------------------------------------------------- full-size configurations
@pytest.mark.parametrize("name", FULL_SIZE)
def test_full_size_config_follows_open_clip(name):
    """Without running them: the converted configuration of each full-size OpenCLIP architecture is the matching
    preset (the activation set to QuickGELU in both towers for the -quickgelu ones), and every tensor of OpenCLIP's
    model (built on the meta device) maps onto the model of that configuration with its shape."""
    model_cfg = open_clip.get_model_config(name)
    derived = rsmclip_config_from_open_clip(model_cfg)
    base = name.removesuffix("-quickgelu")
    act = "quick_gelu" if name.endswith("-quickgelu") else "gelu"
    preset = RSMCLIPConfig.from_preset(
        f"clip-{base.lower()}", vision_config={"hidden_act": act}, text_config={"hidden_act": act}
    )
    for section in ("vision_config", "text_config"):
        ours, expected = getattr(derived, section).to_dict(), getattr(preset, section).to_dict()
        fields = (
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "hidden_act",
            "layer_norm_eps",
            "image_size",
            "patch_size",
            "vocab_size",
            "max_position_embeddings",
            "pad_token_id",
            "eos_token_id",
        )
        assert {k: ours.get(k) for k in fields} == {k: expected.get(k) for k in fields}, section
    for field in ("projection_dim", "text_pooler_type", "text_projection_type", "logit_scale_init_value"):
        assert getattr(derived, field) == getattr(preset, field), field
    vision = model_cfg["vision_cfg"]
    assert derived.vision_config.num_attention_heads == vision["width"] // vision.get("head_width", 64)
    assert derived.text_config.num_attention_heads == model_cfg["text_cfg"]["heads"]

    with torch.device("meta"):
        reference = CLIP(**model_cfg)
    state_dict = reference.state_dict()
    mapped = open_clip_to_rsmclip_state_dict(state_dict, derived, source=name)  # checks every shape
    shapes = expected_rsmclip_shapes(derived)
    assert set(mapped) == set(shapes)
    assert sum(v.numel() for v in mapped.values()) == sum(p.numel() for p in reference.parameters())


# ------------------------------------------------------------------------------------------- refusals
def test_resnet_and_timm_towers_are_refused_naming_the_tower():
    with pytest.raises(ConversionError, match="ModifiedResNet.*RN50"):
        rsmclip_config_from_open_clip(open_clip.get_model_config("RN50"), where="RemoteCLIP-RN50.pt")
    with pytest.raises(ConversionError, match=r"RemoteCLIP-RN50\.pt.*ModifiedResNet"):
        rsmclip_config_from_open_clip(
            open_clip.get_model_config("RN50-quickgelu"), where="RemoteCLIP-RN50.pt"
        )
    timm = next(
        n for n in open_clip.list_models() if "timm_model_name" in open_clip.get_model_config(n)["vision_cfg"]
    )
    with pytest.raises(ConversionError, match="timm model"):
        rsmclip_config_from_open_clip(open_clip.get_model_config(timm))


@pytest.mark.parametrize(
    "change",
    [
        {"pool_type": "eos"},
        {"proj_bias": True},
        {"embed_cls": True},
        {"no_causal_mask": True},
        {"ls_init_value": 1e-5},
        {"hf_tokenizer_name": "some/tokenizer"},
        {"tokenizer_kwargs": {"clean": "canonicalize"}},
        {"context_length": 64},
        {"norm_kwargs": {"elementwise_affine": False}},
    ],
    ids=lambda change: next(iter(change)),
)
def test_unsupported_text_options_are_refused(change):
    cfg = tiny_cfg("ViT-B-32", False)
    cfg["text_cfg"].update(change)
    with pytest.raises(ConversionError, match=next(iter(change))):
        rsmclip_config_from_open_clip(cfg)


def test_a_mismatched_checkpoint_lists_its_keys():
    state_dict = _bare_state_dict(tiny_cfg("ViT-B-32", False), seed=1)
    config = rsmclip_config_from_open_clip(tiny_cfg("ViT-B-32", False))
    extra = {**state_dict, "text_decoder.resblocks.0.attn.in_proj_weight": torch.zeros(3, 1)}
    missing = {k: v for k, v in state_dict.items() if k != "ln_final.bias"}
    with pytest.raises(ConversionError, match="text_decoder.resblocks.0"):
        open_clip_to_rsmclip_state_dict(extra, config)
    with pytest.raises(ConversionError, match="text_model.final_layer_norm.bias"):
        open_clip_to_rsmclip_state_dict(missing, config)


# ------------------------------------------------------------------------------------------- known models
def test_known_models_table():
    names = [m.name for m in KNOWN_MODELS]
    assert len(names) == len(set(names)) and list_known_models() == list(KNOWN_MODELS)
    for model in KNOWN_MODELS:
        assert model.family in FAMILIES and model.paper
        assert (model.hub_id is None) == (model.url is not None)
        assert model.hub_id is None or model.hub_id.count("/") == 1
        if model.family == "openclip-clip":
            assert model.english_only and model.open_clip_model, model.name
    for name in ("remoteclip-vit-b-32", "remoteclip-vit-l-14", "remoteclip-rn50", "georsclip-vit-b-32"):
        assert get_known_model(name).english_only
    assert get_known_model("rs-m-clip").languages == LANGUAGES
    assert get_known_model("laion-clip-vit-b-32-xlm-roberta-base").languages is None
    assert get_known_model("RemoteCLIP-ViT-B-32").file == "RemoteCLIP-ViT-B-32.pt"  # case-insensitive
    assert get_known_model("git-rsclip").family == "siglip" and not get_known_model("git-rsclip").convertible
    assert [m.name for m in list_known_models("rsmclip-xlmr")] == [
        "rs-m-clip",
        "laion-clip-vit-b-32-xlm-roberta-base",
    ]
    with pytest.raises(KeyError, match="remoteclip-vit-b-32"):
        get_known_model("remoteclip-vit-b32")


@pytest.mark.parametrize("model", [m for m in KNOWN_MODELS if m.open_clip_model], ids=lambda m: m.name)
def test_known_architectures_convert_or_are_refused(model):
    """Each known OpenCLIP checkpoint's architecture derives a configuration, except the ResNet one, which is
    refused naming its tower."""
    cfg = open_clip.get_model_config(model.open_clip_model)
    assert cfg is not None, model.open_clip_model
    if not model.supported:
        with pytest.raises(ConversionError, match="ModifiedResNet"):
            rsmclip_config_from_open_clip(cfg)
        with pytest.raises(ConversionError, match="ModifiedResNet"):
            convert_open_clip(model.name, "unused")
        return
    config = rsmclip_config_from_open_clip(cfg)
    assert config.is_clip_text == (model.family == "openclip-clip")
    quick = "quickgelu" in model.open_clip_model or "QuickGELU" in model.architecture
    assert (config.vision_config.hidden_act == "quick_gelu") == quick


def test_known_models_that_cannot_be_converted_say_how():
    with pytest.raises(ConversionError, match="transformers-native") as error:
        convert_open_clip("git-rsclip", "out")
    assert "lcybuaa/Git-RSCLIP" in str(error.value)
    with pytest.raises(ConversionError) as error:
        convert_open_clip("skyclip-vit-l-14", "out")
    message = str(error.value)
    assert "not on the Hugging Face Hub" in message
    assert (
        "curl -O https://opendatasharing.s3.us-west-2.amazonaws.com/SkyScript/ckpt/SkyCLIP_ViT_L14_top50pct.zip"
        in (message)
    )
    assert "rsmclip convert skyclip-vit-l-14-checkpoint out --open-clip-model ViT-L-14-quickgelu" in message


def _tiny_registered_config(root: Path) -> str:
    """A tiny ViT-B/32-shaped CLIP registered in open_clip's model registry (what the known names resolve to is
    full size, too slow here); returns its name."""
    folder = root / "configs"
    folder.mkdir(exist_ok=True)
    (folder / "tiny-test-ViT-B-32.json").write_text(json.dumps(tiny_cfg("ViT-B-32", False)))
    open_clip.add_model_config(folder)
    return "tiny-test-ViT-B-32"


def _bare_state_dict(cfg: dict, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = CLIP(**cfg)
    perturb_(model, seed)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def test_local_folders_of_known_checkpoints_are_recognised(tmp_path):
    """`hf download REPO FILE --local-dir DIR` keeps the file's path: DIR is recognised as that known model, with
    its architecture; an unpacked archive with one training checkpoint converts with --open-clip-model."""
    name = _tiny_registered_config(tmp_path)
    state_dict = _bare_state_dict(tiny_cfg("ViT-B-32", False), seed=3)
    geors = tmp_path / "georsclip" / "ckpt"
    geors.mkdir(parents=True)
    torch.save(state_dict, geors / "RS5M_ViT-B-32.pt")
    (tmp_path / "georsclip" / ".cache").mkdir()  # what `hf download --local-dir` leaves beside the files
    checkpoint = load_open_clip_checkpoint(tmp_path / "georsclip")
    assert checkpoint.extra == {"known_model": "georsclip-vit-b-32", "open_clip_model": "ViT-B-32-quickgelu"}
    assert checkpoint.model_cfg["quick_gelu"] is True

    sky = tmp_path / "skyclip" / "SkyCLIP_ViT_B32_top50pct"
    sky.mkdir(parents=True)
    training = {"epoch": 20, "name": "run", "state_dict": {f"module.{k}": v for k, v in state_dict.items()}}
    torch.save(training, sky / "epoch_20.pt")
    out = convert_open_clip(
        tmp_path / "skyclip", tmp_path / "sky-hf", open_clip_model=name, config_overrides={"dino_out_dim": 64}
    )
    converted = load_file(str(out / "model.safetensors"))
    expected = open_clip_to_rsmclip_state_dict(
        state_dict, rsmclip_config_from_open_clip(tiny_cfg("ViT-B-32", False))
    )
    assert all(torch.equal(converted[k], v) for k, v in expected.items())


# Runs `rsmclip convert` with each argument list of argv[2] (JSON), in one process, after registering the tiny
# config folder argv[1] with open_clip; prints each exit status and marks where each command's stderr starts.
OFFLINE_CONVERT = r"""
import json, sys
import open_clip
from modeling_rsmclip.cli import main
open_clip.add_model_config(sys.argv[1])
for args in json.loads(sys.argv[2]):
    print("--- next", file=sys.stderr, flush=True)
    print("status", main(["convert", *args]), flush=True)
"""


def test_known_name_offline(tmp_path):
    """With HF_HUB_OFFLINE=1, in a fresh process: a known name whose file is not in the Hugging Face cache gets one
    error line with the download and convert commands; with its file in a Hub-cache-shaped folder, the same name
    converts from there (the architecture set to a tiny one with --open-clip-model: the real one is full size)."""
    name = _tiny_registered_config(tmp_path)
    state_dict = _bare_state_dict(tiny_cfg("ViT-B-32", False), seed=5)
    # The Hub cache layout huggingface_hub downloads into: models--org--name/{refs/main, snapshots/<commit>/...}
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--chendelong--RemoteCLIP"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    torch.save(state_dict, repo / "snapshots" / commit / "RemoteCLIP-ViT-B-32.pt")

    commands = [
        ["remoteclip-vit-l-14", "remoteclip-l-hf"],  # not cached
        ["remoteclip-vit-b-32", "remoteclip-hf", "--open-clip-model", name, "--dino-out-dim", "64"],
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(
        {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    )
    env["PYTHONPATH"] = str(Path(__file__).parents[1])
    result = subprocess.run(
        [sys.executable, "-c", OFFLINE_CONVERT, str(tmp_path / "configs"), json.dumps(commands)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    statuses = [line for line in result.stdout.splitlines() if line.startswith("status")]
    assert statuses == ["status 2", "status 0"], result.stderr[-3000:]
    errors = [line for line in result.stderr.split("--- next")[1].splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: remoteclip-vit-l-14 (RemoteCLIP ViT-L/14)"), (
        errors
    )
    download = (
        "hf download chendelong/RemoteCLIP RemoteCLIP-ViT-L-14.pt --local-dir remoteclip-vit-l-14-checkpoint"
    )
    assert download in errors[0]
    assert (
        "rsmclip convert remoteclip-vit-l-14-checkpoint remoteclip-l-hf --open-clip-model ViT-L-14"
        in errors[0]
    )
    assert not (tmp_path / "remoteclip-l-hf").exists()

    out = tmp_path / "remoteclip-hf"
    card = (out / "README.md").read_text()
    assert f"`hf-hub:chendelong/RemoteCLIP (RemoteCLIP-ViT-B-32.pt)` at revision `{commit}`" in card
    assert "RemoteCLIP ViT-B/32 (`remoteclip-vit-b-32`" in card and "English captions only" in card
    assert "arXiv:2306.11029" in card
    converted = load_file(str(out / "model.safetensors"))
    expected = open_clip_to_rsmclip_state_dict(
        state_dict, rsmclip_config_from_open_clip(tiny_cfg("ViT-B-32", False))
    )
    assert all(torch.equal(converted[k], v) for k, v in expected.items())
