"""The model front door (`inference.load_model`, `load_encoder`, `class_embeddings`) and what it fixed: one name
resolves to one model everywhere, copies of a model are the same model to an index, damaged files are named, and
areas west of Greenwich or south of the equator can be given on the command line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from modeling_rsmclip.inference import DEMO_MODEL_DIR, load_model


@pytest.fixture(scope="module")
def demo_copies(tmp_path_factory) -> tuple[Path, Path]:
    """The demo model in two other folders: byte-identical copies, as after a Docker mount or another cache."""
    root = tmp_path_factory.mktemp("copies")
    a, b = root / "a" / "model", root / "elsewhere" / "b"
    shutil.copytree(DEMO_MODEL_DIR, a)
    shutil.copytree(DEMO_MODEL_DIR, b)
    return a, b


def test_load_model_resolves_names_and_objects(demo_copies):
    model, processor = load_model("demo")
    assert type(model).__name__ == "RSMCLIPModel" and not model.training
    assert type(processor).__name__ == "RSMCLIPProcessor"
    copy, _ = load_model(demo_copies[0])
    for (name, p), (_, q) in zip(model.state_dict().items(), copy.state_dict().items()):
        assert torch.equal(p, q), name
    same, same_processor = load_model(model, processor)
    assert same is model and same_processor is processor
    # A model object loaded from a folder finds its processor there.
    assert type(load_model(copy)[1]).__name__ == "RSMCLIPProcessor"


def test_load_model_errors_name_the_folder_or_file(tmp_path, demo_copies):
    with pytest.raises(FileNotFoundError, match="model folder not found: ./nowhere/model"):
        load_model("./nowhere/model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        load_model(tmp_path / "empty")
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="is a file"):
        load_model(tmp_path / "file.bin")
    broken = tmp_path / "broken"
    shutil.copytree(demo_copies[0], broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"broken/model\.safetensors: cannot read the model weights"):
        load_model(broken)
    with pytest.raises(ValueError, match="needs its processor"):
        load_model(torch.nn.Linear(2, 2))


def test_fingerprints_equal_for_copies_and_change_with_one_weight(demo_copies):
    from modeling_rsmclip.evaluation.embed import model_fingerprint
    from modeling_rsmclip.index.common import index_fingerprint
    from modeling_rsmclip.inference import weights_digest

    (a, pa), (b, pb) = load_model(demo_copies[0]), load_model(demo_copies[1])
    assert a.config._name_or_path != b.config._name_or_path  # the folders differ ...
    assert index_fingerprint(a, pa) == index_fingerprint(b, pb)  # ... the model does not
    assert model_fingerprint(a, pa) == model_fingerprint(b, pb)
    assert weights_digest(a) == weights_digest(b)
    with torch.no_grad():
        b.text_projection[0].weight[3, 7] += 1e-3
    assert index_fingerprint(a, pa) != index_fingerprint(b, pb)
    assert weights_digest(a) != weights_digest(b)


def test_index_built_from_one_copy_is_queried_with_another(demo_copies, tmp_path):
    pytest.importorskip("faiss")
    from modeling_rsmclip.index import RSMCLIPIndex, build_index
    from modeling_rsmclip.testing import sample_dir

    index = build_index(str(demo_copies[0]), tmp_path / "idx", [sample_dir() / "rsscn7"], num_workers=0)
    expected = index.search("a dense forest", top_k=3)
    other = RSMCLIPIndex.load(tmp_path / "idx", model=str(demo_copies[1]))
    found = other.search("a dense forest", top_k=3)
    assert [r["id"] for r in found] == [r["id"] for r in expected]
    np.testing.assert_allclose([r["score"] for r in found], [r["score"] for r in expected], atol=1e-6)


def test_class_embeddings_follow_the_clip_recipe():
    """Each label in every template, prompt embeddings normalised, averaged, re-normalised: checked against the
    model's own text features computed one prompt at a time."""
    from modeling_rsmclip.inference import class_embeddings
    from modeling_rsmclip.templates import PROMPT_TEMPLATES

    model, processor = load_model("demo")
    labels = ["floresta", "praia", "aeroporto"]
    got = class_embeddings(model, processor, labels, "pt", batch_size=5)
    rows = []
    for label in labels:
        feats = []
        for template in PROMPT_TEMPLATES["pt"]:
            batch = processor.tokenizer([template.format(label)], return_tensors="pt")
            with torch.no_grad():
                f = model.get_text_features(**batch).pooler_output[0].double()
            feats.append(f / f.norm())
        mean = torch.stack(feats).mean(0)
        rows.append((mean / mean.norm()).numpy())
    np.testing.assert_allclose(got, np.stack(rows), atol=1e-5)
    assert got.shape == (3, model.config.projection_dim)
    with pytest.raises(ValueError, match="no prompt templates for language 'xx'"):
        class_embeddings(model, processor, labels, "xx")


