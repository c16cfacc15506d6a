"""What the web app does, without the web: the model (and the archive index) loaded once, and one handler per tab.

Handlers take and return plain Python values (paths, strings, numbers, dicts), so they are tested and benchmarked
without Gradio, and `ui.py` only lays out components and wires them to these methods. Every user mistake raises
`InputError` with a message meant for the page; anything else is a bug and propagates.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..evaluation.embed import Embedder, ImageSource
from ..processing_rsmclip import load_image_file, to_rgb
from ..templates import LANGUAGE_NAMES, LANGUAGES
from .language import AUTO, resolve_language

logger = logging.getLogger(__name__)

GEOTIFF_SUFFIXES = (".tif", ".tiff")
BROWSER_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")


class InputError(ValueError):
    """A problem with what the user gave (shown in the page); the server keeps serving."""


@dataclass(frozen=True)
class AppLimits:
    """What one request may ask for; larger inputs are refused with a message, not processed."""

    max_upload_mb: float = 25.0
    max_image_pixels: int = 50_000_000
    max_labels: int = 24
    max_label_chars: int = 80
    max_query_chars: int = 300
    max_top_k: int = 48
    max_scene_pixels: int = 150_000_000
    max_scene_tiles: int = 1024

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)


@dataclass
class ClassifyResult:
    """Class probabilities of one image (or of a whole scene: the mean over its tiles)."""

    language: str
    labels: list[str]
    probabilities: list[float]
    preview: str | None = None  # a picture of what was classified (for a scene: the tile class map)
    scene: dict[str, Any] | None = None  # GeoTIFF only: tile count, files written

    def as_label_dict(self) -> dict[str, float]:
        return dict(zip(self.labels, self.probabilities))


@dataclass
class SearchResult:
    """The ranked rows of one search, the language used, and the files written for download."""

    language: str | None
    rows: list[dict[str, Any]]
    geojson_path: str | None = None
    csv_path: str | None = None
    map_svg: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class SegmentResult:
    """A per-pixel class map of a scene: overlay picture, legend, class shares and the GeoTIFF written."""

    language: str
    labels: list[str]
    overlay_path: str
    legend: list[tuple[str, str]]  # (label, "#rrggbb")
    class_fractions: dict[str, float]
    geotiff_path: str | None


def human_size(n_bytes: int) -> str:
    """1536 -> '1.5 KB', 3 * 2**20 -> '3.0 MB'."""
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes} bytes"


def split_labels(text: str) -> list[str]:
    """Labels typed in one box: separated by commas, semicolons, new lines or CJK commas; blanks dropped."""
    return [part.strip() for part in re.split(r"[,;\n，、；]", text or "") if part.strip()]


class _ArrayImages(ImageSource):
    """In-memory RGB images for `Embedder.images`."""

    def __init__(self, images: list[np.ndarray]) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index])

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for image in self.images:
            h.update(str(image.shape).encode())
            h.update(np.ascontiguousarray(image).tobytes())
        return h.hexdigest()


# The per-request folders `AppService.request_dir` makes (and later removes) in the work folder.
_REQUEST_DIR = re.compile(r"^[a-z]+-\d+-\d+$")


def _check_work_dir(work_dir: Any, model: Any, index: Any, index_path: Any = None) -> None:
    """A work folder given by the caller must not be, hold or lie inside the model's folder or the index."""
    if work_dir is None:
        return
    from ..inference import local_model_folder
    from ..safe_io import check_outputs_not_inputs

    inputs = [local_model_folder(model), getattr(index, "path", None), index_path]
    check_outputs_not_inputs([], inputs, owned=[work_dir])


