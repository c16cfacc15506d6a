"""The CPU inference backends where people use the model: the transformers pipelines (an int8 `RSMCLIPModel` from
`quantize_model`), scene maps (`classify_scene` / `segment_scene` / `rsmclip map`), and the web app (Classify,
Segment and Search through one shared encoder).

References: the fp32 model's own numbers, and the zero-shot recipe written out with the encoder's methods.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _app_fixtures import MOSAIC, UCM_IMAGES, reference_probabilities, write_mosaic_geotiff
from _onnx_fixtures import DEMO_MODEL, demo_model_and_processor
from PIL import Image
from transformers import pipeline

from modeling_rsmclip.inference import TorchInt8Encoder, load_encoder, quantize_model
from modeling_rsmclip.inference.encoders import weights_digest

LABELS = ["airport", "beach", "forest", "parking lot", "river"]
# Stated bound (test_int8_backends.py): int8 keeps embeddings within this cosine of fp32 on real images.
INT8_MIN_COSINE = 0.995


@pytest.fixture(scope="module")
def demo():
    return demo_model_and_processor()


@pytest.fixture(scope="module")
def int8_model(demo):
    return quantize_model(demo[0])


@pytest.fixture(scope="module")
def images():
    return [Image.open(UCM_IMAGES / name).convert("RGB") for name, _ in MOSAIC]


@pytest.fixture
def onnx_cache(tmp_path, monkeypatch):
    """The ONNX cache holding the demo model's export (made once per test process), as `load_encoder` finds it."""
    pytest.importorskip("onnxruntime", reason='the ONNX backend needs pip install "rsmclip[onnx]"')
    from _onnx_fixtures import use_demo_onnx_cache

    return use_demo_onnx_cache(tmp_path, monkeypatch)


# ----------------------------------------------------------------------------------------------- pipelines
def test_quantize_model_is_an_int8_copy_and_leaves_the_model_alone(demo, int8_model):
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    from modeling_rsmclip import RSMCLIPModel

    model, _ = demo
    before = weights_digest(model)
    again = quantize_model(model)
    assert weights_digest(model) == before  # the source keeps its fp32 weights
    assert isinstance(int8_model, RSMCLIPModel)
    assert not [n for n, m in int8_model.named_modules() if isinstance(m, torch.nn.Linear)]
    quantized = [n for n, m in int8_model.named_modules() if isinstance(m, DynamicLinear)]
    for part in ("vision_model.", "text_model.", "visual_projection", "text_projection"):
        assert any(n.startswith(part) for n in quantized), part
    # Deterministic: two copies compute the same numbers (the app and a test can make their own).
    size = model.config.vision_config.image_size
    pixels = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        batch = int8_model.get_image_features(pixel_values=pixels).pooler_output
        torch.testing.assert_close(
            batch, again.get_image_features(pixel_values=pixels).pooler_output, atol=0, rtol=0
        )
        # Dynamic quantisation picks one activation scale per call, so an embedding depends a little on its
        # batch-mates: alone it stays within the int8 bound of the batched one.
        alone = torch.cat([int8_model.get_image_features(pixel_values=x[None]).pooler_output for x in pixels])
    assert F.cosine_similarity(alone, batch).min() > INT8_MIN_COSINE
    with pytest.raises(TypeError, match="loaded model"):
        quantize_model("modeling_rsmclip/demo_model")


def test_quantize_model_in_place_keeps_no_fp32_copy(int8_model):
    from modeling_rsmclip import RSMCLIPModel

    fresh = RSMCLIPModel.from_pretrained(str(DEMO_MODEL)).eval()
    linears = sum(isinstance(m, torch.nn.Linear) for m in fresh.modules())
    assert linears > 0
    quantized = quantize_model(fresh, inplace=True)
    assert quantized is fresh and not any(isinstance(m, torch.nn.Linear) for m in fresh.modules())
    size = fresh.config.vision_config.image_size
    pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(
            fresh.get_image_features(pixel_values=pixels).pooler_output,
            int8_model.get_image_features(pixel_values=pixels).pooler_output,
            atol=0,
            rtol=0,
        )


