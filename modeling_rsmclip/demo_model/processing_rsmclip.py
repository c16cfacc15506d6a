"""Image processor and processor of RS-M-CLIP.

`RSMCLIPImageProcessor` is CLIP's image processor (resize shortest side, center crop, OpenAI CLIP mean/std) that
first turns any remote-sensing input into correct 8-bit RGB: PIL images of every mode (1, L, LA, P, RGBA, I;16, I,
F, CMYK, ...), TIFF or other image files given by path, numpy arrays `HxW`, `HxWxC` or `CxHxW` of any integer or
float type, and torch tensors. `RSMCLIPProcessor` pairs it with the text tower's tokenizer (truncation at 77 tokens):
the XLM-RoBERTa tokenizer (`RSMCLIPTokenizer`), or for a CLIP text tower OpenAI CLIP's byte-level BPE tokenizer
(`RSMCLIPBPETokenizer`, transformers' `CLIPTokenizer` giving the ids of `open_clip.tokenize`).

Image files are decoded in one place, `load_image_file` (PIL, with one decompression-bomb limit,
`DEFAULT_MAX_IMAGE_PIXELS`, settable with `$RSMCLIP_MAX_IMAGE_PIXELS`; every error names the file), and every input is turned into RGB in one place, `to_rgb` / `array_to_rgb`, by the rules documented on
`array_to_rgb` (and in README's "Image inputs"): nothing is clipped, scaled or reordered by a guess without a
warning, and inputs no rule fits are refused with an error that names the value.

This file travels to the Hub with the model (``trust_remote_code``): it imports only transformers, numpy and PIL.
"""

from __future__ import annotations

import html
import os
import re
import threading
import unicodedata
import warnings
from typing import IO, Any

import numpy as np
import PIL.Image
import PIL.ImageOps
from transformers import CLIPImageProcessor, CLIPTokenizer, ProcessorMixin, XLMRobertaTokenizer
from transformers.processing_utils import ImagesKwargs

CONTEXT_LENGTH = 77
INTENSITY_SCALINGS = ("dtype", "minmax")
CHANNEL_FORMATS = ("channels_last", "channels_first")
# An axis of at most this many entries may be a band axis; a smaller one is taken as bands only without a rival.
MAX_AUTO_BANDS = 16


class RSMCLIPImagesKwargs(ImagesKwargs, total=False):
    r"""
    bands (`list[int]`, *optional*):
        For arrays with more than 3 bands (e.g. Sentinel-2, RGB+NIR): the indices of the bands to use as red, green
        and blue, e.g. `[3, 2, 1]`. Without it such an array is an error.
    intensity_scaling (`str`, *optional*, defaults to `"dtype"`):
        How data other than 8-bit becomes 8-bit. `"dtype"`: by fixed rules on the type and range (see
        `array_to_rgb`). `"minmax"`: stretch each image's own minimum..maximum to 0..255 (12-bit sensors stored in
        16 bits, negative or unbounded values).
    """

    bands: list[int] | None
    intensity_scaling: str | None


def _prefix(name: str | None) -> str:
    return f"{name}: " if name else ""


