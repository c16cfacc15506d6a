"""Outputs never overwrite inputs: every command that writes refuses, before any work, an output that is one of its
inputs, lies inside an input folder or (for a folder it owns) holds one, also through a symlink or a hard link; and
what it writes goes through a temporary file renamed into place (`modeling_rsmclip.safe_io`)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from modeling_rsmclip.cli import main as cli_main
from modeling_rsmclip.safe_io import (
    OutputOverwritesInputError,
    atomic_folder,
    atomic_output,
    atomic_write_json,
    check_outputs_not_inputs,
)
from modeling_rsmclip.testing import sample_dir


def fingerprint(path: Path) -> dict[str, str]:
    """Every file under ``path`` (or the file itself) with the SHA-256 of its bytes."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p.relative_to(path.parent)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def run(argv: list) -> int:
    try:
        return cli_main([str(a) for a in argv])
    except SystemExit as exit_:
        return int(exit_.code)


def refused(capsys, argv: list, *protected: Path) -> str:
    """Run ``argv``: exit 2, one `error:` line saying what the output would overwrite, the inputs unchanged."""
    before = {p: fingerprint(p) for p in protected}
    status = run(argv)
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert status == 2 and len(errors) == 1, captured.err[-3000:]
    assert "the output" in errors[0] and "input" in errors[0], errors[0]
    assert "Traceback" not in captured.err + captured.out
    for p in protected:
        assert fingerprint(p) == before[p], f"{p} changed"
    return errors[0]


def link(tmp_path: Path, target: Path, name: str = "link") -> Path:
    path = tmp_path / name
    path.symlink_to(target, target_is_directory=target.is_dir())
    return path


