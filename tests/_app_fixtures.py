"""Helpers shared by the app tests: the zero-shot recipe written out with the model's own methods."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from modeling_rsmclip.templates import PROMPT_TEMPLATES
from modeling_rsmclip.testing import sample_dir

UCM_IMAGES = sample_dir() / "ucm" / "images"


@torch.no_grad()
def reference_probabilities(model, processor, image_path: Path, labels: list[str], lang: str) -> np.ndarray:
    """CLIP's zero-shot recipe: every template of `lang`, each prompt embedding normalised, averaged per class and
    re-normalised; softmax of exp(logit_scale) x cosine with the image embedding."""
    classes = []
    for label in labels:
        prompts = [t.format(label) for t in PROMPT_TEMPLATES[lang]]
        batch = processor(text=prompts, return_tensors="pt", padding=True)
        embeds = F.normalize(model.get_text_features(**batch).pooler_output, dim=-1)
        classes.append(F.normalize(embeds.mean(0), dim=-1))
    pixels = processor(images=[Image.open(image_path).convert("RGB")], return_tensors="pt")["pixel_values"]
    image = F.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
    logits = model.logit_scale.exp() * image @ torch.stack(classes).t()
    return logits.softmax(-1)[0].numpy()


def confidences(label_output: dict) -> dict[str, float]:
    """A gr.Label value as gradio_client returns it -> {label: probability}."""
    return {row["label"]: row["confidence"] for row in label_output["confidences"]}