def _scale_to_uint8(array: np.ndarray, intensity_scaling: str, name: str | None = None) -> np.ndarray:
    """Map an array of any numeric dtype to uint8 by the rules of `array_to_rgb`."""
    if intensity_scaling not in INTENSITY_SCALINGS:
        raise ValueError(f"intensity_scaling must be one of {INTENSITY_SCALINGS}, got {intensity_scaling!r}")
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"{_prefix(name)}image arrays must hold integers or floats, got dtype {array.dtype}")
    data = array.astype(np.float64)
    finite = np.isfinite(data)
    n_bad = int(data.size - np.count_nonzero(finite))
    if n_bad == data.size:
        raise ValueError(
            f"{_prefix(name)}the image has no finite values (all {data.size} are NaN or infinite)"
        )
    if n_bad:
        warnings.warn(
            f"{_prefix(name)}{n_bad} NaN/infinite value(s) of {data.size} are shown as 0 (black); mask or fill "
            f"them yourself (e.g. np.nan_to_num(x, nan=...)) to choose another value",
            UserWarning,
            stacklevel=4,
        )
    values = data[finite]
    low, high = float(values.min()), float(values.max())
    if intensity_scaling == "minmax":
        scaled = (data - low) / (high - low) * 255.0 if high > low else np.zeros_like(data)
    elif array.dtype == np.uint16:
        scaled = data / 65535.0 * 255.0
    elif np.issubdtype(array.dtype, np.integer):
        if low < 0:
            raise ValueError(
                f"{_prefix(name)}integer image has negative values (minimum {low:g}); no fixed rule maps them to "
                f"colours: pass intensity_scaling='minmax' to stretch its range, or rescale it yourself"
            )
        if high <= 255:
            scaled = data  # 8-bit values in a wider integer type
        elif high <= 65535:
            warnings.warn(
                f"{_prefix(name)}{array.dtype} image with values up to {high:g} is read as 16-bit data (/65535); "
                f"pass a uint16 array to say so, or intensity_scaling='minmax' to stretch its range",
                UserWarning,
                stacklevel=4,
            )
            scaled = data / 65535.0 * 255.0
        else:
            raise ValueError(
                f"{_prefix(name)}{array.dtype} image has values up to {high:g}, beyond 16 bits; pass "
                f"intensity_scaling='minmax' to stretch its range, or rescale it yourself"
            )
    else:
        if low < 0:
            raise ValueError(
                f"{_prefix(name)}float image has negative values (minimum {low:g}); no fixed rule maps them to "
                f"colours: pass intensity_scaling='minmax' to stretch its range, or clip/rescale it yourself"
            )
        if high <= 1.0:
            scaled = data * 255.0
        elif high <= 2.0:
            n_over = int(np.count_nonzero(values > 1.0))
            warnings.warn(
                f"{_prefix(name)}float image with maximum {high:g} is read as [0, 1] data (e.g. reflectance): "
                f"{n_over} value(s) above 1 are clipped to white; pass intensity_scaling='minmax' to stretch "
                f"instead, or divide by 255 yourself if it is 0..255 data",
                UserWarning,
                stacklevel=4,
            )
            scaled = data * 255.0
        elif high <= 255.0:
            scaled = data  # 0..255 data stored as floats
        else:
            raise ValueError(
                f"{_prefix(name)}float image has values up to {high:g}, above 255: it is neither [0, 1] nor "
                f"[0, 255] data; pass intensity_scaling='minmax' to stretch its range, or rescale it yourself"
            )
    scaled = np.where(finite, scaled, 0.0)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _array_to_hwc(
    array: np.ndarray, input_data_format: str | None = None, name: str | None = None
) -> np.ndarray:
    """Bring an array into `HxWxC` layout (see `array_to_rgb` for how the band axis is found)."""
    if array.ndim == 2:
        return array[:, :, None]
    if array.ndim != 3:
        raise ValueError(
            f"{_prefix(name)}an image array must have 2 or 3 dimensions (HxW, HxWxC or CxHxW), got shape "
            f"{array.shape}"
        )
    fmt = getattr(input_data_format, "value", input_data_format)
    if fmt is not None:
        if fmt not in CHANNEL_FORMATS:
            raise ValueError(f"input_data_format must be one of {CHANNEL_FORMATS}, got {input_data_format!r}")
        return array if fmt == "channels_last" else np.moveaxis(array, 0, -1)
    first, last = array.shape[0], array.shape[-1]
    first_ok, last_ok = first <= MAX_AUTO_BANDS, last <= MAX_AUTO_BANDS
    if first_ok and last_ok:
        # Both ends could be bands: a usual band count (1-4) against an unusual one decides, nothing else does.
        first_ok, last_ok = first <= 4 < last, last <= 4 < first
    if last_ok and not first_ok:
        return array
    if first_ok and not last_ok:
        return np.moveaxis(array, 0, -1)
    raise ValueError(
        f"{_prefix(name)}cannot tell which axis of an image array of shape {array.shape} holds the bands: pass "
        f"input_data_format='channels_last' (HxWxC) or 'channels_first' (CxHxW)"
    )


