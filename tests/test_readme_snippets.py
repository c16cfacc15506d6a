"""README.md's Python snippets run as written, on the bundled demo model folder, so they cannot drift.

Every fenced ```python block of README.md runs in a fresh Python process (offline, from an empty working folder
holding the files the snippets name), with these stand-ins for what a reader supplies:
- `"path/to/rsmclip-model"` -> the bundled demo model folder (it carries its code files, so
  `trust_remote_code=True` loads them from the folder, as from a model saved with `save_pretrained` or the Hub);
- `image`, `pil_image` -> real UC Merced / RSSCN7 images from `examples/sample`;
- `1.jpg`, `2.tif` -> real sample images (JPEG, and TIFF) in the working folder.
The values of the snippets' top-level expressions are recorded and checked against the model computed directly.
The demo folder's code files must equal the package's: `scripts/sync_demo_model_code.py` copies them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_rsmclip.inference import DEMO_MODEL_DIR
from modeling_rsmclip.testing import sample_dir

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SYNC_SCRIPT = ROOT / "scripts" / "sync_demo_model_code.py"
HUB_CODE_FILES = (
    "configuration_rsmclip.py",
    "modeling_rsmclip.py",
    "processing_rsmclip.py",
    "pipeline_rsmclip.py",
)
PLACEHOLDERS = {"path/to/rsmclip-model": str(DEMO_MODEL_DIR)}
IMAGE = ("ucm", "images", "81.jpg")  # `image`
PIL_IMAGE = ("rsscn7", "river_lake", "d001.jpg")  # `pil_image`
FILES = {"1.jpg": ("ucm", "images", "1091.jpg"), "2.tif": ("ucm", "images", "1291.jpg")}

HARNESS = r"""
import ast, json, sys
import torch
from PIL import Image

blocks, image, pil_image, out = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3], sys.argv[4]


def plain(value):
    if isinstance(value, torch.Tensor):
        return value.detach().float().tolist()
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


results = []
for block in blocks:
    tree = ast.parse(block["code"])
    for i, node in enumerate(tree.body):  # record the value of every top-level expression
        if isinstance(node, ast.Expr):
            call = ast.Call(ast.Name("_record", ast.Load()), [ast.Constant(node.lineno), node.value], [])
            tree.body[i] = ast.Expr(call)
    ast.fix_missing_locations(tree)
    recorded = []
    namespace = {
        "__name__": "__readme__",
        "_record": lambda line, value: recorded.append({"line": line, "value": plain(value)}),
        "image": Image.open(image),
        "pil_image": Image.open(pil_image),
    }
    exec(compile(tree, "README.md, block at line %d" % block["line"], "exec"), namespace)
    variables = {k: plain(v) for k, v in namespace.items() if isinstance(v, torch.Tensor)}
    results.append({"line": block["line"], "recorded": recorded, "tensors": variables})
json.dump(results, open(out, "w"))
"""


def python_blocks(text: str) -> list[dict]:
    """The fenced ```python blocks of a Markdown text, with the line each starts on."""
    blocks = []
    for match in re.finditer(r"^```python[^\n]*\n(.*?)^```", text, flags=re.M | re.S):
        blocks.append({"line": text[: match.start()].count("\n") + 1, "code": match.group(1)})
    return blocks


def test_demo_model_folder_carries_the_packages_code_files():
    for name in HUB_CODE_FILES:
        copy, original = DEMO_MODEL_DIR / name, ROOT / "modeling_rsmclip" / name
        assert copy.is_file(), f"{copy} is missing: run python scripts/sync_demo_model_code.py"
        assert copy.read_bytes() == original.read_bytes(), (
            f"{copy} differs from {original}: run python scripts/sync_demo_model_code.py"
        )
    config = json.loads((DEMO_MODEL_DIR / "config.json").read_text())
    modules = {v.split(".")[0] for v in config["auto_map"].values()}
    modules.add(config["custom_pipelines"]["rsmclip-retrieval"]["impl"].split(".")[0])
    processor = json.loads((DEMO_MODEL_DIR / "processor_config.json").read_text())
    modules |= {v.split(".")[0] for v in processor["auto_map"].values()}
    assert {f"{m}.py" for m in modules} <= set(HUB_CODE_FILES)


def test_sync_script_finds_and_fixes_a_stale_copy(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    for name in HUB_CODE_FILES:
        (folder / name).write_bytes((ROOT / "modeling_rsmclip" / name).read_bytes())
    (folder / "pipeline_rsmclip.py").write_text("# an older copy\n")
    (folder / "processing_rsmclip.py").unlink()

    def run(*args):
        return subprocess.run(
            [sys.executable, str(SYNC_SCRIPT), "--folder", str(folder), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    check = run("--check")
    assert check.returncode == 1
    assert "pipeline_rsmclip.py" in check.stdout and "processing_rsmclip.py" in check.stdout
    assert "modeling_rsmclip.py differs" not in check.stdout
    assert run().returncode == 0
    for name in HUB_CODE_FILES:
        assert (folder / name).read_bytes() == (ROOT / "modeling_rsmclip" / name).read_bytes()
    assert run("--check").returncode == 0
    assert "error:" in run("--folder", str(tmp_path)).stderr


@pytest.fixture(scope="module")
def snippet_results(tmp_path_factory):
    """Run README's Python blocks in a fresh process; the recorded values of each block."""
    work = tmp_path_factory.mktemp("readme")
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert blocks, "README.md has no ```python blocks"
    for block in blocks:
        for placeholder, value in PLACEHOLDERS.items():
            block["code"] = block["code"].replace(placeholder, value)
    for name, source in FILES.items():
        Image.open(sample_dir().joinpath(*source)).convert("RGB").save(work / name)
    (work / "blocks.json").write_text(json.dumps(blocks), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "HF_MODULES_CACHE": str(work / "modules"),
            "PYTHONPATH": os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
        }
    )
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            HARNESS,
            str(work / "blocks.json"),
            str(sample_dir().joinpath(*IMAGE)),
            str(sample_dir().joinpath(*PIL_IMAGE)),
            str(work / "out.json"),
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads((work / "out.json").read_text())


