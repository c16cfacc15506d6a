"""Bounded-memory retrieval ranking equals the full-matrix ranking, on the real UCM test split (English and Chinese captions), under both tie rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modeling_rsmclip.evaluation.metrics import retrieval_metrics, retrieval_metrics_chunked

LANGS = ["en", "zh"]


@pytest.fixture(scope="module")
def ucm_embeddings(shared_data, tmp_path_factory):
    """Demo-model embeddings of the 210 UCM test images and their captions in two languages."""
    from transformers import AutoModel, AutoProcessor

    from modeling_rsmclip.evaluation.embed import Embedder
    from modeling_rsmclip.evaluation.retrieval import load_karpathy
    from modeling_rsmclip.inference import DEMO_MODEL_DIR

    ucm = shared_data / "ucm-captions"
    data = load_karpathy(ucm / "dataset.json", ucm / "images", "test", ucm / "translations", LANGS)
    model = AutoModel.from_pretrained(DEMO_MODEL_DIR)
    processor = AutoProcessor.from_pretrained(DEMO_MODEL_DIR)
    embedder = Embedder(model, processor, batch_size=64, cache_dir=None, show_progress=False)
    images = embedder.images(data.images)
    texts = {lang: embedder.texts([t for _, t in data.captions[lang]]) for lang in LANGS}
    owners = {lang: np.array([i for i, _ in data.captions[lang]]) for lang in LANGS}
    return images, texts, owners


@pytest.mark.parametrize("ties", ["pessimistic", "optimistic"])
@pytest.mark.parametrize("block_bytes", [4096, 64 * 1024, 1 << 30])
def test_chunked_equals_full_matrix_on_ucm(ucm_embeddings, ties, block_bytes) -> None:
    images, texts, owners = ucm_embeddings
    for lang in LANGS:
        full = retrieval_metrics((images @ texts[lang].T).numpy(), owners[lang], (1, 5, 10), ties=ties)
        chunked = retrieval_metrics_chunked(
            images, texts[lang], owners[lang], (1, 5, 10), ties=ties, block_bytes=block_bytes
        )
        assert chunked == full, (lang, ties)
    # UCM has duplicate captions, so the two tie rules really differ somewhere.
    en = [
        retrieval_metrics_chunked(images, texts["en"], owners["en"], ties=t)["mR"]
        for t in ("pessimistic", "optimistic")
    ]
    assert en[1] > en[0]


@pytest.mark.parametrize("ties", ["pessimistic", "optimistic"])
def test_chunked_handles_exact_ties_and_images_without_captions(ties) -> None:
    rng = np.random.default_rng(0)
    # Coarse values make many exact ties; image 5 has no caption; texts 0 and 3 are identical.
    images = torch.from_numpy(rng.integers(-2, 3, size=(7, 4)).astype(np.float32))
    texts = torch.from_numpy(rng.integers(-2, 3, size=(9, 4)).astype(np.float32))
    texts[3] = texts[0]
    owner = np.array([0, 1, 2, 0, 3, 4, 6, 6, 2])
    full = retrieval_metrics((images @ texts.T).numpy(), owner, (1, 2, 3), ties=ties)
    for block_bytes in (4, 40, 400, 1 << 20):
        assert retrieval_metrics_chunked(images, texts, owner, (1, 2, 3), ties, block_bytes) == full
    assert full["images_without_texts"] == 1


def test_chunked_refuses_bad_input() -> None:
    images = torch.ones(3, 4)
    with pytest.raises(ValueError, match="outside 0..2"):
        retrieval_metrics_chunked(images, torch.ones(2, 4), [0, 3])
    with pytest.raises(ValueError, match="non-finite value at row 1"):
        bad = images.clone()
        bad[1, 0] = float("nan")
        retrieval_metrics_chunked(bad, torch.ones(2, 4), [0, 1])
