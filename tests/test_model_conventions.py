"""transformers conventions of RSMCLIPModel: feature methods and `return_dict`, tower outputs through `forward`,
initialisation statistics on both construction paths, and the distillation head's training design (DDP-safe)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch.nn.parallel import DistributedDataParallel
from transformers.modeling_outputs import BaseModelOutputWithPooling

from modeling_rsmclip import RSMCLIPConfig, RSMCLIPModel


def _inputs(config: RSMCLIPConfig, n: int = 4, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    size = config.vision_config.image_size
    input_ids = torch.randint(4, config.text_config.vocab_size, (n, 9), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:] = 0
    input_ids[1, 6:] = config.text_config.pad_token_id
    pixel_values = torch.randn(n, 3, size, size, generator=generator)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values}


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return RSMCLIPModel(RSMCLIPConfig.from_preset("tiny")).eval()


# ------------------------------------------------------------------------------------ feature methods, return_dict
def test_feature_methods_accept_return_dict_and_follow_config(tiny_model):
    model = tiny_model
    batch = _inputs(model.config)
    text = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        image_out = model.get_image_features(pixel_values=batch["pixel_values"], return_dict=True)
        text_out = model.get_text_features(**text, return_dict=True)
        assert isinstance(image_out, BaseModelOutputWithPooling)
        assert isinstance(text_out, BaseModelOutputWithPooling)
        as_tuple = model.get_image_features(pixel_values=batch["pixel_values"], return_dict=False)
        assert isinstance(as_tuple, tuple)
        torch.testing.assert_close(as_tuple[1], image_out.pooler_output)
        model.config.return_dict = False
        try:
            image_tuple = model.get_image_features(pixel_values=batch["pixel_values"])
            text_tuple = model.get_text_features(**text)
            forward_tuple = model(**batch)
            forward_dict = model(**batch, return_dict=True)
        finally:
            model.config.return_dict = True
    assert isinstance(image_tuple, tuple) and isinstance(text_tuple, tuple)
    torch.testing.assert_close(image_tuple[1], image_out.pooler_output)
    torch.testing.assert_close(text_tuple[1], text_out.pooler_output)
    # forward itself also follows config.return_dict (and still works: its feature calls ask for dicts).
    assert isinstance(forward_tuple, tuple)
    torch.testing.assert_close(forward_tuple[0], forward_dict.logits_per_image)
    image_embeds = torch.nn.functional.normalize(image_out.pooler_output, dim=-1)
    torch.testing.assert_close(forward_dict.image_embeds, image_embeds)


def test_forward_passes_output_attentions_and_hidden_states_to_the_towers():
    torch.manual_seed(0)
    config = RSMCLIPConfig.from_preset("tiny")
    model = RSMCLIPModel._from_config(config, attn_implementation="eager").eval()
    batch = _inputs(config)
    with torch.no_grad():
        out = model(**batch, output_attentions=True, output_hidden_states=True)
        vision = model.vision_model(
            pixel_values=batch["pixel_values"], output_attentions=True, output_hidden_states=True
        )
        text = model.text_model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            output_attentions=True,
            output_hidden_states=True,
        )
    v, t = out.vision_model_output, out.text_model_output
    assert len(v.hidden_states) == config.vision_config.num_hidden_layers + 1
    assert len(v.attentions) == config.vision_config.num_hidden_layers
    assert len(t.hidden_states) == config.text_config.num_hidden_layers + 1
    assert len(t.attentions) == config.text_config.num_hidden_layers
    for got, want in zip(v.hidden_states + v.attentions, vision.hidden_states + vision.attentions):
        torch.testing.assert_close(got, want)
    for got, want in zip(t.hidden_states + t.attentions, text.hidden_states + text.attentions):
        torch.testing.assert_close(got, want)
    # attention rows are distributions; the padded text attends to nothing past its mask
    torch.testing.assert_close(v.attentions[0].sum(-1), torch.ones_like(v.attentions[0].sum(-1)))
    assert t.attentions[0][1, :, :, 6:].abs().max().item() < 1e-6
    # without the flags the towers return neither
    with torch.no_grad():
        plain = model(**batch)
    assert plain.vision_model_output.attentions is None and plain.text_model_output.hidden_states is None


# ------------------------------------------------------------------------------------------------ initialisation
INIT_FACTOR = 2.0
INIT_RANGE = 0.05


def _init_config() -> RSMCLIPConfig:
    """Wide enough for standard deviations to within ~1%; factor and range away from their defaults."""
    return RSMCLIPConfig.from_preset(
        "tiny",
        vision_config={"hidden_size": 128, "intermediate_size": 512, "num_attention_heads": 4},
        text_config={"hidden_size": 128, "intermediate_size": 512, "num_attention_heads": 4},
        projection_dim=96,
        dino_out_dim=1024,
        dino_hidden_dim=256,
        dino_bottleneck_dim=64,
        initializer_factor=INIT_FACTOR,
        initializer_range=INIT_RANGE,
    )


def expected_std(config: RSMCLIPConfig) -> dict[str, float]:
    """CLIP's per-layer initialisation for the vision tower (its own config's factor), XLM-R's for the text tower,
    CLIP's for the projections and DINO's truncated normal for the distillation head (both with the model's
    initializer_factor / initializer_range)."""
    v, t = config.vision_config, config.text_config
    vf, f = v.initializer_factor, config.initializer_factor
    width, layers = v.hidden_size, v.num_hidden_layers
    expected = {
        "vision_model.encoder.layers.0.self_attn.q_proj.weight": width**-0.5 * (2 * layers) ** -0.5 * vf,
        "vision_model.encoder.layers.0.self_attn.k_proj.weight": width**-0.5 * (2 * layers) ** -0.5 * vf,
        "vision_model.encoder.layers.1.self_attn.v_proj.weight": width**-0.5 * (2 * layers) ** -0.5 * vf,
        "vision_model.encoder.layers.1.self_attn.out_proj.weight": width**-0.5 * vf,
        "vision_model.encoder.layers.0.mlp.fc1.weight": (2 * width) ** -0.5 * vf,
        "vision_model.encoder.layers.0.mlp.fc2.weight": width**-0.5 * (2 * layers) ** -0.5 * vf,
        "vision_model.embeddings.patch_embedding.weight": v.initializer_range * vf,
        "vision_model.embeddings.class_embedding": width**-0.5 * vf,
        "text_model.encoder.layer.0.attention.self.query.weight": t.initializer_range,
        "text_model.encoder.layer.1.output.dense.weight": t.initializer_range,
        "text_model.embeddings.word_embeddings.weight": t.initializer_range,
        "visual_projection.weight": width**-0.5 * f,
        "text_projection.0.weight": t.hidden_size**-0.5 * f,
        "text_projection.2.weight": config.text_projection_hidden_dim**-0.5 * f,
        "distillation_head.mlp.0.weight": config.initializer_range * f,
        "distillation_head.mlp.4.weight": config.initializer_range * f,
        "distillation_head.last_layer.parametrizations.weight.original1": config.initializer_range * f,
    }
    return expected


def _check_statistics(state: dict[str, torch.Tensor], config: RSMCLIPConfig, keys=None) -> None:
    for name, std in expected_std(config).items():
        if keys is not None and name not in keys:
            continue
        tensor = state[name].double()
        # the sample std of n normal draws has a relative spread of about 1 / sqrt(2n): allow 5 of those
        assert tensor.std().item() == pytest.approx(std, rel=max(0.03, 5 / math.sqrt(2 * tensor.numel()))), (
            name
        )
        assert abs(tensor.mean().item()) < 4 * std / math.sqrt(tensor.numel()) + 1e-12, name
    assert torch.equal(
        state["distillation_head.last_layer.parametrizations.weight.original0"],
        torch.ones_like(state["distillation_head.last_layer.parametrizations.weight.original0"]),
    )
    assert state["logit_scale"].item() == pytest.approx(config.logit_scale_init_value)
    for name, tensor in state.items():
        if name.endswith(".bias"):
            assert torch.count_nonzero(tensor) == 0, name
        if "LayerNorm.weight" in name or "layer_norm" in name and name.endswith("weight"):
            assert torch.equal(tensor, torch.ones_like(tensor)), name


@pytest.fixture(scope="module")
def init_models(tmp_path_factory):
    """The constructor's model, and from_pretrained of its folder with (a) no weights but logit_scale and (b) the
    text tower only (the vision tower, the projections and the head missing)."""
    config = _init_config()
    torch.manual_seed(0)
    model = RSMCLIPModel(config)
    folders = {}
    for case, keep in (("only_logit_scale", ("logit_scale",)), ("text_tower_only", ("text_model.",))):
        folder = tmp_path_factory.mktemp(case)
        model.save_pretrained(folder)
        state = load_file(str(folder / "model.safetensors"))
        kept = {k: v for k, v in state.items() if k.startswith(keep)}
        save_file(kept, str(folder / "model.safetensors"), metadata={"format": "pt"})
        folders[case] = folder
    loaded = {case: RSMCLIPModel.from_pretrained(folder) for case, folder in folders.items()}
    return model, loaded


def test_constructor_initialisation_statistics(init_models):
    model, _ = init_models
    _check_statistics(model.state_dict(), model.config)


@pytest.mark.parametrize("case", ["only_logit_scale", "text_tower_only"])
def test_missing_weights_at_from_pretrained_get_the_constructors_initialisation(init_models, case):
    model, loaded = init_models
    state = loaded[case].state_dict()
    _check_statistics(state, model.config)
    reference = model.state_dict()
    for name, tensor in state.items():
        if case == "text_tower_only" and name.startswith("text_model."):
            torch.testing.assert_close(tensor, reference[name], rtol=0, atol=0, msg=name)  # loaded, untouched
        elif case == "text_tower_only" or name != "logit_scale":
            # re-initialised, not copied: same statistics, different draw
            if tensor.numel() > 1 and tensor.std() > 0:
                assert not torch.equal(tensor, reference[name]), name


def test_distillation_head_init_follows_initializer_range_and_factor():
    for factor, init_range in ((1.0, 0.02), (0.5, 0.1)):
        config = _init_config()
        config.initializer_factor, config.initializer_range = factor, init_range
        torch.manual_seed(1)
        head = RSMCLIPModel(config).distillation_head
        direction = head.last_layer.parametrizations.weight.original1
        assert direction.std().item() == pytest.approx(init_range * factor, rel=0.06)
        # DINO's trunc_normal_ cuts at +-2 (absolute), far outside these ranges
        assert direction.abs().max().item() < 2.0
        # the effective rows are unit vectors (weight norm, magnitude 1)
        torch.testing.assert_close(head.last_layer.weight.norm(dim=1), torch.ones(config.dino_out_dim))


# ------------------------------------------------------------------------------------- distillation head training
def _head_flags(model: RSMCLIPModel) -> dict[str, bool]:
    return {n: p.requires_grad for n, p in model.distillation_head.named_parameters()}


def test_distillation_head_is_frozen_outside_the_distillation_step(tiny_model, tmp_path):
    config = RSMCLIPConfig.from_preset("tiny")
    torch.manual_seed(0)
    model = RSMCLIPModel(config).train()
    assert not any(_head_flags(model).values())
    model.save_pretrained(tmp_path)
    assert not any(_head_flags(RSMCLIPModel.from_pretrained(tmp_path)).values())
    # forward(return_loss=True) gives a gradient to every trainable parameter: none is left unused.
    model(**_inputs(config), return_loss=True).loss.backward()
    without_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert without_grad == []
    # The distillation step unfreezes the head; the weight-norm magnitude stays fixed (dino_norm_last_layer).
    model.zero_grad()
    model.distillation_head.requires_grad_(True)
    flags = _head_flags(model)
    assert flags.pop("last_layer.parametrizations.weight.original0") is False
    assert all(flags.values())
    model.get_distillation_logits(_inputs(config)["pixel_values"]).logsumexp(-1).sum().backward()
    for name, param in model.distillation_head.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
    model.distillation_head.requires_grad_(False)
    assert not any(_head_flags(model).values())


def test_clip_training_under_ddp_has_no_unused_parameters(tmp_path):
    """DDP (gloo, one process, find_unused_parameters=False) raises on the second step when a trainable
    parameter got no gradient: it does with a trainable head, it does not with the head as the model builds it."""
    config = RSMCLIPConfig.from_preset("tiny")
    batch = _inputs(config)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = RSMCLIPModel(config).train()
        reference = copy.deepcopy(model)
        ddp = DistributedDataParallel(model)
        for _ in range(2):  # the second step is where DDP checks the first one's reduction
            model.zero_grad()
            ddp(**batch, return_loss=True).loss.backward()
        reference(**batch, return_loss=True).loss.backward()
        # one process: DDP's averaged gradients are the plain ones, for every trainable parameter
        for (name, param), ref in zip(model.named_parameters(), reference.parameters()):
            if param.requires_grad:
                torch.testing.assert_close(param.grad, ref.grad, msg=name)

        torch.manual_seed(0)
        unsafe = RSMCLIPModel(config).train()
        unsafe.distillation_head.requires_grad_(True)
        unsafe_ddp = DistributedDataParallel(unsafe)
        unsafe_ddp(**batch, return_loss=True).loss.backward()
        with pytest.raises(RuntimeError, match="parameters that were not used in producing loss"):
            unsafe_ddp(**batch, return_loss=True).loss.backward()
    finally:
        dist.destroy_process_group()
