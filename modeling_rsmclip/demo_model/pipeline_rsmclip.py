"""Text <-> image retrieval pipeline, and a zero-shot classification pipeline with RS-M-CLIP's input rules.

A query (a text in any of the model's languages, or an image) is ranked against a gallery (a list of images, or of
texts) by cosine similarity of the model's embeddings:

    >>> retriever = pipeline("rsmclip-retrieval", model="path/or/hub-id", trust_remote_code=True)
    >>> retriever("campo de ténis", images=["1.jpg", "2.jpg", pil_image], top_k=2)
    [{"score": 0.31, "index": 1, "image": "2.jpg"}, {"score": 0.12, "index": 0, "image": "1.jpg"}]
    >>> retriever(pil_image, texts=["a beach", "a forest"])
    >>> retriever(Path("scene"), images=[...])  # an image file as the query (a Path, or a str naming a file)
    >>> retriever("praia", images=RSMCLIPIndex.load("my-index"), top_k=5)  # an archive index as the gallery

What is a text and what is an image is never guessed from a file name: a query is an image when it is a
`pathlib.Path`, a PIL image, a numpy array or a torch tensor, or a `str` naming an existing file (with or without an
extension); any other `str` is a text (with a warning when it looks like a path to a missing file).
The gallery's kind is the keyword it comes in: every item of `images=` is an image (a `str` there is a file path),
every item of `texts=` a text. Images are decoded and converted by `processing_rsmclip.to_rgb` (`bands=` and
`intensity_scaling=` apply to the query and gallery images). The gallery's embeddings are computed once and reused
while the same gallery (the same items) is passed again. This file travels to the Hub with the model
(``custom_pipelines`` in its config).
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import PIL.Image
import torch
import torch.nn.functional as F
from transformers import Pipeline
from transformers.pipelines import ZeroShotImageClassificationPipeline

from .processing_rsmclip import CONTEXT_LENGTH, check_texts, content_free_texts, to_rgb

RETRIEVAL_TASK = "rsmclip-retrieval"
# Only to word a warning about a text query that looks like a missing file; never to decide text vs image.
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif", ".jp2")


def _check_top_k(top_k: Any) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k <= 0:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    return top_k


def _refuse_unknown(kwargs: dict[str, Any], accepted: tuple[str, ...], what: str) -> None:
    if kwargs:
        raise TypeError(
            f"{what} got unexpected keyword argument(s) {', '.join(sorted(kwargs))}; it accepts "
            f"{', '.join(accepted)}"
        )


def text_encoding(config: Any) -> tuple[dict[str, Any], bool]:
    """How the model's texts are tokenized: ``(tokenizer keyword arguments, whether the attention mask is passed)``.

    SigLIP models (``"siglip"`` in the model type, transformers' own test in its zero-shot pipeline) read every
    text padded to their text length (64) and no attention mask, as they were trained; every other model reads texts
    padded to the batch's longest, at most 77 tokens, with the mask. The rest of the package takes the same rule
    from `modeling_rsmclip.inference.families` (this file travels to the Hub alone, so it states it here too).
    """
    if "siglip" in str(getattr(config, "model_type", "")):
        length = int(config.text_config.max_position_embeddings)
        return {"padding": "max_length", "max_length": length, "truncation": True}, False
    return {"padding": True, "max_length": CONTEXT_LENGTH, "truncation": True}, True


def _image_inputs(image_processor: Any, images: list[Any], device: Any, dtype: Any) -> dict[str, Any]:
    """Every model input the image processor makes (SigLIP 2's patch masks too), on ``device``; floating ones in
    ``dtype``."""
    batch = image_processor(images=images, return_tensors="pt")
    return {
        name: value.to(device, dtype) if value.is_floating_point() else value.to(device)
        for name, value in batch.items()
        if name in ("pixel_values", "pixel_attention_mask", "spatial_shapes")
    }


def check_candidate_labels(labels: Any, tokenizer: Any) -> list[str]:
    """Refuse a missing, empty, duplicated or content-free list of labels with a ValueError naming the label."""
    if labels is None:
        raise ValueError("candidate_labels is missing: pass a non-empty list of label strings")
    if isinstance(labels, str):
        raise ValueError(f"candidate_labels must be a list of strings, got the single string {labels!r}")
    labels = list(labels)
    if not labels:
        raise ValueError("candidate_labels is empty: pass at least one label")
    for i, label in enumerate(labels):
        if not isinstance(label, str) or not label.strip():
            raise ValueError(f"candidate label {i} is empty or not a string ({label!r})")
    seen: set[str] = set()
    for label in labels:
        if label in seen:
            raise ValueError(f"candidate label {label!r} is given twice")
        seen.add(label)
    empty = content_free_texts(tokenizer, labels)
    if empty:
        raise ValueError(
            f"candidate label(s) {empty} have no content the tokenizer knows (only unknown, zero-width or blank "
            f"characters): their scores would mean nothing"
        )
    return labels


def query_is_text(query: Any) -> bool:
    """The retrieval query rule: a `str` is a text unless it names an existing file; anything else is an image."""
    if not isinstance(query, str):
        return False
    if os.path.isfile(query):
        return False
    if os.sep in query or os.path.splitext(query)[1].lower() in _IMAGE_SUFFIXES:
        warnings.warn(
            f"the query {query!r} is used as a text: no file of that name exists (an image query must be an "
            f"existing file, a pathlib.Path, a PIL image or an array)",
            UserWarning,
            stacklevel=3,
        )
    return True


class RSMCLIPRetrievalPipeline(Pipeline):
    """Rank a gallery of images (for a text or image query) or of texts (for an image or text query)."""

    _load_processor = False
    _load_image_processor = True
    _load_feature_extractor = False
    _load_tokenizer = True
    ACCEPTED = ("images", "texts", "top_k", "bands", "intensity_scaling")

    def __init__(self, *args: Any, batch_size_gallery: int = 32, **kwargs: Any) -> None:
        self.batch_size_gallery = batch_size_gallery
        self._gallery_cache: tuple[tuple[Any, ...], list[Any], torch.Tensor] | None = None
        super().__init__(*args, **kwargs)

    def _sanitize_parameters(
        self, images=None, texts=None, top_k=None, bands=None, intensity_scaling=None, **kwargs
    ):
        _refuse_unknown(kwargs, self.ACCEPTED, "the rsmclip-retrieval pipeline")
        preprocess: dict[str, Any] = {}
        if images is not None and hasattr(images, "search") and not isinstance(images, list | tuple):
            # A gallery that searches itself (an archive index); the query follows the same text/image rule.
            top_k = 10 if top_k is None else _check_top_k(top_k)
            return {"gallery": images, "kind": "index", "top_k": top_k}, {}, {}
        if images is not None and texts is not None:
            raise ValueError("give the gallery as either `images` or `texts`, not both")
        if images is not None or texts is not None:
            gallery, kind = (images, "image") if images is not None else (texts, "text")
            if not isinstance(gallery, list | tuple) or len(gallery) == 0:
                raise ValueError(f"the {kind} gallery is empty: pass a non-empty list of {kind}s")
            preprocess = {"gallery": gallery, "kind": kind}
        if bands is not None or intensity_scaling is not None:
            preprocess["image_options"] = {"bands": bands, "intensity_scaling": intensity_scaling or "dtype"}
        postprocess = {"top_k": _check_top_k(top_k)} if top_k is not None else {}
        return preprocess, {}, postprocess

    # -------------------------------------------------------------------------------------------------- embedding
    def _embed_texts(self, texts: list[str]) -> torch.Tensor:
        check_texts(texts)
        empty = content_free_texts(self.tokenizer, texts)
        if empty:
            raise ValueError(
                f"text(s) {empty} have no content the tokenizer knows (only unknown, zero-width or blank characters)"
            )
        kwargs, with_mask = text_encoding(self.model.config)
        out = []
        for start in range(0, len(texts), self.batch_size_gallery):
            batch = self.tokenizer(
                list(texts[start : start + self.batch_size_gallery]), return_tensors="pt", **kwargs
            ).to(self.device)
            inputs = {"input_ids": batch["input_ids"]}
            if with_mask:
                inputs["attention_mask"] = batch["attention_mask"]
            with torch.no_grad():
                feats = self.model.get_text_features(**inputs).pooler_output
            out.append(F.normalize(feats.float(), dim=-1))
        return torch.cat(out)

    def _embed_images(self, images: list[Any], options: dict[str, Any]) -> torch.Tensor:
        out = []
        for start in range(0, len(images), self.batch_size_gallery):
            batch = [to_rgb(x, **options) for x in images[start : start + self.batch_size_gallery]]
            inputs = _image_inputs(self.image_processor, batch, self.device, self.model.dtype)
            with torch.no_grad():
                feats = self.model.get_image_features(**inputs).pooler_output
            out.append(F.normalize(feats.float(), dim=-1))
        return torch.cat(out)

    def _gallery_embeddings(self, gallery: list[Any], kind: str, options: dict[str, Any]) -> torch.Tensor:
        # The same items (by identity) in the same order, of the same kind, converted the same way.
        key = (kind, len(gallery), tuple(sorted((k, str(v)) for k, v in options.items())))
        cached = self._gallery_cache
        if cached is not None and cached[0] == key and all(a is b for a, b in zip(cached[1], gallery)):
            return cached[2]
        embeds = (
            self._embed_texts(list(gallery)) if kind == "text" else self._embed_images(list(gallery), options)
        )
        self._gallery_cache = (key, list(gallery), embeds)
        return embeds

    # --------------------------------------------------------------------------------------------------- pipeline
    def preprocess(
        self,
        query: Any,
        gallery: list[Any] | None = None,
        kind: str | None = None,
        image_options: dict[str, Any] | None = None,
        top_k: int | None = None,
    ) -> dict[str, Any]:
        if gallery is None:
            raise ValueError("no gallery: pass `images=[...]` or `texts=[...]` to rank the query against")
        return {
            "query": query,
            "query_is_text": query_is_text(query),
            "gallery": gallery,
            "kind": kind,
            "image_options": image_options or {},
            "top_k": top_k,
        }

    def _forward(self, inputs: dict[str, Any]) -> dict[str, Any]:
        query, options = inputs["query"], inputs["image_options"]
        if inputs["kind"] == "index":
            image = not inputs["query_is_text"]
            return {"results": inputs["gallery"].search(query, top_k=inputs["top_k"], image=image)}
        query_embed = (
            self._embed_texts([query]) if inputs["query_is_text"] else self._embed_images([query], options)
        )
        gallery_embeds = self._gallery_embeddings(inputs["gallery"], inputs["kind"], options)
        scores = (query_embed @ gallery_embeds.t())[0]
        return {"scores": scores.cpu(), "gallery": inputs["gallery"], "kind": inputs["kind"]}

    def postprocess(self, outputs: dict[str, Any], top_k: int | None = None) -> list[dict[str, Any]]:
        if "results" in outputs:
            return outputs["results"]
        scores = outputs["scores"]
        k = len(scores) if top_k is None else min(top_k, len(scores))
        values, indices = torch.topk(scores, k)
        results = []
        for score, index in zip(values.tolist(), indices.tolist()):
            item = outputs["gallery"][index]
            result = {"score": score, "index": index}
            if outputs["kind"] == "text":
                result["text"] = item
            elif isinstance(item, str | os.PathLike):
                result["image"] = item
            results.append(result)
        return results

    def __call__(self, inputs: Any, **kwargs: Any) -> Any:
        if isinstance(inputs, str) and not inputs.strip():
            raise ValueError("the query text is empty")
        return super().__call__(inputs, **kwargs)


class RSMCLIPZeroShotImageClassificationPipeline(ZeroShotImageClassificationPipeline):
    """transformers' zero-shot image classification with RS-M-CLIP's input rules.

    Images (paths included) go through `processing_rsmclip.to_rgb` (16-bit TIFF kept, `bands=` for multi-band
    arrays, decompression-bomb guard, errors naming the file) instead of PIL's 8-bit conversion; missing, empty,
    duplicated or content-free candidate labels, a hypothesis template without one `{}`, and unknown keyword
    arguments are refused. Use it with `pipeline("zero-shot-image-classification", model=...,
    pipeline_class=RSMCLIPZeroShotImageClassificationPipeline)`.
    """

    ACCEPTED = (
        "candidate_labels",
        "hypothesis_template",
        "timeout",
        "tokenizer_kwargs",
        "bands",
        "intensity_scaling",
    )

    def __call__(self, image: Any = None, candidate_labels: Any = None, **kwargs: Any) -> Any:
        if "images" in kwargs:
            image = kwargs.pop("images")
        if image is None:
            raise ValueError("no image given: pass an image, a path or a list of them")
        check_candidate_labels(candidate_labels, self.tokenizer)
        template = kwargs.get("hypothesis_template")
        if template is not None and (not isinstance(template, str) or template.count("{}") != 1):
            raise ValueError(f"hypothesis_template must contain exactly one '{{}}', got {template!r}")
        return super().__call__(image, candidate_labels=list(candidate_labels), **kwargs)

    def _sanitize_parameters(self, tokenizer_kwargs=None, bands=None, intensity_scaling=None, **kwargs):
        unknown = {k: v for k, v in kwargs.items() if k not in self.ACCEPTED}
        _refuse_unknown(unknown, self.ACCEPTED, "the zero-shot-image-classification pipeline")
        preprocess, forward, postprocess = super()._sanitize_parameters(**kwargs)
        if tokenizer_kwargs is not None:
            preprocess["tokenizer_kwargs"] = tokenizer_kwargs
        preprocess["image_options"] = {"bands": bands, "intensity_scaling": intensity_scaling or "dtype"}
        return preprocess, forward, postprocess

    def preprocess(
        self,
        image: Any,
        *args: Any,
        image_options: dict[str, Any] | None = None,
        tokenizer_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        """The stock preprocessing on the converted image, with the texts tokenized by the model's rule
        (`text_encoding`: SigLIP's fixed length and no mask; the caller's ``tokenizer_kwargs`` win)."""
        rgb = PIL.Image.fromarray(to_rgb(image, **(image_options or {})))
        encoding, with_mask = text_encoding(self.model.config)
        inputs = super().preprocess(
            rgb, *args, tokenizer_kwargs={**encoding, **(tokenizer_kwargs or {})}, **kwargs
        )
        if not with_mask:
            for text_inputs in inputs["text_inputs"]:
                text_inputs.pop("attention_mask", None)
        return inputs


def register_retrieval_pipeline() -> None:
    """Register the retrieval pipeline under the task name `"rsmclip-retrieval"` (done on package import)."""
    from transformers import AutoModel
    from transformers.pipelines import PIPELINE_REGISTRY

    if RETRIEVAL_TASK not in PIPELINE_REGISTRY.get_supported_tasks():
        PIPELINE_REGISTRY.register_pipeline(
            RETRIEVAL_TASK, pipeline_class=RSMCLIPRetrievalPipeline, pt_model=AutoModel, type="multimodal"
        )


__all__ = [
    "RSMCLIPRetrievalPipeline",
    "RSMCLIPZeroShotImageClassificationPipeline",
    "RETRIEVAL_TASK",
    "check_candidate_labels",
    "register_retrieval_pipeline",
    "text_encoding",
]
