"""CPU backends behind `load_encoder`: int8 embeddings stay close to fp32 on real images and captions, and the
encoders work in place of the model in `Embedder` (same embeddings for fp32, separate cache entries)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("onnxruntime", reason='the ONNX backend needs pip install "rsmclip[onnx]"')

from _onnx_fixtures import demo_model_and_processor, demo_onnx_folder, ucm_captions, ucm_images  # noqa: E402

from modeling_rsmclip.evaluation.embed import Embedder, ImageFiles  # noqa: E402
from modeling_rsmclip.inference import OnnxEncoder, TorchInt8Encoder, load_encoder  # noqa: E402

# Stated bound: int8 (dynamic quantisation of the weight matrices) keeps every embedding within this cosine of
# fp32 on real UCM images and captions in ten languages (measured on the demo model: >= 0.9995).
INT8_MIN_COSINE = 0.995


def _embed(encoder, processor, files, texts, cache_dir=None):
    embedder = Embedder(encoder, processor, batch_size=8, cache_dir=cache_dir, show_progress=False)
    return embedder, embedder.images(ImageFiles(files)), embedder.texts(texts)


@pytest.fixture(scope="module")
def reference():
    model, processor = demo_model_and_processor()
    files, texts = ucm_images(24), ucm_captions(3)
    _, images, text_embeds = _embed(model, processor, files, texts)
    return files, texts, images, text_embeds


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_int8_embeddings_are_close_to_fp32_on_real_data(backend, reference):
    files, texts, images_fp32, texts_fp32 = reference
    model, processor = demo_model_and_processor()
    encoder = load_encoder(
        demo_onnx_folder() if backend == "onnx" else model, backend=backend, precision="int8"
    )
    assert isinstance(encoder, OnnxEncoder if backend == "onnx" else TorchInt8Encoder)
    _, images, text_embeds = _embed(encoder, processor, files, texts)
    image_cos = (images * images_fp32).sum(-1)
    text_cos = (text_embeds * texts_fp32).sum(-1)
    assert image_cos.min() > INT8_MIN_COSINE, image_cos.min()
    assert text_cos.min() > INT8_MIN_COSINE, text_cos.min()
    # ... and it is really quantised, not the fp32 path under another name.
    assert (images - images_fp32).abs().max() > 1e-5
    # Retrieval ranking of the texts for each image is nearly unchanged: top-1 agrees for most images.
    agree = ((images @ text_embeds.T).argmax(1) == (images_fp32 @ texts_fp32.T).argmax(1)).float().mean()
    assert agree >= 0.9


def test_onnx_fp32_encoder_in_embedder_equals_model_and_caches_apart(reference, tmp_path):
    files, texts, images_fp32, texts_fp32 = reference
    model, processor = demo_model_and_processor()
    encoder = load_encoder(demo_onnx_folder(), backend="onnx", precision="fp32")
    embedder, images, text_embeds = _embed(encoder, processor, files, texts, cache_dir=tmp_path)
    torch.testing.assert_close(images, images_fp32, atol=1e-5, rtol=0)
    torch.testing.assert_close(text_embeds, texts_fp32, atol=1e-5, rtol=0)
    # The cache key names the backend and precision: fp32 torch, fp32 onnx and int8 onnx are three entries.
    keys = {
        embedder.model_key,
        Embedder(model, processor, cache_dir=tmp_path, show_progress=False).model_key,
        Embedder(load_encoder(demo_onnx_folder(), "onnx", "int8"), processor, cache_dir=tmp_path).model_key,
    }
    assert len(keys) == 3
    # A second embedder reads the cached entry back (same numbers, no graph run).
    again = Embedder(load_encoder(demo_onnx_folder(), "onnx", "fp32"), processor, cache_dir=tmp_path)
    again.model.__dict__["runner"] = None  # would fail if called
    torch.testing.assert_close(again.images(ImageFiles(files)), images, atol=0, rtol=0)


def test_load_encoder_rejects_bad_choices_and_devices():
    model, _ = demo_model_and_processor()
    with pytest.raises(ValueError, match="backend"):
        load_encoder(model, backend="tensorrt")
    with pytest.raises(ValueError, match="precision"):
        load_encoder(model, precision="int4")
    with pytest.raises(ValueError, match="ONNX export folder"):
        load_encoder(demo_onnx_folder(), backend="torch")
    encoder = load_encoder(demo_onnx_folder(), backend="onnx")
    with pytest.raises(ValueError, match="runs on the CPU"):
        encoder.get_image_features(pixel_values=torch.empty(1, 3, 8, 8, device="meta"))
    assert load_encoder(model) is model  # torch fp32 is the model itself


def test_pytorch_int8_without_torch_ao_names_the_onnx_runtime_path(monkeypatch):
    """PyTorch deprecates torch.ao quantisation; once a release drops it, PyTorch int8 says which path replaces it
    (ONNX Runtime int8) instead of failing with an ImportError."""
    import sys

    from modeling_rsmclip.errors import UserError
    from modeling_rsmclip.inference import quantize_model

    monkeypatch.setitem(
        sys.modules, "torch.ao.quantization", None
    )  # what `import` sees once the module is gone
    with pytest.raises(UserError, match=r"--backend onnx --precision int8"):
        quantize_model(torch.nn.Sequential(torch.nn.Linear(4, 4)))
