"""Fault injection: each file of a model folder and of a training checkpoint is damaged in turn (truncated, zeroed,
bytes flipped, deleted), and every command that reads it must answer with one `error:` line naming that file, or
the documented recovery, never a traceback and never a result.

The commands run in-process through `modeling_rsmclip.cli.main` (fast); two run as real processes to show that
nothing but the one line reaches the terminal.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from modeling_rsmclip.cli import main as cli_main
from modeling_rsmclip.testing import sample_dir

REPO = Path(__file__).resolve().parents[1]
MODEL_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "processor_config.json",
)
DAMAGES = ("truncate", "zero", "flip", "delete")


def damage(path: Path, how: str) -> None:
    """Truncate to half, overwrite with zero bytes, flip the first 16 bytes (a header read with bit rot), or delete."""
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "zero":
        path.write_bytes(bytes(len(data)))
    elif how == "flip":
        path.write_bytes(bytes(b ^ 0xFF for b in data[:16]) + data[16:])
    elif how == "delete":
        path.unlink()
    else:  # pragma: no cover
        raise ValueError(how)


def one_error_line(capsys, status: int) -> str:
    """The command's one `error:` line (exit status 2, no traceback); warnings may come before it."""
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert status == 2 and len(errors) == 1, (status, captured.err[-3000:])
    assert "Traceback" not in captured.err + captured.out
    return errors[0]


def run(argv: list[str]) -> int:
    try:
        return cli_main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse
        return int(exit_.code)


# ------------------------------------------------------------------------------------------------ the inputs
@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    """A 64 x 64 RGB GeoTIFF of a real UC Merced image."""
    rasterio = pytest.importorskip("rasterio", reason='needs rasterio: pip install "rsmclip[geo]"')
    from PIL import Image
    from rasterio.transform import from_origin

    rgb = np.asarray(Image.open(sample_dir() / "ucm" / "images" / "81.jpg").convert("RGB").resize((64, 64)))
    path = tmp_path_factory.mktemp("scene") / "scene.tif"
    profile = dict(driver="GTiff", width=64, height=64, count=3, dtype="uint8", crs="EPSG:32611",
                   transform=from_origin(500000.0, 4000000.0, 1.0, 1.0))  # fmt: skip
    with rasterio.open(path, "w", **profile) as out:
        out.write(np.moveaxis(rgb, -1, 0))
    return path


@pytest.fixture(scope="module")
def captions(tmp_path_factory) -> tuple[Path, Path]:
    """A Karpathy file of three bundled UCM images (with their folder)."""
    data = json.loads((sample_dir() / "ucm" / "dataset.json").read_text(encoding="utf-8"))
    data["images"] = data["images"][:3]
    path = tmp_path_factory.mktemp("captions") / "dataset.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path, sample_dir() / "ucm" / "images"


def commands(
    model: Path, out: Path, scene: Path, captions: tuple[Path, Path]
) -> dict[str, tuple[list, Path]]:
    """Every command that reads a model folder: its argv and the result file it must not write."""
    rsscn7 = sample_dir() / "rsscn7"
    eval_options = [
        "--output-dir",
        out,
        "--no-cache",
        "--no-plots",
        "--languages",
        "en",
        "--num-workers",
        "0",
    ]
    return {
        "demo": (
            ["demo", "--model", model, "--languages", "en", "--json", out / "demo.json"],
            out / "demo.json",
        ),
        "eval-zero-shot": (
            ["eval-zero-shot", "--model", model, "--image-folder", rsscn7, *eval_options, "--quiet"],
            out / "zero_shot_rsscn7.json",
        ),
        "eval-retrieval": (
            ["eval-retrieval", "--model", model, "--karpathy-json", captions[0], "--images", captions[1]]
            + [*eval_options, "--quiet"],
            out / "retrieval_dataset_test.json",
        ),
        "map classify": (
            ["map", "classify", scene, "--labels", "beach,forest", "--model", model, "--output", out]
            + ["--tile-size", "32", "--no-progress"],
            out / "classes.tif",
        ),
        "index build": (
            [
                "index",
                "build",
                "--model",
                model,
                "--output",
                out / "index",
                rsscn7,
                "--quiet",
                "--num-workers",
                "0",
            ],
            out / "index" / "manifest.json",
        ),
        "export --to-open-clip": (["export", "--to-open-clip", model, out / "oc"], out / "oc"),
        "export --to-onnx": (["export", "--to-onnx", model, out / "onnx"], out / "onnx"),
    }


