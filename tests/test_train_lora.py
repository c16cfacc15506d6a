"""LoRA fine-tuning from a pretrained folder: the adapter is saved on its own, loads onto a fresh base model, and
merges into it with the same outputs."""

from __future__ import annotations

import json

import pytest
import torch
from _train_fixtures import reset_accelerate, save_ucm_dataset, tiny_config

from modeling_rsmclip.modeling_rsmclip import RSMCLIPModel
from modeling_rsmclip.training.loop import train


@pytest.fixture(autouse=True)
def fresh_accelerate():
    reset_accelerate()
    yield
    reset_accelerate()


def _outputs(model, pixels, ids, mask):
    with torch.no_grad():
        return {
            "image": model.get_image_features(pixel_values=pixels).pooler_output,
            "text": model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output,
            "dino": model.get_distillation_logits(pixels),
        }


def test_lora_adapter_saves_loads_and_merges(tmp_path):
    from peft import PeftModel

    from modeling_rsmclip.testing import make_tiny_model_and_processor

    torch.set_num_threads(1)
    data = save_ucm_dataset(tmp_path / "data", {"train": 16, "validation": 8})
    model, processor = make_tiny_model_and_processor(tmp_path / "build")
    base_dir = tmp_path / "base"
    model.save_pretrained(str(base_dir))
    processor.save_pretrained(str(base_dir))

    out = tmp_path / "out"
    config = tiny_config(
        data,
        None,
        out,
        preset=None,
        tokenizer_name_or_path=None,
        model_name_or_path=str(base_dir),
        lora=True,
        lora_r=4,
        lora_alpha=8,
        max_steps=3,
        learning_rate=5e-3,
        validation_split="validation",
    )
    train(config)

    adapter = out / "adapter"
    adapter_config = json.loads((adapter / "adapter_config.json").read_text())
    assert (adapter / "adapter_model.safetensors").is_file()
    assert set(adapter_config["target_modules"]) == {"q_proj", "v_proj", "query", "value"}
    assert "distillation_head" in adapter_config["modules_to_save"]
    from safetensors import safe_open

    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as handle:
        keys = list(handle.keys())
    assert any("lora_A" in k for k in keys) and any("lora_B" in k for k in keys)
    assert not any("word_embeddings" in k for k in keys), "the adapter must not carry the base weights"

    torch.manual_seed(0)
    pixels = torch.randn(2, 3, 32, 32)
    tokens = processor(text=["many buildings", "a river next to a forest"], return_tensors="pt")
    ids, mask = tokens["input_ids"], tokens["attention_mask"]

    base_out = _outputs(RSMCLIPModel.from_pretrained(str(base_dir)).eval(), pixels, ids, mask)
    peft_model = PeftModel.from_pretrained(RSMCLIPModel.from_pretrained(str(base_dir)), str(adapter)).eval()
    adapted = _outputs(peft_model, pixels, ids, mask)
    merged_model = peft_model.merge_and_unload().eval()
    assert isinstance(merged_model, RSMCLIPModel)
    merged = _outputs(merged_model, pixels, ids, mask)
    saved_merged = _outputs(RSMCLIPModel.from_pretrained(str(out)).eval(), pixels, ids, mask)
    for key in ("image", "text", "dino"):
        # Training moved the model away from the base...
        assert not torch.allclose(adapted[key], base_out[key], atol=1e-4), key
        # ...and merging gives the adapter model's outputs, as does the merged model saved by the run.
        torch.testing.assert_close(merged[key], adapted[key], rtol=1e-5, atol=1e-5, msg=key)
        torch.testing.assert_close(saved_merged[key], adapted[key], rtol=1e-5, atol=1e-5, msg=key)
