"""Loading a saved model in a fresh Python process where this package is NOT importable (trust_remote_code), from a
folder and from a Hub-cache-shaped folder with HF_HUB_OFFLINE=1, exactly as a user who downloaded it has it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

SCRIPT = r"""
import json, sys
sys.modules["modeling_rsmclip"] = None  # this package is not importable in this process
import numpy as np
import torch
from PIL import Image
from transformers import AutoModel, AutoModelForZeroShotImageClassification, AutoProcessor, pipeline

source, images, out = sys.argv[1], sys.argv[2:-1], sys.argv[-1]
model = AutoModel.from_pretrained(source, trust_remote_code=True).eval()
zs_model = AutoModelForZeroShotImageClassification.from_pretrained(source, trust_remote_code=True)
processor = AutoProcessor.from_pretrained(source, trust_remote_code=True)
pil = [Image.open(p) for p in images]
texts = ["a beach", "uma floresta densa", "网球场"]
inputs = processor(images=pil, text=texts, return_tensors="pt")
with torch.no_grad():
    logits = model(**inputs).logits_per_image
classifier = pipeline("zero-shot-image-classification", model=source, trust_remote_code=True)
zs = classifier(pil[0], candidate_labels=texts, hypothesis_template="{}")
retriever = pipeline("rsmclip-retrieval", model=source, trust_remote_code=True)
ranked = retriever(images[1], images=images, top_k=2)
json.dump({"logits": logits.tolist(), "model_class": type(model).__name__, "zs_class": type(zs_model).__name__,
           "processor_class": type(processor).__name__, "zero_shot": zs, "retrieval": ranked}, open(out, "w"))
"""


def _run_fresh(source: str, images: list[Path], tmp_path: Path, env_extra: dict[str, str]) -> dict:
    out = tmp_path / "out.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update({"HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_DISABLE_TELEMETRY": "1", **env_extra})
    # run from an empty folder so that the checkout itself is not on sys.path
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, source, *map(str, images), str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text())


def _expected(tiny, images):
    from PIL import Image

    model, processor = tiny
    inputs = processor(
        images=[Image.open(p) for p in images],
        text=["a beach", "uma floresta densa", "网球场"],
        return_tensors="pt",
    )
    with torch.no_grad():
        return model(**inputs).logits_per_image


@pytest.fixture(scope="module")
def image_paths(sample_images):
    return sample_images[1][:3]


def _check(result, expected):
    assert result["model_class"] == "RSMCLIPModel" and result["zs_class"] == "RSMCLIPModel"
    assert result["processor_class"] == "RSMCLIPProcessor"
    np.testing.assert_allclose(np.array(result["logits"]), expected.numpy(), atol=1e-5, rtol=1e-5)
    # zero-shot pipeline == softmax of the model's own logits for image 0
    probs = expected[0].softmax(-1)
    labels = ["a beach", "uma floresta densa", "网球场"]
    for row in result["zero_shot"]:
        assert row["score"] == pytest.approx(probs[labels.index(row["label"])].item(), abs=1e-5)
    # the retrieval pipeline finds the query image itself first in a gallery that contains it
    assert result["retrieval"][0]["index"] == 1
    assert result["retrieval"][0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_fresh_process_loads_folder_with_trust_remote_code(tiny, tiny_saved, image_paths, tmp_path):
    for name in (
        "configuration_rsmclip.py",
        "modeling_rsmclip.py",
        "processing_rsmclip.py",
        "pipeline_rsmclip.py",
    ):
        assert (tiny_saved / name).exists(), name
    config = json.loads((tiny_saved / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_rsmclip.RSMCLIPModel"
    assert "rsmclip-retrieval" in config["custom_pipelines"]
    result = _run_fresh(str(tiny_saved), image_paths, tmp_path, {})
    _check(result, _expected(tiny, image_paths))


def test_fresh_process_loads_hub_id_from_offline_cache(tiny, tiny_saved, image_paths, tmp_path):
    # The layout huggingface_hub downloads into: models--org--name/{refs/main, snapshots/<commit>/...}
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--some-org--some-model"
    snapshot = repo / "snapshots" / commit
    shutil.copytree(tiny_saved, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    env = {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    result = _run_fresh("some-org/some-model", image_paths, tmp_path, env)
    _check(result, _expected(tiny, image_paths))
