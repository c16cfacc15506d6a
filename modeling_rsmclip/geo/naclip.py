"""Open-vocabulary segmentation of a scene: per-pixel classes from dense patch features (NACLIP).

Each sliding window of the scene goes through the processor and the model's patch features
(`inference.families.patch_features`: `RSMCLIPModel.get_patch_features`, or the same on the CLIP ViT of CLIP and
AltCLIP models; SigLIP's attention-pooling head has none, and is refused with that reason), with NACLIP's
neighbourhood attention in the last block by default: Hajimiri, Ben Ayed, Dolz, "Pay Attention to Your Neighbours:
Training-Free Open-Vocabulary Semantic Segmentation", WACV 2025, arXiv:2404.08181). The cosine similarity of every
patch with every class embedding (prompt-averaged, as in `zero_shot`) is upsampled bilinearly to the window's
pixels; where windows overlap their logits are averaged with a smooth weight (`blend_weights`), then each pixel
takes the best class.

Windows never reach past the scene: the last column and row of windows are moved back inside it (`geo.tiling`'s
`clamp_window`), and a scene smaller than the window is covered by a window of its shorter side. So the model sees
only the scene's pixels, never padding that would bleed into the last rows and columns through the upsampling.
The weight falls towards a window's borders (a raised cosine), so each window fades into its neighbours instead of
stopping at a seam.

Memory is bounded by one row of windows: logits are accumulated in a strip as tall as a window and as wide as the
scene, and the rows no later window touches are written out (argmax) before the strip moves down to the next row of
windows (`WindowStitcher`).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..inference import autocast, class_embeddings, load_encoder, load_model, local_model_folder
from ..inference.families import check_dense_features, patch_features
from ..safe_io import check_outputs_not_inputs
from .raster import RasterReader
from .scene import open_scene, scene_label
from .tiling import TileGrid, length_to_pixels
from .writer import (
    CLASS_NODATA,
    SEGMENTATION_FILES,
    ClassMapWriter,
    legend_path,
    read_class_map_preview,
    render_overlay,
)
from .zero_shot import model_device, parse_labels, pixel_values

IN_MEMORY_LIMIT = 100_000_000  # pixels: larger class maps are only written to the GeoTIFF


@dataclass
class SceneSegmentation:
    """Per-pixel classes of a scene.

    ``class_map`` ``(height, width)`` uint8 class ids, 255 = nodata (invalid pixel or no window); None when the
    scene has more than 100 Mpx and the map was written to ``files["geotiff"]`` only. ``scene_window``: the part of
    the scene mapped (``bbox``), ``(col_off, row_off, width, height)`` of its grid, or None for all of it.
    """

    scene: Path | str  # a URL or STAC item link as is
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
    scene_window: tuple[int, int, int, int] | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "scene": str(self.scene),
            "scene_window": list(self.scene_window) if self.scene_window else None,
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
    embeddings); the model family's own limits are checked once it is loaded (`families.check_dense_features`)."""
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
    patches = patch_features(model, pixels, naclip=naclip, naclip_gaussian_std=naclip_gaussian_std)
    patches = F.normalize(patches.float(), dim=-1)
    return torch.einsum("bhwd,ld->blhw", patches, text.to(patches.device))


def blend_weights(size: int, floor: float = 1e-3) -> torch.Tensor:
    """``(size, size)`` weight of a window's pixels where windows overlap: the separable raised cosine
    ``sin^2(pi (x + 0.5) / size)``, highest at the window's centre and falling towards its borders, so a window
    fades into its neighbours instead of ending at a seam. With windows overlapping by half, the weights of the two
    windows over a pixel sum to one along each axis (``sin^2 + cos^2``). ``floor`` keeps every weight positive, so a
    pixel that one window alone covers (at the scene's border) keeps that window's logits."""
    if size < 1:
        raise ValueError(f"window size must be at least 1 pixel, got {size}")
    x = (torch.arange(size, dtype=torch.float64) + 0.5) / size
    ramp = torch.sin(math.pi * x).pow(2).clamp_min(floor)
    return (ramp[:, None] * ramp[None, :]).float()


