"""RS-M-CLIP (and CLIP, SigLIP, AltCLIP) embeddings with ONNX Runtime alone: no PyTorch, no transformers.

This file has no import of the `modeling_rsmclip` package (only numpy, onnxruntime, Pillow and, for texts,
`tokenizers`): `rsmclip export --to-onnx` copies it into the export folder as `rsmclip_onnx.py`, so a deployment
needs the folder and `pip install onnxruntime tokenizers pillow numpy`, nothing else:

    from rsmclip_onnx import ONNXRSMCLIP

    model = ONNXRSMCLIP("exported-folder", precision="int8")
    images = model.embed_images([PIL.Image.open("tile.png")])   # (N, D), L2-normalised float32
    texts = model.embed_texts(["a harbour with many boats", "um porto com muitos barcos"])
    scores = images @ texts.T                                    # cosine similarities

The graphs take what the PyTorch model takes and return what it returns: `image_encoder*.onnx` maps
`pixel_values (batch, 3, H, W)` to `image_embeds (batch, D)`, `text_encoder*.onnx` maps
`input_ids, attention_mask (batch, sequence)` (int64; `input_ids` alone for SigLIP, which reads no mask) to
`text_embeds (batch, D)`: projected and un-normalised, like `RSMCLIPModel.get_image_features(...).pooler_output`.
The manifest says how texts are padded (`text`: to the longest, or SigLIP's fixed length) and how zero-shot
scores are made (`scoring`: softmax, or SigLIP's sigmoid with `logit_bias`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

GRAPH_FILES = {
    ("image", "fp32"): "image_encoder.onnx",
    ("text", "fp32"): "text_encoder.onnx",
    ("image", "int8"): "image_encoder.int8.onnx",
    ("text", "int8"): "text_encoder.int8.onnx",
}
MANIFEST_FILE = "onnx_manifest.json"
PRECISIONS = ("fp32", "int8")


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            'ONNX Runtime inference needs onnxruntime: pip install "rsmclip[onnx]" (or pip install onnxruntime)'
        ) from error
    return onnxruntime


def graph_path(folder: str | os.PathLike, tower: str, precision: str = "fp32") -> Path:
    """Path of the `tower` ("image" or "text") graph at `precision` in an export folder."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if tower not in ("image", "text"):
        raise ValueError(f"tower must be 'image' or 'text', got {tower!r}")
    return Path(folder) / GRAPH_FILES[(tower, precision)]


def session_options(threads: int | None = None) -> Any:
    """ONNX Runtime session options: all graph optimisations, `threads` intra-op threads (default: all cores)."""
    ort = _import_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = int(threads)
    return options


