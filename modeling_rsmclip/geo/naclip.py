"""Open-vocabulary segmentation of a scene: per-pixel classes from dense patch features (NACLIP).

Each sliding window of the scene goes through the processor and `RSMCLIPModel.get_patch_features` (with NACLIP's
neighbourhood attention in the last block by default: Hajimiri, Ben Ayed, Dolz, "Pay Attention to Your Neighbours:
Training-Free Open-Vocabulary Semantic Segmentation", WACV 2025, arXiv:2404.08181). The cosine similarity of every
patch with every class embedding (prompt-averaged, as in `zero_shot`) is upsampled bilinearly to the window's
pixels; where windows overlap their logits are averaged, then each pixel takes the best class.

Memory is bounded by one row of windows: logits are accumulated in a strip as tall as a window and as wide as the
scene, and the rows no later window touches are written out (argmax) before the strip moves down by the stride.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..inference import autocast, class_embeddings, load_encoder, load_model
from .raster import RasterReader
from .tiling import TileGrid, length_to_pixels
from .writer import CLASS_NODATA, ClassMapWriter, read_class_map_preview, render_overlay
from .zero_shot import model_device, parse_labels, pixel_values

IN_MEMORY_LIMIT = 100_000_000  # pixels: larger class maps are only written to the GeoTIFF


@dataclass
class SceneSegmentation:
    """Per-pixel classes of a scene.

    ``class_map`` ``(height, width)`` uint8 class ids, 255 = nodata (invalid pixel or no window); None when the
    scene has more than 100 Mpx and the map was written to ``files["geotiff"]`` only.
    """

    scene: Path
    labels: list[str]
    language: str
    width: int
    height: int
    transform: Any
    crs: Any
    class_map: np.ndarray | None
    pixels_per_class: dict[str, int]
    windows: int
    skipped_windows: int
    window: int
    stride: int
    naclip: bool
    seconds: float
    bands: str
    files: dict[str, Path] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "scene": str(self.scene),
            "size": [self.width, self.height],
            "labels": self.labels,
            "language": self.language,
            "method": "naclip" if self.naclip else "patch features",
            "window": self.window,
            "stride": self.stride,
            "windows": self.windows,
            "skipped_windows_no_valid_pixel": self.skipped_windows,
            "pixels_per_class": self.pixels_per_class,
            "seconds": round(self.seconds, 2),
            "megapixels_per_second": round(self.width * self.height / 1e6 / max(self.seconds, 1e-9), 4),
            "bands": self.bands,
            "files": {k: str(v) for k, v in self.files.items()},
        }


def check_segment_backend(backend: str) -> None:
    """Segmentation needs patch features, which only the PyTorch backend gives (the ONNX graphs return pooled
    embeddings)."""
    if backend != "torch":
        raise ValueError(
            f"segmentation runs on the PyTorch backend, not {backend!r}: the ONNX graphs give pooled embeddings, "
            "not patch features (use --backend torch, with --precision int8 for a smaller, faster CPU model)"
        )


@torch.inference_mode()
def dense_logits(
    model: Any,
    pixels: torch.Tensor,
    text: torch.Tensor,
    naclip: bool = True,
    naclip_gaussian_std: float = 5.0,
) -> torch.Tensor:
    """Cosine similarity of every patch with every class: ``(batch, n_labels, h, w)``."""
    patches = model.get_patch_features(pixels, naclip=naclip, naclip_gaussian_std=naclip_gaussian_std)
    patches = F.normalize(patches.float(), dim=-1)
    return torch.einsum("bhwd,ld->blhw", patches, text.to(patches.device))


@torch.inference_mode()
def segment_scene(
    scene: str | os.PathLike,
    labels: str | Sequence[str],
    *,
    model: Any,
    processor: Any = None,
    language: str = "en",
    window: int | str = 224,
    stride: int | str | None = None,
    naclip: bool = True,
    naclip_gaussian_std: float = 5.0,
    preset: str | None = None,
    bands: Sequence[int | str] | None = None,
    stretch: Any = None,
    batch_size: int = 16,
    output_dir: str | os.PathLike | None = None,
    progress: bool = True,
    precision: str = "fp32",
    backend: str = "torch",
) -> SceneSegmentation:
    """Per-pixel open-vocabulary classes of ``scene`` (see module doc).

    Args:
        scene: a GeoTIFF / COG path.
        labels: class names in ``language`` (list, or comma-separated).
        model: a loaded `RSMCLIPModel` (then give ``processor``), a path / Hub id, or ``"demo"``.
        window, stride: sliding window and its step, pixels or metres (``"500m"``); stride defaults to half the
            window (windows overlap by half).
        naclip: NACLIP's last block (default) or the plain last layer's patch tokens.
        output_dir: when given, writes ``segmentation.tif`` (uint8 class ids on the scene's pixel grid, its CRS and
            transform, nodata 255, a colour table) and ``overlay.png``.
        precision: ``"fp32"``, ``"bf16"``/``"fp16"`` autocast, or ``"int8"`` for PyTorch dynamic int8 weights
            on the CPU (`inference.quantize_model`).
        backend: ``"torch"`` only: the ONNX graphs return pooled embeddings, not patch features.
    """
    labels = parse_labels(labels)
    if len(labels) >= CLASS_NODATA:
        raise ValueError(f"at most {CLASS_NODATA - 1} labels, got {len(labels)}")
    owned = isinstance(model, str | os.PathLike)  # loaded here: nobody else holds the fp32 model
    model, processor = load_model(model, processor)
    check_segment_backend(backend)
    model = load_encoder(model, backend, precision, processor, inplace=owned)
    if not hasattr(model, "get_patch_features"):
        raise ValueError(
            f"{type(model).__name__} has no get_patch_features: segmentation needs an RSMCLIPModel"
        )
    text = torch.from_numpy(class_embeddings(model, processor, labels, language)).float()
    device = model_device(model)
    start = time.perf_counter()
    out_dir = Path(output_dir) if output_dir is not None else None
    with RasterReader(scene, preset=preset, bands=bands, stretch=stretch) as reader:
        size = length_to_pixels(window, reader)
        step = length_to_pixels(stride, reader) if stride is not None else max(1, size // 2)
        if not 1 <= step <= size:
            raise ValueError(f"stride must be between 1 and the window ({size} px), got {step}")
        grid = TileGrid(reader.width, reader.height, size, overlap=size - step)
        width, height = reader.width, reader.height
        keep = out_dir is None or width * height <= IN_MEMORY_LIMIT
        class_map = np.full((height, width), CLASS_NODATA, dtype=np.uint8) if keep else None
        writer = None
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            writer = ClassMapWriter(
                out_dir / "segmentation.tif", width, height, reader.transform, reader.crs, labels, language
            )
        strip_width = (grid.n_cols - 1) * step + size
        logits = torch.zeros(len(labels), size, strip_width)
        counts = torch.zeros(size, strip_width)
        valid = np.zeros((size, strip_width), dtype=bool)
        pixel_counts = np.zeros(len(labels), dtype=np.int64)
        skipped = 0
        # Large windows: fewer per batch (about 4 Mpx of input per batch), so the batch's arrays stay small.
        per_batch = max(1, min(batch_size, (2048 * 2048) // (size * size)))
        bar = tqdm(total=len(grid), desc="windows", unit="window", disable=not progress)
        try:
            for row in range(grid.n_rows):
                top = row * step
                for first in range(0, grid.n_cols, per_batch):
                    cols = range(first, min(first + per_batch, grid.n_cols))
                    images, offsets = [], []
                    for col in cols:
                        rgb, ok = reader.read_rgb((col * step, top, size, size))
                        valid[:, col * step : col * step + size] |= ok
                        if ok.any():
                            images.append(rgb)
                            offsets.append(col * step)
                        else:
                            skipped += 1
                    bar.update(len(cols))
                    if not images:
                        continue
                    pixels = pixel_values(processor, images).to(device)
                    with autocast(precision, device):
                        dense = dense_logits(model, pixels, text, naclip, naclip_gaussian_std)
                    for x0, coarse in zip(offsets, dense):
                        # One window upsampled at a time: memory holds one window's pixel logits, not a batch's.
                        fine = F.interpolate(
                            coarse[None], size=(size, size), mode="bilinear", align_corners=False
                        )
                        logits[:, :, x0 : x0 + size] += fine[0].cpu()
                        counts[:, x0 : x0 + size] += 1
                # Rows [top, top + step) are final (the last row of windows finalises everything it covers).
                done = size if row == grid.n_rows - 1 else step
                rows = min(done, height - top)
                if rows > 0:
                    covered = counts[:rows, :width] > 0
                    best = logits[:, :rows, :width].argmax(dim=0).numpy().astype(np.uint8)
                    ok = valid[:rows, :width] & covered.numpy()
                    classes = np.where(ok, best, CLASS_NODATA).astype(np.uint8)
                    pixel_counts += np.bincount(classes[ok].ravel(), minlength=len(labels))[: len(labels)]
                    if writer is not None:
                        writer.write(classes, 0, top)
                    if class_map is not None:
                        class_map[top : top + rows] = classes
                _shift_up(logits, counts, valid, step)
        finally:
            bar.close()
            if writer is not None:
                writer.close()
        seconds = time.perf_counter() - start
        result = SceneSegmentation(
            scene=Path(scene),
            labels=labels,
            language=language,
            width=width,
            height=height,
            transform=reader.transform,
            crs=reader.crs,
            class_map=class_map,
            pixels_per_class={label: int(n) for label, n in zip(labels, pixel_counts)},
            windows=len(grid),
            skipped_windows=skipped,
            window=size,
            stride=step,
            naclip=naclip,
            seconds=seconds,
            bands=reader.selection.describe(),
        )
        if out_dir is not None:
            result.files["geotiff"] = out_dir / "segmentation.tif"
            preview, preview_valid, _ = reader.preview()
            classes = read_class_map_preview(out_dir / "segmentation.tif", max(preview.shape[:2]))
            if classes.shape != preview.shape[:2]:
                classes = _resize_nearest(classes, preview.shape[:2])
            method = "NACLIP" if naclip else "patch features"
            result.files["overlay"] = render_overlay(
                out_dir / "overlay.png",
                preview,
                preview_valid,
                classes,
                labels,
                f"{Path(scene).name}: open-vocabulary segmentation ({method}, {language})",
                counts=list(pixel_counts),
            )
    return result


def _shift_up(logits: torch.Tensor, counts: torch.Tensor, valid: np.ndarray, step: int) -> None:
    """Move the strip up by ``step`` rows in place (chunks of ``step`` rows never overlap: no second strip in
    memory) and clear the rows that come free at the bottom."""
    size = counts.shape[0]
    for top in range(0, size - step, step):
        rows = min(step, size - step - top)
        logits[:, top : top + rows] = logits[:, top + step : top + step + rows]
        counts[top : top + rows] = counts[top + step : top + step + rows]
        valid[top : top + rows] = valid[top + step : top + step + rows]
    logits[:, size - step :] = 0
    counts[size - step :] = 0
    valid[size - step :] = False


def _resize_nearest(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    rows = np.minimum((np.arange(shape[0]) * array.shape[0] / shape[0]).astype(int), array.shape[0] - 1)
    cols = np.minimum((np.arange(shape[1]) * array.shape[1] / shape[1]).astype(int), array.shape[1] - 1)
    return array[np.ix_(rows, cols)]


__all__ = ["SceneSegmentation", "dense_logits", "segment_scene"]