@pytest.fixture
def model(tiny_saved, tmp_path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(tiny_saved, folder)
    return folder


@pytest.fixture
def images(tmp_path) -> Path:
    """An ImageFolder copy of the bundled RSSCN7 images."""
    folder = tmp_path / "rsscn7"
    shutil.copytree(sample_dir() / "rsscn7", folder)
    return folder


@pytest.fixture
def scene(tmp_path) -> Path:
    rasterio = pytest.importorskip("rasterio", reason='needs rasterio: pip install "rsmclip[geo]"')
    import numpy as np
    from rasterio.transform import from_origin

    path = tmp_path / "scenes" / "scene.tif"
    path.parent.mkdir()
    data = np.random.default_rng(0).integers(0, 255, (3, 32, 32), dtype=np.uint8)
    profile = dict(driver="GTiff", width=32, height=32, count=3, dtype="uint8", crs="EPSG:32611",
                   transform=from_origin(500000.0, 4000000.0, 1.0, 1.0))  # fmt: skip
    with rasterio.open(path, "w", **profile) as out:
        out.write(data)
    return path


# ------------------------------------------------------------------------------------------------------- maps
@pytest.mark.parametrize(
    ("action", "written"), [("classify", "classes.tif"), ("segment", "segmentation.tif")]
)
@pytest.mark.parametrize("via", ["direct", "symlink", "hardlink"])
def test_map_output_folder_holding_a_scene_of_an_output_name(
    action, written, via, scene, model, tmp_path, capsys
):
    out = tmp_path / "out"
    out.mkdir()
    named = out / written
    shutil.copyfile(scene, named)
    if via == "hardlink":
        target, named = named, tmp_path / "scene-link.tif"
        os.link(target, named)
    output = link(tmp_path, out) if via == "symlink" else out
    line = refused(
        capsys, ["map", action, named, "--labels", "a,b", "--model", model, "--output", output], named
    )
    assert written in line


def test_map_output_inside_the_model_folder(scene, model, capsys):
    refused(capsys, ["map", "classify", scene, "--labels", "a,b", "--model", model, "--output", model / "maps"],
            model)  # fmt: skip


def test_map_output_beside_the_scene_is_fine(scene, tiny_saved, capsys):
    """Writing next to the scene (the folder holds it, no file of the same name) is allowed."""
    status = run(["map", "classify", scene, "--labels", "beach,forest", "--model", tiny_saved, "--output",
                  scene.parent, "--tile-size", "16", "--no-progress"])  # fmt: skip
    assert status == 0, capsys.readouterr().err[-2000:]
    assert (scene.parent / "classes.tif").is_file() and scene.is_file()
    assert not [p for p in scene.parent.iterdir() if ".tmp" in p.name]  # no temporary file left behind


# ------------------------------------------------------------------------------------------- export, convert
@pytest.mark.parametrize("target", ["--to-open-clip", "--to-onnx"])
@pytest.mark.parametrize("via", ["direct", "symlink", "inside"])
def test_export_into_the_model_folder(target, via, model, tmp_path, capsys):
    output = {"direct": model, "symlink": link(tmp_path, model), "inside": model / "exported"}[via]
    refused(capsys, ["export", target, model, output], model)
    assert not (model / "exported").exists()


def test_export_of_the_demo_model_into_the_package_is_refused(tmp_path, capsys):
    from modeling_rsmclip.inference import DEMO_MODEL_DIR

    refused(capsys, ["export", "--to-open-clip", "demo", DEMO_MODEL_DIR / "openclip"], DEMO_MODEL_DIR)


@pytest.mark.parametrize("via", ["direct", "symlink", "holds"])
def test_convert_onto_its_source(via, tmp_path, capsys):
    source = tmp_path / "open_clip"
    source.mkdir()
    (source / "open_clip_config.json").write_text("{}", encoding="utf-8")
    output = {"direct": source, "symlink": link(tmp_path, source), "holds": tmp_path}[via]
    refused(capsys, ["convert", source, output, "--offline"], source)


# -------------------------------------------------------------------------------------------- build-dataset
@pytest.mark.parametrize("via", ["direct", "symlink", "inside", "translations"])
def test_build_dataset_onto_its_inputs(via, images, tmp_path, capsys):
    translations = tmp_path / "translations"
    translations.mkdir()
    (translations / "pt.json").write_text("[]", encoding="utf-8")
    output = {
        "direct": images,
        "symlink": link(tmp_path, images),
        "inside": images / "dataset",
        "translations": translations,
    }[via]
    argv = ["build-dataset", "--layout", "imagefolder", "--source", "rsscn7", "--images", images]
    argv += ["--translations-cache", translations, "--output", output, "--languages", "en"]
    refused(capsys, argv, images, translations)


# ---------------------------------------------------------------------------------------------- evaluations
@pytest.mark.parametrize("via", ["direct", "symlink", "inside"])
def test_eval_zero_shot_results_into_the_image_folder(via, images, tiny_saved, tmp_path, capsys):
    output = {"direct": images, "symlink": link(tmp_path, images), "inside": images / "results"}[via]
    argv = ["eval-zero-shot", "--model", tiny_saved, "--image-folder", images, "--output-dir", output]
    refused(capsys, argv, images)
    assert not (images / "results").exists()


@pytest.mark.parametrize("via", ["direct", "symlink"])
def test_eval_retrieval_results_onto_the_caption_file(via, tiny_saved, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    captions = out / "retrieval_ucm_test.json"  # the name the results file of --dataset-name ucm gets
    shutil.copyfile(sample_dir() / "ucm" / "dataset.json", captions)
    given = link(tmp_path, captions, "captions.json") if via == "symlink" else captions
    argv = ["eval-retrieval", "--model", tiny_saved, "--karpathy-json", given, "--images",
            sample_dir() / "ucm" / "images", "--dataset-name", "ucm", "--output-dir", out, "--no-cache"]  # fmt: skip
    line = refused(capsys, argv, captions)
    assert "retrieval_ucm_test.json" in line


def test_eval_embedding_cache_inside_the_image_folder(images, tiny_saved, tmp_path, capsys):
    argv = ["eval-zero-shot", "--model", tiny_saved, "--image-folder", images, "--output-dir", tmp_path / "o"]
    refused(capsys, [*argv, "--cache-dir", images / "cache"], images)


@pytest.mark.parametrize("via", ["direct", "symlink"])
def test_model_index_card_is_a_results_file(via, tmp_path, capsys):
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"task": "x"}), encoding="utf-8")
    card = link(tmp_path, results, "README.md") if via == "symlink" else results
    refused(capsys, ["model-index", results, "--card", card], results)


