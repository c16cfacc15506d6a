"""Zero-shot classification of a scene, tile by tile: a class map with the scene's georeferencing.

Each class label is put into its language's prompt templates (`templates.PROMPT_TEMPLATES`), the prompt embeddings
are averaged as in the evaluation suite (`evaluation.metrics.average_prompt_embeddings`), and every tile of the scene
is scored against the classes by the model family's zero-shot rule (`inference.families.zero_shot_probabilities`:
softmax of the scaled cosine similarities for CLIP-like models, SigLIP's sigmoid with its bias). Tiles are read,
preprocessed and embedded in batches, so memory is bounded by the batch, not the scene.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..inference import autocast, class_embeddings, load_encoder, load_model, local_model_folder
from ..inference.families import image_features, image_inputs, zero_shot_probabilities
from ..safe_io import check_outputs_not_inputs
from .scene import open_scene, scene_label
from .tiling import TileGrid, iter_tiles, length_to_pixels


def parse_labels(labels: str | Iterable[str]) -> list[str]:
    """``"água,floresta"`` or a list -> cleaned list of distinct, non-empty labels."""
    items = labels.split(",") if isinstance(labels, str) else list(labels)
    cleaned = [str(label).strip() for label in items]
    if not cleaned or any(not label for label in cleaned):
        raise ValueError(f"labels must be non-empty, comma-separated names, got {labels!r}")
    duplicates = sorted({label for label in cleaned if cleaned.count(label) > 1})
    if duplicates:
        raise ValueError(f"duplicate labels: {duplicates}")
    if len(cleaned) < 2:
        raise ValueError(f"give at least two labels to choose between, got {cleaned}")
    return cleaned


def model_device(model: Any) -> torch.device:
    return next(model.parameters()).device


def pixel_values(processor: Any, images: list[np.ndarray]) -> torch.Tensor:
    """The processor's pixel values for 8-bit RGB tile arrays (the package's one image path; the image tower's
    other inputs, SigLIP 2's patch masks, come with `inference.families.image_inputs`)."""
    return image_inputs(processor, images)["pixel_values"]


@dataclass
class SceneClassification:
    """Zero-shot class per tile of a scene.

    ``class_ids`` ``(n_rows, n_cols)`` int (-1 = tile skipped as mostly nodata), ``probabilities``
    ``(n_rows, n_cols, n_labels)`` float32 (NaN when skipped), ``valid_fraction`` ``(n_rows, n_cols)`` float32 (the
    share of valid pixels of each tile inside the scene, skipped tiles included: see `geo.tiling`'s rule for the
    edge), ``transform`` the geotransform of that tile-resolution grid in ``crs``, ``geojson`` a FeatureCollection
    (lon/lat) of the classified tiles, ``files`` the written outputs, ``scene_window`` the part of the scene mapped
    (``bbox``), ``(col_off, row_off, width, height)`` of its grid, or None for all of it.
    """

    scene: Path | str  # a URL or STAC item link as is
    labels: list[str]
    language: str
    class_ids: np.ndarray
    probabilities: np.ndarray
    grid: TileGrid
    transform: Any
    crs: Any
    geojson: dict[str, Any]
    skipped: list[int]
    bands: str
    valid_fraction: np.ndarray | None = None
    min_valid: float = 0.5
    files: dict[str, Path] = field(default_factory=dict)
    scene_window: tuple[int, int, int, int] | None = None

    @property
    def top1_probability(self) -> np.ndarray:
        """``(n_rows, n_cols)`` probability of the chosen class (NaN where skipped)."""
        best = np.nan_to_num(self.probabilities, nan=0.0).max(axis=-1)
        return np.where(self.class_ids >= 0, best, np.nan).astype(np.float32)

    def summary(self) -> dict[str, Any]:
        counts = {label: int((self.class_ids == i).sum()) for i, label in enumerate(self.labels)}
        return {
            "scene": str(self.scene),
            "scene_window": list(self.scene_window) if self.scene_window else None,
            "labels": self.labels,
            "language": self.language,
            "tiles": len(self.grid),
            "tile_size": self.grid.size,
            "overlap": self.grid.overlap,
            "classified": int((self.class_ids >= 0).sum()),
            "skipped_mostly_nodata": len(self.skipped),
            "min_valid": self.min_valid,
            "skipped_tiles": list(self.skipped),
            "tiles_per_class": counts,
            "bands": self.bands,
            "files": {k: str(v) for k, v in self.files.items()},
        }


def _tile_values(grid: TileGrid, values: dict[int, float]) -> np.ndarray:
    """``(n_rows, n_cols)`` float32 of per-tile values by tile index (NaN for tiles without one)."""
    out = np.full((grid.n_rows, grid.n_cols), np.nan, dtype=np.float32)
    for index, value in values.items():
        out[grid.position(index)] = value
    return out


def _batched(iterable: Iterable[Any], size: int) -> Iterable[list[Any]]:
    batch: list[Any] = []
    for item in iterable:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@torch.inference_mode()
