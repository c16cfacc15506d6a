"""The one class-embedding builder of zero-shot classification (evaluation, scene maps, the web app, the demo).

Each class label is put into every prompt template of its language (`templates.PROMPT_TEMPLATES`), the prompt
embeddings are L2-normalised, averaged per class and re-normalised: the CLIP zero-shot recipe.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..templates import LANGUAGES, PROMPT_TEMPLATES


def _normalize(x: np.ndarray) -> np.ndarray:
    """L2-normalise the last axis (float64); a zero vector is an error rather than a silent NaN."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    if (norms == 0).any():
        raise ValueError(f"embedding row {int(np.flatnonzero(norms.reshape(-1) == 0)[0])} has zero norm")
    return x / norms


def average_prompt_embeddings(prompt_embeds: Any) -> np.ndarray:
    """Class embeddings (float64) from (classes x templates x dim) prompt embeddings (array or tensor).

    Each prompt embedding is L2-normalised, the templates of a class are averaged, and the mean is re-normalised
    (the CLIP zero-shot recipe).
    """
    if hasattr(prompt_embeds, "detach"):  # a torch.Tensor, without importing torch here
        prompt_embeds = prompt_embeds.detach().cpu().float().numpy()
    x = np.asarray(prompt_embeds, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"prompt embeddings must be (classes, templates, dim), got shape {x.shape}")
    return _normalize(_normalize(x).mean(axis=1))


def class_prompts(
    labels: Sequence[str], language: str = "en", templates: Mapping[str, Sequence[str]] | None = None
) -> list[list[str]]:
    """For each label, its prompts: every template of ``language`` filled with the label."""
    templates = templates or PROMPT_TEMPLATES
    if language not in templates:
        raise ValueError(
            f"no prompt templates for language {language!r}; choose one of {', '.join(templates or LANGUAGES)}"
        )
    if not templates[language]:
        raise ValueError(f"the prompt templates of {language!r} are empty")
    return [[template.format(label) for template in templates[language]] for label in labels]


def embed_texts(encoder: Any, processor: Any, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Un-normalised float32 text embeddings of ``texts`` (``get_text_features(...).pooler_output``), in batches,
    on the device of the encoder's parameters; tokenized by the model family's rule (`families.text_inputs`)."""
    import torch

    from .families import text_features, text_inputs

    first = next(iter(encoder.parameters()), None) if hasattr(encoder, "parameters") else None
    device = first.device if first is not None else torch.device("cpu")
    tokenizer = getattr(processor, "tokenizer", processor)
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = text_inputs(encoder, tokenizer, texts[start : start + batch_size])
            chunks.append(text_features(encoder, batch, device).float().cpu().numpy())
    return np.concatenate(chunks)


def class_embeddings(
    encoder: Any,
    processor: Any,
    labels: Sequence[str],
    language: str = "en",
    *,
    templates: Mapping[str, Sequence[str]] | None = None,
    batch_size: int = 64,
    embed: Callable[[list[str]], Any] | None = None,
) -> np.ndarray:
    """``(len(labels), dim)`` L2-normalised class embeddings (float64 numpy).

    Args:
        encoder: a model or `load_encoder` encoder (``get_text_features``).
        processor: its processor (or tokenizer).
        labels: the class names, in the language of the templates.
        language: which templates (`templates.LANGUAGES`).
        templates: ``{language: [template with "{}"]}``, default `templates.PROMPT_TEMPLATES`.
        batch_size: prompts per forward pass.
        embed: embeds a list of texts instead of ``encoder``/``processor`` (e.g. a cached
            `evaluation.embed.Embedder.texts`); rows may be normalised or not.
    """
    if not labels:
        raise ValueError("no class labels given")
    prompts = class_prompts(labels, language, templates)
    flat = [prompt for group in prompts for prompt in group]
    embeds = embed(flat) if embed is not None else embed_texts(encoder, processor, flat, batch_size)
    if hasattr(embeds, "detach"):
        embeds = embeds.detach().float().cpu().numpy()
    embeds = np.asarray(embeds).reshape(len(labels), len(prompts[0]), -1)
    return average_prompt_embeddings(embeds)


__all__ = ["average_prompt_embeddings", "class_embeddings", "class_prompts", "embed_texts"]
