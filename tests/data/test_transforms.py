"""Tests for kubedistill.data.transforms: parameters, validation and the augmentation itself."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as nnf
from torchvision.transforms.v2 import functional as F

from kubedistill.config import build
from kubedistill.data import transforms as T
from kubedistill.data.transforms import (
    DistillationTransform,
    DistillationTransformArgs,
    EvalTransform,
    GaussianBlurArgs,
    NormalizeArgs,
    RandomRotationArgs,
    SolarizeArgs,
)

# The "Default Augmentation Settings" block of LightlyTrain's distillation documentation, verbatim.
SEED_DEFAULTS = json.loads((Path(__file__).parents[1] / "seed_transform_defaults.json").read_text())


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Transforms run in single-threaded DataLoader workers; on a busy 2-CPU box, 2 threads are 50x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
ONE_LEVEL = 1.01 / (255 * 0.224)  # one uint8 step after normalisation, with some slack


def no_randomness(**overrides: object) -> DistillationTransformArgs:
    """Args whose transform is a plain resize + normalize of a square image."""
    base = {
        "image_size": [32, 32],
        "random_resize": {"min_scale": 1.0, "max_scale": 1.0},
        "random_flip": {"horizontal_prob": 0.0, "vertical_prob": 0.0},
        "color_jitter": {"prob": 0.0},
        "random_gray_scale": 0.0,
        "gaussian_blur": {"prob": 0.0},
    }
    base.update(overrides)
    args, problems = parse(base)
    assert problems == []
    return args


def parse(values: dict) -> tuple[DistillationTransformArgs, list[str]]:
    """transform_args as the config layer builds them: defaults + overrides, every problem collected."""
    problems: list[str] = []
    args = build(DistillationTransformArgs, values, path="transform_args", problems=problems)
    return args, problems


def gradient_image(height: int = 64, width: int = 64) -> torch.Tensor:
    """uint8 (3, H, W) with distinct, non-symmetric content in each channel."""
    ys = torch.arange(height).view(-1, 1).float()
    xs = torch.arange(width).view(1, -1).float()
    red = (xs / (width - 1) * 255).expand(height, width)
    green = (ys / (height - 1) * 255).expand(height, width)
    blue = (xs + 2 * ys) % 97 * 2
    return torch.stack([red, green, blue]).round().to(torch.uint8)


# --- parameters -------------------------------------------------------------------------------------------


def test_defaults_equal_the_seed_page_json() -> None:
    assert DistillationTransformArgs().to_dict() == SEED_DEFAULTS


def test_to_dict_is_json_and_round_trips() -> None:
    args = DistillationTransformArgs(random_rotation=RandomRotationArgs(prob=0.5, degrees=90.0))
    plain = json.loads(json.dumps(args.to_dict()))
    parsed, problems = parse(plain)
    assert problems == []
    assert parsed == args


def test_partial_override_keeps_other_defaults() -> None:
    args, problems = parse({"image_size": [160, 128], "color_jitter": {"prob": 0.0}})
    assert problems == []
    assert args.image_size == (160, 128)
    assert args.color_jitter.prob == 0.0
    assert args.color_jitter.strength == 0.5 and args.color_jitter.hue == 0.2
    assert args.random_resize == DistillationTransformArgs().random_resize


def test_optional_blocks_turn_on_and_off() -> None:
    on, problems = parse(
        {"random_rotation": {"prob": 0.5, "degrees": 90}, "solarize": {"prob": 0.2, "threshold": 0.5}}
    )
    assert problems == []
    assert on.random_rotation == RandomRotationArgs(prob=0.5, degrees=90.0)
    assert on.solarize == SolarizeArgs(prob=0.2, threshold=0.5)
    off, problems = parse({"random_rotation": None, "solarize": None})
    assert problems == [] and off.random_rotation is None and off.solarize is None


def test_all_problems_are_reported_at_once() -> None:
    _, problems = parse(
        {
            "image_size": [0, 224],
            "random_resize": {"min_scale": 0.9, "max_scale": 0.5},
            "color_jitter": {"prob": 1.5, "bogus": 1},
            "gaussian_blur": {"sigmas": "wide", "blur_limit": 4},
            "normalize": {"std": [0.2, 0.0, 0.2]},
            "random_rotation": {"prob": 0.5},
            "random_gray_scale": True,
            "colour_jitter": {},
        }
    )
    expected = [
        "transform_args.image_size: [0, 224] must be two positive integers",
        "transform_args.random_resize.min_scale (0.9) is larger than max_scale (0.5)",
        "transform_args.color_jitter.prob: 1.5 is not a probability",
        "unknown key 'transform_args.color_jitter.bogus'; valid keys: brightness, contrast, hue, prob",
        "transform_args.gaussian_blur.sigmas: got 'wide', expected a list of 2 floats",
        "transform_args.gaussian_blur.blur_limit: 4 must be 0",
        "transform_args.normalize.std: [0.2, 0.0, 0.2] has a value <= 0",
        "transform_args.random_rotation: missing required key(s) degrees",
        "transform_args.random_gray_scale: got True, expected float",
        "unknown key 'transform_args.colour_jitter'; valid keys: color_jitter, gaussian_blur, image_size",
    ]
    for start in expected:
        assert any(p.startswith(start) for p in problems), (start, problems)
    assert len(problems) == len(expected)


def test_blocks_report_their_own_problems_relative_to_themselves() -> None:
    """kubedistill.config calls problems() on each dataclass it builds and prefixes the block's path."""
    args = DistillationTransformArgs(random_gray_scale=1.5)
    args.color_jitter.prob = -1.0
    assert args.problems() == ["random_gray_scale: 1.5 is not a probability; use a value in [0, 1]"]
    assert args.color_jitter.problems() == ["prob: -1.0 is not a probability; use a value in [0, 1]"]
    assert SolarizeArgs(prob=0.5, threshold=2.0).problems() == [
        "threshold: 2.0 must be in [0, 1] (a fraction of 255)"
    ]