class AppService:
    """The model, processor and (optional) archive index, loaded once and shared by every request.

    Args:
        model: a loaded model of any supported family (`inference.families`: RS-M-CLIP, CLIP, SigLIP, SigLIP 2,
            AltCLIP), in eval mode. Segmentation needs dense patch features, which SigLIP models do not have: the
            Segment tab says so for them.
        processor: its processor.
        index: an `RSMCLIPIndex` for the Search tab, or None (the tab then says there is no index).
        model_name: shown in the page.
        limits: request limits.
        work_dir: where per-request output files go (CSV, GeoJSON, GeoTIFF, PNG); a temporary folder by default.
        backend, precision: CPU inference backend of every embedding (``"torch"`` or ``"onnx"``, ``"fp32"`` or
            ``"int8"``; see `inference.load_encoder`). Segmentation needs patch features, which only PyTorch
            gives: it runs on PyTorch at the same precision. Give an index made with the same settings (`load`
            does), so that queries are embedded as the Classify tab embeds images.
        inplace: int8 quantises ``model`` itself (no fp32 copy kept; ``model`` is int8 afterwards): at start-up
            for PyTorch int8, at the first segmentation for ONNX int8. `load` does so, after opening the index with
            the fp32 weights.
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        index: Any = None,
        model_name: str = "",
        limits: AppLimits | None = None,
        work_dir: str | os.PathLike | None = None,
        keep_outputs_s: float = 3600.0,
        backend: str = "torch",
        precision: str = "fp32",
        inplace: bool = False,
    ) -> None:
        from ..inference import load_encoder

        _check_work_dir(work_dir, model, index)
        self.model = model.eval()
        self.processor = processor
        self.index = index
        self.backend, self.precision = backend, precision
        # What embeds images and texts: the model itself (PyTorch fp32), or its ONNX Runtime / int8 encoder (made
        # once). `load_encoder` checks the backend and precision.
        self.encoder = load_encoder(self.model, backend, precision, processor=processor, inplace=inplace)
        self._segment_model: Any = None
        self._inplace = inplace
        self.model_name = model_name
        self.limits = limits or AppLimits()
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="rsmclip-app-"))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.keep_outputs_s = keep_outputs_s
        # One image per request, already decoded: no data-loader worker processes (forking the server per request
        # would cost more than the model).
        self.embedder = Embedder(
            self.encoder, processor, batch_size=32, num_workers=0, cache_dir=None, show_progress=False
        )
        self._lock = threading.Lock()
        self._counter = 0

    # --------------------------------------------------------------------------------------------- loading
    @classmethod
    def load(
        cls,
        model: str | None = None,
        index: str | None = None,
        *,
        with_index: bool = True,
        limits: AppLimits | None = None,
        work_dir: str | os.PathLike | None = None,
        backend: str = "torch",
        precision: str = "fp32",
    ) -> AppService:
        """Load the model (the bundled demo model when None) and the index (the bundled samples' when None);
        ``backend`` / ``precision`` as in the constructor, used by the index's queries too."""
        from ..inference import load_model

        _check_work_dir(work_dir, model or "demo", None, index)
        net, processor = load_model(model or "demo")
        name = model or "bundled demo model (trained on the UCM-Captions train split, 10 languages)"
        # The index checks the model's fingerprint on the fp32 weights, before they may be quantised in place.
        archive = load_index(index, net, processor, default_model=model is None) if with_index else None
        service = cls(
            net,
            processor,
            model_name=name,
            limits=limits,
            work_dir=work_dir,
            backend=backend,
            precision=precision,
            inplace=True,
        )
        if archive is not None and service.encoder is not service.model:
            archive.set_encoder(service.encoder)
        service.index = archive
        return service

    @property
    def segment_model(self) -> Any:
        """What segments scenes: the PyTorch model, or its int8 encoder (made on first use for ONNX int8)."""
        if self._segment_model is None:
            if self.precision == "fp32":
                self._segment_model = self.model
            elif self.backend == "torch":
                self._segment_model = self.encoder
            else:
                from ..inference import load_encoder

                # ONNX int8: nothing else runs the PyTorch weights, so they may be quantised in place.
                self._segment_model = load_encoder(self.model, "torch", "int8", inplace=self._inplace)
        return self._segment_model

    # -------------------------------------------------------------------------------------------- helpers
    def request_dir(self, kind: str) -> Path:
        """A fresh folder for one request's output files; folders older than `keep_outputs_s` are removed."""
        with self._lock:
            self._counter += 1
            number = self._counter
        now = time.time()
        for old in self.work_dir.iterdir():
            try:
                if (
                    _REQUEST_DIR.match(old.name)  # only folders made here
                    and old.is_dir()
                    and now - old.stat().st_mtime > self.keep_outputs_s
                ):
                    shutil.rmtree(old, ignore_errors=True)
            except FileNotFoundError:  # removed by a concurrent request
                pass
        if number % 100 == 0:
            self._prune_thumbnails()
        path = self.work_dir / f"{kind}-{int(now * 1000)}-{number}"
        path.mkdir(parents=True)
        return path

    def _prune_thumbnails(self, keep: int = 5000) -> None:
        """Keep the `keep` most recently made result thumbnails (disk use stays bounded on a large archive)."""
        folder = self.work_dir / "thumbnails"
        if not folder.is_dir():
            return
        files = []
        for path in folder.glob("*.jpg"):
            try:
                files.append((path.stat().st_mtime, path))
            except FileNotFoundError:
                pass
        for _, path in sorted(files, reverse=True)[keep:]:
            path.unlink(missing_ok=True)

    def check_upload(self, path: str | os.PathLike | None, what: str = "image") -> Path:
        """The uploaded file, if it exists and is not larger than the upload limit."""
        if path is None or str(path).strip() == "":
            raise InputError(f"no {what} uploaded")
        path = Path(path)
        if not path.is_file():
            raise InputError(f"the uploaded {what} {path.name!r} was not found on the server")
        size = path.stat().st_size
        if size > self.limits.max_upload_bytes:
            raise InputError(
                f"{path.name}: the file is {human_size(size)}, more than the "
                f"{human_size(self.limits.max_upload_bytes)} this app accepts"
            )
        if size == 0:
            raise InputError(f"{path.name}: the file is empty")
        return path

    def read_image(self, path: str | os.PathLike) -> np.ndarray:
        """An uploaded picture as HxWx3 uint8 RGB; unreadable, oversized or odd files raise InputError."""
        path = self.check_upload(path)
        try:
            with Image.open(path) as probe:  # reads the header only: refuse huge images before decoding them
                width, height = probe.size
        except Exception as error:
            raise InputError(
                f"{path.name}: not a readable image ({error.__class__.__name__}: {error})"
            ) from None
        if width * height > self.limits.max_image_pixels:
            raise InputError(
                f"{path.name}: {width} x {height} pixels is more than the {self.limits.max_image_pixels:,} this "
                "app accepts; upload a smaller image or use `rsmclip map` on the command line"
            )
        try:
            return to_rgb(load_image_file(path))
        except (ValueError, OSError) as error:
            raise InputError(f"{path.name}: cannot use this image: {error}") from None

    def parse_labels(self, text: str) -> list[str]:
        labels = split_labels(text)
        if len(labels) < 2:
            raise InputError("give at least two labels, separated by commas (e.g. 'forest, beach, harbor')")
        if len(labels) > self.limits.max_labels:
            raise InputError(f"{len(labels)} labels given; at most {self.limits.max_labels} are allowed")
        for label in labels:
            if len(label) > self.limits.max_label_chars:
                raise InputError(
                    f"label {label[:30]!r}... is {len(label)} characters long; at most "
                    f"{self.limits.max_label_chars} are allowed"
                )
        seen: set[str] = set()
        for label in labels:
            if label.lower() in seen:
                raise InputError(f"label {label!r} is given twice")
            seen.add(label.lower())
        return labels

    def language_for(self, language: str | None, text: str) -> str:
        try:
            return resolve_language(language, text)
        except ValueError as error:
            raise InputError(str(error)) from None

    @functools.lru_cache(maxsize=256)  # noqa: B019  (one service per process; labels are small)
    def class_embeddings(self, labels: tuple[str, ...], language: str) -> np.ndarray:
        """(classes, dim) normalised class embeddings: each label in every template of `language`, averaged."""
        from ..inference import class_embeddings

        embeds = class_embeddings(self.encoder, self.processor, labels, language, embed=self.embedder.texts)
        return embeds.astype(np.float32)

    def image_embeddings(self, images: list[np.ndarray]) -> np.ndarray:
        return self.embedder.images(_ArrayImages(images)).numpy()

    def probabilities(self, image_embeds: np.ndarray, class_embeds: np.ndarray) -> np.ndarray:
        """The model family's zero-shot probabilities (`inference.families.zero_shot_probabilities`: softmax over
        the labels for CLIP-like models, SigLIP's sigmoid per label)."""
        from ..inference.families import zero_shot_probabilities

        return zero_shot_probabilities(self.encoder, image_embeds, class_embeds)

    # ------------------------------------------------------------------------------------------- classify
    def classify(
        self,
        image: str | os.PathLike | None,
        labels: str,
        language: str | None = AUTO,
        tile_size: Any = 224,
        preset: str | None = None,
    ) -> ClassifyResult:
        """Zero-shot probabilities of `labels` (typed in `language`, or detected) for an uploaded image.

        A georeferenced GeoTIFF is a scene: every `tile_size` tile is classified (`geo.classify_scene`), the bars
        are the share of tiles per class, and the class map comes as a picture, a GeoTIFF and a GeoJSON.
        """
        label_list = self.parse_labels(labels)
        lang = self.language_for(language, " ".join(label_list))
        path = self.check_upload(image)
        if self.is_scene(path, self.band_preset(preset)):
            return self.classify_scene(path, label_list, lang, tile_size, preset)
        rgb = self.read_image(path)
        probs = self.probabilities(
            self.image_embeddings([rgb]), self.class_embeddings(tuple(label_list), lang)
        )[0]
        return ClassifyResult(lang, label_list, [float(p) for p in probs], preview=self.preview(path, rgb))

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

    def preview(self, path: Path, rgb: np.ndarray) -> str:
        """The upload itself when a browser can show it, else a PNG of the RGB that the model saw."""
        if path.suffix.lower() in BROWSER_IMAGE_SUFFIXES:
            return str(path)
        out = self.request_dir("preview") / f"{path.stem}.png"
        Image.fromarray(rgb).save(out)
        return str(out)

    def result_image(self, row: dict[str, Any], size: int = 256) -> Image.Image:
        """A thumbnail of a search result: the image file, or its tile cut out of the scene (`window`)."""
        window = row.get("window")
        if window:
            from ..geo.raster import RasterReader

            with RasterReader(row["path"]) as reader:
                rgb, _valid = reader.read_rgb(tuple(window))
        else:
            rgb = to_rgb(load_image_file(row["path"]))
        thumb = Image.fromarray(rgb)
        thumb.thumbnail((size, size))
        return thumb

    def result_thumbnail(self, row: dict[str, Any], size: int = 256) -> str:
        """`result_image` as a JPEG file, made once per result and kept (the page shows files without
        re-encoding them on every search)."""
        key = hashlib.sha256(
            json.dumps(
                [row.get("id"), row.get("path"), row.get("window"), row.get("content_hash"), size]
            ).encode()
        ).hexdigest()[:32]
        folder = self.work_dir / "thumbnails"
        path = folder / f"{key}.jpg"
        if not path.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f"{key}.{threading.get_ident()}.tmp"
            self.result_image(row, size).save(tmp, format="JPEG", quality=90)
            os.replace(tmp, path)
        return str(path)

    def allowed_paths(self) -> list[str]:
        """Folders the page may serve files from (the per-request outputs)."""
        return [str(self.work_dir)]

    # --------------------------------------------------------------------------------------------- search
    def search(self, query: str, language: str | None = AUTO, top_k: int = 8) -> SearchResult:
        """Text search of the archive in any of the ten languages."""
        text = (query or "").strip()
        if not text:
            raise InputError("type a query first (any of the ten languages)")
        if len(text) > self.limits.max_query_chars:
            raise InputError(
                f"the query is {len(text)} characters long; at most {self.limits.max_query_chars} are allowed"
            )
        lang = self.language_for(language, text)
        index = self._require_index()
        rows = index.search(text, top_k=self._top_k(top_k))
        return self._finish_search(lang, rows)

    def search_by_image(self, image: str | os.PathLike | None, top_k: int = 8) -> SearchResult:
        """Images of the archive that look like an uploaded one."""
        rgb = self.read_image(image)
        index = self._require_index()
        rows = index.search(rgb, top_k=self._top_k(top_k), image=True)
        return self._finish_search(None, rows)

    def _require_index(self) -> Any:
        if self.index is None:
            raise InputError("this app was started without an archive index; start it with --index INDEX")
        return self.index

    def _top_k(self, top_k: Any) -> int:
        try:
            k = int(top_k)
        except (TypeError, ValueError):
            raise InputError(f"top-k must be a whole number, got {top_k!r}") from None
        if not 1 <= k <= self.limits.max_top_k:
            raise InputError(f"top-k must be between 1 and {self.limits.max_top_k}, got {k}")
        return k

    def _finish_search(self, language: str | None, rows: list[dict[str, Any]]) -> SearchResult:
        out = self.request_dir("search")
        rows = [dict(row) for row in rows]
        csv_path = out / "results.csv"
        write_results_csv(rows, csv_path)
        geojson_path = None
        map_svg = None
        if getattr(self.index, "is_georeferenced", False) and any(row.get("bbox") for row in rows):
            from ..index import to_geojson

            collection = to_geojson(rows)
            geojson_path = out / "results.geojson"
            geojson_path.write_text(json.dumps(collection, ensure_ascii=False))
            from .mapview import footprints_svg

            map_svg = footprints_svg(collection)
        return SearchResult(
            language, rows, str(geojson_path) if geojson_path else None, str(csv_path), map_svg
        )

    # -------------------------------------------------------------------------------------------- info
    def describe(self) -> str:
        """One Markdown line on what is loaded."""
        parts = [f"Model: **{self.model_name or 'custom'}**"]
        if (self.backend, self.precision) != ("torch", "fp32"):
            runtime = "ONNX Runtime" if self.backend == "onnx" else "PyTorch"
            parts.append(f"inference: **{runtime} {self.precision}** (CPU)")
        if self.index is not None:
            geo = " (georeferenced)" if getattr(self.index, "is_georeferenced", False) else ""
            parts.append(f"archive index: **{len(self.index)} images{geo}**")
        else:
            parts.append("no archive index")
        return " · ".join(parts)


def band_preset_choices() -> list[tuple[str, str]]:
    """(shown name, value) pairs for a band-preset drop-down (automatic first); only automatic without geo."""
    try:
        from ..geo.bands import list_band_presets

        presets = list_band_presets()
    except ImportError:
        presets = []
    return [("Automatic (band names, 3-band RGB)", AUTO)] + [(name, name) for name in presets]


def language_choices() -> list[tuple[str, str]]:
    """(shown name, code) pairs for a language drop-down: auto-detect first, then the ten languages."""
    return [("Detect automatically", AUTO)] + [(f"{LANGUAGE_NAMES[c]} ({c})", c) for c in LANGUAGES]


def write_results_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    """Search results as CSV: rank, score, id, path first, then the other columns; lists as JSON."""
    first = ["rank", "score", "id", "path"]
    columns = first + sorted({key for row in rows for key in row} - set(first))
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {
                    key: json.dumps(value) if isinstance(value, list | tuple | dict) else value
                    for key, value in row.items()
                }
            )
    return path


def load_index(
    index: str | None, model: Any, processor: Any, *, default_model: bool, encoder: Any = None
) -> Any:
    """The archive index at `index`, else the bundled samples' index (built on first use) for the demo model.

    The index embeds queries with the app's own model (one copy in memory; its fingerprint is checked against
    the index's manifest), through `encoder` (the app's ONNX Runtime / int8 encoder of it) when one is given.
    Returns None, with a log line, when no index was asked for and the index extra is not installed or the model
    is not the demo model.
    """
    try:
        from ..index import RSMCLIPIndex, bundled_sample_index

        if index is not None:
            archive = RSMCLIPIndex.load(index, model=model, processor=processor)
        elif not default_model:
            logger.warning(
                "archive search is off: the bundled sample index needs the demo model; pass --index"
            )
            return None
        else:
            archive = bundled_sample_index(model=model, processor=processor, progress=True)
        if encoder is not None and encoder is not model:
            archive.set_encoder(encoder)
        return archive
    except ImportError as error:
        if index is not None:
            raise
        logger.warning("archive search is off: %s", error)
        return None
