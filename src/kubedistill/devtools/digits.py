"""scikit-learn's digits as image files: plain (``write_digits``) or rendered as a harder image set
(``render_dataset``), for the demo, tests and benchmarks.

The harder set, ``render_dataset``: random scale, position, colour and background texture. Each of the 1,797 8x8 digits is drawn several times on a ``size`` x ``size`` RGB canvas: the digit's strokes
(its 0-16 intensities, upscaled smoothly, random height 30-66% of the canvas and aspect 0.7-1.2) are blended in
one random colour over a random textured background (a colour gradient, low-frequency colour noise or stripes,
pulled towards its mean colour by a random factor), with at most one thin stray stroke and pixel noise. The
stratified train/test split is made on the source digits, so no digit has renders on both sides. Layout:
``root/{train,test}/<label>/<digit>_<render>.png``; labels come only from the folder names.

The variation is there so that a random-init network's features do not already separate the classes (on the
plain digits they nearly do): the quality benchmark and the demo need the teacher's probe far above the random
student's.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

VAL_EVERY = 5  # write_digits(split=True): every 5th digit goes to val
# The digit's box stays inside the central 7/8 of the canvas: feature extraction centre-crops that much.
MARGIN_FRACTION = 1 / 16
MIN_DIGIT_FRACTION, MAX_DIGIT_FRACTION = 0.30, 0.66
# Digit and background colours differ by at least this much (RGB in [0, 1], max over channels).
MIN_CONTRAST = 0.5
# Background textures are pulled towards their mean colour by a random factor in this range.
TEXTURE_STRENGTH = (0.25, 0.7)


def write_digits(folder: Path, *, size: int = 32, split: bool = False) -> int:
    """Write the plain digits as ``folder/<label>/<index>.png`` (upscaled to size x size); returns the count.

    With ``split``, every ``VAL_EVERY``-th digit goes to ``folder/val/<label>/`` and the rest to
    ``folder/train/<label>/``.
    """
    digits = _load_digits()
    for index, (pixels, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        part = ("val" if index % VAL_EVERY == 0 else "train") if split else ""
        path = folder / part / str(label) / f"{index:04d}.png"
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        gray = (pixels / 16.0 * 255).astype(np.uint8)
        Image.fromarray(gray, mode="L").resize((size, size), Image.Resampling.BILINEAR).save(path)
    return len(digits.images)


def _load_digits():
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise RuntimeError("the digits image sets need scikit-learn: pip install scikit-learn") from e
    return load_digits()


def render_dataset(
    root: Path, *, renders_train: int, renders_test: int, size: int = 64, test_fraction: float = 0.25, seed: int = 0
) -> dict[str, int]:
    """Write the train and test renders under ``root`` (skipped when an identical set is there already)."""
    from sklearn.model_selection import train_test_split

    params = {"renders_train": renders_train, "renders_test": renders_test, "size": size,
              "test_fraction": test_fraction, "seed": seed, "version": 3}  # fmt: skip
    stamp = root / "render.json"
    if stamp.exists() and json.loads(stamp.read_text()).get("params") == params:
        return json.loads(stamp.read_text())["counts"]
    digits = _load_digits()
    indices = np.arange(len(digits.target))
    train_idx, test_idx = train_test_split(
        indices, test_size=test_fraction, stratify=digits.target, random_state=seed
    )
    rng = np.random.default_rng(seed)
    counts = {}
    for split, split_idx, renders in (("train", train_idx, renders_train), ("test", test_idx, renders_test)):
        counts[split] = 0
        for index in sorted(split_idx):
            folder = root / split / str(digits.target[index])
            folder.mkdir(parents=True, exist_ok=True)
            for r in range(renders):
                image = render_digit(digits.images[index] / 16.0, size=size, rng=rng)
                Image.fromarray(image).save(folder / f"{index:04d}_{r}.png")
                counts[split] += 1
    stamp.write_text(json.dumps({"params": params, "counts": counts}, indent=2))
    return counts


def render_digit(digit: np.ndarray, *, size: int, rng: np.random.Generator) -> np.ndarray:
    """One (size, size, 3) uint8 render of an (8, 8) digit with values in [0, 1]."""
    background = _texture(size, rng)
    mean = background.mean(axis=(0, 1))
    background = mean + rng.uniform(*TEXTURE_STRENGTH) * (background - mean)
    colour = _contrasting_colour(background.mean(axis=(0, 1)), rng)
    alpha = np.zeros((size, size), dtype=np.float32)
    for _ in range(rng.integers(0, 2)):
        _add_distractor(alpha, rng)
    distractor_colour = _contrasting_colour(background.mean(axis=(0, 1)), rng)
    canvas = background * (1 - alpha[..., None]) + distractor_colour * alpha[..., None]
    stroke = _place_digit(digit, size, rng)
    canvas = canvas * (1 - stroke[..., None]) + colour * stroke[..., None]
    canvas += rng.normal(0, 0.03, canvas.shape)
    return (np.clip(canvas, 0, 1) * 255).round().astype(np.uint8)


def _place_digit(digit: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """The digit's intensities at a random scale, aspect and position, as a (size, size) alpha map."""
    margin = round(size * MARGIN_FRACTION)
    height = round(size * rng.uniform(MIN_DIGIT_FRACTION, MAX_DIGIT_FRACTION))
    width = min(size - 2 * margin, round(height * rng.uniform(0.7, 1.2)))
    glyph = Image.fromarray((digit * 255).astype(np.uint8)).resize((width, height), Image.Resampling.BICUBIC)
    top = rng.integers(margin, size - margin - height + 1)
    left = rng.integers(margin, size - margin - width + 1)
    alpha = np.zeros((size, size), dtype=np.float32)
    alpha[top : top + height, left : left + width] = np.asarray(glyph, dtype=np.float32) / 255
    return alpha


