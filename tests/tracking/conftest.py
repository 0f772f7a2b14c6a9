"""A real ``mlflow server`` (sqlite store in a temp dir) shared by the tracking tests, and exported students."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from kubedistill.devtools.mlflow_server import MlflowServer
from kubedistill.models.export import StudentMetadata, export_student
from kubedistill.models.students import build_student

MLFLOW_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_REGISTRY_URI")
# A small torchvision student: registry tests upload several versions of it.
SMALL_STUDENT = "torchvision/mobilenet_v3_small"


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> Iterator[str]:
    """URL of one MLflow server for the whole session (local artifact store, proxied)."""
    with MlflowServer(tmp_path_factory.mktemp("mlflow")) as url:
        yield url


@pytest.fixture(autouse=True)
def _no_mlflow_environment(monkeypatch):
    # A developer's MLFLOW_* settings must not leak into the tests (nor the tests' into each other).
    for name in MLFLOW_ENV:
        monkeypatch.delenv(name, raising=False)


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
