"""What the web app does, without the web: the model (and the archive index) loaded once, and one handler per tab.

`AppService` is made of three parts: this module (loading, uploads, labels, image classification, the work folder),
`searching.SearchTasks` (the Search tab) and `scenes.SceneTasks` (GeoTIFF scenes: Classify and Segment). Its values
(`InputError`, `AppLimits`, the results) live in `results`, re-exported here. Handlers take and return plain Python values (paths, strings, numbers, dicts), so they are tested and benchmarked
without Gradio, and `ui.py` only lays out components and wires them to these methods. Every user mistake raises
`InputError` with a message meant for the page; anything else is a bug and propagates.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..evaluation.embed import Embedder, ImageSource
from ..processing_rsmclip import load_image_file, to_rgb
from .language import AUTO, resolve_language
from .results import (
    AppLimits,
    ClassifyResult,
    InputError,
    SearchResult,
    SegmentResult,
    band_preset_choices,
    human_size,
    language_choices,
    shown_row,
    split_labels,
    write_results_csv,
)
from .scenes import SceneTasks
from .searching import SearchTasks, load_index
from .workdir import make_work_dir

logger = logging.getLogger(__name__)

BROWSER_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")


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


class AppService(SearchTasks, SceneTasks):
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
        # A temporary folder named after this process, removed at exit; one left by a killed server (its process
        # gone) is removed by the next start (`workdir.make_work_dir`).
        self.work_dir = Path(work_dir) if work_dir else make_work_dir()
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

    def preview(self, path: Path, rgb: np.ndarray) -> str:
        """The upload itself when a browser can show it, else a PNG of the RGB that the model saw."""
        if path.suffix.lower() in BROWSER_IMAGE_SUFFIXES:
            return str(path)
        out = self.request_dir("preview") / f"{path.stem}.png"
        Image.fromarray(rgb).save(out)
        return str(out)

    def allowed_paths(self) -> list[str]:
        """Folders the page may serve files from (the per-request outputs)."""
        return [str(self.work_dir)]

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


__all__ = [
    "AppLimits",
    "AppService",
    "ClassifyResult",
    "InputError",
    "SearchResult",
    "SegmentResult",
    "band_preset_choices",
    "human_size",
    "language_choices",
    "load_index",
    "shown_row",
    "split_labels",
    "write_results_csv",
]