def test_null_for_a_required_block_is_a_problem() -> None:
    _, problems = parse({"normalize": None})
    assert problems == ["transform_args.normalize: got None, expected a mapping with keys mean, std"]


def test_jitter_strength_scales_the_ranges_it_checks() -> None:
    _, problems = parse({"color_jitter": {"hue": 1.2}})
    assert len(problems) == 1 and "hue x strength = 0.6" in problems[0]


# --- the distillation transform --------------------------------------------------------------------------


@pytest.mark.parametrize("height,width", [(300, 400), (17, 23), (224, 224)])
def test_output_shape_dtype_and_range(height: int, width: int) -> None:
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8)
    out = DistillationTransform()(image)
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    low, high = (0 - IMAGENET_MEAN) / IMAGENET_STD, (1 - IMAGENET_MEAN) / IMAGENET_STD
    assert torch.all(out >= low - 1e-5) and torch.all(out <= high + 1e-5)


def test_non_square_image_size() -> None:
    out = DistillationTransform(no_randomness(image_size=[48, 80]))(gradient_image(90, 50))
    assert out.shape == (3, 48, 80)


def test_without_randomness_it_is_resize_plus_normalize() -> None:
    image = gradient_image(64, 64)
    out = DistillationTransform(no_randomness())(image)
    resized = nnf.interpolate(image[None].float(), size=(32, 32), mode="bilinear", antialias=True)[0]
    expected = (resized.round().clamp(0, 255) / 255 - IMAGENET_MEAN) / IMAGENET_STD
    assert torch.allclose(out, expected, atol=ONE_LEVEL)


def test_normalization_is_exact_for_a_flat_image() -> None:
    image = torch.empty(3, 40, 40, dtype=torch.uint8)
    image[0], image[1], image[2] = 10, 128, 250
    out = DistillationTransform(no_randomness())(image)
    expected = (torch.tensor([10, 128, 250]).view(3, 1, 1) / 255 - IMAGENET_MEAN) / IMAGENET_STD
    assert torch.allclose(out, expected.expand(3, 32, 32), atol=1e-5)


def test_horizontal_and_vertical_flip_with_probability_one() -> None:
    image = gradient_image()
    plain = DistillationTransform(no_randomness())(image)
    h = DistillationTransform(no_randomness(random_flip={"horizontal_prob": 1.0, "vertical_prob": 0.0}))(
        image
    )
    v = DistillationTransform(no_randomness(random_flip={"horizontal_prob": 0.0, "vertical_prob": 1.0}))(
        image
    )
    assert torch.equal(h, plain.flip(-1))
    assert torch.equal(v, plain.flip(-2))
    assert not torch.equal(h, plain)


def test_grayscale_with_probability_one_gives_equal_channels() -> None:
    args = no_randomness(random_gray_scale=1.0, normalize={"mean": [0, 0, 0], "std": [1, 1, 1]})
    out = DistillationTransform(args)(gradient_image())
    assert out.shape[0] == 3
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])
    assert out.std() > 0.1  # still an image, not a flat field


def test_solarize_with_threshold_zero_inverts() -> None:
    image = gradient_image()
    args = no_randomness(solarize={"prob": 1.0, "threshold": 0.0}, image_size=[64, 64])
    out = DistillationTransform(args)(image)
    expected = ((255 - image).float() / 255 - IMAGENET_MEAN) / IMAGENET_STD
    assert torch.allclose(out, expected, atol=1e-5)


