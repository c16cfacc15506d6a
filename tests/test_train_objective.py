"""The training objective's parts against hand computations: losses, centering, EMA teacher, schedules,
augmentations, caption sampling, configuration and optimiser groups."""

from __future__ import annotations

import argparse
import math
import random

import numpy as np
import pytest
import torch
import yaml

from modeling_rsmclip.configuration_rsmclip import RSMCLIPConfig
from modeling_rsmclip.modeling_rsmclip import RSMCLIPModel
from modeling_rsmclip.training.augment import MultiCropAugmentation, MultiCropConfig, RandomRot90
from modeling_rsmclip.training.build import TrainingModule, is_no_decay, parameter_groups
from modeling_rsmclip.training.config import TrainingConfig, add_training_arguments, config_from_args
from modeling_rsmclip.training.data import sample_caption, sample_seed
from modeling_rsmclip.training.losses import ClipLoss, DINOLoss
from modeling_rsmclip.training.teacher import EMATeacher, cosine_momentum, teacher_temperature


def _softmax(row, temp):
    exps = [math.exp(v / temp) for v in row]
    total = sum(exps)
    return [e / total for e in exps]


def _log_softmax(row, temp):
    m = max(v / temp for v in row)
    log_total = m + math.log(sum(math.exp(v / temp - m) for v in row))
    return [v / temp - log_total for v in row]


# ------------------------------------------------------------------------------------------------ DINO loss
def test_dino_loss_and_center_match_a_hand_computation():
    torch.manual_seed(0)
    batch, k, n_global, n_local = 2, 4, 2, 2
    student = torch.randn((n_global + n_local) * batch, k, dtype=torch.float64)
    teacher = torch.randn(n_global * batch, k, dtype=torch.float64)
    loss_fn = DINOLoss(k, num_global_views=n_global, student_temp=0.1, center_momentum=0.9)
    loss_fn.center.copy_(torch.tensor([[0.3, -0.2, 0.1, 0.05]]))
    center = loss_fn.center[0].tolist()
    tau_t = 0.05

    # By hand: for each teacher global view i and each student view v != i, the mean over samples of
    # sum_k -softmax((t - c) / tau_t)_k * log_softmax(s / tau_s)_k; then the mean over (i, v) pairs.
    s_rows, t_rows = student.tolist(), teacher.tolist()
    terms = []
    for i in range(n_global):
        for v in range(n_global + n_local):
            if v == i:
                continue
            per_sample = []
            for b in range(batch):
                q = _softmax([x - c for x, c in zip(t_rows[i * batch + b], center)], tau_t)
                log_p = _log_softmax(s_rows[v * batch + b], 0.1)
                per_sample.append(-sum(qk * lk for qk, lk in zip(q, log_p)))
            terms.append(sum(per_sample) / batch)
    expected = sum(terms) / len(terms)
    assert len(terms) == n_global * (n_global + n_local) - n_global

    loss = loss_fn(student.float(), teacher.float(), teacher_temp=tau_t)
    assert loss.item() == pytest.approx(expected, rel=1e-5)

    # The center moved to 0.9 * c + 0.1 * mean of the teacher rows (updated after the loss used the old one).
    mean = [sum(row[j] for row in t_rows) / len(t_rows) for j in range(k)]
    expected_center = [0.9 * c + 0.1 * m for c, m in zip(center, mean)]
    assert loss_fn.center[0].tolist() == pytest.approx(expected_center, rel=1e-6)


def test_dino_loss_gradient_flows_to_student_only():
    student = torch.randn(6, 5, requires_grad=True)
    teacher = torch.randn(4, 5, requires_grad=True)
    DINOLoss(5, num_global_views=2)(student, teacher, teacher_temp=0.04).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_dino_loss_rejects_inconsistent_views():
    with pytest.raises(ValueError, match="global views"):
        DINOLoss(5, num_global_views=2)(torch.randn(5, 5), torch.randn(4, 5), teacher_temp=0.04)


