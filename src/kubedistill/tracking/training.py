"""MLflow logging of a training run (rank 0 only): params, per-step curves, epoch times, artifacts."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from kubedistill.tracking.config import MLflowArgs, resolve_target
from kubedistill.tracking.lineage import RUN_FILE, config_hash, dataset_fingerprint, write_run_file
from kubedistill.tracking.runs import StepRun

logger = logging.getLogger(__name__)

STEP_METRICS = ("loss", "lr", "images_per_second")


class TrainingTracker:
    """Logs one training run to MLflow; does nothing when tracking is off or the server is unreachable.

    A resumed run (``resume=True`` and ``out/mlflow_run.json`` present) continues the same MLflow run.
    """

    def __init__(self, run: StepRun | None):
        self.run = run

    @classmethod
    def start(
        cls, args: MLflowArgs | Mapping | None, *, out: Path, config: Mapping[str, Any], resume: bool
    ) -> TrainingTracker:
        target = resolve_target(args)
        if not resume:
            (out / RUN_FILE).unlink(missing_ok=True)  # left by an overwritten run: it no longer describes `out`
        if target is None:
            return cls(None)
        previous = _previous_run_id(out, target.tracking_uri) if resume else None
        run = StepRun.open(target, "train", strict=False, tags=_tags(config), resume_run_id=previous)
        if run is None:
            logger.warning("training continues without MLflow; metrics are written to %s", out / "metrics.jsonl")
            return cls(None)
        write_run_file(out, run_id=run.run_id, tracking_uri=target.tracking_uri)
        if previous is None:
            run.log_params(config)
        return cls(run)

    @property
    def active(self) -> bool:
        return self.run is not None and not self.run.disabled

    @property
    def log_model(self) -> bool:
        return self.run is not None and self.run.target.log_model

    def log_step(self, record: Mapping[str, Any]) -> None:
        """``record``: a metrics.jsonl line (step, loss, lr, images_per_second, ...)."""
        if self.run is not None:
            self.run.log_metrics({k: record[k] for k in STEP_METRICS if k in record}, step=int(record["step"]))

    def log_epoch(self, epoch: int, seconds: float) -> None:
        if self.run is not None:
            self.run.log_metrics({"epoch_time_s": seconds}, step=epoch)

    def finish(self, *, artifacts: Iterable[tuple[Path, str | None]] = (), failed: bool = False) -> None:
        """Upload ``(path, artifact folder)`` pairs that exist and close the run."""
        if self.run is None:
            return
        for path, folder in artifacts:
            self.run.log_artifact(path, folder)
        self.run.finish("FAILED" if failed else "FINISHED")


def _tags(config: Mapping[str, Any]) -> dict[str, str]:
    method_args = config.get("method_args") or {}
    tags = {
        "kubedistill.student": str(config.get("model")),
        "kubedistill.teacher": str(method_args.get("teacher")),
        "kubedistill.method": str(config.get("method")),
        "kubedistill.config_hash": config_hash(config),
        "kubedistill.data": str(config.get("data")),
    }
    fingerprint = dataset_fingerprint(config)
    if fingerprint:
        tags["kubedistill.dataset_fingerprint"] = fingerprint
    teacher_sha256 = (config.get("resolved") or {}).get("teacher_sha256")
    if teacher_sha256:
        tags["kubedistill.teacher_sha256"] = teacher_sha256
    return tags


def _previous_run_id(out: Path, tracking_uri: str) -> str | None:
    import json

    try:
        previous = json.loads((out / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    return previous.get("run_id") if previous.get("tracking_uri") == tracking_uri else None
