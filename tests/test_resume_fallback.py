"""Resume from a damaged latest checkpoint: a warning naming the file, then the previous valid checkpoint, which
gives the same final model as an uninterrupted run. Real checkpoints of a tiny training run on real UCM data."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
from _train_fixtures import (
    reset_accelerate,
    save_tiny_processor,
    save_ucm_dataset,
    state_dict_from,
    tiny_config,
)

from modeling_rsmclip.training.checkpoint import (
    CorruptCheckpointError,
    check_checkpoint,
    list_checkpoints,
)
from modeling_rsmclip.training.loop import train

COMMON = dict(max_steps=6, save_steps=2, distillation=True, teacher_momentum=0.9, learning_rate=2e-3)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """An uninterrupted 6-step run that keeps its checkpoints 2, 4 and 6."""
    root = tmp_path_factory.mktemp("resume_fallback")
    torch.set_num_threads(1)
    data, processor = save_ucm_dataset(root / "data"), save_tiny_processor(root)
    reset_accelerate()
    train(tiny_config(data, processor, root / "reference", **COMMON))
    reset_accelerate()
    checkpoints = root / "reference" / "checkpoints"
    assert [step for step, _ in list_checkpoints(checkpoints)] == [2, 4, 6]
    return {"data": data, "processor": processor, "out": root / "reference"}


@pytest.fixture(autouse=True)
def fresh_accelerate():
    reset_accelerate()
    yield
    reset_accelerate()


def interrupted_copy(reference_run, tmp_path):
    """The reference run as it was after step 4's checkpoint: checkpoint-6 and the final model removed."""
    out = tmp_path / "run"
    shutil.copytree(reference_run["out"], out)
    shutil.rmtree(out / "checkpoints" / "checkpoint-6")
    (out / "model.safetensors").unlink()
    return out


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "damage, bad_file",
    [
        (truncate, "model.safetensors"),
        (lambda p: p.write_text('{"step": 4, "epoch": ', encoding="utf-8"), "trainer_state.json"),
    ],
    ids=["truncated-model-safetensors", "corrupt-trainer-state"],
)
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(
    reference_run, tmp_path, caplog, damage, bad_file
):
    out = interrupted_copy(reference_run, tmp_path)
    damaged = out / "checkpoints" / "checkpoint-4" / bad_file
    damage(damaged)
    with pytest.raises(CorruptCheckpointError) as info:
        check_checkpoint(damaged.parent)
    assert info.value.file == damaged

    with caplog.at_level(logging.WARNING, logger="modeling_rsmclip.training.checkpoint"):
        resumed = train(
            tiny_config(
                reference_run["data"],
                reference_run["processor"],
                out,
                resume_from_checkpoint="latest",
                **COMMON,
            )
        )
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(damaged) in message and "checkpoint-2" in message for message in warnings), warnings
    assert resumed.step == 6
    # Steps 1-2 come from checkpoint-2's history, 3-6 were run again: the same losses and the same final model
    # as the uninterrupted run.
    reference_state = json.loads(
        (reference_run["out"] / "checkpoints" / "checkpoint-6" / "trainer_state.json").read_text()
    )
    losses_ref = {h["step"]: h["loss"] for h in reference_state["log_history"] if "loss" in h}
    losses = {h["step"]: h["loss"] for h in resumed.log_history if "loss" in h}
    assert sorted(losses) == list(range(1, 7))
    for step in range(3, 7):
        assert losses[step] == pytest.approx(losses_ref[step], rel=1e-6, abs=1e-6)
    final_ref = state_dict_from(reference_run["out"] / "model.safetensors")
    final = state_dict_from(out / "model.safetensors")
    assert final.keys() == final_ref.keys()
    for key in final_ref:
        torch.testing.assert_close(final[key], final_ref[key], rtol=0, atol=1e-6, msg=key)
    # The damaged checkpoint was rewritten by the resumed run.
    check_checkpoint(out / "checkpoints" / "checkpoint-4")


def test_each_damaged_file_is_named(reference_run, tmp_path):
    source = reference_run["out"] / "checkpoints" / "checkpoint-4"
    check_checkpoint(source)  # the intact checkpoint passes
    cases = {
        "teacher.safetensors": truncate,
        "position_0.json": lambda p: p.write_text('{"epoch": 1}', encoding="utf-8"),
        "trainer_state.json": lambda p: p.write_text('{"step": 4, "unknown_field": 1}', encoding="utf-8"),
    }
    for name, damage in cases.items():
        folder = tmp_path / name
        shutil.copytree(source, folder)
        damage(folder / name)
        with pytest.raises(CorruptCheckpointError, match=name) as info:
            check_checkpoint(folder)
        assert info.value.file == folder / name


def test_explicit_damaged_checkpoint_is_an_error_naming_the_file(reference_run, tmp_path):
    out = interrupted_copy(reference_run, tmp_path)
    damaged = out / "checkpoints" / "checkpoint-4" / "model.safetensors"
    truncate(damaged)
    config = tiny_config(
        reference_run["data"],
        reference_run["processor"],
        out,
        resume_from_checkpoint=str(damaged.parent),
        **COMMON,
    )
    with pytest.raises(CorruptCheckpointError, match="checkpoint-4/model.safetensors"):
        train(config)


def test_no_valid_checkpoint_left_starts_from_scratch_with_warnings(reference_run, tmp_path, caplog):
    out = interrupted_copy(reference_run, tmp_path)
    for step in (2, 4):
        truncate(out / "checkpoints" / f"checkpoint-{step}" / "teacher.safetensors")
    with caplog.at_level(logging.WARNING, logger="modeling_rsmclip.training.checkpoint"):
        resumed = train(
            tiny_config(
                reference_run["data"],
                reference_run["processor"],
                out,
                resume_from_checkpoint="latest",
                **COMMON,
            )
        )
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("teacher.safetensors" in message for message in warnings) == 2
    # From scratch: the same run as the reference, all six steps.
    losses_ref = json.loads(
        (reference_run["out"] / "checkpoints" / "checkpoint-6" / "trainer_state.json").read_text()
    )["log_history"]
    losses = {h["step"]: h["loss"] for h in resumed.log_history if "loss" in h}
    for entry in losses_ref:
        if "loss" in entry:
            assert losses[entry["step"]] == pytest.approx(entry["loss"], rel=1e-6, abs=1e-6)
