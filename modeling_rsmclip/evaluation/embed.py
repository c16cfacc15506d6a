"""Batched image and text embedding with an on-disk cache, computed once per model and dataset.

A cache entry is keyed by a fingerprint of the model (every weight tensor, the config and the processor settings,
plus the inference precision) and a fingerprint of the data (the image files' names, sizes and modification times,
a `datasets` fingerprint, or the exact texts). Re-running an evaluation with the same model on the same data reads
the embeddings back instead of recomputing them; any change to the weights, preprocessing or data gives a new key.
Entries are safetensors files written atomically.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..processing_rsmclip import load_image_file
from ..processing_rsmclip import to_rgb as _to_rgb_array

logger = logging.getLogger(__name__)

DEFAULT_MAX_TEXT_LENGTH = 77


def default_cache_dir() -> Path:
    """``$RSMCLIP_EMBEDDINGS_CACHE``, else ``$XDG_CACHE_HOME/rsmclip/embeddings`` (``~/.cache/...``)."""
    env = os.environ.get("RSMCLIP_EMBEDDINGS_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rsmclip" / "embeddings"


# ------------------------------------------------------------------------------------------------- image input
def to_rgb(image: Image.Image, name: str) -> Image.Image:
    """Convert a PIL image of any mode to 8-bit RGB with the processor's own rules (`processing_rsmclip.to_rgb`:
    16-bit data scaled by its type's range, alpha dropped, palettes expanded)."""
    if image.mode == "RGB":
        return image
    try:
        return Image.fromarray(_to_rgb_array(image))
    except (ValueError, OSError) as err:
        raise ValueError(f"{name}: cannot convert image mode {image.mode!r} to RGB: {err}") from err


def load_rgb_image(path: str | os.PathLike) -> Image.Image:
    """Open an image file as 8-bit RGB; a missing, unreadable or truncated file raises an error naming it."""
    return to_rgb(load_image_file(path), str(path))


class ImageSource(Dataset):
    """A sequence of images for evaluation: ``source[i]`` is an RGB PIL image."""

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, index: int) -> Image.Image:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self, index: int) -> str:
        """A human-readable name of image ``index`` for errors and plots."""
        return f"image {index}"

    def fingerprint(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError


class ImageFiles(ImageSource):
    """Images read from files."""

    def __init__(self, paths: Sequence[str | os.PathLike]) -> None:
        self.paths = [Path(p) for p in paths]
        missing = [p for p in self.paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} image file(s) not found, first: {missing[0]}"
                if len(missing) > 1
                else f"image file not found: {missing[0]}"
            )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Image.Image:
        return load_rgb_image(self.paths[index])

    def describe(self, index: int) -> str:
        return str(self.paths[index])

    def fingerprint(self) -> str:
        """Hash of every file's resolved path, size and modification time (cheap, and changes when a file does)."""
        h = hashlib.sha256(b"image-files-v1")
        for path in self.paths:
            stat = path.stat()
            h.update(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return h.hexdigest()


class DatasetImages(ImageSource):
    """Images from a column of a `datasets.Dataset` (e.g. the builder's ``image`` column)."""

    def __init__(self, dataset: Any, column: str = "image", id_column: str | None = "image_id") -> None:
        if column not in dataset.column_names:
            raise ValueError(f"dataset has no {column!r} column (columns: {dataset.column_names})")
        self.dataset = dataset
        self.column = column
        self.ids = dataset[id_column] if id_column and id_column in dataset.column_names else None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Image.Image:
        try:
            image = self.dataset[int(index)][self.column]
        except Exception as err:  # decoding errors of datasets.Image come in many types
            raise ValueError(f"cannot read {self.describe(index)}: {err}") from err
        if image is None:
            raise ValueError(f"{self.describe(index)} has no image")
        if not isinstance(image, Image.Image):
            raise ValueError(f"{self.describe(index)}: column {self.column!r} is not an image column")
        return to_rgb(image, self.describe(index))

    def describe(self, index: int) -> str:
        name = f"row {index}"
        if self.ids is not None:
            name += f" (image_id {self.ids[index]!r})"
        return name

    def fingerprint(self) -> str:
        fp = getattr(self.dataset, "_fingerprint", None)
        if fp is None:
            raise ValueError("the dataset has no fingerprint; load it with `datasets` to evaluate it")
        return hashlib.sha256(f"dataset-images-v1\0{fp}\0{self.column}".encode()).hexdigest()


def fingerprint_texts(texts: Sequence[str]) -> str:
    h = hashlib.sha256(b"texts-v1")
    for text in texts:
        h.update(text.encode("utf-8") + b"\0")
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------ fingerprints
def _processor_state(processor: Any) -> str:
    """The processor settings that change embeddings: image processor config and the tokenizer model."""
    parts: list[str] = []
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is not None and hasattr(image_processor, "to_json_string"):
        parts.append(image_processor.to_json_string())
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is not None:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None and hasattr(backend, "to_str"):
            parts.append(backend.to_str())
        else:
            parts.append(json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False))
        parts.append(type(tokenizer).__name__)
    return "\n".join(parts)