# --------------------------------------------------------------------------------------------- model folders
CASES = [
    (name, how)
    for name in MODEL_FILES
    for how in DAMAGES
    if (name, how) != ("tokenizer_config.json", "delete")
]


@pytest.mark.parametrize(("name", "how"), CASES, ids=[f"{n}-{h}" for n, h in CASES])
def test_a_damaged_model_file_is_one_error_naming_it_for_every_command(
    name, how, tiny_saved, scene, captions, tmp_path, capsys
):
    model = tmp_path / "model"
    shutil.copytree(tiny_saved, model)
    damage(model / name, how)
    for command, (argv, result) in commands(model, tmp_path / "out", scene, captions).items():
        line = one_error_line(capsys, run(argv))
        assert name in line, (command, line)
        assert not result.exists(), (command, "wrote a result from a damaged model")


def test_a_missing_tokenizer_config_is_recovered_from_tokenizer_json(tiny_saved, tmp_path):
    """The documented recovery: without tokenizer_config.json the tokenizer is read from tokenizer.json alone and
    gives the same tokens (truncated at 77 by the processor) and embeddings."""
    import torch

    from modeling_rsmclip.inference import load_model

    model = tmp_path / "model"
    shutil.copytree(tiny_saved, model)
    (model / "tokenizer_config.json").unlink()
    texts = ["a beach", "uma praia com barcos " * 40]  # the second longer than 77 tokens
    intact_model, intact = load_model(tiny_saved)
    damaged_model, recovered = load_model(model)
    want, got = intact(text=texts, return_tensors="pt"), recovered(text=texts, return_tensors="pt")
    assert want["input_ids"].shape[1] == 77 and torch.equal(want["input_ids"], got["input_ids"])
    with torch.no_grad():
        a = intact_model.get_text_features(**want).pooler_output
        b = damaged_model.get_text_features(**got).pooler_output
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_weights_that_do_not_fit_the_config_are_refused(tiny_saved, tmp_path, capsys):
    """A config.json from another model (what an export into the model folder once wrote) or with a changed size:
    from_pretrained would initialise the unmatched tensors at random; the front door refuses the folder."""
    other = tmp_path / "other"
    shutil.copytree(tiny_saved, other)
    config = json.loads((other / "config.json").read_text(encoding="utf-8"))
    config["projection_dim"] *= 2
    (other / "config.json").write_text(json.dumps(config), encoding="utf-8")
    line = one_error_line(capsys, run(["export", "--to-open-clip", other, tmp_path / "oc"]))
    assert "model.safetensors" in line and "config.json" in line and "mismatched" in line
    foreign = tmp_path / "foreign"
    shutil.copytree(tiny_saved, foreign)
    text_config = config["text_config"] | {"model_type": "xlm-roberta"}
    (foreign / "config.json").write_text(json.dumps(text_config), encoding="utf-8")
    line = one_error_line(capsys, run(["map", "classify", "x.tif", "--labels", "a,b", "--model", foreign,
                                       "--output", tmp_path / "map"]))  # fmt: skip
    assert "model.safetensors" in line and "missing" in line and "unexpected" in line


