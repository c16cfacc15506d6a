"""One sampler spanning all epochs: the same per-epoch order as before, DataLoader workers that live through
epoch boundaries with each epoch's augmentation seed, and exact resume in the middle of an epoch whose size is
not a multiple of the step."""

from __future__ import annotations

import json
import os

import pytest
import torch
from _train_fixtures import (
    reset_accelerate,
    save_tiny_processor,
    save_ucm_dataset,
    state_dict_from,
    tiny_config,
)
from torch.utils.data import DataLoader, Dataset

from modeling_rsmclip.training.data import EpochShuffleSampler, EpochSpanningSampler
from modeling_rsmclip.training.loop import train


def test_spanning_sampler_is_the_per_epoch_permutations_cut_to_whole_steps():
    n, per_epoch, epochs = 23, 20, 3
    spanning = EpochSpanningSampler(n, seed=7, samples_per_epoch=per_epoch, num_epochs=epochs)
    expected = []
    for epoch in range(epochs):
        reference = EpochShuffleSampler(n, seed=7)
        reference.set_epoch(epoch)
        expected += [(epoch, i) for i in list(reference)[:per_epoch]]
    assert list(spanning) == expected and len(spanning) == len(expected) == 60
    # Each epoch's cut keeps distinct rows, and a different tail is left out each epoch.
    assert len({i for e, i in expected if e == 0}) == per_epoch
    assert {i for e, i in expected if e == 0} != {i for e, i in expected if e == 1}
    # Starting 13 samples into epoch 1 gives exactly the rest.
    spanning.set_start(1, 13)
    assert list(spanning) == expected[per_epoch + 13 :] and len(spanning) == 60 - per_epoch - 13
    with pytest.raises(ValueError):
        spanning.set_start(0, per_epoch)


class _WhoLoads(Dataset):
    def __len__(self) -> int:
        return 10

    def __getitem__(self, item):
        epoch, index = item
        return torch.tensor([epoch, index, os.getpid()])


def test_workers_live_through_epoch_boundaries():
    sampler = EpochSpanningSampler(10, seed=0, samples_per_epoch=8, num_epochs=3)
    loader = DataLoader(_WhoLoads(), sampler=sampler, batch_size=4, num_workers=2, drop_last=True)
    rows = torch.cat(list(loader))
    assert rows[:, 0].tolist() == [0] * 8 + [1] * 8 + [2] * 8  # the epoch travels with every index
    assert len(set(rows[:, 2].tolist())) == 2  # the same two worker processes served all three epochs
    assert os.getpid() not in rows[:, 2].tolist()


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("sampler_assets")
    torch.set_num_threads(1)
    return {
        "data": save_ucm_dataset(root / "data", {"train": 44, "validation": 8, "test": 8}),
        "processor": save_tiny_processor(root),
    }


class SimulatedCrash(RuntimeError):
    pass


def test_resume_is_exact_with_epochs_that_are_not_a_whole_number_of_steps(assets, tmp_path):
    # 44 rows / batch 8: 5 steps per epoch (4 rows left out, different ones each epoch); 8 steps cross the
    # boundary; the checkpoint of step 3 is mid-epoch 0 and the resumed run uses a worker process.
    common = dict(max_steps=8, save_steps=3, distillation=False, learning_rate=2e-3)
    reset_accelerate()
    reference = train(tiny_config(assets["data"], assets["processor"], tmp_path / "a", **common))
    assert [h["epoch"] for h in reference.log_history if "loss" in h] == [0] * 5 + [1] * 3

    def crash(step, model):
        if step == 4:
            raise SimulatedCrash("simulated crash")

    out = tmp_path / "b"
    reset_accelerate()
    with pytest.raises(SimulatedCrash):
        train(tiny_config(assets["data"], assets["processor"], out, **common), step_callback=crash)
    state = json.loads((out / "checkpoints" / "checkpoint-3" / "trainer_state.json").read_text())
    assert (state["step"], state["epoch"], state["batches_in_epoch"]) == (3, 0, 3)
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
    reset_accelerate()
    assert resumed.step == 8
    final_a = state_dict_from(tmp_path / "a" / "model.safetensors")
    final_b = state_dict_from(out / "model.safetensors")
    for key in final_a:
        torch.testing.assert_close(final_b[key], final_a[key], rtol=0, atol=1e-6, msg=key)
    losses_a = {h["step"]: h["loss"] for h in reference.log_history if "loss" in h}
    losses_b = {h["step"]: h["loss"] for h in resumed.log_history if "loss" in h}
    for step in range(4, 9):
        assert losses_b[step] == pytest.approx(losses_a[step], rel=1e-6, abs=1e-6)
