"""The Classify tab's scenes and the Segment tab: georeferenced GeoTIFFs classified tile by tile or per pixel.

`SceneTasks` is a part of `service.AppService` (it uses the service's model, encoder, limits and request folders).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .language import AUTO
from .results import ClassifyResult, InputError, SegmentResult

GEOTIFF_SUFFIXES = (".tif", ".tiff")


class SceneTasks:
    """Scene classification and segmentation of `AppService` (GeoTIFFs read with the geo extra)."""

    def band_preset(self, preset: str | None) -> str | None:
        """None for automatic band choice, else a known preset name."""
        if preset in (None, "", AUTO):
            return None
        from ..geo.bands import list_band_presets

        if preset not in list_band_presets():
            raise InputError(
                f"unknown band preset {preset!r}; choose one of: auto, {', '.join(list_band_presets())}"
            )
        return preset

    def is_scene(self, path: Path, preset: str | None = None) -> bool:
        """A GeoTIFF with a CRS (read with the geo extra); plain TIFFs and other images are pictures."""
        if path.suffix.lower() not in GEOTIFF_SUFFIXES:
            return False
        try:
            from ..geo.raster import require_rasterio

            rasterio = require_rasterio()
        except ImportError:
            return False
        try:
            with rasterio.Env(CPL_LOG="/dev/null"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from ..geo.raster import RasterReader

                with RasterReader(path, preset=preset) as reader:
                    return reader.crs is not None
        except ValueError as error:
            if str(error).startswith("cannot read raster"):  # not a raster GDAL reads: PIL may still read it
                return False
            # GDAL reads it but the bands do not make an RGB picture by themselves (e.g. 4 float bands).
            raise InputError(f"{path.name}: {error}".replace(f"{path}: ", "")) from None

    def open_scene(self, path: Path, preset: str | None = None) -> tuple[int, int]:
        """(width, height) of a scene within the limits, else InputError naming the file."""
        from ..geo.raster import RasterReader

        try:
            with RasterReader(path, preset=preset) as reader:
                width, height = reader.width, reader.height
        except ValueError as error:
            raise InputError(f"{path.name}: {error}".replace(str(path), path.name)) from None
        if width * height > self.limits.max_scene_pixels:
            raise InputError(
                f"{path.name}: {width} x {height} pixels is more than the {self.limits.max_scene_pixels:,} this "
                "app maps; use `rsmclip map` on the command line"
            )
        return width, height

    def _tile_size(self, tile_size: Any, width: int, height: int) -> int:
        try:
            size = int(tile_size)
        except (TypeError, ValueError):
            raise InputError(f"tile size must be a whole number of pixels, got {tile_size!r}") from None
        if size < 16:
            raise InputError(f"tile size must be at least 16 pixels, got {size}")
        tiles = -(-width // size) * -(-height // size)
        if tiles > self.limits.max_scene_tiles:
            raise InputError(
                f"{tiles} tiles of {size} px; at most {self.limits.max_scene_tiles} per request: choose larger tiles"
            )
        return size

    def classify_scene(
        self, path: Path, labels: list[str], language: str, tile_size: Any = 224, preset: str | None = None
    ) -> ClassifyResult:
        from ..geo import classify_scene

        preset = self.band_preset(preset)
        width, height = self.open_scene(path, preset)
        size = self._tile_size(tile_size, width, height)
        out = self.request_dir("classify")
        try:
            scene = classify_scene(
                path,
                labels,
                model=self.encoder,
                processor=self.processor,
                backend=self.backend,
                precision=self.precision,
                language=language,
                tile_size=size,
                preset=preset,
                output_dir=out,
                progress=False,
            )
        except ValueError as error:
            raise InputError(f"{path.name}: {error}".replace(str(path), path.name)) from None
        counts = np.array([(scene.class_ids == i).sum() for i in range(len(labels))], dtype=np.float64)
        if counts.sum() == 0:
            raise InputError(f"{path.name}: every tile is mostly nodata; nothing to classify")
        shares = counts / counts.sum()
        summary = scene.summary()
        files = [str(scene.files[k]) for k in ("geotiff", "geojson") if k in scene.files]
        return ClassifyResult(
            language,
            labels,
            [float(v) for v in shares],
            preview=str(scene.files["overlay"]),
            scene={
                "tiles": summary["tiles"],
                "skipped": summary["skipped_mostly_nodata"],
                "tile_size": size,
                "tiles_per_class": summary["tiles_per_class"],
                "files": files,
            },
        )

    # -------------------------------------------------------------------------------------------- segment
    def segment(
        self,
        scene: str | os.PathLike | None,
        labels: str,
        language: str | None = AUTO,
        window: Any = 224,
        preset: str | None = None,
    ) -> SegmentResult:
        """Per-pixel classes of an uploaded scene (`geo.segment_scene`, NACLIP): overlay, legend, GeoTIFF."""
        label_list = self.parse_labels(labels)
        lang = self.language_for(language, " ".join(label_list))
        path = self.check_upload(scene, "scene")
        from ..inference.families import check_dense_features

        try:
            check_dense_features(self.model)
        except ValueError as error:
            raise InputError(str(error)) from None
        try:
            from ..geo import segment_scene
            from ..geo.writer import class_colour
        except ImportError as error:
            raise InputError(
                f'segmentation needs the geo extra: pip install "rsmclip[geo]" ({error})'
            ) from None
        preset = self.band_preset(preset)
        width, height = self.open_scene(path, preset)
        size = self._tile_size(window, width, height)
        out = self.request_dir("segment")
        try:
            result = segment_scene(
                path,
                label_list,
                model=self.segment_model,
                processor=self.processor,
                precision=getattr(self.segment_model, "precision", "fp32"),
                language=lang,
                window=size,
                preset=preset,
                output_dir=out,
                progress=False,
            )
        except ValueError as error:
            raise InputError(f"{path.name}: {error}".replace(str(path), path.name)) from None
        total = sum(result.pixels_per_class.values())
        if total == 0:
            raise InputError(f"{path.name}: no valid pixels to segment")
        fractions = {label: result.pixels_per_class.get(label, 0) / total for label in label_list}
        legend = [(label, "#" + bytes(class_colour(i)).hex()) for i, label in enumerate(label_list)]
        geotiff = result.files.get("geotiff")
        return SegmentResult(
            lang,
            label_list,
            str(result.files["overlay"]),
            legend,
            fractions,
            str(geotiff) if geotiff else None,
        )
