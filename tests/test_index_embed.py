"""The embedding path the index and the evaluation share: a cheap model fingerprint that still sees every weight,
a cache key independent of the tokenizer's per-call state, and length-sorted text batches in input order."""

from __future__ import annotations

import copy
import time

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from modeling_rsmclip.evaluation.embed import Embedder, model_fingerprint, tensor_checksum


def test_changing_any_single_weight_changes_the_fingerprint(tiny) -> None:
    model, processor = tiny
    base = model_fingerprint(model, processor)
    assert model_fingerprint(model, processor) == base  # deterministic
    for name in ("text_model.embeddings.word_embeddings.weight", "visual_projection.weight", "logit_scale"):
        changed = copy.deepcopy(model)
        tensor = changed.state_dict()[name]
        flat = tensor.view(-1)
        # An element far from the strided sample positions, changed by one float32 ulp.
        position = flat.numel() // 2 + 1 if flat.numel() > 1 else 0
        with torch.no_grad():
            flat[position] = torch.nextafter(flat[position], torch.tensor(float("inf")))
        assert model_fingerprint(changed, processor) != base, name


def test_checksum_sees_transposes_and_swapped_rows() -> None:
    """Swapped rows and transposes keep every element (and the total) but change the row sums."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(6, 6, generator=generator)
    assert tensor_checksum(weight) != tensor_checksum(weight.T.contiguous())
    swapped = weight.clone()
    swapped[[0, 1]] = weight[[1, 0]]
    assert tensor_checksum(weight) != tensor_checksum(swapped)
    assert tensor_checksum(weight) == tensor_checksum(weight.clone())
    assert tensor_checksum(weight.half()) != tensor_checksum(weight)  # dtype is part of it


def test_fingerprint_is_cheap_compared_with_hashing_every_byte(tiny) -> None:
    import hashlib

    model, processor = tiny
    big = torch.randn(4096, 4096)  # 64 MiB, as large as the full-size model's largest matrices
    start = time.perf_counter()
    tensor_checksum(big)
    checksum_s = time.perf_counter() - start
    start = time.perf_counter()
    hashlib.sha256(memoryview(big.numpy()).cast("B")).hexdigest()
    sha_s = time.perf_counter() - start
    assert checksum_s < sha_s, (checksum_s, sha_s)


def test_cache_key_ignores_the_tokenizers_last_call(tiny) -> None:
    model, processor = tiny
    key = Embedder(model, processor, cache_dir=None, show_progress=False).model_key
    processor.tokenizer(
        ["a beach", "many planes parked at the airport"], padding="max_length", max_length=20, truncation=True
    )
    assert Embedder(model, processor, cache_dir=None, show_progress=False).model_key == key
    processor.tokenizer(["a beach"], padding=False)
    assert Embedder(model, processor, cache_dir=None, show_progress=False).model_key == key


def test_length_sorted_text_batches_equal_unsorted_in_input_order(tiny) -> None:
    model, processor = tiny
    texts = [
        "a beach",
        "many planes are parked next to a long building in an airport with several runways",
        "campo de ténis",
        "一条穿过森林的河流",
        "dense residential area with many houses, trees and roads between them",
        "river",
        "ein Strand mit blauem Meer",
    ]
    embedder = Embedder(model, processor, batch_size=3, cache_dir=None, show_progress=False)
    sorted_batches = embedder.embed_texts(texts)
    with torch.no_grad():
        for text, row in zip(texts, sorted_batches):
            batch = processor(text=[text], return_tensors="pt")
            alone = F.normalize(model.get_text_features(**batch).pooler_output, dim=-1)[0]
            torch.testing.assert_close(row, alone, atol=1e-5, rtol=1e-4)
        # Input-order batches of the same size, padded together: same result.
        for start in range(0, len(texts), 3):
            batch = processor(text=texts[start : start + 3], return_tensors="pt")
            unsorted = F.normalize(model.get_text_features(**batch).pooler_output, dim=-1)
            torch.testing.assert_close(sorted_batches[start : start + 3], unsorted, atol=1e-5, rtol=1e-4)
    # Duplicates through the cached `texts` path come back in place.
    again = embedder.texts(texts + texts[:2])
    torch.testing.assert_close(again[: len(texts)], sorted_batches)
    torch.testing.assert_close(again[len(texts) :], sorted_batches[:2])


@pytest.mark.parametrize("workers", [None, 0])
def test_images_decode_in_workers_by_default(tiny, sample_images, workers) -> None:
    from modeling_rsmclip.evaluation.embed import ImageFiles, default_num_workers

    model, processor = tiny
    embedder = Embedder(
        model, processor, batch_size=4, num_workers=workers, cache_dir=None, show_progress=False
    )
    assert (
        embedder.num_workers == (default_num_workers() if workers is None else 0)
        and default_num_workers() >= 1
    )
    _, files = sample_images
    embeds = embedder.images(ImageFiles(files))
    with torch.no_grad():
        images = [Image.open(f).convert("RGB") for f in files]
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        direct = F.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
    torch.testing.assert_close(embeds, direct, atol=1e-5, rtol=1e-4)