def model_fingerprint(model: torch.nn.Module, processor: Any, extra: str = "") -> str:
    """SHA-256 over every parameter and buffer (name, dtype, shape, bytes), the config and the processor."""
    h = hashlib.sha256(b"rsmclip-model-v1")
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_json_string"):
        h.update(config.to_json_string(use_diff=False).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().contiguous().cpu()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    h.update(_processor_state(processor).encode())
    h.update(extra.encode())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------------- cache
class EmbeddingCache:
    """Directory of ``<model key>/<kind>-<data key>.safetensors`` embedding files; ``None`` disables caching."""

    def __init__(self, directory: str | os.PathLike | None) -> None:
        self.directory = Path(directory) if directory is not None else None

    def path(self, model_key: str, kind: str, data_key: str) -> Path | None:
        if self.directory is None:
            return None
        return self.directory / model_key[:24] / f"{kind}-{data_key[:24]}.safetensors"

    def load(self, model_key: str, kind: str, data_key: str, count: int) -> torch.Tensor | None:
        path = self.path(model_key, kind, data_key)
        if path is None or not path.is_file():
            return None
        try:
            tensor = load_file(str(path))["embeddings"]
        except Exception as err:  # a damaged file is recomputed, not trusted
            logger.warning("ignoring unreadable embedding cache %s: %s", path, err)
            return None
        if tensor.shape[0] != count:
            logger.warning("ignoring embedding cache %s: %d rows, expected %d", path, tensor.shape[0], count)
            return None
        logger.info("loaded %d cached %s embeddings from %s", count, kind, path)
        return tensor

    def save(self, model_key: str, kind: str, data_key: str, tensor: torch.Tensor) -> None:
        path = self.path(model_key, kind, data_key)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        try:
            save_file(
                {"embeddings": tensor.contiguous()},
                tmp,
                metadata={"model": model_key, "data": data_key, "kind": kind},
            )
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


# ---------------------------------------------------------------------------------------------------- embedder
class _ImageCollator:
    """Runs the image processor in the data-loader workers."""

    def __init__(self, image_processor: Any) -> None:
        self.image_processor = image_processor

    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        return self.image_processor(images=images, return_tensors="pt")["pixel_values"]


class Embedder:
    """Embeds images and texts with a model that has ``get_image_features`` / ``get_text_features``.

    Embeddings are returned L2-normalised, float32, on the CPU, in input order.

    Args:
        model: e.g. an `RSMCLIPModel`; its ``pooler_output`` is the projected embedding.
        processor: a CLIP-style processor with ``image_processor`` and ``tokenizer``.
        device: where to run; ``None`` keeps the model where it is.
        batch_size: images or texts per forward pass.
        num_workers: data-loader worker processes for image decoding and preprocessing.
        precision: ``"fp32"``, or ``"bf16"``/``"fp16"`` autocast (CUDA).
        cache_dir: embedding cache directory, ``None`` to disable caching.
        max_text_length: tokenizer truncation length.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        processor: Any,
        *,
        device: str | torch.device | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        precision: str = "fp32",
        cache_dir: str | os.PathLike | None = None,
        max_text_length: int = DEFAULT_MAX_TEXT_LENGTH,
        show_progress: bool = True,
    ) -> None:
        if precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be fp32, bf16 or fp16, got {precision!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.eval()
        if device is not None:
            self.model.to(device)
        self.device = next(self.model.parameters()).device
        self.processor = processor
        self.image_processor = getattr(processor, "image_processor", processor)
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.precision = precision
        self.max_text_length = max_text_length
        self.show_progress = show_progress
        self.cache = EmbeddingCache(cache_dir)
        self.model_key = model_fingerprint(model, processor, extra=f"{precision}\0{max_text_length}")

    @contextlib.contextmanager
    def _autocast(self) -> Iterator[None]:
        if self.precision == "fp32":
            yield
            return
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        with torch.autocast(device_type=self.device.type, dtype=dtype):
            yield

    def images(self, source: ImageSource, desc: str = "embedding images") -> torch.Tensor:
        """Embeddings of every image of ``source`` (cached)."""
        if len(source) == 0:
            raise ValueError("no images to embed")
        data_key = source.fingerprint()
        cached = self.cache.load(self.model_key, "images", data_key, len(source))
        if cached is not None:
            return cached
        loader = DataLoader(
            source,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=_ImageCollator(self.image_processor),
            pin_memory=self.device.type == "cuda",
        )
        chunks = []
        with torch.inference_mode(), self._autocast():
            for pixel_values in tqdm(loader, desc=desc, unit="batch", disable=not self.show_progress):
                out = self.model.get_image_features(
                    pixel_values=pixel_values.to(self.device, non_blocking=True)
                )
                chunks.append(F.normalize(out.pooler_output.float(), dim=-1).cpu())
        embeddings = torch.cat(chunks)
        self.cache.save(self.model_key, "images", data_key, embeddings)
        return embeddings

    def texts(self, texts: Sequence[str], desc: str = "embedding texts") -> torch.Tensor:
        """Embeddings of ``texts`` (cached; each distinct text is encoded once)."""
        texts = list(texts)
        if not texts:
            raise ValueError("no texts to embed")
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"text {i} is empty or not a string: {text!r}")
        data_key = fingerprint_texts(texts)
        cached = self.cache.load(self.model_key, "texts", data_key, len(texts))
        if cached is not None:
            return cached
        unique = list(dict.fromkeys(texts))
        chunks = []
        with torch.inference_mode(), self._autocast():
            starts = range(0, len(unique), self.batch_size)
            for start in tqdm(starts, desc=desc, unit="batch", disable=not self.show_progress):
                batch = self.tokenizer(
                    unique[start : start + self.batch_size],
                    padding=True,
                    truncation=True,
                    max_length=self.max_text_length,
                    return_tensors="pt",
                )
                out = self.model.get_text_features(
                    input_ids=batch["input_ids"].to(self.device),
                    attention_mask=batch["attention_mask"].to(self.device),
                )
                chunks.append(F.normalize(out.pooler_output.float(), dim=-1).cpu())
        unique_embeddings = torch.cat(chunks)
        position = {text: i for i, text in enumerate(unique)}
        embeddings = unique_embeddings[torch.tensor([position[t] for t in texts], dtype=torch.long)]
        self.cache.save(self.model_key, "texts", data_key, embeddings)
        return embeddings
