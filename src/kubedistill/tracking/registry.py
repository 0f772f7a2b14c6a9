"""``kubedistill register``: log the student as an MLflow model, register a version, and gate the alias.

The version gets alias ``champion`` when its metric is >= ``min_top1`` and >= the current champion's;
otherwise ``challenger`` (the champion stays). Registering the same exported model again (same sha256) finds
the version made the first time instead of creating another.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kubedistill import storage
from kubedistill.errors import ConfigError
from kubedistill.storage import sha256_file
from kubedistill.tracking.config import ENV_PARENT_RUN_ID, MLflowArgs, TrackingTarget, resolve_target
from kubedistill.tracking.lineage import RUN_FILE, config_hash, dataset_fingerprint, read_training_run
from kubedistill.tracking.runs import StepRun, TrackingError, make_client, wait_until_reachable

logger = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
MODEL_ARTIFACT = "model"
SHA_TAG = "kubedistill.model_sha256"
GATE_TAG = "kubedistill.gate"
METRIC_TAG_PREFIX = "probe."
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


@dataclass
class RegisterConfig:
    """Arguments of ``kubedistill register``."""

    model: str
    metrics: str
    name: str
    min_top1: float = 0.0
    metric: str = "linear_top1"
    tracking_uri: str | None = None
    # Lineage: the validate step's fingerprint; read from the training run's config when not given.
    dataset_fingerprint: str | None = None
    # The training output folder (config.yaml, mlflow_run.json); default: the folder above exported/.
    train_dir: str | None = None
    mlflow: MLflowArgs | None = None

    def problems(self) -> list[str]:
        found = []
        # gs:// files are checked when they are fetched (StorageError names the URI).
        if not storage.is_gcs(self.model) and not Path(self.model).is_file():
            found.append(f"model: {self.model} is not a file; give the exported student (out/exported/student.pt)")
        if not storage.is_gcs(self.metrics) and not Path(self.metrics).is_file():
            found.append(f"metrics: {self.metrics} is not a file; give the probe's metrics.json")
        if not _NAME_RE.match(self.name or ""):
            found.append(f"name: {self.name!r} must start with a letter or digit and use only letters, digits, _ . -")
        if self.train_dir is not None and not storage.is_gcs(self.train_dir) and not (Path(self.train_dir) / "config.yaml").is_file():
            found.append(f"train_dir: {self.train_dir} has no config.yaml; give the training run's output folder")
        if not 0.0 <= self.min_top1 <= 1.0:
            found.append(f"min_top1: must be a fraction in [0, 1], got {self.min_top1}")
        return found


@dataclass(frozen=True)
class RegistrationResult:
    name: str
    version: int
    alias: str  # "champion" or "challenger": what the gate decided for this version
    created: bool  # False when this model was registered before (nothing new was made)
    metric: str
    value: float
    champion_version: int | None  # the champion after this call
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def register_model(config: RegisterConfig) -> RegistrationResult:
    with tempfile.TemporaryDirectory(prefix="kubedistill-register-") as folder:
        return _register(_local_inputs(config, Path(folder)))


def _local_inputs(config: RegisterConfig, folder: Path) -> RegisterConfig:
    """``config`` with gs:// inputs (a run folder in a bucket) copied into ``folder``, laid out as a run folder:
    exported/student.pt(+.json), config.yaml and mlflow_run.json (lineage), metrics.json."""
    if not any(storage.is_gcs(v) for v in (config.model, config.metrics, config.train_dir or "")):
        return config
    model = storage.localize(config.model, folder / "exported", "student.pt")
    meta = config.model.rsplit(".", 1)[0] + ".json"
    if storage.is_gcs(meta) and storage.exists(meta):
        storage.fetch(meta, folder / "exported" / "student.json")
    train_dir = config.train_dir or (config.model.rsplit("/", 2)[0] if storage.is_gcs(config.model) else None)
    if train_dir and storage.is_gcs(train_dir):
        for name in ("config.yaml", RUN_FILE):
            if storage.exists(storage.join(train_dir, name)):
                storage.fetch(storage.join(train_dir, name), folder / name)
        train_dir = str(folder)
    metrics = storage.localize(config.metrics, folder, "metrics.json")
    return dataclasses.replace(config, model=str(model), metrics=str(metrics), train_dir=train_dir)


def _register(config: RegisterConfig) -> RegistrationResult:
    metrics = _read_metrics(config)
    value = float(metrics[config.metric])
    target = _target(config)
    wait_until_reachable(target.tracking_uri, retries=target.connect_retries, backoff_s=target.connect_backoff_s)
    client = make_client(target.tracking_uri)
    model_path = Path(config.model)
    sha = sha256_file(model_path)
    existing = _find_version(client, config.name, sha)
    if existing is not None:
        return _already_registered(client, config, existing, value)
    tags = _lineage_tags(config, target, model_path, sha, metrics)
    run = StepRun.open(target, "register", strict=True, tags={"kubedistill.model_sha256": sha})
    assert run is not None  # strict runs raise instead
    run.log_params({"name": config.name, "metric": config.metric, "min_top1": config.min_top1})
    run.log_metrics({k: v for k, v in metrics.items() if _is_number(v)})
    model_uri, model_id = _log_model(target, run.run_id, model_path)
    version = _create_version(client, config.name, model_uri, model_id, run.run_id, tags)
    alias, champion_version, reason = _gate(client, config, version, value)
    client.set_registered_model_alias(config.name, alias, str(version))
    client.set_model_version_tag(config.name, str(version), GATE_TAG, alias)
    run.set_tags({"kubedistill.registered_version": version, "kubedistill.alias": alias})
    run.finish()
    logger.info("registered %s version %d as %s: %s", config.name, version, alias, reason)
    return RegistrationResult(config.name, version, alias, True, config.metric, value, champion_version, reason)


def _read_metrics(config: RegisterConfig) -> dict[str, Any]:
    try:
        metrics = json.loads(Path(config.metrics).read_text())
    except ValueError as e:
        raise ConfigError([f"metrics: {config.metrics} is not JSON ({e}); give the probe's metrics.json"]) from e
    if not isinstance(metrics, dict) or not _is_number(metrics.get(config.metric)):
        keys = ", ".join(k for k, v in metrics.items() if _is_number(v)) if isinstance(metrics, dict) else ""
        raise ConfigError([f"metric: {config.metric!r} is not a number in {config.metrics}; numeric keys: {keys}"])
    return metrics


def _target(config: RegisterConfig) -> TrackingTarget:
    args = config.mlflow or MLflowArgs()
    if config.tracking_uri:
        args = MLflowArgs(**{**asdict(args), "tracking_uri": config.tracking_uri})
    target = resolve_target(args)
    if target is None:
        raise ConfigError(["tracking_uri: no MLflow server given; pass tracking_uri=... or set MLFLOW_TRACKING_URI"])
    return target


def _find_version(client: Any, name: str, sha: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        return None
    matches = [v for v in versions if v.tags.get(SHA_TAG) == sha]
    return min(matches, key=lambda v: int(v.version)) if matches else None


def _already_registered(client: Any, config: RegisterConfig, version: Any, value: float) -> RegistrationResult:
    champion = _champion(client, config.name)
    # Its state now: the gate's decision may be stale (a later version can have taken the champion alias).
    alias = CHAMPION if champion is not None and champion.version == version.version else CHALLENGER
    reason = f"this model (sha256 {version.tags[SHA_TAG][:12]}) is already version {version.version}; nothing new"
    logger.info("%s: %s", config.name, reason)
    return RegistrationResult(
        config.name, int(version.version), alias, False, config.metric, value,
        int(champion.version) if champion else None, reason,
    )  # fmt: skip


def _lineage_tags(
    config: RegisterConfig, target: TrackingTarget, model_path: Path, sha: str, metrics: Mapping[str, Any]
) -> dict[str, str]:
    # out/exported/student.pt -> out/, unless the pipeline passes the training folder separately.
    facts = read_training_run(Path(config.train_dir) if config.train_dir else model_path.parent.parent)
    train_config = facts["config"]
    meta_file = model_path.with_suffix(".json")
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    fingerprint = config.dataset_fingerprint or dataset_fingerprint(train_config) or "unknown"
    tags = {
        SHA_TAG: sha,
        "kubedistill.dataset_fingerprint": fingerprint,
        "kubedistill.student": str(meta.get("model") or train_config.get("model") or "unknown"),
        "kubedistill.teacher": str((train_config.get("method_args") or {}).get("teacher", "unknown")),
        "kubedistill.teacher_sha256": str((train_config.get("resolved") or {}).get("teacher_sha256")
                                          or (meta.get("provenance") or {}).get("teacher_sha256") or "unknown"),
        "kubedistill.method": str(train_config.get("method", "unknown")),
        "kubedistill.config_hash": config_hash(train_config) if train_config else "unknown",
        "kubedistill.pipeline_run_id": target.parent_run_id or "none",
        "kubedistill.train_run_id": str(facts["mlflow"].get("run_id", "none")),
        "kubedistill.data": str(train_config.get("data", "unknown")),
    }
    tags.update({METRIC_TAG_PREFIX + k: repr(float(v)) for k, v in metrics.items() if _is_number(v)})
    return tags


def _log_model(target: TrackingTarget, run_id: str, model_path: Path) -> tuple[str, str]:
    """Log the student as an MLflow model in run ``run_id``: pytorch flavour holding a TorchScript program of the
    served module (preprocessing included; torch alone loads it) + pyfunc returning embeddings.

    Returns (model URI, logged-model id).
    """
    import mlflow
    import numpy as np
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from kubedistill.models.export import load_student
    from kubedistill.tracking.model import compile_for_serving

    student = load_student(model_path)
    program = compile_for_serving(student)  # TorchScript: loads with torch alone, no kubedistill
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, -1, -1))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, student.feature_dim))]),
    )
    requirements = [f"torch=={torch.__version__.split('+')[0]}"]
    previous_uri = mlflow.get_tracking_uri()
    # mlflow.end_run() deletes MLFLOW_RUN_ID (the pipeline's parent run) from the environment: keep it.
    parent_env = os.environ.get(ENV_PARENT_RUN_ID)
    mlflow.set_tracking_uri(target.tracking_uri)
    try:
        # The run exists already (StepRun); start_run(run_id=...) only makes it the active one for log_model.
        with mlflow.start_run(run_id=run_id), contextlib.redirect_stdout(sys.stderr):
            info = mlflow.pytorch.log_model(
                program, name=MODEL_ARTIFACT, serialization_format="pickle", signature=signature,
                pip_requirements=requirements,
            )  # fmt: skip
    except Exception as e:
        raise TrackingError(f"could not log the model to MLflow at {target.tracking_uri}: {e}") from e
    finally:
        mlflow.set_tracking_uri(previous_uri)
        if parent_env is not None:
            os.environ[ENV_PARENT_RUN_ID] = parent_env
    return info.model_uri, info.model_id


def _create_version(
    client: Any, name: str, model_uri: str, model_id: str, run_id: str, tags: Mapping[str, str]
) -> int:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as e:
        if "RESOURCE_ALREADY_EXISTS" not in str(e.error_code):
            raise TrackingError(f"could not create registered model {name!r}: {e}") from e
    try:
        version = client.create_model_version(
            name, source=model_uri, run_id=run_id, tags=dict(tags), model_id=model_id
        )
    except MlflowException as e:
        raise TrackingError(f"could not register a version of {name!r}: {e}") from e
    return int(version.version)


def _champion(client: Any, name: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def _gate(client: Any, config: RegisterConfig, version: int, value: float) -> tuple[str, int | None, str]:
    """(alias for ``version``, champion version afterwards, why)."""
    metric = f"{config.metric}={value:.4f}"
    if value < config.min_top1:
        champion = _champion(client, config.name)
        return CHALLENGER, _version(champion), f"{metric} is below min_top1={config.min_top1}"
    champion = _champion(client, config.name)
    if champion is None:
        return CHAMPION, version, f"{metric} >= min_top1={config.min_top1} and there is no champion yet"
    recorded = champion.tags.get(METRIC_TAG_PREFIX + config.metric)
    if recorded is None:
        return CHALLENGER, _version(champion), (
            f"champion version {champion.version} has no recorded {config.metric}, so it cannot be compared; "
            "move the alias by hand if this version should replace it"
        )
    if value >= float(recorded):
        return CHAMPION, version, f"{metric} >= champion version {champion.version}'s {float(recorded):.4f}"
    return CHALLENGER, _version(champion), f"{metric} < champion version {champion.version}'s {float(recorded):.4f}"


def _version(model_version: Any | None) -> int | None:
    return int(model_version.version) if model_version is not None else None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
