"""The bundled demo model: loads with AutoModel from the package folder and scores far above chance on the bundled
sample (UC Merced test-split images, which the model never saw in training)."""

from __future__ import annotations

from transformers import AutoModel, AutoProcessor

from modeling_rsmclip.demo import run_demo
from modeling_rsmclip.inference import DEMO_MODEL_DIR


def test_demo_model_is_bundled_small_and_loads_with_automodel():
    assert (DEMO_MODEL_DIR / "config.json").exists(), f"no demo model in {DEMO_MODEL_DIR}"
    size = sum(p.stat().st_size for p in DEMO_MODEL_DIR.rglob("*") if p.is_file())
    assert size <= 30 * 2**20, f"demo model folder is {size / 2**20:.1f} MiB"
    model = AutoModel.from_pretrained(DEMO_MODEL_DIR)
    processor = AutoProcessor.from_pretrained(DEMO_MODEL_DIR)
    assert type(model).__name__ == "RSMCLIPModel" and model.config.model_type == "rsmclip"
    assert len(processor.tokenizer) <= model.config.text_config.vocab_size
    assert not list(DEMO_MODEL_DIR.glob("*.bin"))


def test_demo_scores_far_above_chance(capsys):
    results = run_demo()
    assert results["trained"]
    chance = 1 / 21
    accuracies = results["zero_shot"]
    assert set(accuracies) == {"en", "pt", "zh"}
    for lang, accuracy in accuracies.items():
        assert accuracy >= 6 * chance, (lang, accuracy)
    assert sum(accuracies.values()) / len(accuracies) >= 8 * chance
    out = capsys.readouterr().out
    assert "Zero-shot classification" in out and "RANDOMLY INITIALISED" not in out
