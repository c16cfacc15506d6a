"""Georeferenced outputs: GeoTIFFs with the scene's CRS, GeoJSON in lon/lat, and overlay PNGs with a legend.

GeoTIFFs are tiled (256 x 256 blocks) and DEFLATE-compressed, so QGIS / GDAL read them quickly; a class map is
written window by window (`ClassMapWriter`), so memory is bounded by a strip of rows, not the scene.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..safe_io import PendingFile, atomic_output, atomic_write_json, atomic_write_text
from .raster import RasterReader, gdal_env, require_rasterio

# The files `rsmclip map classify` / `map segment` write into their output folder (checked against the inputs
# before any work: `safe_io.check_outputs_not_inputs`).
CLASSIFICATION_FILES = ("classes.tif", "tiles.geojson", "overlay.png", "overlay.legend.json", "summary.json")
SEGMENTATION_FILES = ("segmentation.tif", "overlay.png", "overlay.legend.json")
CLASS_NODATA = 255
TILE_NODATA = -1.0
GTIFF_OPTIONS = {
    "driver": "GTiff",
    "tiled": True,
    "blockxsize": 256,
    "blockysize": 256,
    "compress": "deflate",
}

# Distinct colours (tab10 then the lighter tab20 shades), class i gets PALETTE[i % len].
PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
    (174, 199, 232),
    (255, 187, 120),
    (152, 223, 138),
    (255, 152, 150),
    (197, 176, 213),
    (196, 156, 148),
    (247, 182, 210),
    (199, 199, 199),
    (219, 219, 141),
    (158, 218, 229),
)


def class_colour(index: int) -> tuple[int, int, int]:
    return PALETTE[index % len(PALETTE)]


def _tags(labels: Sequence[str], language: str, extra: dict[str, Any] | None = None) -> dict[str, str]:
    tags = {f"CLASS_{i}": label for i, label in enumerate(labels)}
    tags["LABELS"] = json.dumps(list(labels), ensure_ascii=False)
    tags["LANGUAGE"] = language
    tags.update({k: str(v) for k, v in (extra or {}).items()})
    return tags


def write_tile_geotiff(
    path: Path,
    class_ids: np.ndarray,
    top1: np.ndarray,
    transform: Any,
    crs: Any,
    labels: Sequence[str],
    language: str,
    valid_fraction: np.ndarray | None = None,
) -> Path:
    """Float32 bands at tile resolution: 1 = class id, 2 = top-1 probability (both nodata -1 on skipped tiles),
    3 = valid fraction of the tile (skipped tiles included; -1 where unknown)."""
    rasterio = require_rasterio()
    if valid_fraction is None:
        valid_fraction = np.full(class_ids.shape, np.nan, dtype=np.float32)
    data = np.stack([class_ids.astype(np.float32), np.nan_to_num(top1, nan=TILE_NODATA).astype(np.float32)])
    data[:, class_ids < 0] = TILE_NODATA
    fraction = np.nan_to_num(valid_fraction, nan=TILE_NODATA).astype(np.float32)
    data = np.concatenate([data, fraction[None]])
    profile = {
        "driver": "GTiff",
        "compress": "deflate",
        "width": class_ids.shape[1],
        "height": class_ids.shape[0],
        "count": 3,
        "dtype": "float32",
        "crs": crs,
        "transform": transform,
        "nodata": TILE_NODATA,
    }
    with atomic_output(path) as tmp, rasterio.open(tmp, "w", **profile) as out:
        out.write(data)
        out.set_band_description(1, "class_id")
        out.set_band_description(2, "top1_probability")
        out.set_band_description(3, "valid_fraction")
        out.update_tags(**_tags(labels, language))
    return path


class ClassMapWriter:
    """A uint8 class-id GeoTIFF at the scene's resolution, written window by window (nodata 255, colour table).

    It is written to a temporary file beside ``path`` and renamed onto ``path`` by `close` (`discard` removes it
    instead), so ``path`` is never a half-written map."""

    def __init__(
        self,
        path: Path,
        width: int,
        height: int,
        transform: Any,
        crs: Any,
        labels: Sequence[str],
        language: str,
    ) -> None:
        rasterio = require_rasterio()
        if len(labels) >= CLASS_NODATA:
            raise ValueError(f"at most {CLASS_NODATA - 1} labels fit a uint8 class map, got {len(labels)}")
        self.path = path
        self._pending = PendingFile(path)
        self._out = rasterio.open(
            self._pending.tmp,
            "w",
            **GTIFF_OPTIONS,
            width=width,
            height=height,
            count=1,
            dtype="uint8",
            crs=crs,
            transform=transform,
            nodata=CLASS_NODATA,
            BIGTIFF="IF_SAFER",
        )
        self._out.set_band_description(1, "class_id")
        self._out.update_tags(**_tags(labels, language))
        colormap = {i: (*class_colour(i), 255) for i in range(len(labels))}
        colormap[CLASS_NODATA] = (0, 0, 0, 0)
        self._out.write_colormap(1, colormap)

    def write(self, classes: np.ndarray, col_off: int, row_off: int) -> None:
        from rasterio.windows import Window

        height, width = classes.shape
        with gdal_env():
            self._out.write(classes.astype(np.uint8)[None], window=Window(col_off, row_off, width, height))

    def close(self) -> None:
        """Finish the file and rename it onto ``path``."""
        with gdal_env():
            self._out.close()
        self._pending.commit()

    def discard(self) -> None:
        """Close and remove the unfinished file; ``path`` is left as it was."""
        with gdal_env():
            self._out.close()
        self._pending.discard()

    def __enter__(self) -> ClassMapWriter:
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.discard()


def read_class_map_preview(path: Path, max_size: int = 1024) -> np.ndarray:
    """A written class map decimated (nearest) so its longest side is at most ``max_size``; -1 = nodata."""
    rasterio = require_rasterio()
    from rasterio.enums import Resampling

    with gdal_env(), rasterio.open(path) as src:
        factor = max(1.0, max(src.width, src.height) / max_size)
        shape = (max(1, round(src.height / factor)), max(1, round(src.width / factor)))
        data = src.read(1, out_shape=shape, resampling=Resampling.nearest).astype(np.int16)
    data[data == CLASS_NODATA] = -1
    return data


def write_geojson(path: Path, collection: dict[str, Any]) -> Path:
    return atomic_write_text(path, json.dumps(collection, ensure_ascii=False))


def legend_path(png: Path) -> Path:
    """Where `render_overlay` writes the id -> label table beside ``png`` when the labels cannot be drawn."""
    return png.with_name(f"{png.stem}.legend.json")


def legend_entries(
    labels: Sequence[str], counts: Sequence[int], can_draw: Callable[[str], bool]
) -> tuple[list[str], bool]:
    """The overlay's legend texts, and whether they fall back to class ids.

    Each entry is ``label (share%)``. When a label cannot be drawn (no installed font has its characters), every
    entry starts with its class id (the value in the GeoTIFF, ``CLASS_<id>`` in its tags) and the undrawable labels
    are left out: ``"0 (45.0%)"``, ``"1 forest (30.0%)"``; the id -> label table is written beside the PNG."""
    total = max(1, sum(counts))
    shares = [f"({100.0 * n / total:.1f}%)" for n in counts]
    if all(can_draw(label) for label in labels):
        return [f"{label} {share}" for label, share in zip(labels, shares)], False
    entries = [
        f"{i} {label} {share}" if can_draw(label) else f"{i} {share}"
        for i, (label, share) in enumerate(zip(labels, shares))
    ]
    return entries, True


def render_overlay(
    path: Path,
    preview: np.ndarray,
    preview_valid: np.ndarray,
    classes: np.ndarray,
    labels: Sequence[str],
    title: str,
    alpha: float = 0.45,
    counts: Sequence[int] | None = None,
    fonts: Sequence[str] | None = None,
) -> Path:
    """The scene preview with each class's colour blended over it and a legend (label, share of the map).

    Labels are drawn with an installed font that has their characters (`evaluation.fonts.check_glyphs`). When no
    font has them (Chinese or Korean labels on a machine without a CJK font), a warning names them, the legend gives
    class ids instead (`legend_entries`) and ``<png stem>.legend.json`` beside the PNG maps each id to its label and
    colour. ``fonts`` restricts the font families to choose from (default: every installed font)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from ..evaluation.fonts import check_glyphs, displayable, font_plan

    if classes.shape != preview.shape[:2]:
        raise ValueError(f"class map {classes.shape} and preview {preview.shape[:2]} differ in size")
    colours = np.array([class_colour(i) for i in range(len(labels))], dtype=np.float64)
    image = preview.astype(np.float64)
    has_class = classes >= 0
    blended = image.copy()
    blended[has_class] = (1 - alpha) * image[has_class] + alpha * colours[classes[has_class]]
    blended[~preview_valid] = 255.0  # nodata shown white
    legend_file = legend_path(path)
    glyphs = check_glyphs(
        labels,
        what="class labels",
        where=path,
        fonts=fonts,
        fallback=f"the legend gives class ids instead, and {legend_file.name} maps them to the labels",
    )
    if counts is None:
        counts = [int((classes == i).sum()) for i in range(len(labels))]
    entries, by_id = legend_entries(labels, counts, glyphs.can_draw)
    families, missing = font_plan([*labels, title], fonts)
    height, width = classes.shape
    fig_w = 8.0
    fig_h = max(3.0, fig_w * height / width * 0.8 + 0.6)
    fig, ax = plt.subplots(figsize=(fig_w + 3.0, fig_h))
    ax.imshow(blended.astype(np.uint8), interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(displayable(title, missing), fontfamily=families, fontsize=10)
    handles = [Patch(facecolor=np.array(class_colour(i)) / 255.0, label=e) for i, e in enumerate(entries)]
    ax.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        frameon=False,
        prop={"family": families, "size": 9},
        title=f"class id: see {legend_file.name}" if by_id else None,
        title_fontsize=8,
    )
    fig.tight_layout()
    try:
        with atomic_output(path) as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
    if by_id:
        total = max(1, sum(counts))
        table = [
            {"id": i, "label": label, "colour": "#" + bytes(class_colour(i)).hex(), "share": n / total}
            for i, (label, n) in enumerate(zip(labels, counts))
        ]
        atomic_write_json(legend_file, table)
    else:  # a table from an earlier run in the same folder: this PNG has the labels
        legend_file.unlink(missing_ok=True)
    return path


