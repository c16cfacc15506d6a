"""ONNX export of a converted OpenCLIP CLIP and of Hub-native CLIP, SigLIP and AltCLIP towers, checked against
PyTorch as the RS-M-CLIP export is; SigLIP 2 refused with its reason."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _family_fixtures import (
    SIGMOID,
    family_folder,
    family_model,
    family_onnx_export,
    reference_forward,
    reference_text_inputs,
)
from PIL import Image

from modeling_rsmclip.testing import sample_dir

pytest.importorskip("onnxruntime", reason='needs onnxruntime: pip install "rsmclip[onnx]"')

TEXTS = ["a beach with blue sea", "many planes parked at the airport", "一条穿过森林的河流"]


def _images(count: int = 4) -> list[Path]:
    return sorted((sample_dir() / "ucm" / "images").glob("*.jpg"), key=lambda p: int(p.stem))[:count]


@pytest.fixture(scope="module", params=["openclip", "clip", "siglip", "altclip"])
def exported(request):
    """The family's `rsmclip export --to-onnx` folder, made once per test process (shared with
    tests/test_family_commands.py); int8 graphs for CLIP (the fusion and quantisation path), fp32 for the others."""
    family = request.param
    status, folder = family_onnx_export(family)
    assert status == 0
    return family, folder


def test_export_records_the_family_and_matches_pytorch(exported):
    family, folder = exported
    manifest = json.loads((folder / "onnx_manifest.json").read_text())
    assert manifest["family"] == ("rsmclip" if family == "openclip" else family)
    assert manifest["scoring"] == ("sigmoid" if family in SIGMOID else "softmax")
    assert manifest["text"]["padding"] == ("max_length" if family in SIGMOID else "longest")
    assert manifest["inputs"]["text"] == (
        ["input_ids"] if family in SIGMOID else ["input_ids", "attention_mask"]
    )
    check = manifest["verification"]
    assert check["image_max_abs_diff"] < 1e-4 and check["text_max_abs_diff"] < 1e-4
    if family == "clip":
        assert check["int8_image_min_cosine"] > 0.99 and check["int8_text_min_cosine"] > 0.99


def test_onnx_encoder_gives_the_forward_passs_embeddings_and_probabilities(exported):
    from modeling_rsmclip.evaluation.embed import Embedder, ImageFiles
    from modeling_rsmclip.inference import load_encoder
    from modeling_rsmclip.inference.families import zero_shot_probabilities

    family, folder = exported
    model, processor = family_model(family)
    files = _images()
    ref = reference_forward(family, model, processor, TEXTS, [Image.open(p).convert("RGB") for p in files])
    encoder = load_encoder(str(folder), "onnx", "fp32")
    embedder = Embedder(encoder, processor, num_workers=0, cache_dir=None, show_progress=False)
    texts, images = embedder.texts(TEXTS).numpy(), embedder.images(ImageFiles(files)).numpy()
    np.testing.assert_allclose(texts, ref["text_embeds"], atol=1e-5)
    np.testing.assert_allclose(images, ref["image_embeds"], atol=1e-5)
    np.testing.assert_allclose(
        zero_shot_probabilities(encoder, images, texts), ref["probabilities"], atol=1e-5
    )


def test_standalone_runner(exported):
    """The runner copied into the folder (onnxruntime, tokenizers, Pillow, numpy only) gives the same texts and,
    within resampling differences, the same images; its zero-shot scores follow the family's rule."""
    from modeling_rsmclip.inference.runtime import ONNXRSMCLIP

    family, folder = exported
    model, processor = family_model(family)
    files = _images()
    pil = [Image.open(p).convert("RGB") for p in files]
    ref = reference_forward(family, model, processor, TEXTS, pil)
    runner = ONNXRSMCLIP(folder)
    images = runner.embed_images(pil)
    assert (images * ref["image_embeds"]).sum(-1).min() > 0.999  # Pillow's resampling, not torchvision's
    if (
        family in SIGMOID
    ):  # SentencePiece with its own normalisation: no tokenizer.json, the ids come from transformers
        with pytest.raises(FileNotFoundError, match="SentencePiece"):
            runner.embed_texts(TEXTS)
        ids = reference_text_inputs(family, processor.tokenizer, TEXTS)["input_ids"].numpy()
        texts = runner.encode_text(ids)
        texts = texts / np.linalg.norm(texts, axis=-1, keepdims=True)
    else:
        texts = runner.embed_texts(TEXTS)
    np.testing.assert_allclose(texts, ref["text_embeds"], atol=1e-5)
    np.testing.assert_allclose(
        runner.zero_shot_probabilities(ref["image_embeds"], ref["text_embeds"]),
        ref["probabilities"],
        atol=1e-5,
    )


def test_siglip2_export_is_refused_with_its_reason(tmp_path, capsys):
    from modeling_rsmclip.cli import main
    from modeling_rsmclip.inference import export_onnx, load_encoder

    model, processor = family_model("siglip2")
    with pytest.raises(
        ValueError, match=r"SigLIP 2 \(Siglip2Model\) is not supported.*NaFlex.*--backend torch"
    ):
        export_onnx(model, tmp_path / "out", processor=processor)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="NaFlex"):
        load_encoder(model, "onnx", "int8")
    assert main(["export", "--to-onnx", str(family_folder("siglip2")), str(tmp_path / "cli")]) == 2
    assert "ONNX export of SigLIP 2" in capsys.readouterr().err