def array_to_rgb(
    array: np.ndarray,
    bands: list[int] | None = None,
    intensity_scaling: str = "dtype",
    input_data_format: str | None = None,
    name: str | None = None,
) -> np.ndarray:
    """Turn a numpy image (`HxW`, `HxWxC` or `CxHxW`; any integer or float type) into `HxWx3` uint8 RGB.

    Bands: 1 band is repeated to grey RGB, 2 bands are grey + alpha (alpha dropped), 3 are RGB, more are refused
    unless `bands` names the three to use (a 4th band is as often near-infrared as alpha).

    Band axis (without `input_data_format`): the end axis with at most 16 entries when only one has; when both do,
    the one with 1-4 entries when the other has more; otherwise the array is refused as ambiguous.

    Values with `intensity_scaling="dtype"` (the default), one rule each:
    - uint8 as is; bool as 0/255; uint16 scaled by 65535.
    - other integer types: 0..255 kept as 8-bit values; 256..65535 read as 16-bit (/65535) with a warning;
      negative values or values above 65535 refused.
    - floats: maximum <= 1 read as [0, 1]; maximum in (1, 2] read as [0, 1] with the values above 1 clipped, with a
      warning; maximum in (2, 255] read as [0, 255]; negative values or a maximum above 255 refused.
    - NaN/inf (floats): shown as 0 (black) with a warning that counts them (also with "minmax").
    `intensity_scaling="minmax"` stretches the image's own finite minimum..maximum to 0..255 instead.

    `name` (e.g. the file name) prefixes every error and warning.
    """
    array = np.asarray(array)
    hwc = _array_to_hwc(array, input_data_format, name)
    if hwc.shape[0] == 0 or hwc.shape[1] == 0 or hwc.shape[2] == 0:
        raise ValueError(f"{_prefix(name)}the image is empty (shape {tuple(array.shape)})")
    n_bands = hwc.shape[-1]
    if bands is not None:
        bands = list(bands)
        if len(bands) != 3 or any(not isinstance(b, int | np.integer) or not 0 <= b < n_bands for b in bands):
            raise ValueError(
                f"{_prefix(name)}bands must be 3 indices into the {n_bands} bands of the image, got {bands}"
            )
        hwc = hwc[:, :, bands]
    elif n_bands == 1:
        hwc = np.repeat(hwc, 3, axis=-1)
    elif n_bands == 2:
        hwc = np.repeat(hwc[:, :, :1], 3, axis=-1)
    elif n_bands > 3:
        raise ValueError(
            f"{_prefix(name)}the image has {n_bands} bands (shape {tuple(array.shape)}); RS-M-CLIP sees RGB. "
            f"Choose three bands as red, green, blue with `bands=[r, g, b]` (e.g. `processor(images=x, "
            f"bands=[3, 2, 1])` for Sentinel-2 B4/B3/B2 in band order B1..), or pass `x[..., :3]` for RGBA."
        )
    return np.array(_scale_to_uint8(hwc, intensity_scaling, name), copy=True, order="C")


_HIGH_DEPTH_MODES = ("I", "F", "I;16", "I;16L", "I;16B", "I;16N", "I;32", "I;32L", "I;32B")


def pil_to_rgb(
    image: PIL.Image.Image, intensity_scaling: str = "dtype", name: str | None = None
) -> np.ndarray:
    """Turn a PIL image of any mode into `HxWx3` uint8 RGB.

    16-bit (`I;16*`) and 32-bit integer (`I`) images are scaled as 16-bit data (PIL stores 16-bit PNG and TIFF in
    these modes; 32-bit values outside 0..65535 are refused); float (`F`) images follow the float rules of
    `array_to_rgb`. Alpha is dropped (colours are kept, not blended), palettes are expanded, CMYK/YCbCr/LAB/HSV
    are converted by PIL.
    """
    mode = image.mode
    if mode in _HIGH_DEPTH_MODES:
        array = np.asarray(image)
        if mode != "F":
            if (
                array.size
                and (int(array.min()) < 0 or int(array.max()) > 65535)
                and intensity_scaling == "dtype"
            ):
                raise ValueError(
                    f"{_prefix(name)}{mode} image has values {int(array.min())}..{int(array.max())}, outside "
                    f"16 bits; pass intensity_scaling='minmax' to stretch its range"
                )
            if intensity_scaling == "dtype":
                array = array.astype(np.uint16)
        return array_to_rgb(array, intensity_scaling=intensity_scaling, name=name)
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if mode != "RGB":
        image = image.convert("RGB")
    return np.array(image)