def test_zero_shot_pipeline_takes_the_int8_model(demo, int8_model, images):
    model, processor = demo
    parts = {"tokenizer": processor.tokenizer, "image_processor": processor.image_processor}
    fp32 = pipeline("zero-shot-image-classification", model=model, **parts)
    int8 = pipeline("zero-shot-image-classification", model=int8_model, **parts)
    template = "a satellite image of {}."
    prompts = [template.format(label) for label in LABELS]
    agree = 0
    for image in images:
        got = {
            r["label"]: r["score"] for r in int8(image, candidate_labels=LABELS, hypothesis_template=template)
        }
        # Reference: the same model's logits written out.
        with torch.no_grad():
            inputs = processor(images=image, text=prompts, return_tensors="pt", padding=True)
            expected = int8_model(**inputs).logits_per_image[0].softmax(-1)
        for label, p in zip(LABELS, expected.tolist()):
            assert got[label] == pytest.approx(p, abs=1e-5)
        reference = {
            r["label"]: r["score"] for r in fp32(image, candidate_labels=LABELS, hypothesis_template=template)
        }
        assert max(abs(got[k] - reference[k]) for k in LABELS) < 0.05
        agree += max(got, key=got.get) == max(reference, key=reference.get)
        assert got != reference  # really the int8 weights
    assert agree >= len(images) - 1


def test_retrieval_pipeline_takes_the_int8_model(demo, int8_model, images):
    model, processor = demo
    retriever = pipeline(
        "rsmclip-retrieval",
        model=int8_model,
        tokenizer=processor.tokenizer,
        image_processor=processor.image_processor,
    )
    query = "muitos aviões estacionados perto de um terminal"
    ranked = retriever(query, images=images)
    with torch.no_grad():
        text = int8_model.get_text_features(**processor(text=[query], return_tensors="pt")).pooler_output
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        image_embeds = int8_model.get_image_features(pixel_values=pixels).pooler_output
        image_fp32 = model.get_image_features(pixel_values=pixels).pooler_output
    cosine = F.cosine_similarity(text, image_embeds)
    assert [r["index"] for r in ranked] == cosine.argsort(descending=True).tolist()
    for row in ranked:
        assert row["score"] == pytest.approx(cosine[row["index"]].item(), abs=1e-5)
    assert F.cosine_similarity(image_embeds, image_fp32).min() > INT8_MIN_COSINE


# ---------------------------------------------------------------------------------------------- ONNX scale
def test_onnx_export_records_the_trained_logit_scale(demo, onnx_cache):
    from _onnx_fixtures import demo_onnx_folder

    from modeling_rsmclip.inference.runtime import ONNXRSMCLIP

    model, _ = demo
    trained = float(model.logit_scale.detach().exp())
    folder = demo_onnx_folder()
    assert json.loads((folder / "onnx_manifest.json").read_text())["logit_scale"] == pytest.approx(trained)
    assert ONNXRSMCLIP(folder, towers=("image",)).logit_scale == pytest.approx(trained)
    for source in (folder, model):
        encoder = load_encoder(source, "onnx", "fp32")
        assert float(encoder.logit_scale.exp()) == pytest.approx(trained, rel=1e-6)