def tile_classes_on_preview(result: Any, preview_shape: tuple[int, int], factor: float) -> np.ndarray:
    """The tile class of every preview pixel (-1 where its tile was skipped)."""
    grid = result.grid
    rows = (np.arange(preview_shape[0]) + 0.5) * factor
    cols = (np.arange(preview_shape[1]) + 0.5) * factor
    half = grid.overlap / 2.0
    r = np.clip(((rows - half) // grid.stride).astype(int), 0, grid.n_rows - 1)
    c = np.clip(((cols - half) // grid.stride).astype(int), 0, grid.n_cols - 1)
    return result.class_ids[np.ix_(r, c)]


def write_classification(result: Any, reader: RasterReader, out_dir: Path) -> dict[str, Path]:
    """``classes.tif``, ``tiles.geojson``, ``overlay.png`` and ``summary.json`` of a `SceneClassification`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "geotiff": write_tile_geotiff(
            out_dir / "classes.tif",
            result.class_ids,
            result.top1_probability,
            result.transform,
            result.crs,
            result.labels,
            result.language,
            result.valid_fraction,
        ),
        "geojson": write_geojson(out_dir / "tiles.geojson", result.geojson),
    }
    preview, valid, factor = reader.preview()
    classes = tile_classes_on_preview(result, preview.shape[:2], factor)
    counts = [int((result.class_ids == i).sum()) for i in range(len(result.labels))]
    files["overlay"] = render_overlay(
        out_dir / "overlay.png",
        preview,
        valid,
        classes,
        result.labels,
        f"{Path(result.scene).name}: zero-shot class per {result.grid.size}px tile ({result.language})",
        counts=counts,
    )
    if legend_path(files["overlay"]).exists():
        files["legend"] = legend_path(files["overlay"])
    summary = out_dir / "summary.json"
    files["summary"] = summary
    data = result.summary()
    data["files"] = {k: str(v) for k, v in files.items()}
    atomic_write_json(summary, data)
    return files


def ensure_output_dir(path: str | os.PathLike) -> Path:
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


__all__ = [
    "CLASSIFICATION_FILES",
    "CLASS_NODATA",
    "ClassMapWriter",
    "PALETTE",
    "SEGMENTATION_FILES",
    "TILE_NODATA",
    "class_colour",
    "legend_entries",
    "legend_path",
    "read_class_map_preview",
    "render_overlay",
    "write_classification",
    "write_geojson",
    "write_tile_geotiff",
]