def test_model_index_writes_the_card_atomically(tmp_path, capsys):
    """A card that cannot be written keeps its old content (the results file is bad: nothing is replaced)."""
    card = tmp_path / "README.md"
    card.write_text("---\nlicense: mit\n---\n# m\n", encoding="utf-8")
    bad = tmp_path / "bad.json"
    bad.write_text("{", encoding="utf-8")
    before = card.read_bytes()
    assert run(["model-index", bad, "--card", card]) == 2
    assert card.read_bytes() == before
    assert sorted(tmp_path.iterdir()) == sorted([card, bad])  # no temporary file left behind


# --------------------------------------------------------------------------------------------- index, search
@pytest.mark.parametrize("via", ["direct", "symlink", "holds", "inside"])
def test_index_build_onto_its_sources(via, images, tmp_path, capsys):
    pytest.importorskip("faiss", reason='needs faiss: pip install "rsmclip[index]"')
    output = {
        "direct": images,
        "symlink": link(tmp_path, images),
        "holds": images.parent,
        "inside": images / "index",
    }[via]
    refused(capsys, ["index", "build", "--output", output, images, "--quiet"], images)


def test_index_build_into_the_model_folder(images, model, capsys):
    refused(capsys, ["index", "build", "--model", model, "--output", model / "index", images], model)


def test_index_add_of_a_source_inside_the_index(images, tmp_path, capsys):
    index = tmp_path / "index"
    shutil.copytree(images, index / "incoming")
    refused(capsys, ["index", "add", index, index / "incoming"], index)


def test_search_geojson_into_the_index(tmp_path, capsys):
    index = tmp_path / "index"
    index.mkdir()
    (index / "manifest.json").write_text("{}", encoding="utf-8")
    refused(capsys, ["search", index, "a beach", "--geojson", index / "manifest.json"], index)
    refused(capsys, ["search", index, "a beach", "--geojson", link(tmp_path, index) / "hits.geojson"], index)


# --------------------------------------------------------------------------------------------- train, demo, app
@pytest.mark.parametrize("what", ["dataset", "model", "inside-dataset", "config"])
def test_train_output_dir_onto_its_inputs(what, model, tmp_path, capsys):
    dataset = tmp_path / "data"
    dataset.mkdir()
    (dataset / "dataset_dict.json").write_text('{"splits": ["train"]}', encoding="utf-8")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = run_dir / "training_config.yaml"
    config.write_text("max_steps: 3\n", encoding="utf-8")
    output = {"dataset": link(tmp_path, dataset), "model": model, "inside-dataset": dataset / "run",
              "config": run_dir}[what]  # fmt: skip
    argv = ["train", "--model-name-or-path", model, "--dataset", dataset, "--output-dir", output]
    if what == "config":
        argv += ["--config", config]
    refused(capsys, argv, dataset, model, config)


def test_demo_json_onto_a_model_file(model, capsys):
    refused(capsys, ["demo", "--model", model, "--json", model / "config.json"], model)


def test_app_work_folder_is_not_the_model_or_index(model, tmp_path):
    pytest.importorskip("gradio", reason='the web app needs Gradio: pip install "rsmclip[app]"')
    from modeling_rsmclip.app.service import AppService

    before = fingerprint(model)
    with pytest.raises(OutputOverwritesInputError, match="holds the input|is the input"):
        AppService.load(str(model), with_index=False, work_dir=model)
    with pytest.raises(OutputOverwritesInputError):
        AppService.load(str(model), with_index=False, work_dir=model.parent)
    assert fingerprint(model) == before