def test_onnx_export_without_a_recorded_scale_warns_and_uses_the_config(tmp_path, caplog, onnx_cache):
    from _onnx_fixtures import demo_onnx_folder

    folder = tmp_path / "older-export"
    folder.mkdir()
    for path in demo_onnx_folder().iterdir():
        (folder / path.name).symlink_to(path)
    manifest = json.loads((demo_onnx_folder() / "onnx_manifest.json").read_text())
    del manifest["logit_scale"]
    (folder / "onnx_manifest.json").unlink()
    (folder / "onnx_manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level("WARNING"):
        encoder = load_encoder(folder, "onnx", "fp32")
    assert "records no logit scale" in caplog.text and str(folder) in caplog.text
    # CLIP's initial temperature: logit_scale = ln(1 / 0.07) in the config, used as the log scale.
    assert float(encoder.logit_scale) == pytest.approx(encoder.config.logit_scale_init_value)
    assert float(encoder.logit_scale.exp()) == pytest.approx(1 / 0.07, rel=1e-4)


# ---------------------------------------------------------------------------------------------- scene maps
@pytest.fixture(scope="module")
def mosaic(tmp_path_factory):
    pytest.importorskip("rasterio", reason='scene maps need rasterio: pip install "rsmclip[geo]"')
    return write_mosaic_geotiff(tmp_path_factory.mktemp("mosaic") / "mosaic.tif")


@pytest.fixture(scope="module")
def classified_fp32(mosaic, demo):
    from modeling_rsmclip.geo import classify_scene

    model, processor = demo
    return classify_scene(mosaic, LABELS, model=model, processor=processor, tile_size=256, progress=False)


def test_classify_scene_on_onnx_equals_pytorch(mosaic, demo, classified_fp32, onnx_cache):
    from modeling_rsmclip.geo import classify_scene

    model, processor = demo
    onnx = classify_scene(
        mosaic, LABELS, model=model, processor=processor, tile_size=256, progress=False, backend="onnx"
    )
    np.testing.assert_array_equal(onnx.class_ids, classified_fp32.class_ids)
    np.testing.assert_allclose(onnx.probabilities, classified_fp32.probabilities, atol=1e-4)


def test_classify_scene_in_int8_follows_the_int8_recipe(mosaic, demo, classified_fp32):
    from modeling_rsmclip.geo import classify_scene

    model, processor = demo
    int8 = classify_scene(
        mosaic, LABELS, model=model, processor=processor, tile_size=256, progress=False, precision="int8"
    )
    # Reference: the four tiles in one batch (as the scene's tiles are) through a fresh int8 encoder of the model,
    # the class embeddings of the templates, and the model's logit scale.
    from modeling_rsmclip.geo.zero_shot import class_embeddings

    encoder = TorchInt8Encoder(model)
    tiles = [Image.open(UCM_IMAGES / name).convert("RGB") for name, _ in MOSAIC]
    with torch.no_grad():
        pixels = processor(images=tiles, return_tensors="pt")["pixel_values"]
        image = F.normalize(encoder.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
    text = class_embeddings(encoder, processor, LABELS, "en")
    expected = torch.softmax(model.logit_scale.detach().exp() * image @ text.T, dim=-1).numpy()
    np.testing.assert_allclose(int8.probabilities.reshape(4, -1), expected, atol=1e-4)
    assert np.abs(int8.probabilities - classified_fp32.probabilities).max() > 1e-6  # really int8
    assert (int8.class_ids == classified_fp32.class_ids).mean() >= 0.75


def test_segment_scene_in_int8_agrees_with_fp32(mosaic, demo):
    from modeling_rsmclip.geo import segment_scene

    model, processor = demo
    kwargs = dict(model=model, processor=processor, window=256, stride=128, progress=False)
    fp32 = segment_scene(mosaic, LABELS, **kwargs)
    int8 = segment_scene(mosaic, LABELS, precision="int8", **kwargs)
    assert int8.class_map.shape == fp32.class_map.shape == (512, 512)
    agreement = float((int8.class_map == fp32.class_map).mean())
    assert agreement >= 0.9, agreement


def test_map_cli_backend_options(mosaic, tmp_path, onnx_cache, capsys):
    import rasterio

    from modeling_rsmclip.cli import main

    common = [
        "map",
        "classify",
        str(mosaic),
        "--labels",
        ",".join(LABELS),
        "--tile-size",
        "256",
        "--no-progress",
    ]
    assert main([*common, "--output", str(tmp_path / "torch")]) == 0
    assert main([*common, "--output", str(tmp_path / "onnx"), "--backend", "onnx"]) == 0
    with (
        rasterio.open(tmp_path / "torch" / "classes.tif") as a,
        rasterio.open(tmp_path / "onnx" / "classes.tif") as b,
    ):
        np.testing.assert_array_equal(a.read(1), b.read(1))
        np.testing.assert_allclose(a.read(2), b.read(2), atol=1e-4)
    capsys.readouterr()
    code = main([*common, "--output", str(tmp_path / "x"), "--precision", "int8", "--device", "cuda"])
    assert code != 0 and "runs on the CPU" in capsys.readouterr().err
    # Segmentation needs patch features, which the ONNX graphs do not give: one error line, before any loading.
    code = main(
        [
            "map",
            "segment",
            str(mosaic),
            "--labels",
            "a,b",
            "--output",
            str(tmp_path / "s"),
            "--backend",
            "onnx",
        ]
    )
    assert code == 2 and "PyTorch backend" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


# ---------------------------------------------------------------------------------------------------- app
@pytest.fixture(scope="module")
def archive(mosaic, demo, tmp_path_factory):
    pytest.importorskip("faiss", reason='archive search needs faiss: pip install "rsmclip[index]"')
    from modeling_rsmclip.index import build_index

    model, processor = demo
    out = tmp_path_factory.mktemp("archive") / "index"
    build_index(model, out, [mosaic], processor=processor, tile_size=256, progress=False)
    return out


def test_app_on_int8_classifies_segments_and_searches_with_one_encoder(demo, mosaic, archive, tmp_path):
    from modeling_rsmclip.app.service import AppService, load_index
    from modeling_rsmclip.index import RSMCLIPIndex

    model, processor = demo
    service = AppService(model, processor, work_dir=tmp_path / "work", precision="int8")
    service.index = load_index(str(archive), model, processor, default_model=False, encoder=service.encoder)
    assert isinstance(service.encoder, TorchInt8Encoder)
    assert "PyTorch int8" in service.describe()
    # Classify: the zero-shot recipe written out with the int8 encoder.
    # (Texts are batched differently here, which moves int8 activations' scales a little: hence the tolerance.)
    assert service.embedder.model is service.encoder
    result = service.classify(str(UCM_IMAGES / "191.jpg"), ", ".join(LABELS), "en")
    expected = reference_probabilities(service.encoder, processor, UCM_IMAGES / "191.jpg", LABELS, "en")
    np.testing.assert_allclose(result.probabilities, expected, atol=0.03)
    assert np.argmax(result.probabilities) == np.argmax(expected)
    fp32 = reference_probabilities(model, processor, UCM_IMAGES / "191.jpg", LABELS, "en")
    assert np.abs(np.asarray(result.probabilities) - fp32).max() > 1e-6
    # Search: the index answers through the app's own encoder, as an int8 index query does on its own.
    assert service.index._embedder.model is service.encoder
    got = service.search("aviões estacionados no aeroporto", "pt", 4)
    alone = RSMCLIPIndex.load(archive, model=model, processor=processor, precision="int8")
    want = alone.search("aviões estacionados no aeroporto", top_k=4)
    assert [r["id"] for r in got.rows] == [r["id"] for r in want]
    np.testing.assert_allclose([r["score"] for r in got.rows], [r["score"] for r in want], atol=1e-6)
    # Segment: PyTorch int8 (the same encoder, which has patch features).
    assert service.segment_model is service.encoder
    seg = service.segment(str(mosaic), ", ".join(LABELS), "en", 256)
    assert abs(sum(seg.class_fractions.values()) - 1) < 1e-6


def test_app_on_onnx_equals_the_pytorch_app(demo, onnx_cache, tmp_path):
    from modeling_rsmclip.app.service import AppService

    model, processor = demo
    torch_app = AppService(model, processor, work_dir=tmp_path / "a")
    onnx_app = AppService(model, processor, work_dir=tmp_path / "b", backend="onnx")
    assert "ONNX Runtime fp32" in onnx_app.describe()
    for name, _ in MOSAIC:
        a = torch_app.classify(str(UCM_IMAGES / name), ", ".join(LABELS), "pt")
        b = onnx_app.classify(str(UCM_IMAGES / name), ", ".join(LABELS), "pt")
        np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-4)
    assert onnx_app.segment_model is model  # segmentation stays on PyTorch fp32
    with pytest.raises(ValueError, match="backend must be one of"):
        AppService(model, processor, work_dir=tmp_path / "c", backend="tensorrt")


def test_app_load_quantises_in_place_after_opening_the_index(demo, archive, tmp_path):
    from modeling_rsmclip.app.service import AppService
    from modeling_rsmclip.index import RSMCLIPIndex

    model, processor = demo
    service = AppService.load(str(DEMO_MODEL), str(archive), work_dir=tmp_path / "work", precision="int8")
    # One copy of the weights: the loaded model itself became the int8 encoder's model.
    assert service.encoder.quantized is service.model
    assert not any(isinstance(m, torch.nn.Linear) for m in service.model.modules())
    assert service.index._embedder.model is service.encoder
    query = "aviões estacionados no aeroporto"
    got = service.search(query, "pt", 4)
    want = RSMCLIPIndex.load(archive, model=model, processor=processor, precision="int8").search(
        query, top_k=4
    )
    assert [r["id"] for r in got.rows] == [r["id"] for r in want]
    np.testing.assert_allclose([r["score"] for r in got.rows], [r["score"] for r in want], atol=1e-6)
    with pytest.raises(TypeError, match="not an inference.load_encoder encoder"):
        service.index.set_encoder(model)


def test_app_load_on_onnx_int8_segments_with_the_same_weights_quantised(
    demo, archive, mosaic, onnx_cache, tmp_path
):
    from modeling_rsmclip.app.service import AppService
    from modeling_rsmclip.inference import OnnxEncoder

    service = AppService.load(
        str(DEMO_MODEL), str(archive), work_dir=tmp_path / "work", backend="onnx", precision="int8"
    )
    assert isinstance(service.encoder, OnnxEncoder) and service.index._embedder.model is service.encoder
    assert any(isinstance(m, torch.nn.Linear) for m in service.model.modules())  # fp32 until a segmentation
    seg = service.segment(str(mosaic), ", ".join(LABELS), "en", 256)
    assert service.segment_model.quantized is service.model  # quantised in place: one copy
    model, processor = demo
    from modeling_rsmclip.geo import segment_scene

    expected = segment_scene(
        mosaic, LABELS, model=model, processor=processor, window=256, progress=False, precision="int8"
    )
    shares = {label: n / expected.class_map.size for label, n in expected.pixels_per_class.items()}
    for label in LABELS:
        assert seg.class_fractions[label] == pytest.approx(shares.get(label, 0.0), abs=1e-9)