def test_non_finite_weights_are_refused(tiny_saved, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    model = tmp_path / "model"
    shutil.copytree(tiny_saved, model)
    tensors = load_file(str(model / "model.safetensors"))
    name = sorted(k for k in tensors if tensors[k].is_floating_point())[0]
    tensors[name].view(-1)[0] = float("nan")
    save_file(tensors, str(model / "model.safetensors"), metadata={"format": "pt"})
    line = one_error_line(capsys, run(["eval-zero-shot", "--model", model, "--image-folder",
                                       sample_dir() / "rsscn7", "--output-dir", tmp_path / "o", "--no-cache"]))  # fmt: skip
    assert "model.safetensors" in line and name in line and "NaN" in line


def test_a_damaged_onnx_graph_is_named(tiny, tmp_path, capsys):
    """A graph of an ONNX export that ONNX Runtime cannot load, or whose bytes differ from the SHA-256 recorded at
    export, is an error naming it; a damaged cached export is made again."""
    pytest.importorskip("onnxruntime", reason='needs pip install "rsmclip[onnx]"')
    from modeling_rsmclip.inference import OnnxEncoder, export_onnx, load_encoder, weights_digest

    model, processor = tiny
    folder = export_onnx(model, tmp_path / "onnx", processor=processor, quantize=False, verify=False)
    graph = folder / "image_encoder.onnx"
    good = graph.read_bytes()
    for how in ("flip", "truncate"):
        graph.write_bytes(good)
        damage(graph, how)
        with pytest.raises(ValueError, match=r"image_encoder\.onnx"):
            OnnxEncoder(folder)
    graph.write_bytes(good[:-64] + bytes(b ^ 0xFF for b in good[-64:]))  # loadable, but not what was exported
    with pytest.raises(ValueError, match=r"image_encoder\.onnx: its SHA-256 differs"):
        OnnxEncoder(folder)
    graph.write_bytes(good)
    cache = tmp_path / "cache"
    first = cache / weights_digest(model).hex()[:24]  # where load_encoder caches this model's export
    shutil.copytree(folder, first)
    assert load_encoder(model, "onnx", processor=processor, cache_dir=cache).folder == first
    damage(first / "text_encoder.onnx", "truncate")
    again = load_encoder(model, "onnx", processor=processor, cache_dir=cache)
    assert again.folder == first and (first / "text_encoder.onnx").stat().st_size > 1000


# ------------------------------------------------------------------------------------ a real process's output
@pytest.mark.parametrize(
    ("name", "argv"),
    [
        ("model.safetensors", ["map", "classify", "{scene}", "--labels", "a,b", "--model", "{model}", "--output",
                               "{out}"]),
        ("tokenizer.json", ["export", "--to-onnx", "{model}", "{out}"]),
    ],
)  # fmt: skip
def test_a_real_process_prints_only_the_error_line(name, argv, tiny_saved, scene, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_saved, model)
    damage(model / name, "truncate")
    argv = [a.format(scene=scene, model=model, out=tmp_path / "out") for a in argv]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RSMCLIP_DEBUG", None)
    done = subprocess.run(
        [sys.executable, "-m", "modeling_rsmclip.cli", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and len(errors) == 1 and name in errors[0], done.stderr[-3000:]
    assert "Traceback" not in done.stderr + done.stdout
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------- training checkpoints
@pytest.fixture(scope="module")
def training_run(tmp_path_factory):
    """A 2-step run of the tiny preset on the bundled UCM images with checkpoints after steps 1 and 2, and the YAML
    that resumes it."""
    pytest.importorskip("accelerate")
    import datasets
    import yaml
    from _train_fixtures import FEATURES, reset_accelerate

    from modeling_rsmclip.testing import make_tiny_model_and_processor

    root = tmp_path_factory.mktemp("training")
    ucm = sample_dir() / "ucm"
    entries = json.loads((ucm / "dataset.json").read_text(encoding="utf-8"))["images"][:16]
    rows = {"image": [], "image_id": [], "source": [], "label": [], "captions": []}
    for entry in entries:
        rows["image"].append({"bytes": (ucm / "images" / entry["filename"]).read_bytes(), "path": None})
        rows["image_id"].append(entry["filename"])
        rows["source"].append("ucm-captions")
        rows["label"].append(None)
        rows["captions"].append([{"lang": "en", "text": s["raw"]} for s in entry["sentences"]])
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows, features=FEATURES)}).save_to_disk(
        root / "data"
    )
    _, processor = make_tiny_model_and_processor(root / "build")
    processor.save_pretrained(root / "processor")
    config = {
        "preset": "tiny", "tokenizer_name_or_path": str(root / "processor"), "dataset": str(root / "data"),
        "output_dir": str(root / "run"), "per_device_train_batch_size": 8, "num_local_crops": 1,
        "dataloader_num_workers": 0, "learning_rate": 1e-3, "warmup_steps": 1, "logging_steps": 1,
        "save_steps": 1, "eval_steps": 0, "validation_split": None, "report_to": "none", "max_steps": 2,
        "dino_out_dim": 64, "use_cpu": True,
    }  # fmt: skip
    (root / "train.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    reset_accelerate()
    assert run(["train", "--config", root / "train.yaml"]) == 0
    reset_accelerate()
    checkpoints = root / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-1", "checkpoint-2"]
    return root


def _checkpoint_files(training_run: Path) -> list[str]:
    folder = training_run / "run" / "checkpoints" / "checkpoint-2"
    return sorted(p.name for p in folder.iterdir() if p.is_file())


def test_the_checkpoint_holds_the_files_the_matrix_damages(training_run):
    names = _checkpoint_files(training_run)
    assert {"model.safetensors", "optimizer.bin", "trainer_state.json", "teacher.safetensors"} <= set(names)


# Each file of the latest checkpoint with one damage each (the kinds rotate), and every damage of the weights.
CHECKPOINT_CASES = [
    ("model.safetensors", "truncate"),
    ("model.safetensors", "zero"),
    ("model.safetensors", "flip"),
    ("model.safetensors", "delete"),
    ("optimizer.bin", "truncate"),
    ("scheduler.bin", "zero"),
    ("random_states_0.pkl", "flip"),
    ("teacher.safetensors", "truncate"),
    ("trainer_state.json", "zero"),
    ("position_0.json", "truncate"),
]


@pytest.mark.parametrize(("name", "how"), CHECKPOINT_CASES, ids=[f"{n}-{h}" for n, h in CHECKPOINT_CASES])
def test_resume_past_a_damaged_checkpoint_file_gives_the_uninterrupted_model(
    name, how, training_run, tmp_path, caplog, capsys
):
    """`train --resume-from-checkpoint latest` with a damaged latest checkpoint: the documented recovery (a warning
    naming the checkpoint and the file, then the checkpoint before it), and the final model is exactly the
    uninterrupted run's. A damage that changes nothing that is read (a zip entry's local header) resumes from the
    latest checkpoint, also to exactly that model. Resuming from the damaged checkpoint by name is one error line."""
    import torch
    from _train_fixtures import reset_accelerate, state_dict_from

    if name not in _checkpoint_files(training_run):
        pytest.fail(f"the checkpoint has no {name}: {_checkpoint_files(training_run)}")
    run_dir = tmp_path / "run"
    shutil.copytree(training_run / "run", run_dir)
    for final in run_dir.glob("*.safetensors"):
        final.unlink()  # as if the run had stopped after its last checkpoint
    latest = run_dir / "checkpoints" / "checkpoint-2"
    damage(latest / name, how)
    damaged = tmp_path / "damaged-checkpoint"  # kept: the resumed run writes its checkpoint-2 again
    shutil.copytree(latest, damaged)
    options = ["train", "--config", training_run / "train.yaml", "--output-dir", run_dir, "--max-steps", "2"]
    reset_accelerate()
    try:
        with caplog.at_level("WARNING"):
            status = run([*options, "--resume-from-checkpoint", "latest"])
    finally:
        reset_accelerate()
    captured = capsys.readouterr()
    assert status == 0 and "Traceback" not in captured.err, captured.err[-3000:]
    reference = state_dict_from(training_run / "run" / "model.safetensors")
    resumed = state_dict_from(run_dir / "model.safetensors")
    assert resumed.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], rtol=0, atol=1e-6, msg=key)
    fallbacks = [r.getMessage() for r in caplog.records if "falling back" in r.getMessage()]
    if not fallbacks:  # the damage was in bytes nothing reads: the latest checkpoint restored as it was saved
        assert name.endswith((".bin", ".pkl")) and how == "flip", caplog.text[-3000:]
        return
    assert str(latest) in fallbacks[0] and "checkpoint-1" in fallbacks[0], fallbacks
    if name.endswith((".json", ".safetensors")) or how == "delete":  # a damaged pickle: named by its folder
        assert str(latest / name) in fallbacks[0], fallbacks
    if how == "delete":
        return
    try:
        status = run([*options, "--output-dir", tmp_path / "again", "--resume-from-checkpoint", damaged])
    finally:
        reset_accelerate()
    line = one_error_line(capsys, status)
    assert name in line or str(damaged) in line, line
    assert not (tmp_path / "again" / "model.safetensors").exists()


