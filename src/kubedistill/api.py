"""The public Python API. Each function is also a CLI command (``kubedistill <command> key=value ...``)."""

from __future__ import annotations

import os
from typing import Any, Literal

from kubedistill.config import build_train_config, method_defaults
from kubedistill.models.export import LoadedStudent
from kubedistill.models.export import load_student as _load_student
from kubedistill.models.teachers import load_teacher
from kubedistill.training.trainer import TrainResult, run_training

__all__ = ["describe", "load_student", "load_teacher", "train"]

PathLike = str | os.PathLike


def train(
    *,
    out: PathLike,
    data: PathLike | list[PathLike],
    model: str,
    method: str = "distillation",
    method_args: dict[str, Any] | None = None,
    epochs: int = 100,
    max_steps: int | None = None,
    batch_size: int = 128,
    num_workers: int | Literal["auto"] = "auto",
    accelerator: str = "auto",
    devices: int | Literal["auto"] = "auto",
    num_nodes: int = 1,
    precision: str = "auto",
    seed: int = 0,
    resume_interrupted: bool = False,
    checkpoint: PathLike | None = None,
    overwrite: bool = False,
    optim: str = "auto",
    optim_args: dict[str, Any] | None = None,
    transform_args: dict[str, Any] | None = None,
    loader_args: dict[str, Any] | None = None,
    log_every_n_steps: int = 10,
    checkpoint_every_n_steps: int | None = None,
    mlflow: dict[str, Any] | None = None,
) -> TrainResult:
    """Distill the teacher (``method_args.teacher``, DINOv2 ViT-B/14 by default) into ``model`` without labels.

    ``out`` receives config.yaml, train.log, metrics.jsonl, checkpoints/ and exported/student.pt.
    ``batch_size`` is the global batch (split over all processes). Raises ConfigError listing every invalid
    argument at once.
    """
    values = {k: v for k, v in locals().items() if not (k.endswith("_args") and v is None)}
    return run_training(build_train_config(_plain(values)))


def describe(method: str = "distillation") -> dict[str, Any]:
    """Every default of ``method``: method_args, optim_args, transform_args, loader_args, epochs, batch_size."""
    return method_defaults(method)


def load_student(path: PathLike) -> LoadedStudent:
    """Load ``exported/student.pt``: an eval-mode module mapping normalized (B, 3, H, W) images to (B, C)."""
    return _load_student(path)


def _plain(value: Any) -> Any:
    """Paths as strings, recursively, so the config holds only YAML-friendly values."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