# ------------------------------------------------------------------------------------------------ CLIP loss
def test_clip_loss_matches_open_clip_and_a_hand_computation():
    open_clip_loss = pytest.importorskip("open_clip.loss")
    torch.manual_seed(1)
    image = torch.nn.functional.normalize(torch.randn(5, 8, dtype=torch.float64), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(5, 8, dtype=torch.float64), dim=-1)
    scale = torch.tensor(14.3, dtype=torch.float64)
    ours = ClipLoss()(image, text, scale)
    reference = open_clip_loss.ClipLoss()(image, text, scale)
    assert ours.item() == pytest.approx(reference.item(), rel=1e-12)
    logits = (scale * image @ text.T).tolist()
    i2t = -sum(logits[i][i] - math.log(sum(math.exp(x) for x in logits[i])) for i in range(5)) / 5
    cols = [[logits[r][c] for r in range(5)] for c in range(5)]
    t2i = -sum(cols[i][i] - math.log(sum(math.exp(x) for x in cols[i])) for i in range(5)) / 5
    assert ours.item() == pytest.approx((i2t + t2i) / 2, rel=1e-12)


# ------------------------------------------------------------------------------------------- EMA and schedules
def _tiny_model(seed: int = 0) -> RSMCLIPModel:
    torch.manual_seed(seed)
    return RSMCLIPModel(RSMCLIPConfig.from_preset("tiny")).eval()


def test_teacher_starts_equal_and_matches_the_model_distillation_logits():
    model = _tiny_model()
    teacher = EMATeacher(model.vision_model, model.distillation_head)
    crops = torch.randn(3, 3, 32, 32)
    local = torch.randn(3, 3, 16, 16)
    assert torch.equal(teacher(crops), model.get_distillation_logits(crops))
    assert torch.equal(teacher(local), model.get_distillation_logits(local))
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.training


def test_ema_update_is_exact():
    student = _tiny_model(0)
    teacher = EMATeacher(student.vision_model, student.distillation_head)
    before = {k: v.clone().double() for k, v in teacher.state_dict().items()}
    # Move the student away from the teacher.
    with torch.no_grad():
        for param in student.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param))
    m = 0.9961
    teacher.update(student.vision_model, student.distillation_head, m)
    student_vision = dict(student.vision_model.named_parameters())
    student_head = dict(student.distillation_head.named_parameters())
    for name, value in teacher.state_dict().items():
        prefix, _, rest = name.partition(".")
        source = (student_vision if prefix == "vision_model" else student_head)[rest]
        if source.requires_grad:
            expected = m * before[name] + (1 - m) * source.detach().double()
            torch.testing.assert_close(value.double(), expected, rtol=0, atol=1e-6)
            # The same value DINO's in-place formula gives, to the last bit.
            dino = before[name].float().mul_(m).add_((1 - m) * source.detach())
            torch.testing.assert_close(value, dino, rtol=0, atol=2e-7)
        else:  # not trained (the head's fixed weight-norm magnitude): untouched, bit for bit
            assert torch.equal(value.double(), before[name])


def test_schedules():
    assert cosine_momentum(0, 100, 0.996, 1.0) == pytest.approx(0.996)
    assert cosine_momentum(50, 100, 0.996, 1.0) == pytest.approx(0.998)
    assert cosine_momentum(100, 100, 0.996, 1.0) == pytest.approx(1.0)
    assert cosine_momentum(25, 100, 0.996, 1.0) == pytest.approx(1 - 0.004 * (1 + math.cos(math.pi / 4)) / 2)
    assert teacher_temperature(0, 10, 0.04, 0.07) == pytest.approx(0.04)
    assert teacher_temperature(5, 10, 0.04, 0.07) == pytest.approx(0.055)
    assert teacher_temperature(10, 10, 0.04, 0.07) == pytest.approx(0.07)
    assert teacher_temperature(3, 0, 0.04, 0.07) == pytest.approx(0.07)


# --------------------------------------------------------------------------------------------- augmentations
def _image():
    from PIL import Image

    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (60, 50, 3), dtype=np.uint8))


def test_multicrop_shapes_and_per_seed_reproducibility():
    aug = MultiCropAugmentation(
        MultiCropConfig(num_global_crops=2, num_local_crops=3, global_crop_size=32, local_crop_size=16)
    )
    image = _image()
    torch.manual_seed(5)
    g1, l1 = aug(image)
    torch.manual_seed(5)
    g2, l2 = aug(image)
    assert [tuple(x.shape) for x in g1] == [(3, 32, 32)] * 2
    assert [tuple(x.shape) for x in l1] == [(3, 16, 16)] * 3
    assert all(torch.equal(a, b) for a, b in zip(g1 + l1, g2 + l2))
    assert g1[0].dtype == torch.float32
    assert not torch.equal(l1[0], l1[1])