def test_rotation_of_zero_degrees_is_identity_and_ninety_changes_the_image() -> None:
    image = gradient_image()
    plain = DistillationTransform(no_randomness())(image)
    zero = DistillationTransform(no_randomness(random_rotation={"prob": 1.0, "degrees": 0}))(image)
    assert torch.allclose(zero, plain, atol=1e-5)
    torch.manual_seed(1)
    turned = DistillationTransform(no_randomness(random_rotation={"prob": 1.0, "degrees": 90}))(image)
    assert turned.shape == plain.shape and (turned - plain).abs().mean() > 0.1


def test_color_jitter_with_probability_one_changes_colours() -> None:
    image = gradient_image()
    plain = DistillationTransform(no_randomness())(image)
    torch.manual_seed(0)
    jittered = DistillationTransform(no_randomness(color_jitter={"prob": 1.0}))(image)
    assert (jittered - plain).abs().mean() > 0.05


def test_deterministic_under_manual_seed() -> None:
    transform = DistillationTransform(DistillationTransformArgs(image_size=(64, 64)))
    image = gradient_image(120, 90)
    torch.manual_seed(123)
    first = [transform(image) for _ in range(3)]
    torch.manual_seed(123)
    second = [transform(image) for _ in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert not torch.equal(first[0], first[1])  # successive draws differ


def test_crop_area_and_aspect_follow_the_scale_range() -> None:
    torch.manual_seed(0)
    for _ in range(200):
        top, left, h, w = T._crop_box(T._Draws(), 100, 150, (0.2, 0.3))
        assert 0 <= top <= 100 - h and 0 <= left <= 150 - w
        assert 0.2 * 15000 * 0.95 <= h * w <= 0.3 * 15000 * 1.05
        assert 3 / 4 * 0.95 <= w / h <= 4 / 3 * 1.05


def test_crop_falls_back_to_the_centre_for_extreme_aspect_ratios() -> None:
    torch.manual_seed(0)
    top, left, h, w = T._crop_box(T._Draws(), 10, 1000, (1.0, 1.0))
    assert (h, w) == (10, round(10 * 4 / 3)) and left == (1000 - w) // 2 and top == 0


@pytest.mark.parametrize(
    "sigma,size", [(0.0, 1), (0.08, 1), (0.1, 3), (0.4, 3), (0.5, 5), (1.0, 7), (2.0, 13)]
)
def test_kernel_size_follows_opencv(sigma: float, size: int) -> None:
    assert T._kernel_size_for_sigma(sigma) == size


@pytest.mark.parametrize("sigma", [0.1, 0.2, 0.3, 0.35, 0.5, 1.0])
def test_blur_skip_is_taken_only_when_the_blur_changes_nothing(sigma: float) -> None:
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    ksize = T._kernel_size_for_sigma(sigma)
    blurred = F.gaussian_blur(image, [ksize, ksize], [sigma, sigma])
    assert T._blur_is_identity(ksize, sigma) == torch.equal(blurred, image)


def test_default_blur_is_a_no_op_and_a_strong_blur_smooths() -> None:
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    default = T._random_gaussian_blur(image, GaussianBlurArgs())
    strong = T._random_gaussian_blur(image, GaussianBlurArgs(sigmas=(2.0, 2.0)))
    limited = T._random_gaussian_blur(image, GaussianBlurArgs(sigmas=(2.0, 2.0), blur_limit=5))
    assert torch.equal(default, image)
    assert strong.float().std() < 0.5 * image.float().std()
    assert (
        strong.float().std() < limited.float().std() < image.float().std()
    )  # a 3x3 or 5x5 kernel blurs less


def test_rejects_non_uint8_input() -> None:
    with pytest.raises(ValueError, match="uint8 RGB tensor"):
        DistillationTransform()(torch.rand(3, 32, 32))


def test_repr_lists_parameters() -> None:
    text = repr(DistillationTransform())
    for part in (
        "image_size=(224, 224)",
        "min_scale=0.14",
        "horizontal_prob=0.5",
        "strength=0.5",
        "solarize=None",
    ):
        assert part in text


# --- the evaluation transform ----------------------------------------------------------------------------


def test_eval_transform_resizes_short_side_and_center_crops() -> None:
    image = torch.zeros(3, 100, 200, dtype=torch.uint8)
    image[0, :, :100] = 255  # left half red, right half blue
    image[2, :, 100:] = 255
    transform = EvalTransform(64, NormalizeArgs(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)))
    out = transform(image)
    assert out.shape == (3, 64, 64)
    # Short side 100 -> round(64 / 0.875) = 73, long side 146; the centre crop straddles the red/blue edge.
    assert torch.allclose(out[0, :, :20], torch.ones(64, 20)) and torch.allclose(
        out[2, :, -20:], torch.ones(64, 20)
    )
    assert math.isclose(out[0].mean().item(), 0.5, abs_tol=0.02)


