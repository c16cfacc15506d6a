"""Batched image and text embedding with an on-disk cache, computed once per model and dataset.

A cache entry is keyed by a fingerprint of the model (an exact checksum of every weight tensor, the config and the
processor settings, plus the inference precision: `model_fingerprint`) and a fingerprint of the data (the image files' names, sizes and modification times,
a `datasets` fingerprint, or the exact texts). Re-running an evaluation with the same model on the same data reads
the embeddings back instead of recomputing them; any change to the weights, preprocessing or data gives a new key.
Entries are safetensors files written atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..cache_dirs import user_cache_dir
from ..inference.families import image_features, image_inputs, pad_token_id, pad_token_rows, text_rule
from ..inference.loading import portable_config_json
from ..inference.options import autocast
from ..processing_rsmclip import load_image_file
from ..processing_rsmclip import to_rgb as _to_rgb_array

logger = logging.getLogger(__name__)

DEFAULT_MAX_TEXT_LENGTH = 77


def default_cache_dir() -> Path:
    """``$RSMCLIP_EMBEDDINGS_CACHE``, else ``$XDG_CACHE_HOME/rsmclip/embeddings`` (``~/.cache/...``)."""
    return user_cache_dir("embeddings", "RSMCLIP_EMBEDDINGS_CACHE")


def default_num_workers() -> int:
    """Data-loader workers used when none is given: half the CPU cores (at least 1, at most 4), so image decoding
    runs beside the model, which keeps the other cores busy."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


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
# Tokenizer fields that describe the state of the last call (`padding=`, `truncation=` set per call by transformers
# on the Rust backend), not the tokenizer: the Embedder passes them explicitly on every call and keys them itself.
_TRANSIENT_TOKENIZER_FIELDS = ("padding", "truncation")


def _tokenizer_state(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        state = json.loads(backend.to_str())
        for name in _TRANSIENT_TOKENIZER_FIELDS:
            state.pop(name, None)
        return json.dumps(state, sort_keys=True, ensure_ascii=False)
    return json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)


def _processor_state(processor: Any) -> str:
    """The processor settings that change embeddings: image processor config and the tokenizer model.

    The padding/truncation state the tokenizer keeps from its last call is left out, so the key does not depend on
    what was tokenized before (the Embedder sets padding and truncation explicitly on every call).
    """
    parts: list[str] = []
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is not None and hasattr(image_processor, "to_json_string"):
        parts.append(image_processor.to_json_string())
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is not None:
        parts.append(_tokenizer_state(tokenizer))
        parts.append(type(tokenizer).__name__)
    return "\n".join(parts)


_INT_VIEW = {1: np.uint8, 2: np.int16, 4: np.int32, 8: np.int64}
_SAMPLE_SIZE = 4096  # evenly strided elements hashed verbatim per tensor