# The decompression-bomb guard: an image file whose header claims more pixels (width x height) than this is refused
# before any pixel is decoded. 178,956,970 (about 179 megapixels, e.g. 13,377 x 13,377) is where PIL itself refuses
# (twice its `MAX_IMAGE_PIXELS`); set `RSMCLIP_MAX_IMAGE_PIXELS` (a number, or "none" for no limit) or pass
# `load_image_file(..., max_pixels=...)` to change it. Larger scenes are better read by windows (rasterio).
DEFAULT_MAX_IMAGE_PIXELS = 178_956_970
MAX_IMAGE_PIXELS_ENV = "RSMCLIP_MAX_IMAGE_PIXELS"
_PIL_GUARD_LOCK = threading.Lock()


def max_image_pixels(max_pixels: int | None = None) -> int | None:
    """The pixel limit of `load_image_file`: ``max_pixels`` when given, else ``$RSMCLIP_MAX_IMAGE_PIXELS``, else
    `DEFAULT_MAX_IMAGE_PIXELS`. None means no limit (the variable set to ``none``)."""
    if max_pixels is not None:
        value: Any = max_pixels
        where = "max_pixels"
    else:
        value = os.environ.get(MAX_IMAGE_PIXELS_ENV, "").strip()
        where = f"${MAX_IMAGE_PIXELS_ENV}"
        if not value:
            return DEFAULT_MAX_IMAGE_PIXELS
        if value.lower() in ("none", "off", "unlimited"):
            return None
    try:
        limit = int(str(value).replace("_", "").replace(",", ""))
    except ValueError:
        raise ValueError(f"{where} must be a number of pixels or 'none', got {value!r}") from None
    if limit < 1:
        raise ValueError(f"{where} must be at least 1 pixel, got {value!r}")
    return limit


def load_image_file(path: str | os.PathLike | IO[bytes], max_pixels: int | None = None) -> PIL.Image.Image:
    """Open an image file (TIFF included) without reducing its bit depth; EXIF orientation applied.

    The one decoder of image files in this project. An image whose header claims more than `max_image_pixels()`
    pixels (178,956,970 by default; ``max_pixels`` or ``$RSMCLIP_MAX_IMAGE_PIXELS`` change it) is refused before
    any pixel is decoded, with a `ValueError` naming the file, its size and how to raise the limit. A missing path
    raises FileNotFoundError; anything else that cannot be decoded raises ValueError; both name the file.
    `path` may also be a binary file object (e.g. `io.BytesIO` of a dataset row's bytes), decoded the same way.
    """
    limit = max_image_pixels(max_pixels)
    if hasattr(path, "read") and hasattr(path, "seek"):
        path_name = getattr(path, "name", None)
        path_name = path_name if isinstance(path_name, str) else "<in-memory image>"
    elif not isinstance(path, str | os.PathLike):
        raise TypeError(f"an image path must be a str or os.PathLike, got {type(path).__name__}")
    elif not os.path.exists(path):
        raise FileNotFoundError(f"image file not found: {path}")
    elif os.path.isdir(path):
        raise ValueError(f"cannot read image file {path}: it is a directory")
    else:
        path_name = str(path)
    try:
        # PIL's own guard (two limits, a global setting) is replaced by the one limit above: it is off only while
        # the header is read, under a lock, so another thread's PIL.Image.open keeps it.
        with _PIL_GUARD_LOCK:
            saved = PIL.Image.MAX_IMAGE_PIXELS
            PIL.Image.MAX_IMAGE_PIXELS = None
            try:
                image = PIL.Image.open(path)
            finally:
                PIL.Image.MAX_IMAGE_PIXELS = saved
        width, height = image.size
        if limit is not None and width * height > limit:
            image.close()
            raise _PixelLimitError(
                f"cannot read image file {path_name}: {width} x {height} = {width * height:,} pixels, more than the "
                f"limit of {limit:,} (a guard against decompression bombs). If the file is trusted, raise the "
                f"limit: {MAX_IMAGE_PIXELS_ENV}={width * height} (or load_image_file(..., max_pixels=...)); or read "
                "it by windows (GeoTIFF: rsmclip map / index with --tile-size)"
            )
        image.load()
        return PIL.ImageOps.exif_transpose(image)
    except _PixelLimitError as error:
        raise ValueError(str(error)) from None
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path_name}") from None
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ... on bad files
        raise ValueError(f"cannot read image file {path_name}: {type(error).__name__}: {error}") from error


