"""RSMCLIPModel: shapes, the InfoNCE loss, mean pooling, save/load, SDPA and gradient checkpointing."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from modeling_rsmclip import RSMCLIPConfig, RSMCLIPModel


@pytest.fixture()
def batch(tiny, sample_images):
    model, processor = tiny
    images, _ = sample_images
    texts = ["a beach", "campo de ténis com árvores", "一片森林", "ein Strand mit blauem Meer"]
    return processor(images=images[:4], text=texts, return_tensors="pt")


def test_shapes(tiny, batch):
    model, _ = tiny
    config = model.config
    out = model(**batch, return_loss=True)
    assert out.logits_per_image.shape == (4, 4)
    assert out.logits_per_text.shape == (4, 4)
    assert out.image_embeds.shape == (4, config.projection_dim)
    assert out.text_embeds.shape == (4, config.projection_dim)
    torch.testing.assert_close(out.image_embeds.norm(dim=-1), torch.ones(4))
    img = model.get_image_features(pixel_values=batch["pixel_values"])
    assert img.pooler_output.shape == (4, config.projection_dim)
    # pooler_output is the projected, un-normalised embedding
    torch.testing.assert_close(F.normalize(img.pooler_output, dim=-1), out.image_embeds)
    assert model.get_image_backbone_features(batch["pixel_values"]).shape == (
        4,
        config.vision_config.hidden_size,
    )
    # local crops (smaller than the training size) go through position-embedding interpolation
    local = F.interpolate(batch["pixel_values"], size=16)
    assert model.get_distillation_logits(local).shape == (4, config.dino_out_dim)


def test_loss_is_hand_computed_symmetric_infonce(tiny, batch):
    model, _ = tiny
    out = model(**batch, return_loss=True)
    img = out.image_embeds.double()
    txt = out.text_embeds.double()
    scale = model.logit_scale.exp().double()
    logits = scale * img @ txt.t()
    n = logits.shape[0]
    loss_i = -sum(torch.log_softmax(logits[i], 0)[i] for i in range(n)) / n
    loss_t = -sum(torch.log_softmax(logits.t()[i], 0)[i] for i in range(n)) / n
    expected = (loss_i + loss_t) / 2
    assert abs(out.loss.item() - expected.item()) < 1e-5
    torch.testing.assert_close(out.logits_per_image.double(), logits, atol=1e-5, rtol=1e-5)


def test_mean_pooling_ignores_padding(tiny):
    model, processor = tiny
    text = "Há muitos edifícios e estradas nesta zona residencial densa ."
    short = processor(text=[text], return_tensors="pt")
    padded = processor(text=[text], padding="max_length", max_length=77, return_tensors="pt")
    assert padded["input_ids"].shape[1] == 77 > short["input_ids"].shape[1]
    a = model.get_text_features(**short).pooler_output
    b = model.get_text_features(**padded).pooler_output
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # without a mask, padding is found from pad_token_id, as OpenCLIP does
    c = model.get_text_features(input_ids=padded["input_ids"]).pooler_output
    torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-5)
    # and the pooled vector really is the masked mean of the tower's last hidden state
    hidden = model.text_model(**short).last_hidden_state
    torch.testing.assert_close(model.text_projection(hidden.mean(1)), a, atol=1e-5, rtol=1e-5)


def test_truncation_at_77_tokens(tiny):
    _, processor = tiny
    ids = processor(text=["forest " * 200], return_tensors="pt")["input_ids"]
    assert ids.shape[1] == 77 and ids[0, -1].item() == processor.tokenizer.eos_token_id


def test_save_load_round_trip_is_identical(tiny, tiny_saved, batch):
    model, _ = tiny
    assert (tiny_saved / "model.safetensors").exists()
    assert not list(tiny_saved.glob("*.bin"))
    loaded = RSMCLIPModel.from_pretrained(tiny_saved).eval()
    a, b = model(**batch), loaded(**batch)
    assert torch.equal(a.logits_per_image, b.logits_per_image)
    # the distillation head is saved with the model
    x = torch.randn(2, model.config.vision_config.hidden_size)
    assert torch.equal(model.distillation_head(x), loaded.distillation_head(x))
    config = json.loads((tiny_saved / "config.json").read_text())
    assert config["model_type"] == "rsmclip"
    assert config["vision_config"]["hidden_act"] == "gelu"


def test_real_architecture_preset_sizes():
    config = RSMCLIPConfig.from_preset("rs-m-clip", dino_out_dim=1024)
    with torch.device("meta"):
        model = RSMCLIPModel(config)
    v, t = config.vision_config, config.text_config
    assert (v.hidden_size, v.num_hidden_layers, v.patch_size, v.image_size, v.hidden_act) == (
        768,
        12,
        32,
        224,
        "gelu",
    )
    assert (t.vocab_size, t.hidden_size, t.pad_token_id) == (250002, 768, 1)
    assert [m.weight.shape for m in model.text_projection if isinstance(m, torch.nn.Linear)] == [
        (640, 768),
        (512, 640),
    ]
    assert model.visual_projection.weight.shape == (512, 768)
    head = [m.weight.shape for m in model.distillation_head.mlp if isinstance(m, torch.nn.Linear)]
    assert head == [(2048, 768), (2048, 2048), (256, 2048)]
    # ViT-B/32 (87.8M) + XLM-R base without pooler (277.5M) + projections
    n_towers = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("distillation_head"))
    assert 366e6 < n_towers < 367e6


def test_distillation_head_weight_norm_and_init():
    config = RSMCLIPConfig.from_preset("tiny")
    model = RSMCLIPModel(config)
    weight = model.distillation_head.last_layer.parametrizations.weight
    assert torch.equal(weight.original0, torch.ones_like(weight.original0))
    assert not weight.original0.requires_grad  # norm_last_layer: magnitude fixed
    w = model.distillation_head.last_layer.weight
    torch.testing.assert_close(w.norm(dim=1), torch.ones(config.dino_out_dim))
    assert model.logit_scale.item() == pytest.approx(config.logit_scale_init_value)


def test_sdpa_matches_eager_and_gradient_checkpointing(tiny, batch):
    model, _ = tiny
    state = model.state_dict()
    eager_model = RSMCLIPModel._from_config(copy.deepcopy(model.config), attn_implementation="eager").eval()
    eager_model.load_state_dict(state)
    assert model.vision_model.config._attn_implementation == "sdpa"
    assert eager_model.text_model.config._attn_implementation == "eager"
    torch.testing.assert_close(
        model(**batch).logits_per_image, eager_model(**batch).logits_per_image, atol=1e-5, rtol=1e-5
    )

    trained = RSMCLIPModel._from_config(copy.deepcopy(model.config))
    trained.load_state_dict(state)
    trained.train()
    enable = getattr(trained, "activation_checkpointing_enable", trained.gradient_checkpointing_enable)
    disable = getattr(trained, "activation_checkpointing_disable", trained.gradient_checkpointing_disable)
    enable()
    loss_ckpt = trained(**batch, return_loss=True).loss
    loss_ckpt.backward()
    grad_ckpt = trained.vision_model.encoder.layers[0].mlp.fc1.weight.grad.clone()
    trained.zero_grad()
    disable()
    trained(**batch, return_loss=True).loss.backward()
    torch.testing.assert_close(
        grad_ckpt, trained.vision_model.encoder.layers[0].mlp.fc1.weight.grad, atol=1e-6, rtol=1e-5
    )


def test_loss_needs_pairs(tiny, batch):
    model, processor = tiny
    texts = processor(text=["a", "b", "c"], return_tensors="pt")
    with pytest.raises(ValueError, match="pairs"):
        model(pixel_values=batch["pixel_values"][:2], **texts, return_loss=True)


def test_weights_are_read_from_safetensors_only(tiny, tmp_path):
    model, _ = tiny
    model.save_pretrained(tmp_path)
    state = RSMCLIPModel.from_pretrained(tmp_path).state_dict()
    (tmp_path / "model.safetensors").unlink()
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(OSError, match="safetensors"):
        RSMCLIPModel.from_pretrained(tmp_path)