def load_session(path: str | os.PathLike, threads: int | None = None, sha256: str | None = None) -> Any:
    """An ONNX Runtime CPU session for one graph. A missing file, a file whose SHA-256 differs from ``sha256`` (the
    one the export recorded) and a graph ONNX Runtime cannot load are errors naming the file."""
    ort = _import_onnxruntime()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"ONNX graph not found: {path} (write the folder with `rsmclip export --to-onnx MODEL OUT_DIR`)"
        )
    if sha256 is not None and file_sha256(path) != sha256:
        raise ValueError(
            f"{path}: its SHA-256 differs from the one recorded in {MANIFEST_FILE} at export: the file is damaged "
            "(export the model again)"
        )
    try:
        return ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
    except Exception as error:  # ONNX Runtime's own classes (InvalidProtobuf, Fail, ...) on a damaged graph
        if not type(error).__module__.startswith("onnxruntime"):
            raise
        message = " ".join(str(error).split())
        raise ValueError(
            f"{path}: ONNX Runtime cannot load the graph ({type(error).__name__}: {message}): the file is damaged "
            "or not an ONNX graph (export the model again)"
        ) from error


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json_file(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON object from a file; a damaged file is a `ValueError` naming it."""
    try:
        value = json.loads(Path(path).read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error}): the file is damaged") from error
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object, found a {type(value).__name__}")
    return value


def l2_normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class ImagePreprocessor:
    """The image processor of `processor_config.json` with Pillow and numpy: CLIP's (resize the shortest side,
    bicubic, then centre crop) or SigLIP's (resize to the exact height and width, bilinear, no crop); then scale to
    [0, 1] and normalise with the mean and std. Inputs are RGB PIL images or HxWx3 uint8 arrays."""

    def __init__(self, config: dict[str, Any]) -> None:
        size = config.get("size") or {}
        crop = config.get("crop_size") or {}
        self.shortest_edge = size.get("shortest_edge")
        # Without a shortest edge the size is exact: SigLIP's {"height", "width"}.
        self.exact = (
            None if self.shortest_edge else (int(size.get("height", 224)), int(size.get("width", 224)))
        )
        self.shortest_edge = int(self.shortest_edge or 0)
        self.do_resize = bool(config.get("do_resize", True))
        self.do_crop = bool(config.get("do_center_crop", self.exact is None)) and bool(crop)
        edge = self.shortest_edge or 224
        self.crop = (int(crop.get("height", edge)), int(crop.get("width", edge)))
        self.resample = int(config.get("resample", 3))
        self.do_rescale = bool(config.get("do_rescale", True))
        self.rescale = float(config.get("rescale_factor", 1 / 255))
        self.do_normalize = bool(config.get("do_normalize", True))
        self.mean = np.asarray(config.get("image_mean", (0.48145466, 0.4578275, 0.40821073)), np.float32)
        self.std = np.asarray(config.get("image_std", (0.26862954, 0.26130258, 0.27577711)), np.float32)

    def one(self, image: Any) -> np.ndarray:
        from PIL import Image

        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"expected an HxWx3 uint8 array, got {image.dtype} {image.shape}")
            image = Image.fromarray(image)
        if image.mode != "RGB":
            image = image.convert("RGB")
        if self.do_resize and self.exact is not None:
            image = image.resize((self.exact[1], self.exact[0]), resample=self.resample)
        elif self.do_resize:
            width, height = image.size
            scale = self.shortest_edge / min(width, height)
            new_w = max(self.shortest_edge, int(round(width * scale)))
            new_h = max(self.shortest_edge, int(round(height * scale)))
            image = image.resize((new_w, new_h), resample=self.resample)
        if self.do_crop:
            width, height = image.size
            crop_h, crop_w = self.crop
            top, left = max(0, (height - crop_h) // 2), max(0, (width - crop_w) // 2)
            image = image.crop((left, top, left + crop_w, top + crop_h))
        array = np.asarray(image, dtype=np.float32)
        if self.do_rescale:
            array = array * self.rescale
        if self.do_normalize:
            array = (array - self.mean) / self.std
        return array.transpose(2, 0, 1)

    def __call__(self, images: Sequence[Any]) -> np.ndarray:
        return np.stack([self.one(image) for image in images]).astype(np.float32, copy=False)


class TextTokenizer:
    """The export folder's `tokenizer.json` with truncation at `max_length` and padding to the longest text, or to
    `max_length` with `fixed_length` (SigLIP), with the pad token of the export's manifest (XLM-R's `<pad>` by
    default)."""

    def __init__(
        self,
        folder: str | os.PathLike,
        max_length: int = 77,
        pad_token: str = "<pad>",
        pad_id: int | None = None,
        fixed_length: bool = False,
        padding_side: str = "right",
    ) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError as error:  # pragma: no cover - depends on the environment
            raise ImportError(
                "text embedding needs the tokenizers package: pip install tokenizers"
            ) from error
        path = Path(folder) / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"tokenizer file not found: {path} (a SentencePiece tokenizer such as SigLIP's has none: tokenize "
                "with transformers' AutoTokenizer from this folder and call encode_text(input_ids))"
            )
        try:
            self.tokenizer = Tokenizer.from_file(str(path))
        except Exception as error:  # the Rust library raises plain exceptions on a damaged file
            raise ValueError(f"{path}: not a readable tokenizer ({error}): the file is damaged") from error
        found = self.tokenizer.token_to_id(pad_token)
        self.pad_id = pad_id if pad_id is not None else (1 if found is None else found)
        self.tokenizer.enable_truncation(max_length=max_length)
        self.tokenizer.enable_padding(
            pad_id=self.pad_id,
            pad_token=pad_token,
            length=max_length if fixed_length else None,
            direction=padding_side,
        )

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"text {i} is empty or not a string: {text!r}")
        encodings = self.tokenizer.encode_batch(list(texts))
        ids = np.asarray([e.ids for e in encodings], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in encodings], dtype=np.int64)
        return ids, mask


class ONNXRSMCLIP:
    """The two RS-M-CLIP towers as ONNX Runtime sessions, loaded from an `rsmclip export --to-onnx` folder.

    Args:
        folder: the export folder.
        precision: "fp32" (the exported graphs) or "int8" (their dynamically quantised variants).
        threads: ONNX Runtime intra-op threads (default: all cores).
        towers: which towers to load ("image", "text").
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        precision: str = "fp32",
        threads: int | None = None,
        towers: Sequence[str] = ("image", "text"),
    ) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"ONNX export folder not found: {self.folder}")
        self.precision = precision
        manifest_path = self.folder / MANIFEST_FILE
        self.manifest: dict[str, Any] = read_json_file(manifest_path) if manifest_path.is_file() else {}
        recorded = self.manifest.get("files") or {}
        self.sessions = {}
        for tower in towers:
            path = graph_path(self.folder, tower, precision)
            self.sessions[tower] = load_session(path, threads, sha256=recorded.get(path.name))
        self._preprocessor: ImagePreprocessor | None = None
        self._tokenizer: TextTokenizer | None = None

    @property
    def logit_scale(self) -> float | None:
        """The model's trained inverse temperature (`exp(logit_scale)`), for zero-shot probabilities
        `softmax(logit_scale * image_embeds @ class_embeds.T)`; None in exports that do not record it."""
        value = self.manifest.get("logit_scale")
        return None if value is None else float(value)

    @property
    def logit_bias(self) -> float | None:
        """SigLIP's bias: its zero-shot probabilities are `sigmoid(logit_scale * cos + logit_bias)`, each label on
        its own (`scoring` "sigmoid" in the manifest); None for the softmax models."""
        value = self.manifest.get("logit_bias")
        return None if value is None else float(value)

    def zero_shot_probabilities(self, image_embeds: np.ndarray, class_embeds: np.ndarray) -> np.ndarray:
        """Zero-shot probabilities of L2-normalised embeddings by the model's rule (the manifest's `scoring`):
        softmax over the classes, or SigLIP's sigmoid per class."""
        scale = self.logit_scale if self.logit_scale is not None else 100.0
        logits = scale * (np.asarray(image_embeds, np.float64) @ np.asarray(class_embeds, np.float64).T)
        if self.manifest.get("scoring") == "sigmoid":
            return 0.5 * (1.0 + np.tanh(0.5 * (logits + (self.logit_bias or 0.0))))
        exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return exp / exp.sum(axis=-1, keepdims=True)

    # -------------------------------------------------------------------------------------------- raw graphs
    def encode_image(self, pixel_values: np.ndarray) -> np.ndarray:
        """Projected, un-normalised image embeddings `(batch, D)` of preprocessed `pixel_values`."""
        if "image" not in self.sessions:
            raise ValueError("the image tower was not loaded (towers=...)")
        pixel_values = np.ascontiguousarray(pixel_values, dtype=np.float32)
        return self.sessions["image"].run(None, {"pixel_values": pixel_values})[0]

    def encode_text(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
        """Projected, un-normalised text embeddings `(batch, D)` of token ids (mean over unmasked tokens)."""
        if "text" not in self.sessions:
            raise ValueError("the text tower was not loaded (towers=...)")
        session = self.sessions["text"]
        input_ids = np.ascontiguousarray(input_ids, dtype=np.int64)
        feeds = {"input_ids": input_ids}
        if "attention_mask" in {node.name for node in session.get_inputs()}:
            if attention_mask is None:
                attention_mask = (input_ids != int(self.manifest.get("pad_token_id", 1))).astype(np.int64)
            feeds["attention_mask"] = np.ascontiguousarray(attention_mask, dtype=np.int64)
        return session.run(None, feeds)[0]

    # ------------------------------------------------------------------------------------ images and texts
    @property
    def preprocessor(self) -> ImagePreprocessor:
        if self._preprocessor is None:
            path = self.folder / "processor_config.json"
            if not path.is_file():
                raise FileNotFoundError(f"processor file not found: {path}")
            config = read_json_file(path)
            self._preprocessor = ImagePreprocessor(config.get("image_processor", config))
        return self._preprocessor

    @property
    def tokenizer(self) -> TextTokenizer:
        if self._tokenizer is None:
            text = self.manifest.get("text") or {}  # absent in RS-M-CLIP exports made before it was recorded
            self._tokenizer = TextTokenizer(
                self.folder,
                int(self.manifest.get("max_text_length", 77)),
                pad_token=text.get("pad_token", "<pad>"),
                pad_id=self.manifest.get("pad_token_id"),
                fixed_length=text.get("padding") == "max_length",
                padding_side=text.get("padding_side", "right"),
            )
        return self._tokenizer

    def embed_images(self, images: Sequence[Any], batch_size: int = 32) -> np.ndarray:
        """L2-normalised embeddings `(N, D)` of RGB PIL images or HxWx3 uint8 arrays."""
        if not len(images):
            raise ValueError("no images to embed")
        chunks = [
            self.encode_image(self.preprocessor(images[start : start + batch_size]))
            for start in range(0, len(images), batch_size)
        ]
        return l2_normalize(np.concatenate(chunks))

    def embed_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """L2-normalised embeddings `(N, D)` of texts (batched in order of length, returned in input order)."""
        texts = list(texts)
        if not texts:
            raise ValueError("no texts to embed")
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), 0), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            embeds = self.encode_text(*self.tokenizer([texts[i] for i in index]))
            if out.shape[1] == 0:
                out = np.empty((len(texts), embeds.shape[1]), dtype=np.float32)
            out[index] = embeds
        return l2_normalize(out)


__all__ = ["GRAPH_FILES", "ONNXRSMCLIP", "ImagePreprocessor", "TextTokenizer", "graph_path", "load_session"]
