"""Where and how a step logs to MLflow: ``MLflowArgs`` (the ``mlflow=`` argument) resolved against the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

DEFAULT_EXPERIMENT = "kubedistill"
ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"
ENV_EXPERIMENT_NAME = "MLFLOW_EXPERIMENT_NAME"
ENV_PARENT_RUN_ID = "MLFLOW_RUN_ID"


@dataclass
class MLflowArgs:
    """``mlflow`` argument of every step (``mlflow.tracking_uri=http://mlflow:5000`` on the command line).

    Unset fields fall back to MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME and MLFLOW_RUN_ID. MLFLOW_RUN_ID is
    the pipeline's run: each step logs a nested run under it. ``enabled="auto"`` tracks when a tracking URI
    is known; false turns tracking off even then.
    """

    enabled: bool | Literal["auto"] = "auto"
    tracking_uri: str | None = None
    experiment_name: str | None = None
    parent_run_id: str | None = None
    run_name: str | None = None
    # Reachability check before the first call: attempts, and the first wait (doubled after each failure).
    connect_retries: int = 4
    connect_backoff_s: float = 1.0
    # Upload the exported student (train) as a run artifact.
    log_model: bool = True

    def problems(self) -> list[str]:
        found = []
        if self.connect_retries < 1:
            found.append(f"connect_retries: must be >= 1, got {self.connect_retries}")
        if self.connect_backoff_s < 0:
            found.append(f"connect_backoff_s: must be >= 0, got {self.connect_backoff_s}")
        if self.enabled is True and not (self.tracking_uri or os.environ.get(ENV_TRACKING_URI)):
            found.append(f"enabled: true needs tracking_uri (or the {ENV_TRACKING_URI} environment variable)")
        return found


@dataclass(frozen=True)
class TrackingTarget:
    """A resolved MLflow destination: everything a step needs to open its run."""

    tracking_uri: str
    experiment_name: str
    parent_run_id: str | None
    run_name: str | None
    connect_retries: int
    connect_backoff_s: float
    log_model: bool


def resolve_target(
    args: MLflowArgs | Mapping | None, environ: Mapping[str, str] | None = None
) -> TrackingTarget | None:
    """The MLflow destination, or None when tracking is off (no tracking URI anywhere, or enabled=false).

    Read the environment here, once: ``mlflow.start_run()`` deletes MLFLOW_RUN_ID from os.environ.
    """
    environ = os.environ if environ is None else environ
    if args is None:
        args = MLflowArgs()
    elif isinstance(args, Mapping):
        args = MLflowArgs(**args)
    uri = args.tracking_uri or environ.get(ENV_TRACKING_URI)
    if args.enabled is False or not uri:
        return None
    return TrackingTarget(
        tracking_uri=uri,
        experiment_name=args.experiment_name or environ.get(ENV_EXPERIMENT_NAME) or DEFAULT_EXPERIMENT,
        parent_run_id=args.parent_run_id or environ.get(ENV_PARENT_RUN_ID) or None,
        run_name=args.run_name,
        connect_retries=args.connect_retries,
        connect_backoff_s=args.connect_backoff_s,
        log_model=args.log_model,
    )
