"""The zero-shot classification pipeline and the retrieval pipeline, with the package installed."""

from __future__ import annotations

import pytest
import torch
from transformers import pipeline

from modeling_rsmclip.templates import LANGUAGES, PROMPT_TEMPLATES, class_name


def test_zero_shot_pipeline_equals_direct_computation_in_every_language(tiny, tiny_saved, sample_images):
    model, processor = tiny
    classifier = pipeline("zero-shot-image-classification", model=str(tiny_saved))
    image = sample_images[0][0]
    classes = ["beach", "forest", "harbor", "runway"]
    for lang in LANGUAGES:
        template = PROMPT_TEMPLATES[lang][0]
        labels = [class_name("ucm", c, lang) for c in classes]
        got = classifier(image, candidate_labels=labels, hypothesis_template=template)
        inputs = processor(images=image, text=[template.format(x) for x in labels], return_tensors="pt")
        with torch.no_grad():
            probs = model(**inputs).logits_per_image[0].softmax(-1)
        assert [r["label"] for r in got] == [labels[i] for i in probs.argsort(descending=True).tolist()]
        for row in got:
            assert row["score"] == pytest.approx(probs[labels.index(row["label"])].item(), abs=1e-5)


def test_zero_shot_pipeline_rejects_empty_labels(tiny_saved, sample_images):
    classifier = pipeline("zero-shot-image-classification", model=str(tiny_saved))
    with pytest.raises(ValueError, match="no texts"):
        classifier(sample_images[0][0], candidate_labels=[])


def test_retrieval_ranks_planted_match_first(tiny_saved, sample_images):
    retriever = pipeline("rsmclip-retrieval", model=str(tiny_saved), trust_remote_code=True)
    images, files = sample_images
    # image query against an image gallery holding the same image
    ranked = retriever(images[3], images=images, top_k=3)
    assert len(ranked) == 3 and ranked[0]["index"] == 3
    assert ranked[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert ranked[0]["score"] >= ranked[1]["score"] >= ranked[2]["score"]
    # text query against a text gallery holding the same text (any language)
    texts = [
        "Há uma praia com areia branca .",
        "一条河流穿过森林。",
        "Ein Tennisplatz neben Bäumen .",
        "a runway",
    ]
    for i, query in enumerate(texts):
        ranked = retriever(query, texts=texts)
        assert ranked[0]["index"] == i and ranked[0]["text"] == query
        assert ranked[0]["score"] == pytest.approx(1.0, abs=1e-4)
    # text query against images given by path: scores equal the model's cosine similarities
    ranked = retriever("a beach", images=[str(f) for f in files], top_k=2)
    assert [r["image"] for r in ranked] == [str(files[r["index"]]) for r in ranked]


def test_retrieval_scores_match_model(tiny, tiny_saved, sample_images):
    model, processor = tiny
    retriever = pipeline("rsmclip-retrieval", model=str(tiny_saved), trust_remote_code=True)
    images, _ = sample_images
    ranked = retriever("um porto com barcos", images=images)
    with torch.no_grad():
        text = model.get_text_features(
            **processor(text=["um porto com barcos"], return_tensors="pt")
        ).pooler_output
        imgs = model.get_image_features(**processor(images=images, return_tensors="pt")).pooler_output
    cos = torch.nn.functional.cosine_similarity(text, imgs)
    for row in ranked:
        assert row["score"] == pytest.approx(cos[row["index"]].item(), abs=1e-5)


def test_retrieval_bad_inputs(tiny_saved, sample_images):
    retriever = pipeline("rsmclip-retrieval", model=str(tiny_saved), trust_remote_code=True)
    images, _ = sample_images
    with pytest.raises(ValueError, match="gallery is empty"):
        retriever("a beach", images=[])
    with pytest.raises(ValueError, match="no gallery"):
        retriever("a beach")
    with pytest.raises(ValueError, match="query text is empty"):
        retriever("", images=images)
    with pytest.raises(ValueError, match="text 1 is empty"):
        retriever(images[0], texts=["a beach", ""])
