"""MLflow logging of the short pipeline steps (validate, probe): one nested run each, never fatal."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kubedistill.tracking.config import MLflowArgs, resolve_target
from kubedistill.tracking.runs import StepRun

REPORT_SUFFIXES = (".json", ".md", ".png", ".txt", ".html")


def log_validation(
    report_dir: str | Path,
    counts: Mapping[str, int | float],
    *,
    mlflow: MLflowArgs | Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
) -> str | None:
    """Log the validate step: ``counts`` as metrics, the report files of ``report_dir`` as artifacts.

    Args:
        report_dir: the folder with report.json / report.md (the manifest itself is not uploaded: it can be
            large and the next steps read it from where it is).
        counts: e.g. {"num_images": 10000, "num_valid": 9990, "num_invalid": 10}; non-numeric values skipped.
        mlflow: the step's ``mlflow`` argument; None uses MLFLOW_TRACKING_URI / MLFLOW_RUN_ID.
        params: extra parameters to record (e.g. {"data": "gs://bucket/images"}).

    Returns:
        The MLflow run id, or None when tracking is off or the server is unreachable (a warning is logged;
        validation's own outputs do not depend on MLflow).
    """
    report_dir = Path(report_dir)
    tags = {}
    fingerprint = _fingerprint(report_dir / "report.json")
    if fingerprint:
        tags["kubedistill.dataset_fingerprint"] = fingerprint
    return _log_step(
        "validate", mlflow, metrics=counts, params=params, files=_report_files(report_dir), folder="validation",
        tags=tags,
    )  # fmt: skip


def log_probe(
    out_dir: str | Path,
    metrics: Mapping[str, Any],
    *,
    mlflow: MLflowArgs | Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
) -> str | None:
    """Log the probe step: its metrics, and metrics.json, confusion_matrix.json and the PNG as artifacts."""
    return _log_step(
        "probe", mlflow, metrics=metrics, params=params, files=_report_files(Path(out_dir)), folder="probe", tags={}
    )


def _log_step(
    step: str,
    mlflow: MLflowArgs | Mapping[str, Any] | None,
    *,
    metrics: Mapping[str, Any],
    params: Mapping[str, Any] | None,
    files: list[Path],
    folder: str,
    tags: Mapping[str, str],
) -> str | None:
    target = resolve_target(mlflow)
    if target is None:
        return None
    run = StepRun.open(target, step, strict=False, tags=tags)
    if run is None:
        return None
    if params:
        run.log_params(params)
    run.log_metrics({k: v for k, v in metrics.items() if _is_number(v)})
    for path in files:
        run.log_artifact(path, folder)
    run.finish()
    return run.run_id


def _report_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in REPORT_SUFFIXES)


def _fingerprint(report: Path) -> str | None:
    try:
        return str(json.loads(report.read_text())["fingerprint"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