def test_eval_transform_is_deterministic_and_printable() -> None:
    image = gradient_image(80, 120)
    transform = EvalTransform((48, 64))
    assert torch.equal(transform(image), transform(image)) and transform(image).shape == (3, 48, 64)
    assert "crop_fraction=0.875" in repr(transform)
    with pytest.raises(ValueError, match="image_size"):
        EvalTransform((0, 10))


def test_a_view_is_its_sampled_choices_applied():
    """__call__ = apply(sample(h, w)), drawing nothing else: a decoder elsewhere can replay the choices."""
    transform = DistillationTransform(DistillationTransformArgs(
        image_size=(24, 32), random_rotation=RandomRotationArgs(prob=0.5, degrees=20),
        solarize=SolarizeArgs(prob=0.5, threshold=0.5), gaussian_blur=GaussianBlurArgs(prob=0.5, sigmas=(0.5, 2)),
    ))  # fmt: skip
    image = torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8)
    for seed in range(20):
        torch.manual_seed(seed)
        direct = transform(image)
        torch.manual_seed(seed)
        params = transform.sample(50, 70)
        assert torch.equal(transform.apply(image, params), direct)


def test_10k_draws_follow_the_default_table():
    """The distribution of the sampled choices over 10,000 views matches LightlyTrain's default settings
    (tolerances: about 4 standard errors)."""
    table = SEED_DEFAULTS
    transform = DistillationTransform()
    torch.manual_seed(0)
    views = [transform.sample(300, 400) for _ in range(10_000)]

    def share(predicate) -> float:
        return sum(map(predicate, views)) / len(views)

    assert share(lambda v: v.horizontal_flip) == pytest.approx(table["random_flip"]["horizontal_prob"], abs=0.02)
    assert share(lambda v: v.vertical_flip) == 0.0
    assert share(lambda v: bool(v.jitter)) == pytest.approx(table["color_jitter"]["prob"], abs=0.02)
    assert share(lambda v: v.grayscale) == pytest.approx(table["random_gray_scale"], abs=0.02)
    assert share(lambda v: v.blur is not None) == 0.0  # sigma <= 0.1 px cannot change a uint8 pixel
    assert share(lambda v: v.rotation is not None or v.solarize) == 0.0  # both off by default

    # Crops: the same distribution as torchvision's RandomResizedCrop (area ~ U(min_scale, 1) and aspect ~
    # logU(3/4, 4/3), redrawn when the box does not fit, so large boxes are rarer than the uniform draw).
    from torchvision.transforms import RandomResizedCrop

    low = table["random_resize"]["min_scale"]
    reference = [RandomResizedCrop.get_params(torch.empty(3, 300, 400), [low, 1.0], [3 / 4, 4 / 3])
                 for _ in range(10_000)]  # fmt: skip
    for boxes in ([v.crop for v in views], reference):
        areas = torch.tensor([h * w / (300 * 400) for _, _, h, w in boxes])
        aspects = torch.tensor([w / h for _, _, h, w in boxes])
        assert areas.min() >= low * 0.97 and areas.max() <= 1.0  # rounding to whole pixels
        assert aspects.min() >= 0.74 and aspects.max() <= 1.35
    ours = torch.tensor([[h * w / (300 * 400), math.log(w / h)] for _, _, h, w in (v.crop for v in views)])
    theirs = torch.tensor([[h * w / (300 * 400), math.log(w / h)] for _, _, h, w in reference])
    quantiles = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9])
    for column in (0, 1):
        assert torch.allclose(ours[:, column].quantile(quantiles), theirs[:, column].quantile(quantiles), atol=0.015)

    jitter = table["color_jitter"]
    ranges = {name: (1 - jitter[name] * jitter["strength"], 1 + jitter[name] * jitter["strength"])
              for name in ("brightness", "contrast", "saturation")}  # fmt: skip
    ranges["hue"] = (-jitter["hue"] * jitter["strength"], jitter["hue"] * jitter["strength"])
    jittered = [v.jitter for v in views if v.jitter]
    for name, (lo, hi) in ranges.items():
        factors = torch.tensor([f for j in jittered for n, f in j if n == name])
        assert len(factors) == len(jittered)  # every op, once per jittered view
        assert factors.min() >= lo and factors.max() <= hi
        assert factors.mean().item() == pytest.approx((lo + hi) / 2, abs=0.01 * (hi - lo) + 1e-3)
    firsts = [j[0][0] for j in jittered]
    for name in ranges:  # a random order: each op comes first a quarter of the time
        assert firsts.count(name) / len(firsts) == pytest.approx(0.25, abs=0.025)
