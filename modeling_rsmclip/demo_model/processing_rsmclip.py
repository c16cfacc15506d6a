"""Image processor and processor of RS-M-CLIP.

`RSMCLIPImageProcessor` is CLIP's image processor (resize shortest side, center crop, OpenAI CLIP mean/std) that
first turns any remote-sensing input into correct 8-bit RGB: PIL images of every mode (1, L, LA, P, RGBA, I;16, I,
F, CMYK, ...), TIFF or other image files given by path, and numpy arrays `HxW`, `HxWxC` or `CxHxW` of uint8, uint16
or float. `RSMCLIPProcessor` pairs it with the XLM-RoBERTa tokenizer (truncation at 77 tokens).

This file travels to the Hub with the model (``trust_remote_code``): it imports only transformers, numpy and PIL.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageOps
from transformers import CLIPImageProcessor, ProcessorMixin, XLMRobertaTokenizer
from transformers.processing_utils import ImagesKwargs

CONTEXT_LENGTH = 77
INTENSITY_SCALINGS = ("dtype", "minmax")


class RSMCLIPImagesKwargs(ImagesKwargs, total=False):
    r"""
    bands (`list[int]`, *optional*):
        For arrays with more than 3 bands (e.g. Sentinel-2, RGB+NIR): the indices of the bands to use as red, green
        and blue, e.g. `[3, 2, 1]`. Without it such an array is an error.
    intensity_scaling (`str`, *optional*, defaults to `"dtype"`):
        How 16-bit and float data become 8-bit. `"dtype"`: by the type's range (uint16 / 65535; floats are taken
        as [0, 1] when their maximum is at most 1, else as [0, 255]; then clipped). `"minmax"`: stretch each
        image's own minimum..maximum to 0..255 (useful for 12-bit sensors stored in 16 bits).
    """

    bands: list[int] | None
    intensity_scaling: str | None


def _scale_to_uint8(array: np.ndarray, intensity_scaling: str) -> np.ndarray:
    """Map an array of any numeric dtype to uint8 (see `RSMCLIPImagesKwargs.intensity_scaling`)."""
    if intensity_scaling not in INTENSITY_SCALINGS:
        raise ValueError(f"intensity_scaling must be one of {INTENSITY_SCALINGS}, got {intensity_scaling!r}")
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    data = array.astype(np.float64)
    if not np.isfinite(data).all():
        data = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
    if intensity_scaling == "minmax":
        low, high = float(data.min()), float(data.max())
        scaled = (data - low) / (high - low) * 255.0 if high > low else np.zeros_like(data)
    elif np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        # Signed types are clipped at 0: negative radiances carry no displayable colour.
        scaled = data / info.max * 255.0
    else:
        scaled = data * 255.0 if data.max(initial=0.0) <= 1.0 else data
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _array_to_hwc(array: np.ndarray) -> np.ndarray:
    """Bring an array into `HxWxC` layout (channels-first `CxHxW` is recognised when C is small and H, W are not)."""
    if array.ndim == 2:
        return array[:, :, None]
    if array.ndim != 3:
        raise ValueError(
            f"an image array must have 2 or 3 dimensions (HxW, HxWxC or CxHxW), got shape {array.shape}"
        )
    if array.shape[0] <= 16 and array.shape[-1] > 16:
        return np.moveaxis(array, 0, -1)
    return array


def array_to_rgb(
    array: np.ndarray, bands: list[int] | None = None, intensity_scaling: str = "dtype"
) -> np.ndarray:
    """Turn a numpy image (`HxW`, `HxWxC` or `CxHxW`; uint8, uint16, any int or float) into `HxWx3` uint8 RGB.

    1 band is repeated to grey RGB, 2 bands are grey + alpha (alpha dropped), 3 are RGB, 4 are refused unless
    `bands` says which three to use, because a 4th band is as often near-infrared as alpha.
    """
    hwc = _array_to_hwc(np.asarray(array))
    n_bands = hwc.shape[-1]
    if bands is not None:
        bands = list(bands)
        if len(bands) != 3 or any(not 0 <= b < n_bands for b in bands):
            raise ValueError(f"bands must be 3 indices into the {n_bands} bands of the image, got {bands}")
        hwc = hwc[:, :, bands]
    elif n_bands == 1:
        hwc = np.repeat(hwc, 3, axis=-1)
    elif n_bands == 2:
        hwc = np.repeat(hwc[:, :, :1], 3, axis=-1)
    elif n_bands > 3:
        raise ValueError(
            f"the image has {n_bands} bands (shape {tuple(np.asarray(array).shape)}); RS-M-CLIP sees RGB. Choose "
            f"three bands as red, green, blue with `bands=[r, g, b]` (e.g. `processor(images=x, bands=[3, 2, 1])` "
            f"for Sentinel-2 B4/B3/B2 in band order B1..), or pass `x[..., :3]` for RGBA."
        )
    return np.array(_scale_to_uint8(hwc, intensity_scaling), copy=True, order="C")


_HIGH_DEPTH_MODES = ("I", "F", "I;16", "I;16L", "I;16B", "I;16N", "I;32", "I;32L", "I;32B")


def pil_to_rgb(image: PIL.Image.Image, intensity_scaling: str = "dtype") -> np.ndarray:
    """Turn a PIL image of any mode into `HxWx3` uint8 RGB.

    16-bit (`I;16*`) and 32-bit integer (`I`) images are scaled as 16-bit data (PIL stores 16-bit PNG and TIFF in
    these modes); float (`F`) images as floats. Alpha is dropped (colours are kept, not blended), palettes are
    expanded, CMYK/YCbCr/LAB/HSV are converted by PIL.
    """
    mode = image.mode
    if mode in _HIGH_DEPTH_MODES:
        array = np.asarray(image)
        if mode != "F":
            array = np.clip(array.astype(np.int64), 0, 65535).astype(np.uint16)
        return array_to_rgb(array, intensity_scaling=intensity_scaling)
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if mode != "RGB":
        image = image.convert("RGB")
    return np.array(image)


def load_image_file(path: str | os.PathLike) -> PIL.Image.Image:
    """Open an image file (TIFF included) without reducing its bit depth; EXIF orientation applied."""
    try:
        image = PIL.Image.open(path)
        image.load()
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path}") from None
    except (OSError, PIL.UnidentifiedImageError) as error:
        raise ValueError(f"cannot read image file {path}: {error}") from error
    return PIL.ImageOps.exif_transpose(image)


def to_rgb(image: Any, bands: list[int] | None = None, intensity_scaling: str = "dtype") -> Any:
    """Any supported image input -> `HxWx3` uint8 numpy RGB (torch tensors pass through unchanged)."""
    if isinstance(image, str | os.PathLike):
        if str(image).startswith(("http://", "https://")):
            from transformers.image_utils import load_image

            image = load_image(str(image))
        else:
            image = load_image_file(image)
    if isinstance(image, PIL.Image.Image):
        if bands is not None:
            return array_to_rgb(np.asarray(image), bands=bands, intensity_scaling=intensity_scaling)
        return pil_to_rgb(image, intensity_scaling=intensity_scaling)
    if isinstance(image, np.ndarray):
        return array_to_rgb(image, bands=bands, intensity_scaling=intensity_scaling)
    if type(image).__module__.startswith("torch"):
        return image
    raise TypeError(
        f"unsupported image input of type {type(image).__name__}: give a PIL image, a numpy array, a torch tensor "
        f"or a file path"
    )


class RSMCLIPImageProcessor(CLIPImageProcessor):
    """CLIP image processing, after turning any remote-sensing image input into 8-bit RGB (see module doc)."""

    valid_kwargs = RSMCLIPImagesKwargs
    bands = None
    intensity_scaling = "dtype"

    def _prepare_images_structure(self, images: Any, expected_ndims: int = 3) -> list[Any]:
        if images is None or (isinstance(images, list | tuple) and len(images) == 0):
            raise ValueError("no images given: pass at least one image")
        items = list(images) if isinstance(images, list | tuple) else [images]
        if any(isinstance(item, list | tuple) for item in items):
            items = [x for item in items for x in (item if isinstance(item, list | tuple) else [item])]
        converted = [to_rgb(item, self.bands, self.intensity_scaling) for item in items]
        return super()._prepare_images_structure(converted, expected_ndims=expected_ndims)

    def preprocess(self, images: Any, *args: Any, **kwargs: Any):
        # `bands` / `intensity_scaling` given per call apply to this call only.
        bands = kwargs.pop("bands", None)
        scaling = kwargs.pop("intensity_scaling", None)
        saved = (self.bands, self.intensity_scaling)
        try:
            if bands is not None:
                self.bands = bands
            if scaling is not None:
                self.intensity_scaling = scaling
            return super().preprocess(images, *args, **kwargs)
        finally:
            self.bands, self.intensity_scaling = saved


def check_texts(text: Any) -> None:
    """Refuse an empty batch or an empty text with a ValueError that says which one."""
    if text is None:
        return
    texts = [text] if isinstance(text, str) else list(text)
    if not texts:
        raise ValueError(
            "no texts given (an empty list of texts or candidate labels?): pass at least one text"
        )
    for i, t in enumerate(texts):
        if isinstance(t, str) and not t.strip():
            raise ValueError(f"text {i} is empty ({t!r}): every text needs content")


class RSMCLIPTokenizer(XLMRobertaTokenizer):
    """The XLM-RoBERTa tokenizer, refusing empty inputs with a clear error (a text with no content has nothing to
    pool, and an empty batch has nothing to encode). Ids are exactly XLM-RoBERTa's."""

    def __call__(self, text: Any = None, *args: Any, **kwargs: Any):
        check_texts(text)
        return super().__call__(text, *args, **kwargs)


class RSMCLIPProcessor(ProcessorMixin):
    """RS-M-CLIP processor: `RSMCLIPImageProcessor` + the XLM-RoBERTa tokenizer.

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

__all__ = [
    "RSMCLIPImageProcessor",
    "RSMCLIPProcessor",
    "RSMCLIPTokenizer",
    "to_rgb",
    "array_to_rgb",
    "pil_to_rgb",
    "load_image_file",
]
