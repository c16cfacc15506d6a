"""Hub-native CLIP, SigLIP, SigLIP 2 and AltCLIP checkpoints: the families module and the embedder, each result
against the model's own forward pass.

Tiny random-weight models of each class, saved with `save_pretrained` with real tokenizers (CLIP's BPE from
open_clip's vocabulary file, SentencePiece / BPE models trained on the bundled captions for SigLIP and SigLIP 2,
the XLM-R-style one for AltCLIP), go through the family table, the text rules, the embedder, zero-shot scoring (int8
included) and the patch features of `map segment`. The references are computed here with the model called as its
card says (SigLIP: texts padded to 64 tokens, no attention mask, sigmoid of `logits_per_image`). Every user command
on every family: tests/test_family_commands.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _family_fixtures import (
    ALL_FAMILIES,
    HUB_FAMILIES,
    SIGMOID,
    family_model,
    reference_forward,
    reference_text_inputs,
)
from PIL import Image

from modeling_rsmclip.testing import sample_dir

TEXTS = ["a beach with blue sea", "many planes parked at the airport", "停满飞机的机场", "uma floresta densa"]


def _ucm_images(count: int = 6) -> list[Path]:
    return sorted((sample_dir() / "ucm" / "images").glob("*.jpg"), key=lambda p: int(p.stem))[:count]


def _pil(paths: list[Path]) -> list[Image.Image]:
    return [Image.open(p).convert("RGB") for p in paths]


@pytest.fixture(params=HUB_FAMILIES)
def family(request) -> str:
    return request.param


# ----------------------------------------------------------------------------------------------- the family table
def test_each_class_is_its_family_with_its_rules(family):
    from modeling_rsmclip.inference import families

    model, processor = family_model(family)
    info = families.model_family(model)
    assert info.name == family and info.model_class == type(model).__name__
    ref = reference_forward(family, model, processor, TEXTS[:1], _pil(_ucm_images(1)))
    assert families.embedding_dim(model) == ref["image_embeds"].shape[1] == ref["text_embeds"].shape[1]
    rule = families.text_rule(model)
    assert (rule.max_length, rule.fixed_length, rule.attention_mask) == (
        (64, True, False) if family in SIGMOID else (77, False, True)
    )
    assert families.supports_dense_features(model) == (family in ("clip", "altclip"))
    assert info.onnx_export == (family != "siglip2")
    # The flat pipeline file states the same text rule for itself (it travels to the Hub alone).
    from modeling_rsmclip.pipeline_rsmclip import text_encoding

    kwargs, with_mask = text_encoding(model.config)
    assert with_mask == rule.attention_mask and (kwargs["padding"] == "max_length") == rule.fixed_length
    assert kwargs["max_length"] == rule.max_length


def test_unknown_model_type_is_refused_naming_it():
    from transformers import BertConfig

    from modeling_rsmclip.inference.families import model_family

    with pytest.raises(ValueError, match="'bert'.*SigLIP.*model_type one of"):
        model_family(BertConfig())


# ------------------------------------------------------------------------------- embeddings and zero-shot scores
@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_embedder_and_zero_shot_probabilities_equal_the_forward_pass(family):
    from modeling_rsmclip.evaluation.embed import Embedder, ImageFiles
    from modeling_rsmclip.inference import class_embeddings, load_encoder
    from modeling_rsmclip.inference.families import zero_shot_probabilities

    model, processor = family_model(family)
    files = _ucm_images()
    ref = reference_forward(family, model, processor, TEXTS, _pil(files))
    embedder = Embedder(model, processor, batch_size=3, num_workers=0, cache_dir=None, show_progress=False)
    texts, images = embedder.texts(TEXTS).numpy(), embedder.images(ImageFiles(files)).numpy()
    np.testing.assert_allclose(texts, ref["text_embeds"], atol=2e-6)
    np.testing.assert_allclose(images, ref["image_embeds"], atol=2e-6)
    # One template "{}": a class embedding is the text's embedding, so the probabilities are the model's own.
    classes = class_embeddings(model, processor, TEXTS, "en", templates={"en": ["{}"]})
    np.testing.assert_allclose(
        zero_shot_probabilities(model, images, classes), ref["probabilities"], atol=2e-6
    )
    if family in SIGMOID:  # each label on its own: rows do not sum to one
        assert not np.allclose(ref["probabilities"].sum(1), 1.0)
    # The int8 encoder keeps the family's scoring (scale and bias) and stays close: embeddings within cosine 0.99
    # (0.996 and above on these models), so logits within scale x (1 - cosine) and probabilities within a few
    # hundredths (the converted CLIP's largest move: 0.052, at scale 14.7).
    int8 = load_encoder(model, "torch", "int8")
    int8_embedder = Embedder(int8, processor, num_workers=0, cache_dir=None, show_progress=False)
    texts8, images8 = int8_embedder.texts(TEXTS).numpy(), int8_embedder.images(ImageFiles(files)).numpy()
    assert (texts8 * texts).sum(-1).min() > 0.99 and (images8 * images).sum(-1).min() > 0.99
    probs8 = zero_shot_probabilities(int8, images8, texts8)
    assert np.abs(probs8 - ref["probabilities"]).max() < 0.08
    assert (probs8.argmax(1) == ref["probabilities"].argmax(1)).mean() >= 0.8


def test_patch_features_of_clip_vits_equal_the_vision_tower_and_rsmclips_own(tiny):
    """CLIP and AltCLIP patch features are the last layer's patch tokens through the post-layernorm and the
    projection (as the class token in get_image_features); the same function on RS-M-CLIP equals its own
    get_patch_features, NACLIP included."""
    from modeling_rsmclip.inference.families import patch_features, vit_patch_features

    for family in ("clip", "altclip"):
        model, processor = family_model(family)
        pixels = processor.image_processor(images=_pil(_ucm_images(2)), return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            hidden = model.vision_model(pixel_values=pixels).last_hidden_state[:, 1:]
            expected = model.visual_projection(model.vision_model.post_layernorm(hidden))
            got = patch_features(model, pixels)
            assert got.shape == (2, 4, 4, expected.shape[-1])
            torch.testing.assert_close(got.reshape(2, 16, -1), expected, atol=1e-6, rtol=1e-5)
            naclip = patch_features(model, pixels, naclip=True)
            assert naclip.shape == got.shape and not torch.allclose(naclip, got)
    rsmclip, processor = tiny
    pixels = processor(images=_pil(_ucm_images(2)), return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        for naclip in (False, True):
            torch.testing.assert_close(
                vit_patch_features(rsmclip, pixels, naclip=naclip),
                rsmclip.get_patch_features(pixels, naclip=naclip),
                atol=0,
                rtol=0,
            )


# The commands (evaluation, index and search, maps, the app's service, serve, the pipelines, ONNX export and search)
# are run for every family, the converted OpenCLIP CLIP included, by tests/test_family_commands.py.


def test_text_rule_pads_as_the_tokenizer_does(family):
    """The embedder pads token rows itself (sorted by length): the ids equal the tokenizer's own padding."""
    from modeling_rsmclip.inference.families import pad_token_id, pad_token_rows, text_rule

    model, processor = family_model(family)
    tokenizer = processor.tokenizer
    rule = text_rule(model)
    ids = tokenizer(TEXTS, truncation=True, max_length=rule.max_length)["input_ids"]
    side = getattr(tokenizer, "padding_side", "right")
    ours = pad_token_rows(rule, ids, pad_token_id(tokenizer), side)
    theirs = reference_text_inputs(family, tokenizer, TEXTS)
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name])
