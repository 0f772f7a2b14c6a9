"""Shared fixtures: small real image folders made on the fly."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def write_images(folder: Path, count: int, *, seed: int = 0, size: tuple[int, int] = (40, 48)) -> list[Path]:
    """``count`` JPEG/PNG images of varied content and sizes under ``folder`` (two subfolders)."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        height, width = size[0] + int(rng.integers(0, 16)), size[1] + int(rng.integers(0, 16))
        # Smooth random blobs rather than pure noise, so images differ in structure.
        base = rng.random((4, 4, 3))
        pixels = np.kron(base, np.ones((height // 4 + 1, width // 4 + 1, 1)))[:height, :width]
        array = (pixels * 255).astype(np.uint8)
        path = folder / f"part{i % 2}" / (f"img{i:03d}.jpg" if i % 3 else f"img{i:03d}.PNG")
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(path, format="JPEG" if path.suffix == ".jpg" else "PNG")
        paths.append(path)
    return paths


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    write_images(folder, 64)
    return folder


@pytest.fixture(autouse=True)
def _quiet_random_teacher_warning():
    # Tests use random teachers on purpose; the warning itself is tested in tests/models.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*RANDOM weights.*")
        yield
