"""Shared, computed-once inputs of the ONNX / int8 tests: the demo model's ONNX export, real UCM images and
multilingual captions."""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from pathlib import Path

from _shared_data import need_shared_data

DEMO_MODEL = Path(__file__).resolve().parents[1] / "modeling_rsmclip" / "demo_model"


@functools.lru_cache(maxsize=1)
def demo_model_and_processor():
    from transformers import AutoProcessor

    import modeling_rsmclip  # noqa: F401
    from modeling_rsmclip import RSMCLIPModel

    return RSMCLIPModel.from_pretrained(str(DEMO_MODEL)).eval(), AutoProcessor.from_pretrained(
        str(DEMO_MODEL)
    )


@functools.lru_cache(maxsize=1)
def demo_onnx_folder() -> Path:
    """The demo model exported with `export_onnx` (fp32 and int8 graphs), once per test process."""
    from modeling_rsmclip.inference import export_onnx

    folder = Path(tempfile.mkdtemp(prefix="rsmclip-onnx-demo-"))
    atexit.register(shutil.rmtree, folder, True)
    model, processor = demo_model_and_processor()
    return export_onnx(model, folder / "export", processor=processor, verify=False)


def use_demo_onnx_cache(tmp_path: Path, monkeypatch) -> Path:
    """Point `$RSMCLIP_ONNX_CACHE` at a folder holding the demo model's export under its weights' key, where
    `load_encoder(model, backend="onnx")` looks for it (so nothing is exported again)."""
    from modeling_rsmclip.inference.encoders import weights_digest

    cache = tmp_path / "onnx-cache"
    cache.mkdir()
    (cache / weights_digest(demo_model_and_processor()[0]).hex()[:24]).symlink_to(demo_onnx_folder())
    monkeypatch.setenv("RSMCLIP_ONNX_CACHE", str(cache))
    return cache


def ucm_images(count: int = 24) -> list[Path]:
    """`count` UCM-Captions test-split image files spread over the classes."""
    root = need_shared_data("ucm-captions", "dataset.json").parent
    data = json.loads((root / "dataset.json").read_text())
    test = [entry["filename"] for entry in data["images"] if entry["split"] == "test"]
    step = max(1, len(test) // count)
    return [root / "images" / name for name in test[::step][:count]]


def ucm_captions(per_language: int = 4) -> list[str]:
    """Real captions: English and every translation (first `per_language` distinct texts of each)."""
    root = need_shared_data("ucm-captions", "dataset.json").parent
    data = json.loads((root / "dataset.json").read_text())
    english = list(dict.fromkeys(s["raw"] for e in data["images"][::97] for s in e["sentences"]))
    texts = english[:per_language]
    for path in sorted((root / "translations").glob("*.json")):
        rows = json.loads(path.read_text(encoding="utf-8"))
        texts += list(dict.fromkeys(r["text"] for r in rows[::211] if r["text"].strip()))[:per_language]
    return texts
