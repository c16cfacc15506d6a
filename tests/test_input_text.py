"""Texts: a folder without tokenizer files, content-free texts and bad candidate labels are refused or flagged
(issue 13, item 4)."""

from __future__ import annotations

import shutil
import warnings

import pytest
from transformers import AutoProcessor, AutoTokenizer, pipeline

from modeling_rsmclip import RSMCLIPProcessor, RSMCLIPZeroShotImageClassificationPipeline
from modeling_rsmclip.processing_rsmclip import content_free_texts

ZERO_WIDTH = "\u200b\u200b"
UNKNOWN = "\u16a0\u16a2\u16a6"  # runes: absent from the tokenizer's vocabulary


def test_model_folder_without_tokenizer_files_is_refused(tiny_saved, tmp_path):
    folder = tmp_path / "no-tokenizer"
    folder.mkdir()
    for name in ("config.json", "processor_config.json", "model.safetensors"):
        if (tiny_saved / name).exists():
            shutil.copy(tiny_saved / name, folder / name)
    for load in (
        AutoProcessor.from_pretrained,
        RSMCLIPProcessor.from_pretrained,
        AutoTokenizer.from_pretrained,
    ):
        with pytest.raises(FileNotFoundError, match=r"no tokenizer files in .*no-tokenizer"):
            load(str(folder))
    # the complete folder still loads, with its real vocabulary
    assert len(AutoProcessor.from_pretrained(str(tiny_saved)).tokenizer) > 100


def test_content_free_texts_are_named(tiny):
    _, processor = tiny
    tokenizer = processor.tokenizer
    assert content_free_texts(tokenizer, ["a forest", ZERO_WIDTH, UNKNOWN, "a beach"]) == [
        ZERO_WIDTH,
        UNKNOWN,
    ]
    with pytest.warns(UserWarning, match=r"2 text\(s\) have no content.*1: '\\u200b\\u200b'.*2: '"):
        processor(text=["a forest", ZERO_WIDTH, UNKNOWN], return_tensors="pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        processor(text=["a forest", "uma praia"], return_tensors="pt")
    with pytest.raises(ValueError, match=r"text 1 is not a string \(None\)"):
        processor(text=["a forest", None], return_tensors="pt")


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (None, "candidate_labels is missing"),
        ([], "candidate_labels is empty"),
        (["forest", None], r"candidate label 1 is empty or not a string \(None\)"),
        (["forest", "  "], "candidate label 1 is empty"),
        ("forest", "single string 'forest'"),
        (["forest", "forest"], "'forest' is given twice"),
        (["forest", ZERO_WIDTH], r"have no content"),
        (["forest", UNKNOWN], UNKNOWN),
    ],
)
def test_zero_shot_candidate_labels_are_checked(tiny_saved, sample_images, labels, message):
    classifier = pipeline(
        "zero-shot-image-classification",
        model=str(tiny_saved),
        pipeline_class=RSMCLIPZeroShotImageClassificationPipeline,
    )
    images, _ = sample_images
    with pytest.raises(ValueError, match=message):
        classifier(images[0], candidate_labels=labels)


def test_zero_shot_pipeline_refuses_unknown_arguments_and_bad_templates(tiny_saved, sample_images):
    classifier = pipeline(
        "zero-shot-image-classification",
        model=str(tiny_saved),
        pipeline_class=RSMCLIPZeroShotImageClassificationPipeline,
    )
    images, _ = sample_images
    with pytest.raises(TypeError, match="unexpected keyword argument.*top_kk"):
        classifier(images[0], candidate_labels=["forest", "beach"], top_kk=2)
    with pytest.raises(ValueError, match="exactly one"):
        classifier(images[0], candidate_labels=["forest", "beach"], hypothesis_template="a photo")
    # The stock pipeline gets the tokenizer's own refusal of an empty label list.
    stock = pipeline("zero-shot-image-classification", model=str(tiny_saved))
    with pytest.raises(ValueError, match="no texts given"):
        stock(images[0], candidate_labels=[])
