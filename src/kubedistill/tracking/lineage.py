"""Facts that tie a model to what produced it: config hash, dataset fingerprint, the training run."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger(__name__)

# Written by a tracked training run next to config.yaml: which MLflow run holds its history.
RUN_FILE = "mlflow_run.json"
# Keys of config.yaml that say where or how a run was launched, not what was trained.
_NOT_HASHED = ("out", "overwrite", "resume_interrupted", "mlflow", "resolved", "num_workers", "loader_args")


def config_hash(config: Mapping[str, Any]) -> str:
    """sha256 (first 16 hex digits) of the training configuration without where/how it ran."""
    kept = {k: v for k, v in config.items() if k not in _NOT_HASHED}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def dataset_fingerprint(config: Mapping[str, Any]) -> str | None:
    """The training data's fingerprint: the one the trainer resolved (``resolved.data_fingerprint`` in
    config.yaml), else the one `kubedistill validate` wrote into report.json next to the manifest."""
    resolved = config.get("resolved") or {}
    if resolved.get("data_fingerprint"):
        return str(resolved["data_fingerprint"])
    data = config.get("data")
    if not isinstance(data, str) or not data.endswith(".jsonl") or "://" in data:
        return None
    report = Path(data).with_name("report.json")
    try:
        return str(json.loads(report.read_text())["fingerprint"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_training_run(run_dir: Path) -> dict[str, Any]:
    """What a training output folder says about itself: its config (if any) and MLflow run (if tracked)."""
    facts: dict[str, Any] = {"config": {}, "mlflow": {}}
    config_file = run_dir / "config.yaml"
    if config_file.is_file():
        facts["config"] = yaml.safe_load(config_file.read_text()) or {}
    run_file = run_dir / RUN_FILE
    if run_file.is_file():
        facts["mlflow"] = json.loads(run_file.read_text())
    return facts


def write_run_file(run_dir: Path, *, run_id: str, tracking_uri: str, experiment_id: str | None = None) -> None:
    (run_dir / RUN_FILE).write_text(
        json.dumps({"run_id": run_id, "tracking_uri": tracking_uri, "experiment_id": experiment_id}, indent=2)
    )
