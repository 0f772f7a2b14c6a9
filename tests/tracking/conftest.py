"""Exported students for the tracking tests (the MLflow server fixture is in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from kubedistill.models.export import StudentMetadata, export_student
from kubedistill.models.students import build_student

# A small torchvision student: registry tests upload several versions of it.
SMALL_STUDENT = "torchvision/mobilenet_v3_small"


def make_exported_student(out: Path, *, seed: int, model: str = SMALL_STUDENT, size: int = 32) -> Path:
    """``out/exported/student.pt`` of a random-init student (different ``seed`` -> different weights)."""
    torch.manual_seed(seed)
    student = build_student(model, image_size=(size, size))
    metadata = StudentMetadata(
        model=model, feature_dim=student.feature_dim, image_size=(size, size),
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
    )  # fmt: skip
    path = out / "exported" / "student.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    export_student(student, metadata, path)
    return path
