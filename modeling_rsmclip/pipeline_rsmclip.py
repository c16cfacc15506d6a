"""Text <-> image retrieval pipeline for RS-M-CLIP.

A query (a text in any of the model's languages, or an image) is ranked against a gallery (a list of images, or of
texts) by cosine similarity of the model's embeddings:

    >>> retriever = pipeline("rsmclip-retrieval", model="path/or/hub-id", trust_remote_code=True)
    >>> retriever("campo de ténis", images=["1.jpg", "2.jpg", pil_image], top_k=2)
    [{"score": 0.31, "index": 1, "image": "2.jpg"}, {"score": 0.12, "index": 0, "image": "1.jpg"}]
    >>> retriever(pil_image, texts=["a beach", "a forest"])
    >>> retriever("praia", images=RSMCLIPIndex.load("my-index"), top_k=5)  # an archive index as the gallery

The gallery's embeddings are computed once and reused while the same gallery list is passed again. This file
travels to the Hub with the model (``custom_pipelines`` in its config).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import Pipeline

from .processing_rsmclip import to_rgb

RETRIEVAL_TASK = "rsmclip-retrieval"


def _is_text(x: Any) -> bool:
    return isinstance(x, str) and not x.lower().endswith(
        (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif")
    )


class RSMCLIPRetrievalPipeline(Pipeline):
    """Rank a gallery of images (for a text or image query) or of texts (for an image or text query)."""

    _load_processor = False
    _load_image_processor = True
    _load_feature_extractor = False
    _load_tokenizer = True

    def __init__(self, *args: Any, batch_size_gallery: int = 32, **kwargs: Any) -> None:
        self.batch_size_gallery = batch_size_gallery
        self._gallery_cache: tuple[tuple[int, int, str], list[Any], torch.Tensor] | None = None
        super().__init__(*args, **kwargs)

    def _sanitize_parameters(self, images=None, texts=None, top_k=None, **kwargs):
        preprocess = {}
        if images is not None and hasattr(images, "search") and not isinstance(images, list | tuple):
            # A gallery that searches itself (an archive index): a str query is a text, anything else an image.
            return {"gallery": images, "kind": "index", "top_k": top_k}, {}, {}
        if images is not None and texts is not None:
            raise ValueError("give the gallery as either `images` or `texts`, not both")
        if images is not None or texts is not None:
            gallery, kind = (images, "image") if images is not None else (texts, "text")
            if not isinstance(gallery, list | tuple) or len(gallery) == 0:
                raise ValueError(f"the {kind} gallery is empty: pass a non-empty list of {kind}s")
            preprocess = {"gallery": gallery, "kind": kind}
        postprocess = {"top_k": top_k} if top_k is not None else {}
        return preprocess, {}, postprocess

    # -------------------------------------------------------------------------------------------------- embedding
    def _embed_texts(self, texts: list[str]) -> torch.Tensor:
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"text {i} is empty or not a string ({text!r})")
        out = []
        for start in range(0, len(texts), self.batch_size_gallery):
            batch = self.tokenizer(
                list(texts[start : start + self.batch_size_gallery]),
                padding=True,
                truncation=True,
                max_length=77,
                return_tensors="pt",
            ).to(self.device)
            with torch.no_grad():
                feats = self.model.get_text_features(**batch).pooler_output
            out.append(F.normalize(feats.float(), dim=-1))
        return torch.cat(out)

    def _embed_images(self, images: list[Any]) -> torch.Tensor:
        out = []
        for start in range(0, len(images), self.batch_size_gallery):
            batch = [to_rgb(x) for x in images[start : start + self.batch_size_gallery]]
            pixels = self.image_processor(images=batch, return_tensors="pt")["pixel_values"]
            with torch.no_grad():
                feats = self.model.get_image_features(pixels.to(self.device, self.model.dtype)).pooler_output
            out.append(F.normalize(feats.float(), dim=-1))
        return torch.cat(out)

    def _gallery_embeddings(self, gallery: list[Any], kind: str) -> torch.Tensor:
        key = (id(gallery), len(gallery), kind)
        if (
            self._gallery_cache is not None
            and self._gallery_cache[0] == key
            and self._gallery_cache[1] is gallery
        ):
            return self._gallery_cache[2]
        embeds = self._embed_texts(list(gallery)) if kind == "text" else self._embed_images(list(gallery))
        self._gallery_cache = (key, gallery, embeds)
        return embeds

    # --------------------------------------------------------------------------------------------------- pipeline
    def preprocess(
        self, query: Any, gallery: list[Any] | None = None, kind: str | None = None, top_k: int | None = None
    ) -> dict[str, Any]:
        if gallery is None:
            raise ValueError("no gallery: pass `images=[...]` or `texts=[...]` to rank the query against")
        return {"query": query, "gallery": gallery, "kind": kind, "top_k": top_k}

    def _forward(self, inputs: dict[str, Any]) -> dict[str, Any]:
        query = inputs["query"]
        if inputs["kind"] == "index":
            top_k = 10 if inputs["top_k"] is None else inputs["top_k"]
            return {"results": inputs["gallery"].search(query, top_k=top_k, image=not isinstance(query, str))}
        query_embed = self._embed_texts([query]) if _is_text(query) else self._embed_images([query])
        gallery_embeds = self._gallery_embeddings(inputs["gallery"], inputs["kind"])
        scores = (query_embed @ gallery_embeds.t())[0]
        return {"scores": scores.cpu(), "gallery": inputs["gallery"], "kind": inputs["kind"]}

    def postprocess(self, outputs: dict[str, Any], top_k: int | None = None) -> list[dict[str, Any]]:
        if "results" in outputs:
            return outputs["results"]
        scores = outputs["scores"]
        k = len(scores) if top_k is None else max(0, min(int(top_k), len(scores)))
        values, indices = torch.topk(scores, k)
        results = []
        for score, index in zip(values.tolist(), indices.tolist()):
            item = outputs["gallery"][index]
            result = {"score": score, "index": index}
            if outputs["kind"] == "text":
                result["text"] = item
            elif isinstance(item, str):
                result["image"] = item
            results.append(result)
        return results

    def __call__(self, inputs: Any, **kwargs: Any) -> Any:
        if isinstance(inputs, str) and not inputs.strip():
            raise ValueError("the query text is empty")
        return super().__call__(inputs, **kwargs)


def register_retrieval_pipeline() -> None:
    """Register the retrieval pipeline under the task name `"rsmclip-retrieval"` (done on package import)."""
    from transformers import AutoModel
    from transformers.pipelines import PIPELINE_REGISTRY

    if RETRIEVAL_TASK not in PIPELINE_REGISTRY.get_supported_tasks():
        PIPELINE_REGISTRY.register_pipeline(
            RETRIEVAL_TASK, pipeline_class=RSMCLIPRetrievalPipeline, pt_model=AutoModel, type="multimodal"
        )


__all__ = ["RSMCLIPRetrievalPipeline", "RETRIEVAL_TASK", "register_retrieval_pipeline"]
