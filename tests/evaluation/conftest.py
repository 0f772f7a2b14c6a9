"""Labeled image folders (class-per-folder) and exported random-init students for the probe tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from kubedistill.models.export import StudentMetadata, export_student
from kubedistill.models.students import build_student

# Clearly different colours: a random-init network separates them, so the probe must reach ~100%.
COLOURS = [(220, 30, 30), (30, 200, 40), (40, 60, 220), (230, 220, 40), (200, 40, 210), (40, 210, 220)]


def write_labeled_images(root: Path, per_class: int, *, seed: int, shuffle_labels: bool = False) -> Path:
    """root/<class>/<image>.png: class c is colour c with noise and a random darker square.

    With ``shuffle_labels`` the same kind of images land in random class folders (labels carry no signal).
    """
    rng = np.random.default_rng(seed)
    for c, colour in enumerate(COLOURS):
        for i in range(per_class):
            pixels = np.clip(np.array(colour) + rng.normal(0, 20, (36, 44, 3)), 0, 255)
            y, x = rng.integers(0, 20, 2)
            pixels[y : y + 12, x : x + 12] *= 0.7
            label = int(rng.integers(0, len(COLOURS))) if shuffle_labels else c
            path = root / f"class{label}" / f"c{c}-{i:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels.astype(np.uint8)).save(path)
    return root


def export_random_student(path: Path, *, model: str = "torchvision/resnet18", size: int = 32, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    student = build_student(model, image_size=(size, size))
    metadata = StudentMetadata(
        model=model, feature_dim=student.feature_dim, image_size=(size, size),
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
    )  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    export_student(student, metadata, path)
    return path