def test_random_rot90_gives_the_four_rotations():
    image = torch.arange(12, dtype=torch.uint8).reshape(1, 3, 4)
    seen = set()
    torch.manual_seed(0)
    for _ in range(40):
        out = RandomRot90()(image)
        k = next(k for k in range(4) if torch.equal(out, torch.rot90(image, k, dims=(-2, -1))))
        seen.add(k)
    assert seen == {0, 1, 2, 3}
    # The same rotations on a PIL image (the crops are rotated before they become tensors).
    from PIL import Image

    pil = Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4))
    seen = set()
    for _ in range(40):
        out = torch.from_numpy(np.array(RandomRot90()(pil)))
        seen.add(next(k for k in range(4) if torch.equal(out, torch.rot90(image[0], k))))
    assert seen == {0, 1, 2, 3}


# ------------------------------------------------------------------------------------------- caption sampling
CAPTIONS = [
    {"lang": "en", "text": "many buildings"},
    {"lang": "en", "text": "a dense residential area"},
    {"lang": "de", "text": "viele Gebäude"},
    {"lang": "fr", "text": "beaucoup de bâtiments"},
    {"lang": "fr", "text": "  "},
]


def test_caption_sampling_respects_the_language_choice():
    rng = random.Random(0)
    draws = [sample_caption(CAPTIONS, None, rng, "row 0") for _ in range(300)]
    langs = [lang for lang, _ in draws]
    # A language is drawn uniformly first: about a third each, although English has two captions.
    assert {lang: langs.count(lang) for lang in ("en", "de", "fr")} == pytest.approx(
        {"en": 100, "de": 100, "fr": 100}, abs=35
    )
    assert all(text.strip() for _, text in draws)  # the blank French caption is never drawn
    assert {sample_caption(CAPTIONS, ["en"], rng, "row 0")[0] for _ in range(20)} == {"en"}
    assert {sample_caption(CAPTIONS, ["de", "fr"], rng, "row 0")[0] for _ in range(40)} == {"de", "fr"}
    with pytest.raises(ValueError, match="ucm/12.jpg has no non-empty caption in ko"):
        sample_caption(CAPTIONS, ["ko"], rng, "ucm/12.jpg")


def test_sample_seed_is_stable_and_depends_on_every_part():
    assert sample_seed(1, 0, 7) == sample_seed(1, 0, 7)
    assert len({sample_seed(1, 0, 7), sample_seed(2, 0, 7), sample_seed(1, 1, 7), sample_seed(1, 0, 8)}) == 4


# ------------------------------------------------------------------------------------------------ configuration
def _parse(argv):
    parser = argparse.ArgumentParser()
    add_training_arguments(parser)
    return config_from_args(parser.parse_args(argv))