def window_geometry(width: int, height: int, window: int, stride: int | None) -> tuple[int, int]:
    """``(window, stride)`` in pixels for a ``width`` x ``height`` scene: a window larger than the scene's shorter
    side shrinks to it (the model then sees the scene enlarged, never padding), and the stride with it, in
    proportion."""
    step = stride if stride is not None else max(1, window // 2)
    if not 1 <= step <= window:
        raise ValueError(f"stride must be between 1 and the window ({window} px), got {step}")
    size = min(window, width, height)
    if size < window:
        step = max(1, min(size, round(step * size / window)))
    return size, step


@dataclass
class LogitStrip:
    """Rows ``top .. top + rows`` of a scene's stitched class logits: ``logits`` ``(n_labels, rows, width)``, the
    weighted average of the windows' cosine similarities, and ``valid`` ``(rows, width)`` (a valid pixel that a
    window covered)."""

    top: int
    logits: torch.Tensor
    valid: np.ndarray


class WindowStitcher:
    """Sliding windows over a scene, their dense logits blended (see module doc). Iterating yields `LogitStrip` s
    from top to bottom; memory holds one strip (a window tall, the scene wide).

    Args:
        reader: an open `RasterReader`.
        model, processor: a model with patch features (`inference.families.patch_features`) and its processor.
        text: ``(n_labels, dim)`` normalised class embeddings.
        window, stride: pixels (see `window_geometry`).
    """

    def __init__(
        self,
        reader: RasterReader,
        model: Any,
        processor: Any,
        text: torch.Tensor,
        window: int,
        stride: int | None = None,
        *,
        naclip: bool = True,
        naclip_gaussian_std: float = 5.0,
        batch_size: int = 16,
        progress: bool = False,
        precision: str = "fp32",
    ) -> None:
        self.reader, self.model, self.processor, self.text = reader, model, processor, text
        self.size, self.step = window_geometry(reader.width, reader.height, window, stride)
        self.grid = TileGrid(reader.width, reader.height, self.size, overlap=self.size - self.step)
        self.naclip, self.naclip_gaussian_std = naclip, naclip_gaussian_std
        # Large windows: fewer per batch (about 4 Mpx of input per batch), so the batch's arrays stay small.
        self.per_batch = max(1, min(batch_size, (2048 * 2048) // (self.size * self.size)))
        self.progress = progress
        self.precision = precision  # bf16/fp16: the forward passes run under autocast
        self.skipped = 0  # windows without a valid pixel (not run through the model)

    def __len__(self) -> int:
        return len(self.grid)

    @property
    def tops(self) -> list[int]:
        """Top row of each row of windows (the last one moved inside the scene)."""
        return [self.grid.read_window(r * self.grid.n_cols)[1] for r in range(self.grid.n_rows)]

    @property
    def lefts(self) -> list[int]:
        """Left column of each column of windows (the last one moved inside the scene)."""
        return [self.grid.read_window(c)[0] for c in range(self.grid.n_cols)]

    def __iter__(self) -> Iterator[LogitStrip]:
        size, width = self.size, self.reader.width
        weight = blend_weights(size)
        logits = torch.zeros(len(self.text), size, width)
        weights = torch.zeros(size, width)
        valid = np.zeros((size, width), dtype=bool)
        tops, lefts = self.tops, self.lefts
        self.skipped = 0
        with tqdm(total=len(self.grid), desc="windows", unit="window", disable=not self.progress) as bar:
            for row, top in enumerate(tops):
                for first in range(0, len(lefts), self.per_batch):
                    batch = lefts[first : first + self.per_batch]
                    self._add_windows(top, batch, weight, logits, weights, valid)
                    bar.update(len(batch))
                # Rows above the next row of windows are final: no later window reaches them.
                rows = (tops[row + 1] if row + 1 < len(tops) else self.reader.height) - top
                covered = weights[:rows] > 0
                average = logits[:, :rows] / torch.where(covered, weights[:rows], 1.0)
                yield LogitStrip(top, average, valid[:rows] & covered.numpy())
                _shift_up(logits, weights, valid, rows)

    def _add_windows(
        self,
        top: int,
        lefts: list[int],
        weight: torch.Tensor,
        logits: torch.Tensor,
        weights: torch.Tensor,
        valid: np.ndarray,
    ) -> None:
        size = self.size
        images, offsets = [], []
        for left in lefts:
            rgb, ok = self.reader.read_rgb((left, top, size, size))
            valid[:, left : left + size] |= ok
            if ok.any():
                images.append(rgb)
                offsets.append(left)
            else:
                self.skipped += 1
        if not images:
            return
        device = model_device(self.model)
        pixels = pixel_values(self.processor, images).to(device)
        with autocast(self.precision, device):
            dense = dense_logits(self.model, pixels, self.text, self.naclip, self.naclip_gaussian_std)
        for left, coarse in zip(offsets, dense):
            # One window upsampled at a time: memory holds one window's pixel logits, not a batch's.
            fine = F.interpolate(coarse[None], size=(size, size), mode="bilinear", align_corners=False)
            logits[:, :, left : left + size] += fine[0].cpu() * weight
            weights[:, left : left + size] += weight


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
    bbox: Sequence[float] | None = None,
    signer: Any = None,
) -> SceneSegmentation:
    """Per-pixel open-vocabulary classes of ``scene`` (see module doc).

    Args:
        scene: a GeoTIFF / COG path or URL, or a STAC item (URL or path of its JSON, a pystac ``Item``; bands from
            its metadata), see `geo.scene.open_scene`.
        labels: class names in ``language`` (list, or comma-separated).
        model: a loaded model (then give ``processor``), a path / Hub id, or ``"demo"``: RS-M-CLIP, CLIP or AltCLIP
            (a CLIP ViT image tower); SigLIP models are refused (no patch features).
        window, stride: sliding window and its step, pixels or metres (``"500m"``); stride defaults to half the
            window (windows overlap by half). A window larger than the scene's shorter side shrinks to it.
        naclip: NACLIP's last block (default) or the plain last layer's patch tokens.
        output_dir: when given, writes ``segmentation.tif`` (uint8 class ids on the scene's pixel grid, its CRS and
            transform, nodata 255, a colour table) and ``overlay.png``.
        precision: ``"fp32"``, ``"bf16"``/``"fp16"`` autocast, or ``"int8"`` for PyTorch dynamic int8 weights
            on the CPU (`inference.quantize_model`).
        backend: ``"torch"`` only: the ONNX graphs return pooled embeddings, not patch features.
        bbox: ``(west, south, east, north)`` in lon/lat degrees: map only the window of the scene covering it (only
            that window is read; the outputs are georeferenced on its grid).
        signer: for remote files, ``href -> href to open`` (catalogs that sign their URLs), see `geo.cloud`.
    """
    labels = parse_labels(labels)
    if len(labels) >= CLASS_NODATA:
        raise ValueError(f"at most {CLASS_NODATA - 1} labels, got {len(labels)}")
    if output_dir is not None:
        check_outputs_not_inputs(
            [Path(output_dir) / name for name in SEGMENTATION_FILES], [scene, local_model_folder(model)]
        )
    owned = isinstance(model, str | os.PathLike)  # loaded here: nobody else holds the fp32 model
    model, processor = load_model(model, processor)
    check_segment_backend(backend)
    check_dense_features(
        model
    )  # before any quantisation: SigLIP's attention-pooling head has no patch features
    model = load_encoder(model, backend, precision, processor, inplace=owned)
    text = torch.from_numpy(class_embeddings(model, processor, labels, language)).float()
    start = time.perf_counter()
    out_dir = Path(output_dir) if output_dir is not None else None
    with open_scene(scene, preset=preset, bands=bands, stretch=stretch, bbox=bbox, signer=signer) as reader:
        stitcher = WindowStitcher(
            reader,
            model,
            processor,
            text,
            length_to_pixels(window, reader),
            length_to_pixels(stride, reader) if stride is not None else None,
            naclip=naclip,
            naclip_gaussian_std=naclip_gaussian_std,
            batch_size=batch_size,
            progress=progress,
            precision=precision,
        )
        width, height = reader.width, reader.height
        keep = out_dir is None or width * height <= IN_MEMORY_LIMIT
        class_map = np.full((height, width), CLASS_NODATA, dtype=np.uint8) if keep else None
        pixel_counts = np.zeros(len(labels), dtype=np.int64)
        writer = None
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            writer = ClassMapWriter(
                out_dir / "segmentation.tif", width, height, reader.transform, reader.crs, labels, language
            )
        try:
            for strip in stitcher:
                best = strip.logits.argmax(dim=0).numpy().astype(np.uint8)
                classes = np.where(strip.valid, best, CLASS_NODATA).astype(np.uint8)
                pixel_counts += np.bincount(classes[strip.valid].ravel(), minlength=len(labels))[
                    : len(labels)
                ]
                if writer is not None:
                    writer.write(classes, 0, strip.top)
                if class_map is not None:
                    class_map[strip.top : strip.top + classes.shape[0]] = classes
        except BaseException:
            if writer is not None:
                writer.discard()  # the output keeps what it was: no half-written map
            raise
        if writer is not None:
            writer.close()
        result = SceneSegmentation(
            scene=scene_label(scene),
            scene_window=reader.view_window,
            labels=labels,
            language=language,
            width=width,
            height=height,
            transform=reader.transform,
            crs=reader.crs,
            class_map=class_map,
            pixels_per_class={label: int(n) for label, n in zip(labels, pixel_counts)},
            windows=len(stitcher),
            skipped_windows=stitcher.skipped,
            window=stitcher.size,
            stride=stitcher.step,
            naclip=naclip,
            seconds=time.perf_counter() - start,
            bands=reader.selection.describe(),
        )
        if out_dir is not None:
            result.files["geotiff"] = out_dir / "segmentation.tif"
            result.files["overlay"] = _write_overlay(result, reader, out_dir, list(pixel_counts))
            if legend_path(result.files["overlay"]).exists():
                result.files["legend"] = legend_path(result.files["overlay"])
    return result


def _write_overlay(result: SceneSegmentation, reader: RasterReader, out_dir: Path, counts: list[int]) -> Path:
    preview, preview_valid, _ = reader.preview()
    classes = read_class_map_preview(out_dir / "segmentation.tif", max(preview.shape[:2]))
    if classes.shape != preview.shape[:2]:
        classes = _resize_nearest(classes, preview.shape[:2])
    method = "NACLIP" if result.naclip else "patch features"
    return render_overlay(
        out_dir / "overlay.png",
        preview,
        preview_valid,
        classes,
        result.labels,
        f"{Path(str(result.scene)).name}: open-vocabulary segmentation ({method}, {result.language})",
        counts=counts,
    )


def _shift_up(logits: torch.Tensor, weights: torch.Tensor, valid: np.ndarray, step: int) -> None:
    """Move the strip up by ``step`` rows in place (chunks of ``step`` rows never overlap: no second strip in
    memory) and clear the rows that come free at the bottom."""
    size = weights.shape[0]
    for top in range(0, size - step, step):
        rows = min(step, size - step - top)
        logits[:, top : top + rows] = logits[:, top + step : top + step + rows]
        weights[top : top + rows] = weights[top + step : top + step + rows]
        valid[top : top + rows] = valid[top + step : top + step + rows]
    logits[:, size - step :] = 0
    weights[size - step :] = 0
    valid[size - step :] = False


def _resize_nearest(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    rows = np.minimum((np.arange(shape[0]) * array.shape[0] / shape[0]).astype(int), array.shape[0] - 1)
    cols = np.minimum((np.arange(shape[1]) * array.shape[1] / shape[1]).astype(int), array.shape[1] - 1)
    return array[np.ix_(rows, cols)]


__all__ = [
    "LogitStrip",
    "SceneSegmentation",
    "WindowStitcher",
    "blend_weights",
    "dense_logits",
    "segment_scene",
    "window_geometry",
]