def classify_scene(
    scene: str | os.PathLike,
    labels: str | Sequence[str],
    *,
    model: Any,
    processor: Any = None,
    language: str = "en",
    tile_size: int | str = 224,
    overlap: int | str = 0,
    preset: str | None = None,
    bands: Sequence[int | str] | None = None,
    stretch: Any = None,
    min_valid: float = 0.5,
    batch_size: int = 32,
    output_dir: str | os.PathLike | None = None,
    progress: bool = True,
    backend: str = "torch",
    precision: str = "fp32",
    bbox: Sequence[float] | None = None,
    signer: Any = None,
) -> SceneClassification:
    """Zero-shot class of every tile of ``scene``.

    Args:
        scene: a GeoTIFF / COG path or URL, or a STAC item (URL or path of its JSON, a pystac ``Item``; bands from
            its metadata), see `geo.scene.open_scene`.
        labels: class names in ``language`` (list, or comma-separated).
        model: a loaded model of any supported family (then give ``processor``), a path / Hub id, or ``"demo"``.
        tile_size, overlap: pixels, or metres as ``"500m"``.
        preset, bands, stretch: band choice (see `geo.bands.resolve_preset`).
        min_valid: tiles with a smaller valid fraction are skipped (and listed in ``skipped``). The fraction counts
            the pixels inside the scene only, and edge tiles are read moved back inside the scene, so a scene with no
            nodata has every tile classified (`geo.tiling`).
        output_dir: when given, writes ``classes.tif`` (band 1 class id, band 2 top-1 probability, band 3 valid
            fraction; nodata -1, the scene's CRS, one pixel per tile), ``tiles.geojson`` and ``overlay.png`` there.
        backend, precision: CPU inference backend, ``"torch"`` or ``"onnx"`` (ONNX Runtime) and ``"fp32"`` or
            ``"int8"`` (see `modeling_rsmclip.inference.load_encoder`).
        bbox: ``(west, south, east, north)`` in lon/lat degrees: map only the window of the scene covering it (only
            that window is read; the outputs are georeferenced on its grid).
        signer: for remote files, ``href -> href to open`` (catalogs that sign their URLs), see `geo.cloud`.
    """
    labels = parse_labels(labels)
    if output_dir is not None:
        from .writer import CLASSIFICATION_FILES

        check_outputs_not_inputs(
            [Path(output_dir) / name for name in CLASSIFICATION_FILES], [scene, local_model_folder(model)]
        )
    owned = isinstance(model, str | os.PathLike)  # loaded here: nobody else holds the fp32 model
    model, processor = load_model(model, processor)
    model = load_encoder(model, backend, precision, processor, inplace=owned)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    text = class_embeddings(model, processor, labels, language)
    device = model_device(model)
    with open_scene(scene, preset=preset, bands=bands, stretch=stretch, bbox=bbox, signer=signer) as reader:
        tiles = iter_tiles(
            reader,
            length_to_pixels(tile_size, reader),
            length_to_pixels(overlap, reader, minimum=0),
            min_valid=min_valid,
            progress=progress,
        )
        grid = tiles.grid
        class_ids = np.full((grid.n_rows, grid.n_cols), -1, dtype=np.int16)
        probabilities = np.full((grid.n_rows, grid.n_cols, len(labels)), np.nan, dtype=np.float32)
        features = []
        for batch in _batched(tiles, batch_size):
            inputs = image_inputs(processor, [t.rgb for t in batch])
            with autocast(precision, device):
                pooled = image_features(model, inputs, device=device)
            image = F.normalize(pooled.float(), dim=-1).cpu()
            probs = zero_shot_probabilities(model, image, text).astype(np.float32)
            for tile, p in zip(batch, probs):
                best = int(p.argmax())
                class_ids[tile.row, tile.col] = best
                probabilities[tile.row, tile.col] = p
                features.append(
                    tile.geojson_feature(
                        {
                            "class_id": best,
                            "label": labels[best],
                            "probability": round(float(p[best]), 6),
                            "probabilities": {label: round(float(v), 6) for label, v in zip(labels, p)},
                        }
                    )
                )
        result = SceneClassification(
            scene=scene_label(scene),
            scene_window=reader.view_window,
            labels=labels,
            language=language,
            class_ids=class_ids,
            probabilities=probabilities,
            grid=grid,
            transform=grid.cell_transform(reader.transform),
            crs=reader.crs,
            geojson={"type": "FeatureCollection", "features": features},
            skipped=list(tiles.skipped),
            bands=reader.selection.describe(),
            valid_fraction=_tile_values(grid, tiles.valid_fractions),
            min_valid=min_valid,
        )
        if output_dir is not None:
            from .writer import write_classification

            result.files = write_classification(result, reader, Path(output_dir))
    return result


__all__ = [
    "SceneClassification",
    "classify_scene",
    "parse_labels",
]