def _texture(size: int, rng: np.random.Generator) -> np.ndarray:
    """A (size, size, 3) float background in [0, 1]: gradient, colour noise or stripes."""
    kind = rng.integers(3)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind == 0:
        a, b = rng.random(3), rng.random(3)
        angle = rng.uniform(0, 2 * np.pi)
        t = (np.cos(angle) * xs + np.sin(angle) * ys + 1) / 2
        return (a * (1 - t[..., None]) + b * t[..., None]).astype(np.float32)
    if kind == 1:
        cells = rng.integers(2, 7)
        grid = (rng.random((cells, cells, 3)) * 255).astype(np.uint8)
        return np.asarray(Image.fromarray(grid).resize((size, size), Image.Resampling.BICUBIC), np.float32) / 255
    a, b = rng.random(3), rng.random(3)
    angle, period = rng.uniform(0, np.pi), rng.uniform(0.15, 0.5)
    t = (np.sin(2 * np.pi * (np.cos(angle) * xs + np.sin(angle) * ys) / period) + 1) / 2
    return (a * (1 - t[..., None]) + b * t[..., None]).astype(np.float32)


def _contrasting_colour(reference: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    for _ in range(100):
        colour = rng.random(3)
        if np.abs(colour - reference).max() >= MIN_CONTRAST:
            return colour
    return 1 - np.round(reference)


def _add_distractor(alpha: np.ndarray, rng: np.random.Generator) -> None:
    """A short line segment anywhere on the canvas (a stroke that belongs to no digit)."""
    size = alpha.shape[0]
    x0, y0 = rng.uniform(0, size, 2)
    angle, length = rng.uniform(0, np.pi), rng.uniform(0.1, 0.3) * size
    for t in np.linspace(0, 1, int(length) * 2):
        x, y = int(x0 + t * length * np.cos(angle)), int(y0 + t * length * np.sin(angle))
        alpha[y : y + 1, x : x + 1] = 0.8