def test_configuration_defaults_yaml_and_flags(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text(
        yaml.safe_dump(
            {"dataset": "data", "learning_rate": 3e-4, "num_local_crops": 4, "caption_languages": ["en"]}
        )
    )
    config = _parse(
        ["--config", str(path), "--learning-rate", "1e-4", "--no-distillation", "--output-dir", "o"]
    )
    assert config.learning_rate == 1e-4  # the flag wins over the file
    assert config.num_local_crops == 4  # the file wins over the default
    assert config.caption_languages == ["en"]
    assert config.distillation is False
    assert config.teacher_momentum == 0.996 and config.num_global_crops == 2  # DESIGN defaults
    assert config.output_dir == "o"
    (tmp_path / "bad.yaml").write_text("learning_rat: 1\n")
    with pytest.raises(ValueError, match="unknown option.*learning_rat"):
        _parse(["--config", str(tmp_path / "bad.yaml")])


def test_help_documents_every_option():
    parser = argparse.ArgumentParser()
    add_training_arguments(parser)
    text = parser.format_help()
    for name in TrainingConfig.field_names():
        assert "--" + name.replace("_", "-") in text


def test_validation_names_the_problems():
    config = TrainingConfig(preset="tiny", model_name_or_path="x", caption_languages=["xx"], streaming=True)
    with pytest.raises(ValueError) as error:
        config.validate()
    message = str(error.value)
    assert "exactly one of --model-name-or-path" in message
    assert "unknown language 'xx'" in message
    assert "--streaming needs --max-steps" in message
    assert "--dataset is required" in message


# ------------------------------------------------------------------------------------------- optimiser groups
def test_no_weight_decay_on_norms_biases_and_logit_scale():
    model = _tiny_model()
    config = TrainingConfig(weight_decay=0.2, learning_rate=1e-4, head_learning_rate=1e-3)
    groups = parameter_groups(model, config)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert "logit_scale" not in decayed
    assert not any(n.endswith("bias") or "norm" in n.lower() for n in decayed)
    assert "vision_model.encoder.layers.0.self_attn.q_proj.weight" in decayed
    assert "text_projection.0.weight" in decayed
    assert is_no_decay("vision_model.pre_layrnorm.weight", torch.zeros(4))
    # The head has its own learning rate; its fixed weight-norm magnitude is not optimised at all.
    for group in groups:
        head = any("distillation_head" in names[id(p)] for p in group["params"])
        assert group["lr"] == (1e-3 if head else 1e-4)
    optimised = {names[id(p)] for g in groups for p in g["params"]}
    assert "distillation_head.last_layer.parametrizations.weight.original0" not in optimised
    assert len(optimised) == sum(1 for p in model.parameters() if p.requires_grad)


def test_training_module_global_view_reuses_the_student_crop():
    model = _tiny_model()
    module = TrainingModule(model, clip_view="global", distillation=True)
    ids = torch.tensor([[0, 5, 6, 2], [0, 7, 2, 1]])
    mask = (ids != 1).long()
    crops = torch.randn(4, 3, 32, 32)
    local = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        out = module(ids, mask, global_crops=crops, local_crops=local)
        image = model.get_image_features(pixel_values=crops[:2]).pooler_output
        text = model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
    torch.testing.assert_close(out["image_embeds"], torch.nn.functional.normalize(image, dim=-1))
    torch.testing.assert_close(out["text_embeds"], torch.nn.functional.normalize(text, dim=-1))
    assert out["student_logits"].shape == (6, model.config.dino_out_dim)
    torch.testing.assert_close(out["student_logits"][:4], model.get_distillation_logits(crops))


def test_example_configurations_are_valid():
    from pathlib import Path

    examples = sorted((Path(__file__).resolve().parents[1] / "examples").glob("train_*.yaml"))
    assert len(examples) >= 3
    for path in examples:
        TrainingConfig.from_yaml(path).validate()


def test_a_bad_image_or_caption_is_an_error_naming_the_row(tmp_path):
    import io

    import datasets
    from PIL import Image

    from modeling_rsmclip.training.augment import build_clip_transform
    from modeling_rsmclip.training.data import SampleTransform, TrainingExamples

    buffer = io.BytesIO()
    Image.new("RGB", (40, 40), (10, 120, 30)).save(buffer, format="JPEG")
    good = buffer.getvalue()
    rows = datasets.Dataset.from_dict(
        {
            "image": [{"bytes": good, "path": None}, {"bytes": good[: len(good) // 2], "path": None}],
            "image_id": ["a.jpg", "b.jpg"],
            "source": ["test", "test"],
            "captions": [[{"lang": "en", "text": "green field"}], [{"lang": "en", "text": "green field"}]],
        }
    ).cast_column("image", datasets.Image(decode=False))
    examples = TrainingExamples(rows, SampleTransform(build_clip_transform(32), None, ["en"], seed=0))
    assert examples[0]["pixel_values"].shape == (3, 32, 32) and examples[0]["text"] == "green field"
    with pytest.raises(ValueError, match="cannot decode the image of row 1 test/b.jpg"):
        examples[1]
    german_only = TrainingExamples(rows, SampleTransform(build_clip_transform(32), None, ["de"], seed=0))
    with pytest.raises(ValueError, match="row 0 test/a.jpg has no non-empty caption in de"):
        german_only[0]
