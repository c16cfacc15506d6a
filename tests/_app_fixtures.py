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


# A 2 x 2 mosaic of UC Merced images (256 px each) as a GeoTIFF near Porto, 1 m pixels: the class of each tile is
# known, and so is its footprint.
MOSAIC = (("191.jpg", "airplane"), ("391.jpg", "beach"), ("791.jpg", "forest"), ("1591.jpg", "parkinglot"))
MOSAIC_ORIGIN = (530000.0, 4560000.0)  # EPSG:32629 (UTM 29N), upper-left corner


def write_mosaic_geotiff(path: Path, tile_px: int = 256) -> Path:
    """The 2 x 2 mosaic, `tile_px` pixels per image, 256 m per image (so pixels are 256 / tile_px metres)."""
    import rasterio
    from rasterio.transform import from_origin

    tiles = [
        np.asarray(Image.open(UCM_IMAGES / name).convert("RGB").resize((256, 256))) for name, _ in MOSAIC
    ]
    mosaic = np.concatenate([np.concatenate(tiles[:2], axis=1), np.concatenate(tiles[2:], axis=1)], axis=0)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=2 * tile_px,
        height=2 * tile_px,
        count=3,
        dtype="uint8",
        crs="EPSG:32629",
        transform=from_origin(*MOSAIC_ORIGIN, 256 / tile_px, 256 / tile_px),
    ) as dst:
        dst.write(mosaic.transpose(2, 0, 1))
    return path