@pytest.fixture(scope="module")
def demo():
    from transformers import AutoModel, AutoProcessor

    import modeling_rsmclip  # noqa: F401

    return AutoModel.from_pretrained(DEMO_MODEL_DIR).eval(), AutoProcessor.from_pretrained(DEMO_MODEL_DIR)


def _embed(demo, images=None, texts=None) -> torch.Tensor:
    model, processor = demo
    with torch.no_grad():
        if images is not None:
            pixels = processor(images=images, return_tensors="pt")["pixel_values"]
            out = model.get_image_features(pixel_values=pixels).pooler_output
        else:
            tokens = processor(text=texts, padding=True, return_tensors="pt")
            out = model.get_text_features(**tokens).pooler_output
    return torch.nn.functional.normalize(out, dim=-1)


def test_every_python_block_runs(snippet_results):
    assert len(snippet_results) == len(python_blocks(README.read_text(encoding="utf-8")))


def test_using_a_model_snippet_gives_the_models_own_results(snippet_results, demo):
    """The "Using a model" block: probabilities, zero-shot and both retrieval directions, each recomputed here."""
    block = next(
        b for b in snippet_results if "probs" in b["tensors"] and len(b["recorded"]) >= 3
    )  # the block that defines `probs` and calls the pipelines
    image = Image.open(sample_dir().joinpath(*IMAGE)).convert("RGB")
    pil_image = Image.open(sample_dir().joinpath(*PIL_IMAGE)).convert("RGB")
    model, processor = demo

    texts = ["a dense residential area", "uma praia"]
    with torch.no_grad():
        inputs = processor(images=[image], text=texts, return_tensors="pt")
        probs = model(**inputs).logits_per_image.softmax(-1)
    np.testing.assert_allclose(np.array(block["tensors"]["probs"]), probs.numpy(), atol=1e-5)

    zero_shot, text_to_images, image_to_texts = (r["value"] for r in block["recorded"][-3:])
    labels = ["forest", "beach", "harbor"]
    scores = (
        _embed(demo, images=[image]) @ _embed(demo, texts=[f"a satellite image of {x}." for x in labels]).t()
    )
    expected = (scores * model.logit_scale.exp()).softmax(-1)[0]
    assert [row["score"] for row in zero_shot] == sorted((row["score"] for row in zero_shot), reverse=True)
    for row in zero_shot:
        assert row["score"] == pytest.approx(expected[labels.index(row["label"])].item(), abs=1e-4)

    gallery_images = [
        Image.open(sample_dir().joinpath(*FILES["1.jpg"])).convert("RGB"),
        Image.open(sample_dir().joinpath(*FILES["2.tif"])).convert("RGB"),
        pil_image,
    ]
    cosines = (_embed(demo, texts=["campo de ténis"]) @ _embed(demo, images=gallery_images).t())[0]
    top = torch.topk(cosines, 2)
    assert [row["index"] for row in text_to_images] == top.indices.tolist()
    for row, score in zip(text_to_images, top.values.tolist()):
        assert row["score"] == pytest.approx(score, abs=1e-4)

    cosines = (_embed(demo, images=[pil_image]) @ _embed(demo, texts=["a beach", "a forest"]).t())[0]
    order = torch.argsort(cosines, descending=True).tolist()
    assert [row["text"] for row in image_to_texts] == [["a beach", "a forest"][i] for i in order]
    for row in image_to_texts:
        assert row["score"] == pytest.approx(cosines[row["index"]].item(), abs=1e-4)