class _PixelLimitError(Exception):
    """An image over the pixel limit (raised as a `ValueError` by `load_image_file`)."""


def _is_torch_tensor(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def to_rgb(
    image: Any,
    bands: list[int] | None = None,
    intensity_scaling: str = "dtype",
    input_data_format: str | None = None,
) -> np.ndarray:
    """Any supported image input -> `HxWx3` uint8 numpy RGB.

    A `str` or `os.PathLike` is an image file (or an http(s) URL), decoded by `load_image_file`; PIL images,
    numpy arrays and torch tensors are converted by `pil_to_rgb` / `array_to_rgb`. Errors about a file name it.
    """
    name = None
    if isinstance(image, str | os.PathLike):
        name = str(image)
        if name.startswith(("http://", "https://")):
            from transformers.image_utils import load_image

            image = load_image(name)
        else:
            image = load_image_file(image)
    try:
        if isinstance(image, PIL.Image.Image):
            if bands is not None:
                return array_to_rgb(np.asarray(image), bands, intensity_scaling, "channels_last", name)
            return pil_to_rgb(image, intensity_scaling=intensity_scaling, name=name)
        if _is_torch_tensor(image):
            image = image.detach().cpu().float().numpy() if image.is_floating_point() else image.cpu().numpy()
        if isinstance(image, np.ndarray):
            return array_to_rgb(image, bands, intensity_scaling, input_data_format, name)
    except ValueError as error:
        if name is not None and name not in str(error):
            raise ValueError(f"{name}: {error}") from error
        raise
    raise TypeError(
        f"unsupported image input of type {type(image).__name__}: give a PIL image, a numpy array, a torch tensor "
        f"or a file path"
    )


def _flatten_images(images: Any) -> list[Any]:
    """A single image, a list, a nested list, or a 4-D batch array/tensor -> a flat list of single images."""
    items = list(images) if isinstance(images, list | tuple) else [images]
    flat: list[Any] = []
    for item in items:
        if isinstance(item, list | tuple):
            flat.extend(_flatten_images(item))
        elif (isinstance(item, np.ndarray) or _is_torch_tensor(item)) and item.ndim == 4:
            flat.extend(list(item))
        else:
            flat.append(item)
    return flat


class RSMCLIPImageProcessor(CLIPImageProcessor):
    """CLIP image processing, after turning any remote-sensing image input into 8-bit RGB (see module doc)."""

    valid_kwargs = RSMCLIPImagesKwargs
    bands = None
    intensity_scaling = "dtype"
    _input_format = None

    def fetch_images(self, image_url_or_urls: Any) -> Any:
        # Paths stay paths here: they are decoded in `_prepare_images_structure` by `to_rgb` (PIL, bit depth kept,
        # decompression-bomb guard, `bands` applied), never by the backend's own decoder.
        return image_url_or_urls

    def _prepare_images_structure(self, images: Any, expected_ndims: int = 3) -> list[Any]:
        if images is None or (isinstance(images, list | tuple) and len(images) == 0):
            raise ValueError("no images given: pass at least one image")
        converted = [
            to_rgb(item, self.bands, self.intensity_scaling, self._input_format)
            for item in _flatten_images(images)
        ]
        return super()._prepare_images_structure(converted, expected_ndims=expected_ndims)

    def preprocess(self, images: Any, *args: Any, **kwargs: Any):
        # `bands` / `intensity_scaling` / `input_data_format` given per call apply to this call only; the converted
        # images are always HxWx3 uint8.
        bands = kwargs.pop("bands", None)
        scaling = kwargs.pop("intensity_scaling", None)
        input_format = kwargs.pop("input_data_format", None)
        saved = (self.bands, self.intensity_scaling, self._input_format)
        try:
            if bands is not None:
                self.bands = bands
            if scaling is not None:
                self.intensity_scaling = scaling
            self._input_format = input_format
            return super().preprocess(images, *args, input_data_format="channels_last", **kwargs)
        finally:
            self.bands, self.intensity_scaling, self._input_format = saved


def check_texts(text: Any) -> None:
    """Refuse an empty batch, a text that is not a string, or an empty text, with a ValueError that says which."""
    if text is None:
        return
    texts = [text] if isinstance(text, str) else list(text)
    if not texts:
        raise ValueError(
            "no texts given (an empty list of texts or candidate labels?): pass at least one text"
        )
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"text {i} is not a string ({t!r}): every text must be a non-empty string")
        if not t.strip():
            raise ValueError(f"text {i} is empty ({t!r}): every text needs content")