def test_app_removes_only_the_folders_it_made(tiny, tmp_path):
    """Old request folders are pruned; anything else in a given work folder is left alone."""
    pytest.importorskip("gradio", reason='the web app needs Gradio: pip install "rsmclip[app]"')
    from modeling_rsmclip.app.service import AppService

    work = tmp_path / "work"
    (work / "mine").mkdir(parents=True)
    (work / "search-1-1").mkdir()
    for folder in work.iterdir():
        os.utime(folder, (0, 0))
    service = AppService(*tiny, work_dir=work, keep_outputs_s=1)
    service.request_dir("search")
    assert (work / "mine").is_dir() and not (work / "search-1-1").exists()


# ------------------------------------------------------------------------------------- the shared helpers
def test_check_outputs_not_inputs_rules(tmp_path):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "a.txt").write_text("a", encoding="utf-8")
    hard = tmp_path / "hard.txt"
    os.link(data / "a.txt", hard)
    ok = [
        ([tmp_path / "out.txt"], [data], ()),  # beside the input
        ([tmp_path / "o" / "x"], [data / "a.txt"], ()),
        ([data.parent / "results"], [data], ()),  # a sibling folder
        (
            [tmp_path / "x"],
            [None, "https://example.com/a.tif", tmp_path / "missing"],
            (),
        ),  # nothing to overwrite
        ([tmp_path / "b.txt"], [data / "a.txt"], [tmp_path / "o"]),
        ([], [data / "a.txt"], [tmp_path / "owned"]),
    ]
    for outputs, inputs, owned in ok:
        check_outputs_not_inputs(outputs, inputs, owned=owned)
    bad = [
        ([data / "a.txt"], [data / "a.txt"], (), "is the input"),
        ([hard], [data / "a.txt"], (), "is the input"),  # a hard link
        ([link(tmp_path, data, "l") / "a.txt"], [data / "a.txt"], (), "is the input"),
        ([data / "sub" / "x.json"], [data], (), "inside the input folder"),
        ([], [data / "a.txt"], [data], "holds the input"),
        ([], [data / "sub"], [tmp_path], "holds the input"),
        ([tmp_path / "l" / "new.txt"], [data], (), "inside the input folder"),  # through the folder's link
    ]
    for outputs, inputs, owned, message in bad:
        with pytest.raises(OutputOverwritesInputError, match=message):
            check_outputs_not_inputs(outputs, inputs, owned=owned)


def test_atomic_output_keeps_the_old_file_on_failure_and_spares_hard_links(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_json(target, {"v": 1})
    twin = tmp_path / "twin.json"
    os.link(target, twin)
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_text("half", encoding="utf-8")
            raise RuntimeError("killed")
    assert json.loads(target.read_text(encoding="utf-8")) == {"v": 1}
    atomic_write_json(target, {"v": 2})
    assert json.loads(target.read_text(encoding="utf-8")) == {"v": 2}
    assert json.loads(twin.read_text(encoding="utf-8")) == {"v": 1}  # the other name keeps the old bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "twin.json"]
    with pytest.raises(ValueError):
        with atomic_folder(tmp_path / "folder") as folder:
            (folder / "a.txt").write_text("a", encoding="utf-8")
            raise ValueError("export failed")
    assert not (tmp_path / "folder").exists()
    with atomic_folder(tmp_path / "folder") as folder:
        (folder / "sub").mkdir()
        (folder / "sub" / "a.txt").write_text("a", encoding="utf-8")
    assert (tmp_path / "folder" / "sub" / "a.txt").read_text(encoding="utf-8") == "a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "out.json", "twin.json"]
