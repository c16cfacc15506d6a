"""`freeze_token_embeddings`: the token-embedding table stays bit-identical through training steps while the
rest of the text tower trains."""

from __future__ import annotations

import pytest
import torch
from _train_fixtures import (
    reset_accelerate,
    save_tiny_processor,
    save_ucm_dataset,
    state_dict_from,
    tiny_config,
)

from modeling_rsmclip.training.build import load_model_and_processor
from modeling_rsmclip.training.loop import train

TABLE = "text_model.embeddings.word_embeddings.weight"


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("freeze_assets")
    torch.set_num_threads(1)
    return {
        "data": save_ucm_dataset(root / "data", {"train": 16, "validation": 8, "test": 8}),
        "processor": save_tiny_processor(root),
    }


@pytest.mark.parametrize("freeze", [True, False])
def test_token_embedding_table_is_bit_identical_after_steps_when_frozen(assets, tmp_path, freeze):
    from accelerate.utils import set_seed

    config = tiny_config(
        assets["data"],
        assets["processor"],
        tmp_path,
        max_steps=3,
        distillation=False,
        learning_rate=5e-3,
        freeze_token_embeddings=freeze,
    )
    set_seed(config.seed)  # the loop initialises the model exactly like this
    initial, _ = load_model_and_processor(config)
    before = {k: v.detach().clone() for k, v in initial.state_dict().items()}
    reset_accelerate()
    train(config)
    reset_accelerate()
    after = state_dict_from(tmp_path / "model.safetensors")
    assert torch.equal(after[TABLE], before[TABLE]) is freeze
    # The rest of the text tower trained either way.
    for key in (
        "text_model.embeddings.position_embeddings.weight",
        "text_model.encoder.layer.0.output.dense.weight",
    ):
        assert not torch.equal(after[key], before[key]), key
