"""``kubedistill probe``: score an exported student on labeled train/val images and write the results.

Outputs in ``out``: metrics.json (see ``evaluate_features``), confusion_matrix.json (class names and the
linear and kNN matrices, rows = true class) and confusion_matrix.png. The metrics are also logged to MLflow
when tracking is configured.

References (optional): ``random_baseline`` probes the same architecture with random weights (where
distillation started) and ``teacher`` probes the teacher (what the student learned from), both through the
same feature extraction at the student's image size and normalization. Their metrics are added with a
``random_`` / ``teacher_`` prefix, and ``gap_closed`` = (student - random) / (teacher - random), linear top-1.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from kubedistill import storage
from kubedistill.data.datasets import resolve_num_workers
from kubedistill.data.manifest import load_labeled
from kubedistill.evaluation.features import extract_features, resolve_device
from kubedistill.evaluation.linear import DEFAULT_HOLDOUT_FRACTION, DEFAULT_L2_GRID
from kubedistill.evaluation.plots import save_confusion_png
from kubedistill.evaluation.probe import (
    DEFAULT_K,
    DEFAULT_TEMPERATURE,
    ProbeOutcome,
    evaluate_features,
    run_probes,
)
from kubedistill.models.export import load_student
from kubedistill.tracking.config import MLflowArgs
from kubedistill.utils import atomic_write_text

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
CONFUSION_FILE = "confusion_matrix.json"
CONFUSION_PNG = "confusion_matrix.png"
# The metrics kept for each reference model (random-init student, teacher).
REFERENCE_METRICS = ("linear_top1", "linear_top5", "knn_top1", "knn_top5")


@dataclass
class ProbeConfig:
    """Arguments of ``kubedistill probe``."""

    checkpoint: str
    train: str
    val: str
    out: str
    k: int = DEFAULT_K
    temperature: float = DEFAULT_TEMPERATURE
    batch_size: int = 64
    num_workers: int | Literal["auto"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    l2_grid: list[float] = field(default_factory=lambda: list(DEFAULT_L2_GRID))
    holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION
    seed: int = 0
    # References: the student's architecture with random weights (seeded), and the teacher it learned from
    # (a dinov2/... name or a TorchScript path/URI; teacher_weights as in `train`'s method_args).
    random_baseline: bool = False
    teacher: str | None = None
    teacher_weights: str | None = None
    mlflow: MLflowArgs | None = None

    def problems(self) -> list[str]:
        found = []
        for name in ("k", "batch_size"):
            if getattr(self, name) < 1:
                found.append(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.temperature <= 0:
            found.append(f"temperature: must be > 0, got {self.temperature}")
        if not 0 < self.holdout_fraction < 1:
            found.append(f"holdout_fraction: must be in (0, 1), got {self.holdout_fraction}")
        if not self.l2_grid or any(v < 0 for v in self.l2_grid):
            found.append(f"l2_grid: must be a non-empty list of penalties >= 0, got {self.l2_grid}")
        if self.num_workers != "auto" and self.num_workers < 0:
            found.append(f"num_workers: must be >= 0 or 'auto', got {self.num_workers}")
        if not self.out:
            found.append("out: must be a directory path")
        return found


@dataclass(frozen=True)
class ProbeResult:
    out: Path
    metrics: dict[str, Any]
    mlflow_run_id: str | None


def run_probe(config: ProbeConfig) -> ProbeResult:
    """Load the student, extract train and val features once, run the probes, write and log the results."""
    from kubedistill.tracking.steps import log_probe

    with tempfile.TemporaryDirectory(prefix="kubedistill-probe-") as folder:  # a gs:// checkpoint is fetched
        student = load_student(storage.localize(config.checkpoint, folder))
    device = resolve_device(config.device)
    workers = resolve_num_workers(config.num_workers, compute_on_cpu=device.type == "cpu")
    train_uris, train_labels = load_labeled(config.train)
    val_uris, val_labels = load_labeled(config.val)
    logger.info(
        "probe %s (%s, %d-d) on %d train / %d val images, device %s", config.checkpoint, student.metadata.model,
        student.feature_dim, len(train_uris), len(val_uris), device,
    )  # fmt: skip
    started = time.perf_counter()
    extract = dict(
        image_size=student.metadata.image_size, normalize=(student.metadata.mean, student.metadata.std),
        batch_size=config.batch_size, num_workers=workers, device=device,
    )  # fmt: skip
    train_features = extract_features(student, train_uris, **extract)
    val_features = extract_features(student, val_uris, **extract)
    extracted = time.perf_counter()
    probe_args = dict(
        k=config.k, temperature=config.temperature, l2_grid=config.l2_grid, holdout_fraction=config.holdout_fraction,
        seed=config.seed, device=device,
    )  # fmt: skip
    outcome = run_probes(train_features, train_labels, val_features, val_labels, **probe_args)
    metrics = {
        **outcome.metrics,
        "extract_seconds": round(extracted - started, 3),
        "probe_seconds": round(time.perf_counter() - extracted, 3),
    }
    for prefix, model in _references(config, student):
        scored = evaluate_features(
            extract_features(model, train_uris, **extract), train_labels,
            extract_features(model, val_uris, **extract), val_labels, **probe_args,
        )  # fmt: skip
        metrics.update({f"{prefix}_{key}": scored[key] for key in REFERENCE_METRICS})
    if "random_linear_top1" in metrics and "teacher_linear_top1" in metrics:
        metrics["gap_closed"] = gap_closed(
            metrics["linear_top1"], metrics["random_linear_top1"], metrics["teacher_linear_top1"]
        )
    out = write_outputs(Path(config.out), outcome, metrics)
    logger.info("probe: %s", ", ".join(f"{k}={metrics[k]:.4f}" for k in ("linear_top1", "knn_top1")))
    params = {"checkpoint": config.checkpoint, "train": config.train, "val": config.val, "k": config.k,
              "temperature": config.temperature, "model": student.metadata.model}  # fmt: skip
    run_id = log_probe(out, metrics, mlflow=config.mlflow, params=params)
    return ProbeResult(out, metrics, run_id)


def _references(config: ProbeConfig, student) -> list[tuple[str, torch.nn.Module]]:
    """(metric prefix, eval-mode model) of each reference asked for."""
    from kubedistill.models.export import LoadedStudent
    from kubedistill.models.students import build_student
    from kubedistill.models.teachers import load_teacher

    references: list[tuple[str, torch.nn.Module]] = []
    if config.random_baseline:
        torch.manual_seed(config.seed)
        random = build_student(student.metadata.model, image_size=student.metadata.image_size)
        references.append(("random", LoadedStudent(random, student.metadata).eval()))
    if config.teacher:
        references.append(("teacher", load_teacher(config.teacher, config.teacher_weights)))
    return references


def gap_closed(student: float, random: float, teacher: float) -> float:
    """The share of the random-to-teacher gap the student closed (1.0: as good as the teacher); NaN without a gap."""
    gap = teacher - random
    return (student - random) / gap if abs(gap) > 1e-9 else float("nan")


def write_outputs(out: Path, outcome: ProbeOutcome, metrics: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / METRICS_FILE, json.dumps(metrics, indent=2))
    confusion = {
        "classes": outcome.classes,
        "rows": "true class",
        "columns": "predicted class",
        **{name: matrix.tolist() for name, matrix in outcome.confusion.items()},
    }
    atomic_write_text(out / CONFUSION_FILE, json.dumps(confusion))
    save_confusion_png({"linear probe": outcome.confusion["linear"], "kNN": outcome.confusion["knn"]},
                       outcome.classes, out / CONFUSION_PNG)  # fmt: skip
    return out
