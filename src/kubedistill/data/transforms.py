"""Augmentations of the distillation method, and the deterministic transform used to extract features.

The parameters are dataclasses whose field names and defaults are exactly LightlyTrain's "Default Augmentation
Settings" for distillation (``DistillationTransformArgs().to_dict()`` reproduces that JSON), so a user's
``transform_args`` override reads the same in both tools.

Transforms take the uint8 tensors of ``kubedistill.data.images`` and use torchvision.transforms.v2 kernels on
them: the random crop and resize run first, so every later op works on the small output image. All randomness
comes from torch's global RNG: runs are reproducible under ``torch.manual_seed``. In training, ImageDataset
seeds it per sample from (seed, epoch, index), so augmentations do not depend on the DataLoader workers. A view
takes its random numbers in one block of 64 (one torch call, not one per choice): the DALI loader draws every
view's choices in the training process, where a dozen separate calls per image cost ~50 us.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from kubedistill.utils import to_plain

__all__ = [
    "ColorJitterArgs",
    "DistillationTransform",
    "DistillationTransformArgs",
    "EvalTransform",
    "GaussianBlurArgs",
    "NormalizeArgs",
    "RandomFlipArgs",
    "RandomResizeArgs",
    "RandomRotationArgs",
    "SolarizeArgs",
    "ViewParams",
]

# Aspect-ratio range of the random resized crop (the usual Inception-style crop).
CROP_RATIO: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)

# ----------------------------------------------------------------------------------------------------------
# Parameters
#
# Each block's ``problems()`` checks its own values and returns messages that start with the field name
# ("prob: 1.5 is not a probability ..."), so a caller prefixes them with where the block sits: the protocol
# of kubedistill.config, which calls ``problems()`` on every dataclass it builds and collects them all.
# ----------------------------------------------------------------------------------------------------------


@dataclass
class ColorJitterArgs:
    """Colour jitter, applied with probability ``prob``; each range is multiplied by ``strength``."""

    prob: float = 0.8
    strength: float = 0.5
    brightness: float = 0.8
    contrast: float = 0.8
    saturation: float = 0.4
    hue: float = 0.2

    def problems(self) -> list[str]:
        found = _check_probability(self, "prob")
        for name in ("strength", "brightness", "contrast", "saturation", "hue"):
            found += _check_non_negative(self, name)
        if self.hue * self.strength > 0.5:
            found.append(
                f"hue: hue x strength = {self.hue * self.strength:g} shifts hue by more than half a turn; "
                "keep it at most 0.5"
            )
        return found


@dataclass
class GaussianBlurArgs:
    """Gaussian blur with probability ``prob`` and sigma ~ U(sigmas) in pixels.

    ``blur_limit`` 0 derives the kernel size from sigma (OpenCV's rule for uint8: round(6 sigma + 1) made odd);
    an odd ``blur_limit`` >= 3 draws the kernel size uniformly from the odd sizes in [3, blur_limit].
    """

    prob: float = 1.0
    sigmas: tuple[float, float] = (0.0, 0.1)
    blur_limit: int = 0

    def problems(self) -> list[str]:
        found = _check_probability(self, "prob")
        low, high = self.sigmas
        if not 0 <= low <= high:
            found.append(f"sigmas: {list(self.sigmas)} must be [low, high] with 0 <= low <= high")
        if self.blur_limit != 0 and (self.blur_limit < 3 or self.blur_limit % 2 == 0):
            found.append(f"blur_limit: {self.blur_limit} must be 0 (size from sigma) or odd and >= 3")
        return found


@dataclass
class NormalizeArgs:
    """Per-channel mean and standard deviation of [0, 1] RGB values (ImageNet's by default)."""

    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def problems(self) -> list[str]:
        if all(s > 0 for s in self.std):
            return []
        return [f"std: {list(self.std)} has a value <= 0; every standard deviation must be positive"]


@dataclass
class RandomFlipArgs:
    """Left-right flip with ``horizontal_prob`` and upside-down flip with ``vertical_prob``."""

    horizontal_prob: float = 0.5
    vertical_prob: float = 0.0

    def problems(self) -> list[str]:
        return _check_probability(self, "horizontal_prob") + _check_probability(self, "vertical_prob")


@dataclass
class RandomResizeArgs:
    """Random resized crop covering a fraction in [min_scale, max_scale] of the image area."""

    min_scale: float = 0.14
    max_scale: float = 1.0

    def problems(self) -> list[str]:
        found = [
            f"{name}: {getattr(self, name)} must be in (0, 1] (a fraction of the image area)"
            for name in ("min_scale", "max_scale")
            if not 0 < getattr(self, name) <= 1
        ]
        if self.min_scale > self.max_scale:
            found.append(
                f"min_scale ({self.min_scale}) is larger than max_scale ({self.max_scale}); "
                "make min_scale <= max_scale"
            )
        return found


@dataclass
class RandomRotationArgs:
    """Rotation by an angle ~ U(-degrees, degrees), applied with probability ``prob`` (bilinear, black fill)."""

    prob: float
    degrees: float

    def problems(self) -> list[str]:
        return _check_probability(self, "prob") + _check_non_negative(self, "degrees")


@dataclass
class SolarizeArgs:
    """Inverts pixels at or above ``threshold`` (a fraction of 255), applied with probability ``prob``."""

    prob: float
    threshold: float

    def problems(self) -> list[str]:
        found = _check_probability(self, "prob")
        if not 0 <= self.threshold <= 1:
            found.append(f"threshold: {self.threshold} must be in [0, 1] (a fraction of 255)")
        return found


@dataclass
class DistillationTransformArgs:
    """All augmentation parameters of the distillation method. Optional blocks are off when None."""

    image_size: tuple[int, int] = (224, 224)
    random_resize: RandomResizeArgs = field(default_factory=RandomResizeArgs)
    random_flip: RandomFlipArgs = field(default_factory=RandomFlipArgs)
    random_rotation: RandomRotationArgs | None = None
    color_jitter: ColorJitterArgs = field(default_factory=ColorJitterArgs)
    random_gray_scale: float = 0.2
    gaussian_blur: GaussianBlurArgs = field(default_factory=GaussianBlurArgs)
    solarize: SolarizeArgs | None = None
    normalize: NormalizeArgs = field(default_factory=NormalizeArgs)

    def problems(self) -> list[str]:
        """Problems of this level's own fields; the blocks check themselves (see ``validate``)."""
        found = _check_probability(self, "random_gray_scale")
        if any(s <= 0 for s in self.image_size):
            found.insert(0, f"image_size: {list(self.image_size)} must be two positive integers [h, w]")
        return found

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict: nested dicts, lists for tuples, None for blocks that are off."""
        return to_plain(self)


def _check_probability(args: object, name: str) -> list[str]:
    value = getattr(args, name)
    return [] if 0 <= value <= 1 else [f"{name}: {value} is not a probability; use a value in [0, 1]"]


def _check_non_negative(args: object, name: str) -> list[str]:
    value = getattr(args, name)
    return [] if value >= 0 else [f"{name}: {value} must be >= 0"]


# ----------------------------------------------------------------------------------------------------------
# Transforms
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ViewParams:
    """Every random choice of one augmented view, drawn before any pixel is touched.

    ``DistillationTransform.sample`` draws them (from torch's global RNG, seeded per sample in training) and
    ``apply`` uses them; a decoder on another device (DALI) can take the same values as per-sample inputs, so
    both give the same crop, flips and colour changes for the same (seed, epoch, index).
    """

    crop: tuple[int, int, int, int]  # top, left, height, width in the decoded image
    horizontal_flip: bool = False
    vertical_flip: bool = False
    rotation: float | None = None  # degrees, counter-clockwise
    jitter: tuple[tuple[str, float], ...] = ()  # (brightness|contrast|saturation|hue, factor), in order
    grayscale: bool = False
    blur: tuple[int, float] | None = None  # (kernel size, sigma); None when off or when it changes no pixel
    solarize: bool = False


class DistillationTransform:
    """The single augmented view of the distillation method (the same tensor feeds teacher and student).

    Order: random resized crop -> flips -> rotation -> colour jitter -> grayscale -> blur -> solarize ->
    [0, 1] floats -> normalize. Ops whose probability is 0, and blurs that cannot change a uint8 pixel, are
    skipped without cost.
    """

    def __init__(self, args: DistillationTransformArgs | None = None):
        # Values were checked when the config was built (kubedistill.config calls each block's problems()).
        self.args = args if args is not None else DistillationTransformArgs()
        self._jitter_ops = _jitter_ops(self.args.color_jitter)
        self._normalize = _Normalizer(self.args.normalize)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 (3, H, W) RGB -> float32 (3, *image_size), normalized."""
        _check_image(image)
        return self.apply(image, self.sample(image.shape[-2], image.shape[-1]))

    def sample(self, height: int, width: int) -> ViewParams:
        """The random choices for an image of ``height`` x ``width`` (torch's global RNG, in a fixed order)."""
        a, r = self.args, _Draws()
        crop = _crop_box(r, height, width, (a.random_resize.min_scale, a.random_resize.max_scale))
        horizontal_flip = _coin(r, a.random_flip.horizontal_prob)
        vertical_flip = _coin(r, a.random_flip.vertical_prob)
        rotation = None
        if a.random_rotation is not None and _coin(r, a.random_rotation.prob):
            rotation = _uniform(r, -a.random_rotation.degrees, a.random_rotation.degrees)
        jitter: tuple[tuple[str, float], ...] = ()
        if _coin(r, a.color_jitter.prob):  # random order, as in torchvision's ColorJitter
            jitter = tuple((self._jitter_ops[i][0], _uniform(r, *self._jitter_ops[i][1:]))
                           for i in _permutation(r, len(self._jitter_ops)))  # fmt: skip
        grayscale = _coin(r, a.random_gray_scale)
        blur = _draw_blur(r, a.gaussian_blur) if _coin(r, a.gaussian_blur.prob) else None
        solarize = a.solarize is not None and _coin(r, a.solarize.prob)
        return ViewParams(crop, horizontal_flip, vertical_flip, rotation, jitter, grayscale, blur, solarize)

    def apply(self, image: torch.Tensor, params: ViewParams) -> torch.Tensor:
        """uint8 (3, H, W) -> float32 (3, *image_size), normalized, with the choices in ``params``."""
        top, left, h, w = params.crop
        x = F.resized_crop(image, top, left, h, w, list(self.args.image_size),
                           interpolation=InterpolationMode.BILINEAR, antialias=True)  # fmt: skip
        if params.horizontal_flip:
            x = F.horizontal_flip(x)
        if params.vertical_flip:
            x = F.vertical_flip(x)
        if params.rotation is not None:
            x = F.rotate(x, params.rotation, interpolation=InterpolationMode.BILINEAR)
        for name, factor in params.jitter:
            x = _JITTER_KERNELS[name](x, factor)
        if params.grayscale:
            x = F.rgb_to_grayscale(x, num_output_channels=3)
        if params.blur is not None:
            ksize, sigma = params.blur
            x = F.gaussian_blur(x, [ksize, ksize], [sigma, sigma])
        if params.solarize:
            x = F.solarize(x, threshold=self.args.solarize.threshold * 255.0)
        return self._normalize(x)

    def __repr__(self) -> str:
        params = ", ".join(f"{f.name}={getattr(self.args, f.name)!r}" for f in dataclasses.fields(self.args))
        return f"{type(self).__name__}({params})"


class EvalTransform:
    """Deterministic view for feature extraction: resize, center crop, normalize.

    The shorter side is resized to ``max(image_size) / crop_fraction`` (256 for 224, the usual ImageNet
    evaluation), then the center ``image_size`` is cut out, so the model sees the middle ~87.5% of the image.
    """

    def __init__(
        self,
        image_size: int | tuple[int, int] = (224, 224),
        normalize: NormalizeArgs | None = None,
        *,
        crop_fraction: float = 0.875,
    ):
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if len(size) != 2 or min(size) <= 0 or not 0 < crop_fraction <= 1:
            raise ValueError(
                f"EvalTransform: image_size {image_size} must be two positive ints and crop_fraction "
                f"{crop_fraction} in (0, 1]"
            )
        self.image_size: tuple[int, int] = (int(size[0]), int(size[1]))
        self.normalize = normalize if normalize is not None else NormalizeArgs()
        self.crop_fraction = crop_fraction
        self._resize_to = round(max(self.image_size) / crop_fraction)
        self._normalize = _Normalizer(self.normalize)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 (3, H, W) RGB -> float32 (3, *image_size), normalized."""
        _check_image(image)
        x = F.resize(image, [self._resize_to], interpolation=InterpolationMode.BILINEAR, antialias=True)
        x = F.center_crop(x, list(self.image_size))
        return self._normalize(x)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(image_size={self.image_size}, normalize={self.normalize!r}, "
            f"crop_fraction={self.crop_fraction})"
        )


class _Normalizer:
    """uint8 -> float32 ((x / 255) - mean) / std in one multiply and one subtract."""

    def __init__(self, args: NormalizeArgs):
        mean = torch.tensor(args.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(args.std, dtype=torch.float32).view(3, 1, 1)
        self._scale = 1.0 / (255.0 * std)
        self._shift = mean / std

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return image.to(torch.float32).mul_(self._scale).sub_(self._shift)


def _check_image(image: torch.Tensor) -> None:
    if (
        not isinstance(image, torch.Tensor)
        or image.dtype != torch.uint8
        or image.ndim != 3
        or image.shape[0] != 3
    ):
        described = (
            f"{image.dtype} {tuple(image.shape)}" if isinstance(image, torch.Tensor) else type(image).__name__
        )
        raise ValueError(
            f"expected a uint8 RGB tensor (3, H, W) from kubedistill.data.images, got {described}"
        )


# --- random draws, all from torch's global RNG, through one view's _Draws -----------------------------------


class _Draws:
    """Uniform numbers in [0, 1) for one view, taken from torch's global RNG in blocks of ``BLOCK`` (float64)."""

    BLOCK = 64  # a default view takes ~12; the crop's ten retries at most 40 more

    def __init__(self) -> None:
        self._left: list[float] = []

    def next(self) -> float:
        if not self._left:
            self._left = torch.rand(self.BLOCK, dtype=torch.float64).tolist()[::-1]
        return self._left.pop()


def _coin(r: _Draws, prob: float) -> bool:
    """True with probability ``prob``; draws nothing for 0 and 1."""
    if prob <= 0:
        return False
    return prob >= 1 or r.next() < prob


def _uniform(r: _Draws, low: float, high: float) -> float:
    return low + (high - low) * r.next()


def _randint(r: _Draws, low: int, high: int) -> int:
    """Uniform integer in [low, high], both included."""
    return low + min(int(r.next() * (high - low + 1)), high - low)


def _permutation(r: _Draws, n: int) -> list[int]:
    """A uniformly random order of range(n) (the ranks of n uniform numbers)."""
    keys = [r.next() for _ in range(n)]
    return sorted(range(n), key=keys.__getitem__)


# --- ops --------------------------------------------------------------------------------------------------


def _crop_box(r: _Draws, height: int, width: int, scale: tuple[float, float]) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a crop covering ~U(scale) of the area with aspect ratio ~logU(CROP_RATIO).

    Ten tries, then the largest centred crop whose aspect ratio is within CROP_RATIO (torchvision's rule).
    """
    area = height * width
    log_low, log_high = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    for _ in range(10):
        target = area * _uniform(r, *scale)
        aspect = math.exp(_uniform(r, log_low, log_high))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return _randint(r, 0, height - h), _randint(r, 0, width - w), h, w
    ratio = width / height
    if ratio < CROP_RATIO[0]:
        w, h = width, round(width / CROP_RATIO[0])
    elif ratio > CROP_RATIO[1]:
        w, h = round(height * CROP_RATIO[1]), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


_JITTER_KERNELS: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "brightness": F.adjust_brightness,
    "contrast": F.adjust_contrast,
    "saturation": F.adjust_saturation,
    "hue": F.adjust_hue,
}

_JitterOp = tuple[str, float, float]


def _jitter_ops(args: ColorJitterArgs) -> list[_JitterOp]:
    """(name, low, high) for each jitter with a non-zero range, as torchvision's ColorJitter draws them."""
    ops: list[_JitterOp] = []
    for name, amount in (("brightness", args.brightness), ("contrast", args.contrast),
                         ("saturation", args.saturation)):  # fmt: skip
        if amount * args.strength > 0:
            ops.append((name, max(0.0, 1.0 - amount * args.strength), 1.0 + amount * args.strength))
    if args.hue * args.strength > 0:
        ops.append(("hue", -args.hue * args.strength, args.hue * args.strength))
    return ops


def _draw_blur(r: _Draws, args: GaussianBlurArgs) -> tuple[int, float] | None:
    """(kernel size, sigma) of one blur; None when it would leave every uint8 pixel as it is."""
    sigma = _uniform(r, *args.sigmas)
    if args.blur_limit == 0:
        ksize = _kernel_size_for_sigma(sigma)
    else:
        ksize = 3 + 2 * _randint(r, 0, (args.blur_limit - 3) // 2)
    if ksize == 1 or sigma <= 0 or _blur_is_identity(ksize, sigma):
        return None
    return ksize, sigma


def _random_gaussian_blur(image: torch.Tensor, args: GaussianBlurArgs) -> torch.Tensor:
    blur = _draw_blur(_Draws(), args)
    if blur is None:
        return image
    return F.gaussian_blur(image, [blur[0], blur[0]], [blur[1], blur[1]])


def _kernel_size_for_sigma(sigma: float) -> int:
    """OpenCV's kernel size for a uint8 image when none is given (what albumentations does with blur_limit=0).

    Odd by construction: 1 (no blur) below sigma ~1/12, 3 below ~0.42, 5 below 0.75, 7 below ~1.08.
    """
    return round(sigma * 3 * 2 + 1) | 1


def _blur_is_identity(ksize: int, sigma: float) -> bool:
    """Whether the blur provably returns every uint8 pixel unchanged.

    A pixel moves by at most 255 x (the kernel's weight off the centre); below 0.5 it rounds back to itself.
    With the default sigmas in [0, 0.1] that weight is below 1e-20, so the default blur costs nothing.
    """
    weights = [math.exp(-0.5 * ((i - (ksize - 1) / 2) / sigma) ** 2) for i in range(ksize)]  # plain floats: cheap
    center = weights[ksize // 2] / math.fsum(weights)
    return 255.0 * (1.0 - center * center) < 0.5