# ------------------------------------------------------------------------------------- other damaged inputs
@pytest.fixture(scope="module")
def saved_dataset(tmp_path_factory) -> Path:
    """A builder dataset (save_to_disk) of four bundled UCM images with their captions."""
    import datasets
    from _train_fixtures import FEATURES

    ucm = sample_dir() / "ucm"
    entries = json.loads((ucm / "dataset.json").read_text(encoding="utf-8"))["images"][:4]
    rows = {"image": [], "image_id": [], "source": [], "label": [], "captions": []}
    for entry in entries:
        rows["image"].append({"bytes": (ucm / "images" / entry["filename"]).read_bytes(), "path": None})
        rows["image_id"].append(entry["filename"])
        rows["source"].append("ucm-captions")
        rows["label"].append("beach")
        rows["captions"].append([{"lang": "en", "text": s["raw"]} for s in entry["sentences"]])
    path = tmp_path_factory.mktemp("dataset") / "ucm"
    datasets.DatasetDict({"test": datasets.Dataset.from_dict(rows, features=FEATURES)}).save_to_disk(path)
    return path


DATASET_FILES = (
    "dataset_dict.json",
    "test/state.json",
    "test/dataset_info.json",
    "test/data-00000-of-00001.arrow",
)


@pytest.mark.parametrize("name", DATASET_FILES)
@pytest.mark.parametrize("how", ["truncate", "zero", "delete"])
def test_a_damaged_dataset_file_is_named(name, how, saved_dataset, tiny_saved, tmp_path, capsys):
    dataset = tmp_path / "ucm"
    shutil.copytree(saved_dataset, dataset)
    damage(dataset / name, how)
    argv = ["eval-retrieval", "--model", tiny_saved, "--dataset", dataset, "--output-dir", tmp_path / "out"]
    line = one_error_line(capsys, run([*argv, "--no-cache", "--no-plots", "--quiet", "--num-workers", "0"]))
    named = str(dataset) if (name, how) == ("dataset_dict.json", "delete") else str(dataset / name)
    assert named in line, line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("how", ["truncate", "zero", "flip"])