def tensor_checksum(tensor: torch.Tensor) -> bytes:
    """A cheap exact content digest of a tensor (used by `model_fingerprint`).

    The tensor's bit patterns, read as integers, are summed exactly (int64) per row of the tensor seen as
    ``(shape[0], -1)``, and ``_SAMPLE_SIZE`` evenly strided elements are hashed verbatim, with the dtype and shape.
    Any change of a single element changes its row's sum; swapped rows and transposes change the sequence of row
    sums. Integer sums do not depend on the summation order (threads), and cost about a quarter of hashing every
    byte with SHA-256.
    """
    t = tensor.detach()
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    if t.is_complex():
        t = torch.view_as_real(t)
    t = t.contiguous().cpu()
    h = hashlib.sha256(f"{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
    if t.numel() == 0:
        return h.digest()
    bits = t.reshape(-1).view(_TORCH_INT_VIEW[t.element_size()]).numpy().view(_INT_VIEW[t.element_size()])
    stride = max(1, bits.size // _SAMPLE_SIZE)
    h.update(bits[::stride].tobytes())
    rows = t.shape[0] if t.dim() > 1 else 1
    h.update(bits.reshape(rows, -1).sum(axis=1, dtype=np.int64).tobytes())
    return h.digest()


_TORCH_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def model_fingerprint(model: Any, processor: Any, extra: str = "", *, portable: bool = True) -> str:
    """SHA-256 over the config, every parameter and buffer (name, dtype, shape, `tensor_checksum`) and the
    processor state (see `_processor_state`), plus ``extra``.

    It changes when any weight changes (one element is enough) but costs one integer reduction per tensor
    instead of hashing every byte with SHA-256 (see BENCHMARKS.md for the full-size figure). An
    object that is not a `torch.nn.Module` (e.g. an ONNX Runtime encoder) provides its own ``fingerprint()``.

    The config is hashed without the folder it was loaded from (`inference.portable_config_json`), so copies of one
    model in two folders have one fingerprint. ``portable=False`` gives the earlier recipe, which hashed the config
    with its folder, to recognise indexes made before.
    """
    h = hashlib.sha256(b"rsmclip-model-v3" if portable else b"rsmclip-model-v2")
    own = getattr(model, "fingerprint", None)
    if callable(own) and not isinstance(model, torch.nn.Module):
        h.update(str(own()).encode())
    else:
        config = getattr(model, "config", None)
        if config is not None and hasattr(config, "to_json_string"):
            h.update(
                (portable_config_json(config) if portable else config.to_json_string(use_diff=False)).encode()
            )
        for name, tensor in sorted(model.state_dict().items()):
            h.update(name.encode() + b"\0" + tensor_checksum(tensor))
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
    """Runs the image processor in the data-loader workers (the image tower's inputs: `inference.families`)."""

    def __init__(self, image_processor: Any) -> None:
        self.image_processor = image_processor

    def __call__(self, images: list[Image.Image]) -> dict[str, torch.Tensor]:
        return image_inputs(self.image_processor, images)


class Embedder:
    """Embeds images and texts with a model that has ``get_image_features`` / ``get_text_features``.

    Embeddings are returned L2-normalised, float32, on the CPU, in input order. Texts are tokenized by the model
    family's rule and images made into the inputs of its own image processor (`inference.families`), so any
    supported family (RS-M-CLIP, CLIP, SigLIP, SigLIP 2, AltCLIP), and its ONNX or int8 encoder, embeds as its
    own forward pass does.

    Args:
        model: e.g. an `RSMCLIPModel`; its ``pooler_output`` is the projected embedding.
        processor: the model's processor, with ``image_processor`` and ``tokenizer``.
        device: where to run; ``None`` keeps the model where it is.
        batch_size: images or texts per forward pass.
        num_workers: data-loader worker processes for image decoding and preprocessing (``None``:
            `default_num_workers()`, so decoding overlaps the model by default; 0 decodes in this process).
        precision: ``"fp32"``, or ``"bf16"``/``"fp16"`` autocast (CUDA).
        cache_dir: embedding cache directory, ``None`` to disable caching.
        max_text_length: tokenizer truncation length (default: the family's, 77 tokens for RS-M-CLIP; a family
            that pads every text to its length, SigLIP, keeps that length).
        model_key: the cache key of the model when the caller has already computed a fingerprint (else
            `model_fingerprint` with the precision and text length).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        processor: Any,
        *,
        device: str | torch.device | None = None,
        batch_size: int = 64,
        num_workers: int | None = None,
        precision: str = "fp32",
        cache_dir: str | os.PathLike | None = None,
        max_text_length: int | None = None,
        show_progress: bool = True,
        model_key: str | None = None,
    ) -> None:
        if precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be fp32, bf16 or fp16, got {precision!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.eval() if hasattr(model, "eval") else model
        if device is not None and hasattr(self.model, "to"):
            self.model.to(device)
        params = getattr(self.model, "parameters", None)
        first = next(iter(params()), None) if callable(params) else None
        self.device = first.device if first is not None else torch.device(device or "cpu")
        self.processor = processor
        self.image_processor = getattr(processor, "image_processor", processor)
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.batch_size = batch_size
        self.num_workers = default_num_workers() if num_workers is None else int(num_workers)
        self.precision = precision
        self.text_rule = text_rule(self.model, max_text_length)
        self.max_text_length = self.text_rule.max_length
        self.show_progress = show_progress
        self.cache = EmbeddingCache(cache_dir)
        self.model_key = model_key or model_fingerprint(
            model, processor, extra=f"{precision}\0{self.max_text_length}"
        )

    def embed_pixels(self, pixel_values: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        """L2-normalised float32 CPU embeddings of a batch of preprocessed images (no cache): a ``pixel_values``
        tensor, or the image processor's inputs (`inference.families.image_inputs`)."""
        with torch.inference_mode(), self._autocast():
            pooled = image_features(self.model, pixel_values, device=self.device)
            return F.normalize(pooled.float(), dim=-1).cpu()

    def embed_texts(self, texts: Sequence[str], desc: str = "embedding texts") -> torch.Tensor:
        """L2-normalised float32 CPU embeddings of ``texts`` in input order (no cache).

        Texts are tokenized once, then batched in order of token length so that each batch pads to nearly its
        own length (dynamic padding wastes little); the rows are put back in input order. The result equals
        embedding them unsorted within float tolerance (padding is masked out of the pooling). A family that pads
        every text to its full length without a mask (SigLIP) gets exactly that (`inference.families.text_rule`).
        """
        texts = list(texts)
        if not texts:
            raise ValueError("no texts to embed")
        ids = self.tokenizer(texts, padding=False, truncation=True, max_length=self.max_text_length)[
            "input_ids"
        ]
        pad_id = pad_token_id(self.tokenizer)
        side = getattr(self.tokenizer, "padding_side", "right")
        order = sorted(range(len(texts)), key=lambda i: len(ids[i]), reverse=True)
        out = torch.empty(0)
        starts = range(0, len(order), self.batch_size)
        with torch.inference_mode(), self._autocast():
            for start in tqdm(starts, desc=desc, unit="batch", disable=not self.show_progress):
                rows = order[start : start + self.batch_size]
                inputs = pad_token_rows(self.text_rule, [ids[i] for i in rows], pad_id, side)
                feats = self.model.get_text_features(
                    **{name: value.to(self.device) for name, value in inputs.items()}
                ).pooler_output
                feats = F.normalize(feats.float(), dim=-1).cpu()
                if out.numel() == 0:
                    out = torch.empty(len(texts), feats.shape[1], dtype=torch.float32)
                out[torch.tensor(rows, dtype=torch.long)] = feats
        return out

    def _autocast(self) -> Any:
        return autocast(self.precision, self.device)

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
        for inputs in tqdm(loader, desc=desc, unit="batch", disable=not self.show_progress):
            chunks.append(self.embed_pixels(inputs))
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
        unique_embeddings = self.embed_texts(unique, desc=desc)
        position = {text: i for i, text in enumerate(unique)}
        embeddings = unique_embeddings[torch.tensor([position[t] for t in texts], dtype=torch.long)]
        self.cache.save(self.model_key, "texts", data_key, embeddings)
        return embeddings
