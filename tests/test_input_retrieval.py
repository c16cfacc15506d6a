"""Retrieval pipeline: text vs image never guessed from a file name; unknown arguments and top_k <= 0 refused
(issue 13, item 5)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import pipeline


@pytest.fixture(scope="module")
def retriever(tiny_saved):
    return pipeline("rsmclip-retrieval", model=str(tiny_saved), trust_remote_code=True)


def _scores(results):
    return {r["index"]: r["score"] for r in results}


def test_extensionless_image_paths_are_images(retriever, sample_images, tmp_path):
    images, files = sample_images
    plain = []
    for i, f in enumerate(files[:3]):
        target = tmp_path / f"scene{i}"  # no extension
        shutil.copy(f, target)
        plain.append(str(target))
    from_pil = _scores(retriever(images[0], images=images[:3]))
    for query in (Path(plain[0]), plain[0]):  # a Path, or a str naming an existing file: an image
        from_paths = _scores(retriever(query, images=plain))  # str paths in images= are images
        assert from_paths.keys() == from_pil.keys()
        for index, score in from_pil.items():
            assert from_paths[index] == pytest.approx(score, abs=1e-5)
        assert from_paths[0] == pytest.approx(1.0, abs=1e-5)  # the query is gallery image 0 itself
    # a str naming no file is a text, whatever it looks like; a path-like one is flagged
    missing = str(tmp_path / "typo.jpg")
    with pytest.warns(UserWarning, match=r"typo.jpg' is used as a text: no file of that name exists"):
        as_text = _scores(retriever(missing, images=plain))
    with pytest.warns(UserWarning, match="used as a text"):
        text_embed = _scores(retriever(missing, texts=[missing, "a forest"]))
    assert text_embed[0] == pytest.approx(1.0, abs=1e-5)  # the same text embedding on both sides
    assert as_text[0] != pytest.approx(1.0, abs=1e-3)


def test_texts_that_look_like_file_names_are_texts(retriever, tiny, sample_images):
    model, processor = tiny
    images, _ = sample_images
    texts = ["beach.jpg", "a forest", "scene.tif"]
    ranked = _scores(retriever(images[1], texts=texts))
    with torch.no_grad():
        t = model.get_text_features(**processor(text=texts, return_tensors="pt")).pooler_output
        v = model.get_image_features(**processor(images=images[1], return_tensors="pt")).pooler_output
    cos = torch.nn.functional.cosine_similarity(v, t)
    for index, score in ranked.items():
        assert score == pytest.approx(cos[index].item(), abs=1e-5)


def test_unknown_arguments_and_bad_top_k_are_errors(retriever, sample_images):
    images, _ = sample_images
    with pytest.raises(TypeError, match="unexpected keyword argument.*band"):
        retriever("a beach", images=images, band=[2, 1, 0])
    for bad in (0, -1, 1.5, True, "3"):
        with pytest.raises(ValueError, match=rf"top_k must be a positive integer, got {bad!r}"):
            retriever("a beach", images=images, top_k=bad)
    assert len(retriever("a beach", images=images, top_k=100)) == len(images)


def test_bands_apply_to_multiband_gallery_and_query(retriever, sample_images):
    images, _ = sample_images
    rgb = [np.asarray(im) for im in images[:3]]
    nir = [np.concatenate([x[:, :, ::-1], x[:, :, :1]], axis=-1) for x in rgb]  # bands B, G, R, NIR
    with pytest.raises(ValueError, match="4 bands"):
        retriever("a beach", images=nir)
    direct = _scores(retriever(images[0], images=images[:3]))
    banded = _scores(retriever(nir[0], images=nir, bands=[2, 1, 0]))
    for index, score in direct.items():
        assert banded[index] == pytest.approx(score, abs=1e-5)


def test_gallery_cache_follows_the_items(retriever, sample_images):
    images, _ = sample_images
    gallery = list(images[:3])
    first = _scores(retriever(images[0], images=gallery))
    gallery[0] = Image.fromarray(np.zeros((64, 64, 3), np.uint8))  # changed in place: same list, same length
    second = _scores(retriever(images[0], images=gallery))
    assert first[0] == pytest.approx(1.0, abs=1e-5) and second[0] < 0.99
    assert second[1] == pytest.approx(first[1], abs=1e-6)
