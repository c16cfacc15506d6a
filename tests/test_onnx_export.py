"""`rsmclip export --to-onnx`: the ONNX graphs equal PyTorch (fp32, within 1e-4) on the tiny and the demo model,
with dynamic batch and sequence axes, and run in ONNX Runtime without PyTorch."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason='the ONNX backend needs pip install "rsmclip[onnx]"')

from _onnx_fixtures import demo_model_and_processor, demo_onnx_folder, ucm_captions, ucm_images  # noqa: E402

from modeling_rsmclip.cli import main  # noqa: E402
from modeling_rsmclip.inference.runtime import ONNXRSMCLIP  # noqa: E402

TOL = 1e-4


def _texts_batch(processor, texts):
    tokens = processor.tokenizer(texts, padding=True, truncation=True, max_length=77, return_tensors="pt")
    return tokens["input_ids"], tokens["attention_mask"]


def test_tiny_model_cli_export_matches_pytorch_on_dynamic_shapes(tiny, tiny_saved, tmp_path, capsys):
    model, processor = tiny
    out = tmp_path / "onnx"
    assert main(["export", str(tiny_saved), str(out), "--to-onnx", "--no-int8"]) == 0
    assert "image_max_abs_diff" in capsys.readouterr().out
    runner = ONNXRSMCLIP(out)
    size = model.config.vision_config.image_size
    generator = torch.Generator().manual_seed(1)
    texts = [
        "a",
        "many buildings",
        "uma área residencial densa com muitas casas e árvores verdes ao longo das ruas " * 3,
    ]
    for batch in (1, 5):  # the export traced batch 2
        pixels = torch.randn(batch, 3, size, size, generator=generator)
        with torch.inference_mode():
            expected = model.get_image_features(pixel_values=pixels).pooler_output.numpy()
        np.testing.assert_allclose(runner.encode_image(pixels.numpy()), expected, atol=TOL, rtol=0)
    for chosen in (texts[:1], texts):  # sequence lengths 3 and 77 (truncated), padded rows
        ids, mask = _texts_batch(processor, chosen)
        with torch.inference_mode():
            expected = model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output.numpy()
        np.testing.assert_allclose(runner.encode_text(ids.numpy(), mask.numpy()), expected, atol=TOL, rtol=0)
    # Without a mask, padding is found from the pad id, as in PyTorch.
    ids, mask = _texts_batch(processor, texts)
    np.testing.assert_allclose(
        runner.encode_text(ids.numpy()), runner.encode_text(ids.numpy(), mask.numpy()), atol=1e-6, rtol=0
    )
    manifest = json.loads((out / "onnx_manifest.json").read_text())
    assert set(manifest["files"]) == {"image_encoder.onnx", "text_encoder.onnx"}
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    assert manifest["verification"]["image_max_abs_diff"] < TOL


def test_cli_rejects_two_formats(tiny_saved, tmp_path, capsys):
    assert main(["export", str(tiny_saved), str(tmp_path / "x"), "--to-onnx", "--to-open-clip"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: choose one target format (--to-open-clip or --to-onnx)"]


def test_demo_model_fp32_graphs_match_pytorch_on_real_data():
    model, processor = demo_model_and_processor()
    runner = ONNXRSMCLIP(demo_onnx_folder())
    from PIL import Image

    images = [Image.open(p).convert("RGB") for p in ucm_images(12)]
    pixels = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
    ids, mask = _texts_batch(processor, ucm_captions(3))
    with torch.inference_mode():
        image_ref = model.get_image_features(pixel_values=pixels).pooler_output.numpy()
        text_ref = model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output.numpy()
    np.testing.assert_allclose(runner.encode_image(pixels.numpy()), image_ref, atol=TOL, rtol=0)
    np.testing.assert_allclose(runner.encode_text(ids.numpy(), mask.numpy()), text_ref, atol=TOL, rtol=0)


def test_export_folder_runs_without_torch(tmp_path):
    """The copied runner embeds images and texts with torch (and transformers) made unimportable."""
    folder = demo_onnx_folder()
    files = ucm_images(6)
    texts = ucm_captions(2)
    (tmp_path / "inputs.json").write_text(json.dumps({"files": [str(f) for f in files], "texts": texts}))
    script = textwrap.dedent(
        f"""
        import json, sys
        sys.modules["torch"] = None
        sys.modules["transformers"] = None
        sys.path.insert(0, {str(folder)!r})
        import numpy as np
        from PIL import Image
        from rsmclip_onnx import ONNXRSMCLIP

        inputs = json.load(open({str(tmp_path / "inputs.json")!r}))
        model = ONNXRSMCLIP({str(folder)!r}, precision="fp32")
        np.save({str(tmp_path / "images.npy")!r}, model.embed_images([Image.open(f) for f in inputs["files"]]))
        np.save({str(tmp_path / "texts.npy")!r}, model.embed_texts(inputs["texts"]))
        np.save({str(tmp_path / "ids.npy")!r}, model.tokenizer(inputs["texts"])[0])
        int8 = ONNXRSMCLIP({str(folder)!r}, precision="int8")
        np.save({str(tmp_path / "int8.npy")!r}, int8.embed_texts(inputs["texts"]))
        assert "torch" not in [m for m, v in sys.modules.items() if v is not None and m.split(".")[0] == "torch"]
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    from modeling_rsmclip.evaluation.embed import Embedder, ImageFiles

    model, processor = demo_model_and_processor()
    embedder = Embedder(model, processor, cache_dir=None, show_progress=False)
    # Tokenisation is identical to the transformers tokenizer (padding with <pad>, same ids).
    ids, _ = _texts_batch(processor, texts)
    np.testing.assert_array_equal(np.load(tmp_path / "ids.npy"), ids.numpy())
    text_cos = (np.load(tmp_path / "texts.npy") * embedder.texts(texts).numpy()).sum(-1)
    assert text_cos.min() > 1 - 1e-6
    assert (np.load(tmp_path / "int8.npy") * embedder.texts(texts).numpy()).sum(-1).min() > 0.995
    # Pillow resizing in the runner vs the image processor's: the same embeddings up to resampling detail.
    image_cos = (np.load(tmp_path / "images.npy") * embedder.images(ImageFiles(files)).numpy()).sum(-1)
    assert image_cos.min() > 0.999, image_cos