def _as_id_rows(ids: Any) -> list[list[int]]:
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    if ids and isinstance(ids[0], int):
        return [ids]
    return [list(row) for row in ids]


def _empty_token_ids(tokenizer: Any) -> set[int]:
    """Ids that carry no content: the special tokens (`<unk>` included) and the bare word boundary `\u2581`."""
    empty_ids = set(tokenizer.all_special_ids)
    boundary = tokenizer.convert_tokens_to_ids("\u2581")
    if isinstance(boundary, int) and boundary != tokenizer.unk_token_id:
        empty_ids.add(boundary)
    return empty_ids


class RSMCLIPTokenizer(XLMRobertaTokenizer):
    """The XLM-RoBERTa tokenizer with clear errors for what XLM-RoBERTa would encode silently. Ids are exactly
    XLM-RoBERTa's.

    - An empty batch or an empty text is refused (nothing to pool, nothing to encode).
    - A text whose tokens are all special, unknown (`<unk>`) or bare word boundaries (e.g. zero-width spaces, or
      characters absent from the vocabulary) gets a warning naming it: its embedding carries no content.
    - Loading from a folder without tokenizer files is refused (XLM-RoBERTa would build a 5-token vocabulary that
      turns every text into `<unk>`).
    """

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any):
        tokenizer = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        if len(tokenizer) <= len(set(tokenizer.all_special_tokens)):
            raise FileNotFoundError(
                f"no tokenizer files in {pretrained_model_name_or_path}: the loaded vocabulary has only its "
                f"{len(tokenizer)} special tokens, so every text would become <unk>. Save the tokenizer with the "
                f"model (processor.save_pretrained(folder)) or copy tokenizer.json / sentencepiece.bpe.model there"
            )
        return tokenizer

    def content_free(self, texts: list[str], ids: Any) -> list[int]:
        """Indices of the texts whose token ids (with or without special tokens) hold no content token."""
        empty_ids = _empty_token_ids(self)
        rows = _as_id_rows(ids)
        if len(rows) != len(texts):
            return []
        return [i for i, row in enumerate(rows) if all(token in empty_ids for token in row)]

    def __call__(self, text: Any = None, *args: Any, **kwargs: Any):
        check_texts(text)
        encoding = super().__call__(text, *args, **kwargs)
        if text is not None and "input_ids" in encoding:
            texts = [text] if isinstance(text, str) else list(text)
            bad = self.content_free(texts, encoding["input_ids"])
            if bad:
                shown = ", ".join(f"{i}: {texts[i]!r}" for i in bad[:5]) + (" ..." if len(bad) > 5 else "")
                warnings.warn(
                    f"{len(bad)} text(s) have no content the tokenizer knows (only unknown characters, zero-width "
                    f"or blank characters): {shown}. Their embeddings carry no meaning.",
                    UserWarning,
                    stacklevel=2,
                )
        return encoding


