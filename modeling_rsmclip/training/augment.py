"""Image views for training: the CLIP view and DINO's multi-crop views, with torchvision transforms (v2).

Remote-sensing images are taken from above and have no canonical "up": vertical flips and rotations by multiples
of 90 degrees keep them realistic, so both kinds of views may use them on top of horizontal flips.
All transforms draw from torch's global generator; the data pipeline seeds it per sample, which makes every view
reproducible (exact resume) whatever the number of DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image, ImageFilter
from torchvision.transforms import InterpolationMode, v2

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class RandomRot90:
    """Rotate an image (PIL, or a tensor `(..., H, W)`) counter-clockwise by `k * 90` degrees, `k` uniform in
    {0, 1, 2, 3}."""

    _PIL_ROTATIONS = {
        1: Image.Transpose.ROTATE_90,
        2: Image.Transpose.ROTATE_180,
        3: Image.Transpose.ROTATE_270,
    }

    def __call__(self, image: Image.Image | torch.Tensor) -> Image.Image | torch.Tensor:
        k = int(torch.randint(0, 4, ()).item())
        if k == 0:
            return image
        if isinstance(image, Image.Image):
            return image.transpose(self._PIL_ROTATIONS[k])
        return torch.rot90(image, k, dims=(-2, -1))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class RandomGaussianBlur:
    """DINO's blur: with probability `p`, a PIL Gaussian blur of radius uniform in `[radius_min, radius_max]`
    pixels (PIL's filter is several times faster than a convolution at 224 px)."""

    def __init__(self, p: float, radius_min: float = 0.1, radius_max: float = 2.0) -> None:
        self.p = p
        self.radius_min = radius_min
        self.radius_max = radius_max

    def __call__(self, image: Image.Image) -> Image.Image:
        if torch.rand(()).item() >= self.p:
            return image
        radius = self.radius_min + (self.radius_max - self.radius_min) * torch.rand(()).item()
        return image.filter(ImageFilter.GaussianBlur(radius=radius))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p}, radius=({self.radius_min}, {self.radius_max}))"


def remote_sensing_flips(hflip: float = 0.5, vflip: float = 0.5, rot90: bool = True) -> list:
    """Horizontal/vertical flips and random 90-degree rotations (all label-preserving for overhead imagery)."""
    ops: list = []
    if hflip > 0:
        ops.append(v2.RandomHorizontalFlip(hflip))
    if vflip > 0:
        ops.append(v2.RandomVerticalFlip(vflip))
    if rot90:
        ops.append(RandomRot90())
    return ops


def _to_float_normalized(mean: Sequence[float], std: Sequence[float]) -> list:
    return [
        v2.PILToTensor(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(mean), std=list(std)),
    ]


def build_clip_transform(
    image_size: int,
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
    flip_rotate: bool = False,
) -> v2.Compose:
    """CLIP's view: resize the shortest side (bicubic), centre crop, optional flips/rotations, normalise.

    Takes a PIL image, returns a `(3, image_size, image_size)` float tensor."""
    ops = [
        v2.Resize(image_size, interpolation=InterpolationMode.BICUBIC, antialias=True),
        v2.CenterCrop(image_size),
    ]
    if flip_rotate:
        ops += remote_sensing_flips()
    return v2.Compose(ops + _to_float_normalized(mean, std))


@dataclass
class MultiCropConfig:
    """The multi-crop recipe (DINO's defaults, with the remote-sensing flips/rotations)."""

    num_global_crops: int = 2
    num_local_crops: int = 8
    global_crop_size: int = 224
    local_crop_size: int = 96
    global_crop_scale: tuple[float, float] = (0.4, 1.0)
    local_crop_scale: tuple[float, float] = (0.05, 0.4)
    flip_rotate: bool = True
    color_jitter_prob: float = 0.8
    color_jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)
    grayscale_prob: float = 0.2
    blur_prob_global: tuple[float, float] = (1.0, 0.1)
    blur_prob_local: float = 0.5
    solarize_prob_global: tuple[float, float] = (0.0, 0.2)


class MultiCropAugmentation:
    """DINO's multi-crop: `num_global_crops` large crops and `num_local_crops` small crops of one image.

    Global crop `i` uses blur probability `blur_prob_global[i % 2]` and solarisation probability
    `solarize_prob_global[i % 2]` (DINO's asymmetric pair). Returns `(global_views, local_views)`, two lists of
    float tensors `(3, size, size)`.
    """

    def __init__(
        self,
        config: MultiCropConfig,
        mean: Sequence[float] = OPENAI_CLIP_MEAN,
        std: Sequence[float] = OPENAI_CLIP_STD,
    ) -> None:
        self.config = config
        c = config
        brightness, contrast, saturation, hue = c.color_jitter
        common = (remote_sensing_flips() if c.flip_rotate else [v2.RandomHorizontalFlip(0.5)]) + [
            v2.RandomApply([v2.ColorJitter(brightness, contrast, saturation, hue)], p=c.color_jitter_prob),
            v2.RandomGrayscale(p=c.grayscale_prob),
        ]
        normalize = _to_float_normalized(mean, std)

        def crop(size: int, scale: tuple[float, float]) -> list:
            return [
                v2.RandomResizedCrop(
                    size, scale=tuple(scale), interpolation=InterpolationMode.BICUBIC, antialias=True
                ),
            ]

        def blur(p: float) -> list:
            return [RandomGaussianBlur(p)] if p > 0 else []

        def solarize(p: float) -> list:
            return [v2.RandomSolarize(threshold=128, p=p)] if p > 0 else []

        self.global_transforms = [
            v2.Compose(
                crop(c.global_crop_size, c.global_crop_scale)
                + common
                + blur(c.blur_prob_global[i % 2])
                + solarize(c.solarize_prob_global[i % 2])
                + normalize
            )
            for i in range(c.num_global_crops)
        ]
        self.local_transform = v2.Compose(
            crop(c.local_crop_size, c.local_crop_scale) + common + blur(c.blur_prob_local) + normalize
        )

    def __call__(self, image: Image.Image) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        global_views = [t(image) for t in self.global_transforms]
        local_views = [self.local_transform(image) for _ in range(self.config.num_local_crops)]
        return global_views, local_views