def test_one_backend_vocabulary_checked_once():
    from modeling_rsmclip.inference import autocast_precision, check_backend, load_encoder

    assert check_backend("torch", "fp32") is False and check_backend("onnx", "fp32") is True
    assert check_backend("torch", "int8", "cpu") is True
    assert autocast_precision("torch", "bf16") == "bf16" and autocast_precision("onnx", "fp32") == "fp32"
    for backend, precision, device, message in [
        ("tensorrt", "fp32", None, "backend must be one of torch, onnx"),
        ("torch", "int4", None, "precision must be one of fp32, bf16, fp16, int8"),
        ("onnx", "bf16", None, "autocast for the PyTorch backend"),
        ("torch", "int8", "cuda", "runs on the CPU, not on device cuda"),
    ]:
        with pytest.raises(ValueError, match=message):
            check_backend(backend, precision, device)
        with pytest.raises(ValueError, match=message):  # the factory checks the same way, before loading
            load_encoder("./no/such/model", backend, precision, device=device)


# ------------------------------------------------------------------------------------- negative coordinates
def test_search_bbox_west_and_south_on_the_command_line(tmp_path, capsys):
    """`--bbox -47.9,-15.8,...` (west of Greenwich, south of the equator) is a value, not an unknown option."""
    pytest.importorskip("faiss")
    rasterio = pytest.importorskip("rasterio")
    from PIL import Image
    from rasterio.transform import Affine

    from modeling_rsmclip.cli import main
    from modeling_rsmclip.testing import sample_dir

    cell, west, north, step = 128, -47.9, -15.7, 1e-4
    left = np.asarray(
        Image.open(sample_dir() / "ucm" / "images" / "791.jpg").convert("RGB").resize((cell, cell))
    )
    right = np.asarray(
        Image.open(sample_dir() / "ucm" / "images" / "391.jpg").convert("RGB").resize((cell, cell))
    )
    data = np.concatenate([left, right], axis=1).transpose(2, 0, 1)
    scene = tmp_path / "brasilia.tif"
    profile = dict(driver="GTiff", width=2 * cell, height=cell, count=3, dtype="uint8", crs="EPSG:4326")
    with rasterio.open(scene, "w", transform=Affine(step, 0, west, 0, -step, north), **profile) as dst:
        dst.write(data)
    index = tmp_path / "idx"
    argv = [
        "index",
        "build",
        "--output",
        str(index),
        str(scene),
        "--tile-size",
        str(cell),
        "--num-workers",
        "0",
    ]
    assert main([*argv, "--quiet"]) == 0
    capsys.readouterr()
    box = f"{west},{north - cell * step},{west + cell * step * 0.5},{north}"  # the left cell only
    assert main(["search", str(index), "a beach", "--top-k", "5", "--bbox", box, "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert [h["window"] for h in hits] == [[0, 0, cell, cell]]
    assert main(["search", str(index), "a beach", "--top-k", "5", "--bbox=" + box, "--json"]) == 0
    assert [h["window"] for h in json.loads(capsys.readouterr().out)] == [[0, 0, cell, cell]]


def test_index_made_with_the_earlier_fingerprint_recipe_still_loads(demo_copies, tmp_path):
    """An index whose manifest holds a fingerprint of the earlier recipe (config hashed with its folder) is
    recognised with the model folder that built it, and still refused for another model."""
    pytest.importorskip("faiss")
    from modeling_rsmclip.evaluation.embed import DEFAULT_MAX_TEXT_LENGTH, model_fingerprint
    from modeling_rsmclip.index import IndexModelMismatchError, RSMCLIPIndex, add_to_index, build_index
    from modeling_rsmclip.testing import sample_dir

    folder = demo_copies[0]
    build_index(str(folder), tmp_path / "idx", [sample_dir() / "rsscn7" / "forest"], num_workers=0)
    model, processor = load_model(folder)
    legacy = model_fingerprint(model, processor, extra=f"index\0{DEFAULT_MAX_TEXT_LENGTH}", portable=False)
    manifest_path = tmp_path / "idx" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["model"]["fingerprint"] != legacy and manifest["model"]["fingerprint_version"] == 3
    manifest["model"]["fingerprint"] = legacy
    del manifest["model"]["fingerprint_version"]
    manifest_path.write_text(json.dumps(manifest))
    index = RSMCLIPIndex.load(tmp_path / "idx", model=str(folder))
    assert len(index.search("a dense forest", top_k=5)) == len(
        list((sample_dir() / "rsscn7" / "forest").iterdir())
    )
    added = add_to_index(tmp_path / "idx", [sample_dir() / "rsscn7" / "parking"], num_workers=0)
    assert added.manifest["model"]["fingerprint"] == legacy
    assert added.manifest["model"]["fingerprint_version"] == 2 and len(added) > len(index)
    with pytest.raises(IndexModelMismatchError):
        RSMCLIPIndex.load(tmp_path / "idx", model=str(demo_copies[1]))


# ------------------------------------------------------------------------------------------------ known models
def test_known_model_names_resolve_through_the_one_loader(tmp_path, monkeypatch):
    """A known name loads its converted copy once it exists; offline, the first use says what to download and how;
    a tower this project cannot hold is refused; a transformers-native model resolves to its Hub id."""
    from modeling_rsmclip.inference import load_model, resolve_model_source
    from modeling_rsmclip.inference.loading import converted_models_dir

    monkeypatch.setenv("RSMCLIP_MODELS_CACHE", str(tmp_path / "models"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty Hub cache
    with pytest.raises(ValueError, match=r"hf download chendelong/RemoteCLIP RemoteCLIP-ViT-B-32\.pt"):
        load_model("remoteclip-vit-b-32")
    assert sorted(converted_models_dir().glob("*")) == []  # no half-converted folder left behind
    with pytest.raises(ValueError, match="remoteclip-rn50.*cannot be used"):
        load_model("remoteclip-rn50")
    assert resolve_model_source("git-rsclip") == "lcybuaa/Git-RSCLIP"
    # The converted copy (here: a model folder placed where a conversion writes it) is what the name loads.
    shutil.copytree(DEMO_MODEL_DIR, converted_models_dir() / "remoteclip-vit-b-32")
    model, _ = load_model("RemoteCLIP-ViT-B-32")  # names are case-insensitive
    assert model.config._name_or_path == str(converted_models_dir() / "remoteclip-vit-b-32")
    # An existing folder of that name wins over the known name.
    monkeypatch.chdir(tmp_path)
    shutil.copytree(DEMO_MODEL_DIR, tmp_path / "georsclip-vit-b-32")
    assert resolve_model_source("georsclip-vit-b-32") == "georsclip-vit-b-32"