# ----------------------------------------------------------------------------------- CLIP's byte-level BPE texts
# OpenCLIP cleans every text before its BPE (open_clip.tokenizer: ftfy.fix_text, html.unescape twice, whitespace
# collapsed, lower case). The table-driven fixes of ftfy.fix_text are reproduced here, in ftfy's order; its repair
# of mojibake (text decoded with the wrong codec, e.g. "cafÃ©") is heuristic and is not.
_LATIN_LIGATURES = str.maketrans(
    {
        "\u0132": "IJ",
        "\u0133": "ij",
        "\u0149": "\u02bcn",
        "\u01f1": "DZ",
        "\u01f2": "Dz",
        "\u01f3": "dz",
        "\u01c4": "D\u017d",
        "\u01c5": "D\u017e",
        "\u01c6": "d\u017e",
        "\u01c7": "LJ",
        "\u01c8": "Lj",
        "\u01c9": "lj",
        "\u01ca": "NJ",
        "\u01cb": "Nj",
        "\u01cc": "nj",
        "\ufb00": "ff",
        "\ufb01": "fi",
        "\ufb02": "fl",
        "\ufb03": "ffi",
        "\ufb04": "ffl",
        "\ufb05": "\u017ft",
        "\ufb06": "st",
    }
)
# Full-width and half-width forms to their usual width (and the ideographic space to a space), as ftfy does.
_WIDTH_MAP = {0x3000: " "}
_WIDTH_MAP.update(
    (code, unicodedata.normalize("NFKC", chr(code)))
    for code in range(0xFF01, 0xFFF0)
    if unicodedata.normalize("NFKC", chr(code)) != chr(code)
)
# Control characters that ftfy removes (not tab, line feed, form feed or carriage return).
_CONTROL_CHARS = dict.fromkeys(
    [
        *range(0x00, 0x09),
        0x0B,
        *range(0x0E, 0x20),
        0x7F,
        *range(0x206A, 0x2070),
        0xFEFF,
        *range(0xFFF9, 0xFFFD),
    ]
)
_SINGLE_QUOTES = re.compile("[\u02bc\u2018-\u201b]")
_DOUBLE_QUOTES = re.compile("[\u201c-\u201f]")
_HTML_ENTITY = re.compile(r"&#?[0-9A-Za-z]{1,24};")
_C1_CONTROL = re.compile(r"[\x80-\x9f]")
_TERMINAL_ESCAPE = re.compile("\033\\[((?:\\d|;)*)([a-zA-Z])")


def _c1_to_windows_1252(match: re.Match) -> str:
    try:
        return bytes([ord(match.group())]).decode("cp1252")
    except UnicodeDecodeError:  # the five bytes Windows-1252 leaves undefined stay as they are
        return match.group()


def clean_clip_text(text: str) -> str:
    """A text as OpenCLIP's tokenizer sees it before its BPE: ftfy's fixes (HTML entities when the text has no
    "<", Windows-1252 C1 controls, Latin ligatures, full/half-width forms, curly quotes, terminal escapes, control
    characters, NFC), then `html.unescape` twice, whitespace runs collapsed to one space, stripped, lower-cased."""
    unescape = "<" not in text
    while True:
        before = text
        if unescape:
            text = _HTML_ENTITY.sub(lambda m: html.unescape(m.group()), text)
        text = _C1_CONTROL.sub(_c1_to_windows_1252, text)
        text = text.translate(_LATIN_LIGATURES).translate(_WIDTH_MAP)
        text = _SINGLE_QUOTES.sub("'", _DOUBLE_QUOTES.sub('"', text))
        text = _TERMINAL_ESCAPE.sub("", text).translate(_CONTROL_CHARS)
        text = unicodedata.normalize("NFC", text)
        if text == before:
            break
    text = html.unescape(html.unescape(text))
    return " ".join(text.split()).lower()