@pytest.mark.parametrize("action", ["classify", "segment"])
def test_a_damaged_geotiff_is_named(how, action, tiny_saved, tmp_path, capsys):
    """A tiled, compressed GeoTIFF whose blocks are cut off or whose header is destroyed: one line naming it."""
    rasterio = pytest.importorskip("rasterio", reason='needs rasterio: pip install "rsmclip[geo]"')
    from rasterio.transform import from_origin

    path = tmp_path / "scene.tif"
    data = np.random.default_rng(0).integers(0, 255, (3, 128, 128), dtype=np.uint8)
    profile = dict(driver="GTiff", width=128, height=128, count=3, dtype="uint8", crs="EPSG:32611", tiled=True,
                   blockxsize=32, blockysize=32, compress="deflate", transform=from_origin(5e5, 4e6, 1.0, 1.0))  # fmt: skip
    with rasterio.open(path, "w", **profile) as out:
        out.write(data)
    damage(path, how)
    argv = ["map", action, path, "--labels", "a,b", "--model", tiny_saved, "--output", tmp_path / "out"]
    line = one_error_line(capsys, run([*argv, "--no-progress"]))
    assert str(path) in line, line
    assert not (tmp_path / "out" / f"{'classes' if action == 'classify' else 'segmentation'}.tif").exists()


def test_non_utf8_arguments_and_library_errors_are_one_line(capsys):
    """Bytes that are not UTF-8 in an argument (Python keeps them as surrogates), and a library's data error that
    no open site caught (the net in `errors.run_command`), each give one `error:` line."""
    from modeling_rsmclip.errors import is_user_error, run_command

    line = one_error_line(capsys, run(["search", "some-index", "caf\udce9"]))
    assert "b'caf\\xe9'" in line and "UTF-8" in line
    yaml = pytest.importorskip("yaml")

    def broken(_):
        yaml.safe_load("key: [1, 2")

    assert run_command(broken, None) == 2
    assert "ParserError" in one_error_line(capsys, 2)

    def bug(_):
        raise KeyError("a programming error keeps its traceback")

    assert not is_user_error(KeyError("x"))
    with pytest.raises(KeyError):
        run_command(bug, None)
