"""The public Python API. Each function is also a CLI command (``kubedistill <command> key=value ...``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from kubedistill.config import build, build_train_config, method_defaults
from kubedistill.errors import ConfigError
from kubedistill.models.export import LoadedStudent
from kubedistill.models.export import load_student as _load_student
from kubedistill.models.teachers import load_teacher
from kubedistill.training.trainer import TrainResult, run_training

if TYPE_CHECKING:
    from kubedistill.config import ValidateConfig
    from kubedistill.data.validation import ValidationResult
    from kubedistill.evaluation.run import ProbeResult
    from kubedistill.tracking.registry import RegistrationResult

__all__ = ["describe", "load_student", "load_teacher", "probe", "register", "train", "validate"]

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
    compile: bool | Literal["auto"] = "auto",
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


def validate(
    *,
    data: PathLike,
    out: PathLike,
    min_size: int = 32,
    max_bad_fraction: float = 0.05,
    dedup: bool = True,
    labels: Literal["auto", "folder", "none"] = "auto",
    workers: int | Literal["auto"] = "auto",
    max_pixels: int = 178_956_970,
    mlflow: dict[str, Any] | None = None,
) -> ValidationResult:
    """Check every image under ``data`` (a folder or gs://bucket/prefix) and write ``out/manifest.jsonl`` (the
    good images), ``out/report.json`` and ``out/report.md`` (``out`` may be local or gs://).

    Every file is listed and every candidate image decoded fully. ``result.passed`` is False (the CLI exits 3)
    when more than ``max_bad_fraction`` of the images have problems or no valid image is left. ``labels``:
    "auto" labels a class-per-folder layout (root/<class>/...), "folder" requires one, "none" never labels.
    ``mlflow`` (or MLFLOW_TRACKING_URI / MLFLOW_RUN_ID) logs the counts and the report as a "validate" run.
    Raises ConfigError for invalid arguments and DataError when the data cannot be listed.
    """
    from kubedistill.config import build_validate_config

    values = {k: v for k, v in locals().items() if k != "build_validate_config"}
    return validate_from_config(build_validate_config(_plain(values)))


def validate_from_config(config: ValidateConfig) -> ValidationResult:
    """``validate`` for a built config (the CLI's path): validate, then log the report and counts to MLflow
    when tracking is configured (a tracking failure is logged and never changes the outcome)."""
    import tempfile

    from kubedistill.data.validation import REPORT_JSON, REPORT_MD, render_markdown, run_validation
    from kubedistill.tracking.steps import log_validation

    result = run_validation(config)
    totals = result.report["totals"]
    counts = {
        "files_seen": totals["files_seen"],
        "images_ok": totals["images_ok"],
        "bad": totals["bad"],
        "bad_fraction": totals["bad_fraction"],
        "passed": int(result.passed),
        **{f"problem_{k}": v for k, v in totals["problems"].items()},
    }
    with tempfile.TemporaryDirectory() as folder:  # `out` may be gs://: log local copies of the report
        Path(folder, REPORT_JSON).write_text(json.dumps(result.report, indent=2))
        Path(folder, REPORT_MD).write_text(render_markdown(result.report))
        result.mlflow_run_id = log_validation(
            folder, counts, mlflow=config.mlflow, params={"data": config.data, "out": config.out}
        )
    return result


def describe(method: str = "distillation") -> dict[str, Any]:
    """Every default of ``method``: method_args, optim_args, transform_args, loader_args, epochs, batch_size."""
    return method_defaults(method)


def load_student(path: PathLike) -> LoadedStudent:
    """Load ``exported/student.pt``: an eval-mode module mapping normalized (B, 3, H, W) images to (B, C)."""
    return _load_student(path)


def probe(
    *,
    checkpoint: PathLike,
    train: PathLike,
    val: PathLike,
    out: PathLike,
    k: int = 20,
    temperature: float = 0.07,
    batch_size: int = 64,
    num_workers: int | Literal["auto"] = "auto",
    device: str = "auto",
    l2_grid: list[float] | None = None,
    holdout_fraction: float = 0.2,
    seed: int = 0,
    random_baseline: bool = False,
    teacher: str | None = None,
    teacher_weights: str | None = None,
    mlflow: dict[str, Any] | None = None,
) -> ProbeResult:
    """Score the exported student ``checkpoint`` with a linear probe and a weighted kNN classifier.

    ``train`` and ``val`` are labeled image sets (class-per-folder roots or manifests with ``label``); the
    probe's penalty is chosen on a held-out part of ``train``, never on ``val``. Writes ``out/metrics.json``,
    ``out/confusion_matrix.json`` and ``out/confusion_matrix.png``, and logs them to MLflow when tracking is
    configured (``mlflow`` or MLFLOW_TRACKING_URI). Returns a ProbeResult (out, metrics, mlflow_run_id).

    References, scored the same way: ``random_baseline`` adds the student's architecture with random weights
    (``random_*`` metrics), ``teacher`` (with ``teacher_weights``, as in ``train``'s method_args) adds the
    teacher (``teacher_*``); with both, ``gap_closed`` is the share of the random-to-teacher gap the student
    closed (linear top-1).
    """
    values = {k: v for k, v in _plain(dict(locals())).items() if v is not None}
    from kubedistill.evaluation.run import ProbeConfig, run_probe

    return run_probe(_build(ProbeConfig, values))


def register(
    *,
    model: PathLike,
    metrics: PathLike,
    name: str,
    min_top1: float = 0.0,
    metric: str = "linear_top1",
    tracking_uri: str | None = None,
    dataset_fingerprint: str | None = None,
    train_dir: PathLike | None = None,
    mlflow: dict[str, Any] | None = None,
) -> RegistrationResult:
    """Register the exported student ``model`` in the MLflow Model Registry under ``name``.

    Alias ``champion`` when ``metrics[metric]`` >= ``min_top1`` and >= the current champion's, else
    ``challenger`` (the champion stays). The same model file registered again returns its existing version.
    Lineage tags come from the training folder (``train_dir``, default: the folder above ``exported/``).
    Raises TrackingError when MLflow cannot be reached after bounded retries.
    """
    values = _plain(dict(locals()))
    from kubedistill.tracking.registry import RegisterConfig, register_model

    return register_model(_build(RegisterConfig, values))


def _build(cls: type, values: dict[str, Any]) -> Any:
    """Dataclass ``cls`` from ``values``; ConfigError listing every problem."""
    problems: list[str] = []
    config = build(cls, values, problems=problems)
    if problems or config is None:
        raise ConfigError(problems)
    return config


def _plain(value: Any) -> Any:
    """Paths as strings, recursively, so the config holds only YAML-friendly values."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