def _clean_clip_texts(texts: Any) -> Any:
    if isinstance(texts, str):
        return clean_clip_text(texts)
    if isinstance(texts, list | tuple) and all(isinstance(t, str) for t in texts):
        return [clean_clip_text(t) for t in texts]
    return texts


class RSMCLIPBPETokenizer(CLIPTokenizer):
    """OpenAI CLIP's byte-level BPE tokenizer (transformers' `CLIPTokenizer`) for a CLIP text tower, giving the ids
    of `open_clip.tokenize`:

    - each text is cleaned as OpenCLIP cleans it (`clean_clip_text`);
    - padding is id 0 (the token "!"), as OpenCLIP pads; the model pools at the end-of-text token, the argmax of the
      ids, so padding never changes an embedding;
    - the strings of special tokens typed inside a text ("!", "<|endoftext|>") are read as text
      (`split_special_tokens=True`), so "!!!" stays an exclamation and not three padding tokens;
    - an empty batch or an empty text is refused.

    Without this class (plain `CLIPTokenizer` loading the same files) the ids differ only on texts that the
    cleaning changes.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("pad_token", "!")
        kwargs.setdefault("split_special_tokens", True)
        kwargs.setdefault("model_max_length", CONTEXT_LENGTH)
        super().__init__(*args, **kwargs)

    def _encode_plus(self, text: Any, text_pair: Any = None, *args: Any, **kwargs: Any):
        if not kwargs.get("is_split_into_words", False):
            text, text_pair = _clean_clip_texts(text), _clean_clip_texts(text_pair)
        return super()._encode_plus(text, text_pair, *args, **kwargs)

    def __call__(self, text: Any = None, *args: Any, **kwargs: Any):
        check_texts(text)
        return super().__call__(text, *args, **kwargs)


def content_free_texts(tokenizer: Any, texts: list[str]) -> list[str]:
    """The texts of `texts` that tokenize to no content token (see `RSMCLIPTokenizer`), for callers that refuse
    them (candidate labels, queries)."""
    check_texts(texts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    empty_ids = _empty_token_ids(tokenizer)
    return [t for t, row in zip(texts, _as_id_rows(ids)) if all(token in empty_ids for token in row)]


class RSMCLIPProcessor(ProcessorMixin):
    """RS-M-CLIP processor: `RSMCLIPImageProcessor` + the text tower's tokenizer (XLM-RoBERTa's `RSMCLIPTokenizer`,
    or `RSMCLIPBPETokenizer` for a CLIP text tower).

    Texts are padded to the longest in the batch and truncated at 77 tokens (the model's context length); an empty
    text is refused, since it has no content tokens to pool.
    """

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, **kwargs: Any) -> None:
        super().__init__(image_processor, tokenizer, **kwargs)

    def __call__(self, images: Any = None, text: Any = None, **kwargs: Any):
        if text is not None:
            check_texts(text)
            kwargs.setdefault("truncation", True)
            kwargs.setdefault("max_length", CONTEXT_LENGTH)
            kwargs.setdefault("padding", True)
        if images is None and text is None:
            raise ValueError("pass `images`, `text`, or both")
        return super().__call__(images=images, text=text, **kwargs)


RSMCLIPImageProcessor.register_for_auto_class("AutoImageProcessor")
RSMCLIPProcessor.register_for_auto_class("AutoProcessor")
RSMCLIPTokenizer.register_for_auto_class("AutoTokenizer")
RSMCLIPBPETokenizer.register_for_auto_class("AutoTokenizer")

__all__ = [
    "RSMCLIPImageProcessor",
    "RSMCLIPProcessor",
    "RSMCLIPTokenizer",
    "RSMCLIPBPETokenizer",
    "clean_clip_text",
    "to_rgb",
    "array_to_rgb",
    "pil_to_rgb",
    "load_image_file",
    "max_image_pixels",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "content_free_texts",
]
