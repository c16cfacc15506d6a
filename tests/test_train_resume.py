"""Interrupt a run and resume it: the final weights, teacher and DINO center equal an uninterrupted run's."""

from __future__ import annotations

import json

import pytest
import torch
from _train_fixtures import (
    reset_accelerate,
    save_tiny_processor,
    save_ucm_dataset,
    state_dict_from,
    tiny_config,
)

from modeling_rsmclip.training.checkpoint import latest_checkpoint, list_checkpoints
from modeling_rsmclip.training.loop import train


class SimulatedCrash(RuntimeError):
    pass


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume_assets")
    torch.set_num_threads(1)
    return {"data": save_ucm_dataset(root / "data"), "processor": save_tiny_processor(root)}


@pytest.fixture(autouse=True)
def fresh_accelerate():
    reset_accelerate()
    yield
    reset_accelerate()


def test_resume_mid_epoch_reproduces_the_uninterrupted_run(assets, tmp_path):
    # 48 rows / batch 8 = 6 batches per epoch, 2 batches per optimiser step: 3 steps per epoch, so the 8 steps
    # cross two epoch boundaries and the checkpoint of step 4 is in the middle of epoch 1.
    common = dict(
        max_steps=8,
        save_steps=2,
        save_total_limit=2,
        gradient_accumulation_steps=2,
        distillation=True,
        teacher_momentum=0.9,
        learning_rate=2e-3,
    )
    reference = train(tiny_config(assets["data"], assets["processor"], tmp_path / "a", **common))
    reset_accelerate()

    def crash(step, model):
        if step == 5:  # step 5 is lost: the run has to redo it from checkpoint-4
            raise SimulatedCrash("simulated crash")

    out = tmp_path / "b"
    with pytest.raises(SimulatedCrash):
        train(tiny_config(assets["data"], assets["processor"], out, **common), step_callback=crash)
    checkpoints = out / "checkpoints"
    assert [step for step, _ in list_checkpoints(checkpoints)] == [2, 4]
    state = json.loads((checkpoints / "checkpoint-4" / "trainer_state.json").read_text())
    assert (state["step"], state["epoch"], state["batches_in_epoch"]) == (4, 1, 2)
    # A crash in the middle of writing checkpoint-6 leaves a partial folder: never taken for a checkpoint.
    partial = checkpoints / "checkpoint-6.tmp"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"partial")
    assert latest_checkpoint(checkpoints) == checkpoints / "checkpoint-4"

    reset_accelerate()
    resumed = train(
        tiny_config(
            assets["data"],
            assets["processor"],
            out,
            resume_from_checkpoint="latest",
            dataloader_num_workers=1,
            **common,
        )
    )
    assert resumed.step == 8
    # Same final student (what save_pretrained wrote), to 1e-6.
    final_a = state_dict_from(tmp_path / "a" / "model.safetensors")
    final_b = state_dict_from(out / "model.safetensors")
    assert final_a.keys() == final_b.keys()
    for key in final_a:
        torch.testing.assert_close(final_b[key], final_a[key], rtol=0, atol=1e-6, msg=key)
    # Same teacher and center (the last checkpoints hold them).
    teacher_a = state_dict_from(tmp_path / "a" / "checkpoints" / "checkpoint-8" / "teacher.safetensors")
    teacher_b = state_dict_from(checkpoints / "checkpoint-8" / "teacher.safetensors")
    assert "dino_center" in teacher_a
    for key in teacher_a:
        torch.testing.assert_close(teacher_b[key], teacher_a[key], rtol=0, atol=1e-6, msg=key)
    # The resumed steps logged the same losses as the uninterrupted run's steps 5..8.
    losses_a = {h["step"]: h["loss"] for h in reference.log_history if "loss" in h}
    losses_b = {h["step"]: h["loss"] for h in resumed.log_history if "loss" in h}
    assert sorted(losses_b) == list(range(1, 9))  # steps 1..4 come from the checkpoint's history
    for step in range(5, 9):
        assert losses_b[step] == pytest.approx(losses_a[step], rel=1e-6, abs=1e-6)
    # Only the last two checkpoints are kept, and no partial folder is left behind.
    assert [step for step, _ in list_checkpoints(checkpoints)] == [6, 8]
    assert not list(checkpoints.glob("*.tmp"))
