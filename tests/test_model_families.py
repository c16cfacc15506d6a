"""Hub-native CLIP, SigLIP, SigLIP 2 and AltCLIP checkpoints through every command, each result against the model's
own forward pass.

Tiny random-weight models of each class, saved with `save_pretrained` with real tokenizers (CLIP's BPE from
open_clip's vocabulary file, SentencePiece / BPE models trained on the bundled captions for SigLIP and SigLIP 2,
the XLM-R-style one for AltCLIP), go through the families module, the embedder, the evaluation commands, the
archive index and search, scene maps (`map classify`; `map segment` where the vision tower has patch features),
the web app's service and the transformers pipelines. The references are computed here with the model called as
its card says (SigLIP: texts padded to 64 tokens, no attention mask, sigmoid of `logits_per_image`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _family_fixtures import (
    HUB_FAMILIES,
    SIGMOID,
    family_folder,
    family_model,
    reference_class_embeddings,
    reference_class_scores,
    reference_forward,
    reference_recalls,
    reference_text_inputs,
)
from PIL import Image

from modeling_rsmclip.testing import sample_dir

TEXTS = ["a beach with blue sea", "many planes parked at the airport", "停满飞机的机场", "uma floresta densa"]


def _ucm_images(count: int = 6) -> list[Path]:
    return sorted((sample_dir() / "ucm" / "images").glob("*.jpg"), key=lambda p: int(p.stem))[:count]


def _pil(paths: list[Path]) -> list[Image.Image]:
    return [Image.open(p).convert("RGB") for p in paths]


@pytest.fixture(params=HUB_FAMILIES)
def family(request) -> str:
    return request.param


# ----------------------------------------------------------------------------------------------- the family table
def test_each_class_is_its_family_with_its_rules(family):
    from modeling_rsmclip.inference import families

    model, processor = family_model(family)
    info = families.model_family(model)
    assert info.name == family and info.model_class == type(model).__name__
    ref = reference_forward(family, model, processor, TEXTS[:1], _pil(_ucm_images(1)))
    assert families.embedding_dim(model) == ref["image_embeds"].shape[1] == ref["text_embeds"].shape[1]
    rule = families.text_rule(model)
    assert (rule.max_length, rule.fixed_length, rule.attention_mask) == (
        (64, True, False) if family in SIGMOID else (77, False, True)
    )
    assert families.supports_dense_features(model) == (family in ("clip", "altclip"))
    assert info.onnx_export == (family != "siglip2")
    # The flat pipeline file states the same text rule for itself (it travels to the Hub alone).
    from modeling_rsmclip.pipeline_rsmclip import text_encoding

    kwargs, with_mask = text_encoding(model.config)
    assert with_mask == rule.attention_mask and (kwargs["padding"] == "max_length") == rule.fixed_length
    assert kwargs["max_length"] == rule.max_length


def test_unknown_model_type_is_refused_naming_it():
    from transformers import BertConfig

    from modeling_rsmclip.inference.families import model_family

    with pytest.raises(ValueError, match="'bert'.*SigLIP.*model_type one of"):
        model_family(BertConfig())


# ------------------------------------------------------------------------------- embeddings and zero-shot scores
def test_embedder_and_zero_shot_probabilities_equal_the_forward_pass(family):
    from modeling_rsmclip.evaluation.embed import Embedder, ImageFiles
    from modeling_rsmclip.inference import class_embeddings, load_encoder
    from modeling_rsmclip.inference.families import zero_shot_probabilities

    model, processor = family_model(family)
    files = _ucm_images()
    ref = reference_forward(family, model, processor, TEXTS, _pil(files))
    embedder = Embedder(model, processor, batch_size=3, num_workers=0, cache_dir=None, show_progress=False)
    texts, images = embedder.texts(TEXTS).numpy(), embedder.images(ImageFiles(files)).numpy()
    np.testing.assert_allclose(texts, ref["text_embeds"], atol=2e-6)
    np.testing.assert_allclose(images, ref["image_embeds"], atol=2e-6)
    # One template "{}": a class embedding is the text's embedding, so the probabilities are the model's own.
    classes = class_embeddings(model, processor, TEXTS, "en", templates={"en": ["{}"]})
    np.testing.assert_allclose(
        zero_shot_probabilities(model, images, classes), ref["probabilities"], atol=2e-6
    )
    if family in SIGMOID:  # each label on its own: rows do not sum to one
        assert not np.allclose(ref["probabilities"].sum(1), 1.0)
    # The int8 encoder keeps the family's scoring (scale and bias) and stays close.
    int8 = load_encoder(model, "torch", "int8")
    int8_embedder = Embedder(int8, processor, num_workers=0, cache_dir=None, show_progress=False)
    probs8 = zero_shot_probabilities(
        int8, int8_embedder.images(ImageFiles(files)), int8_embedder.texts(TEXTS)
    )
    assert np.abs(probs8 - ref["probabilities"]).max() < 0.05
    assert (probs8.argmax(1) == ref["probabilities"].argmax(1)).mean() >= 0.8


def test_patch_features_of_clip_vits_equal_the_vision_tower_and_rsmclips_own(tiny):
    """CLIP and AltCLIP patch features are the last layer's patch tokens through the post-layernorm and the
    projection (as the class token in get_image_features); the same function on RS-M-CLIP equals its own
    get_patch_features, NACLIP included."""
    from modeling_rsmclip.inference.families import patch_features, vit_patch_features

    for family in ("clip", "altclip"):
        model, processor = family_model(family)
        pixels = processor.image_processor(images=_pil(_ucm_images(2)), return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            hidden = model.vision_model(pixel_values=pixels).last_hidden_state[:, 1:]
            expected = model.visual_projection(model.vision_model.post_layernorm(hidden))
            got = patch_features(model, pixels)
            assert got.shape == (2, 4, 4, expected.shape[-1])
            torch.testing.assert_close(got.reshape(2, 16, -1), expected, atol=1e-6, rtol=1e-5)
            naclip = patch_features(model, pixels, naclip=True)
            assert naclip.shape == got.shape and not torch.allclose(naclip, got)
    rsmclip, processor = tiny
    pixels = processor(images=_pil(_ucm_images(2)), return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        for naclip in (False, True):
            torch.testing.assert_close(
                vit_patch_features(rsmclip, pixels, naclip=naclip),
                rsmclip.get_patch_features(pixels, naclip=naclip),
                atol=0,
                rtol=0,
            )


# ---------------------------------------------------------------------------------------------- the commands
def _main(argv: list[str]) -> int:
    from modeling_rsmclip.cli import main

    return main(argv)


def test_eval_zero_shot_and_retrieval_commands(family, tmp_path):
    from modeling_rsmclip.templates import PROMPT_TEMPLATES

    folder = family_folder(family)
    model, processor = family_model(family)
    common = ["--model", str(folder), "--num-workers", "0", "--no-cache", "--no-plots", "--quiet"]
    out = tmp_path / "out"
    rsscn7 = sample_dir() / "rsscn7"
    argv = ["eval-zero-shot", "--image-folder", str(rsscn7), "--languages", "en,pt", "--output-dir", str(out)]
    assert _main(argv + common) == 0
    results = json.loads((out / "zero_shot_rsscn7.json").read_text())
    files = sorted(p for p in rsscn7.rglob("*.jpg"))
    labels = [results["classes"].index(p.parent.name) for p in files]
    image_embeds = reference_forward(family, model, processor, ["x"], _pil(files))["image_embeds"]
    for lang in ("en", "pt"):
        names = results["class_names"][lang]
        classes = reference_class_embeddings(family, model, processor, names, PROMPT_TEMPLATES[lang])
        predicted = (image_embeds @ classes.T).argmax(1)
        assert results["languages"][lang]["top1"] == pytest.approx(100.0 * np.mean(predicted == labels))

    ucm = sample_dir() / "ucm"
    argv = ["eval-retrieval", "--karpathy-json", str(ucm / "dataset.json"), "--images", str(ucm / "images")]
    argv += ["--translations", str(ucm / "translations"), "--languages", "en,zh", "--output-dir", str(out)]
    assert _main(argv + common) == 0
    results = json.loads((out / "retrieval_ucm_test.json").read_text())
    data = json.loads((ucm / "dataset.json").read_text())["images"]
    files = [ucm / "images" / entry["filename"] for entry in data]
    image_embeds = reference_forward(family, model, processor, ["x"], _pil(files))["image_embeds"]
    for lang in ("en", "zh"):
        table = {}
        if lang != "en":
            table = {
                row["en"].strip(): row["text"].strip()
                for row in json.loads((ucm / "translations/zh.json").read_text())
            }
        pairs = [
            (i, s["raw"].strip() if lang == "en" else table[s["raw"].strip()])
            for i, entry in enumerate(data)
            for s in entry["sentences"]
        ]
        texts = reference_forward(family, model, processor, [t for _, t in pairs], _pil(files[:1]))[
            "text_embeds"
        ]
        expected = reference_recalls(image_embeds, texts, np.array([i for i, _ in pairs]))
        got = results["languages"][lang]
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, abs=1e-9), (lang, key)


@pytest.fixture(scope="module")
def indexes(tmp_path_factory):
    """An index of the bundled UCM images per family, built once with `rsmclip index build`."""
    pytest.importorskip("faiss", reason='needs faiss: pip install "rsmclip[index]"')
    from modeling_rsmclip.index import RSMCLIPIndex

    built = {}
    for family in HUB_FAMILIES:
        out = tmp_path_factory.mktemp(f"index-{family}") / "index"
        argv = ["index", "build", "--model", str(family_folder(family)), "--output", str(out)]
        assert _main(argv + [str(sample_dir() / "ucm" / "images"), "--num-workers", "0", "--quiet"]) == 0
        built[family] = RSMCLIPIndex.load(out)
    return built


def test_index_build_and_search_rank_by_the_forward_pass(family, indexes, capsys):
    index = indexes[family]
    model, processor = family_model(family)
    assert index.manifest["model"]["family"] == family
    files = sorted((sample_dir() / "ucm" / "images").glob("*.jpg"))
    query = "a baseball field next to a road"
    ref = reference_forward(family, model, processor, [query], _pil(files))
    scores = (ref["image_embeds"] @ ref["text_embeds"].T)[:, 0]
    assert index.manifest["embedding"]["dim"] == ref["image_embeds"].shape[1]
    # The command, on the index folder (the query model is the one in the manifest).
    assert _main(["search", str(index.path), query, "--top-k", "5", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_name = {p.name: s for p, s in zip(files, scores)}
    got = [by_name[Path(row["path"]).name] for row in rows]
    np.testing.assert_allclose([row["score"] for row in rows], got, atol=2e-3)  # float16 storage
    assert min(got) >= np.sort(scores)[-5] - 2e-3  # the five best images
    # An image query ranks that image first.
    rows = index.search(files[3], top_k=1, image=True)
    assert Path(rows[0]["path"]).name == files[3].name and rows[0]["score"] == pytest.approx(1.0, abs=2e-3)


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> tuple[Path, list[np.ndarray]]:
    """A georeferenced 256 x 512 scene: two bundled UCM images side by side (two tiles of 256 px)."""
    rasterio = pytest.importorskip("rasterio", reason='needs rasterio: pip install "rsmclip[geo]"')
    from affine import Affine

    tiles = [np.asarray(Image.open(p).convert("RGB").resize((256, 256))) for p in _ucm_images(2)]
    data = np.concatenate(tiles, axis=1).transpose(2, 0, 1)
    path = tmp_path_factory.mktemp("scene") / "scene.tif"
    profile = dict(
        driver="GTiff", width=512, height=256, count=3, dtype="uint8", crs="EPSG:32611",
        transform=Affine(0.3, 0.0, 500000.0, 0.0, -0.3, 4100000.0), photometric="RGB",
    )  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path, tiles


LABELS = ["beach", "forest", "airplanes", "farmland"]


def test_map_classify_command_gives_the_familys_probabilities(family, scene, tmp_path):
    from modeling_rsmclip.templates import PROMPT_TEMPLATES

    path, tiles = scene
    model, processor = family_model(family)
    out = tmp_path / "map"
    argv = ["map", "classify", str(path), "--labels", ",".join(LABELS), "--output", str(out)]
    assert _main(argv + ["--model", str(family_folder(family)), "--tile-size", "256", "--no-progress"]) == 0
    features = json.loads((out / "tiles.geojson").read_text())["features"]
    got = np.array([[f["properties"]["probabilities"][label] for label in LABELS] for f in features])
    image_embeds = reference_forward(family, model, processor, ["x"], tiles)["image_embeds"]
    classes = reference_class_embeddings(family, model, processor, LABELS, PROMPT_TEMPLATES["en"])
    np.testing.assert_allclose(got, reference_class_scores(family, model, image_embeds, classes), atol=1e-5)


def test_map_segment_runs_on_clip_vits_and_says_why_not_on_siglip(family, scene, tmp_path, capsys):
    import torch.nn.functional as F

    from modeling_rsmclip.geo import segment_scene
    from modeling_rsmclip.templates import PROMPT_TEMPLATES

    path, tiles = scene
    model, processor = family_model(family)
    if family in SIGMOID:
        argv = ["map", "segment", str(path), "--labels", ",".join(LABELS), "--output", str(tmp_path / "seg")]
        assert _main(argv + ["--model", str(family_folder(family))]) == 2
        error = capsys.readouterr().err
        assert "no dense patch features" in error and "map classify" in error and "attention head" in error
        return
    # One 256-px window over the first tile: its class map is the argmax of the upsampled patch similarities.
    result = segment_scene(
        path, LABELS, model=model, processor=processor, window=256, stride=256, naclip=False, progress=False
    )
    pixels = processor.image_processor(images=tiles[:1], return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        hidden = model.vision_model(pixel_values=pixels).last_hidden_state[:, 1:]
        patches = F.normalize(
            model.visual_projection(model.vision_model.post_layernorm(hidden)).double(), dim=-1
        )
    classes = torch.from_numpy(
        reference_class_embeddings(family, model, processor, LABELS, PROMPT_TEMPLATES["en"])
    )
    logits = (patches @ classes.T).reshape(1, 4, 4, len(LABELS)).permute(0, 3, 1, 2).float()
    expected = (
        F.interpolate(logits, size=(256, 256), mode="bilinear", align_corners=False)[0].argmax(0).numpy()
    )
    assert np.mean(result.class_map[:, :256] == expected) > 0.999
    assert result.naclip is False
    naclip = segment_scene(path, LABELS, model=model, processor=processor, window=256, progress=False)
    assert naclip.class_map.shape == (256, 512) and (naclip.class_map < len(LABELS)).all()


def test_app_service_classifies_and_searches_with_the_familys_rules(family, indexes, tmp_path):
    from modeling_rsmclip.app.service import AppService, InputError
    from modeling_rsmclip.templates import PROMPT_TEMPLATES

    model, processor = family_model(family)
    service = AppService(model, processor, index=indexes[family], work_dir=tmp_path / "app")
    image = _ucm_images(5)[4]
    result = service.classify(str(image), ", ".join(LABELS), language="en")
    image_embeds = reference_forward(family, model, processor, ["x"], _pil([image]))["image_embeds"]
    classes = reference_class_embeddings(family, model, processor, LABELS, PROMPT_TEMPLATES["en"])
    expected = reference_class_scores(family, model, image_embeds, classes)[0]
    np.testing.assert_allclose(result.probabilities, expected, atol=1e-5)
    found = service.search("a beach with blue sea", language="en", top_k=3)
    assert [r["id"] for r in found.rows] == [
        r["id"] for r in indexes[family].search("a beach with blue sea", 3)
    ]
    if family in SIGMOID:
        with pytest.raises(InputError, match="no dense patch features"):
            service.segment(str(image), "beach, forest", language="en")


def test_zero_shot_and_retrieval_pipelines_equal_the_forward_pass(family):
    from transformers import pipeline

    from modeling_rsmclip import RSMCLIPRetrievalPipeline, RSMCLIPZeroShotImageClassificationPipeline

    model, processor = family_model(family)
    folder = str(family_folder(family))
    image = _pil(_ucm_images(1))[0]
    classifier = pipeline(
        "zero-shot-image-classification",
        model=folder,
        pipeline_class=RSMCLIPZeroShotImageClassificationPipeline,
    )
    template = "a satellite image of {}."
    got = classifier(image, candidate_labels=LABELS, hypothesis_template=template)
    ref = reference_forward(family, model, processor, [template.format(x) for x in LABELS], [image])
    by_label = {row["label"]: row["score"] for row in got}
    np.testing.assert_allclose([by_label[x] for x in LABELS], ref["probabilities"][0], atol=1e-5)
    retriever = pipeline("rsmclip-retrieval", model=folder, pipeline_class=RSMCLIPRetrievalPipeline)
    files = _ucm_images()
    rows = retriever(TEXTS[0], images=[str(p) for p in files], top_k=len(files))
    ref = reference_forward(family, model, processor, TEXTS[:1], _pil(files))
    cos = (ref["image_embeds"] @ ref["text_embeds"].T)[:, 0]
    np.testing.assert_allclose([row["score"] for row in rows], cos[[row["index"] for row in rows]], atol=2e-6)
    assert [row["index"] for row in rows] == list(np.argsort(-cos))


def test_text_rule_pads_as_the_tokenizer_does(family):
    """The embedder pads token rows itself (sorted by length): the ids equal the tokenizer's own padding."""
    from modeling_rsmclip.inference.families import pad_token_id, pad_token_rows, text_rule

    model, processor = family_model(family)
    tokenizer = processor.tokenizer
    rule = text_rule(model)
    ids = tokenizer(TEXTS, truncation=True, max_length=rule.max_length)["input_ids"]
    side = getattr(tokenizer, "padding_side", "right")
    ours = pad_token_rows(rule, ids, pad_token_id(tokenizer), side)
    theirs = reference_text_inputs(family, tokenizer, TEXTS)
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name])
