"""Where and how a step logs to MLflow: ``MLflowArgs`` (the ``mlflow=`` argument) resolved against the environment.

Two environments set MLFLOW_RUN_ID with different meanings:

- the kubedistill pipeline without KFP's MLflow plugin: MLFLOW_RUN_ID is the pipeline's (parent) run, and each
  step opens a nested run under it;
- KFP's MLflow plugin (backend >= 2.17, ``injectUserEnvVars``): KFP_MLFLOW_CONFIG is set, MLFLOW_RUN_ID is the
  task's *own* nested run, created by KFP, and the parent is KFP_MLFLOW_CONFIG's ``parentRunId``. A step then
  logs into that run instead of opening another.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

DEFAULT_EXPERIMENT = "kubedistill"
ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"
ENV_EXPERIMENT_NAME = "MLFLOW_EXPERIMENT_NAME"
ENV_PARENT_RUN_ID = "MLFLOW_RUN_ID"
ENV_EXPERIMENT_ID = "MLFLOW_EXPERIMENT_ID"
ENV_KFP_MLFLOW_CONFIG = "KFP_MLFLOW_CONFIG"

logger = logging.getLogger(__name__)


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
    # Log into this existing run instead of opening one (the run KFP's MLflow plugin made for the task).
    run_id: str | None = None
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
    run_id: str | None = None  # an existing run to log into (KFP's MLflow plugin), else None: open a new one
    experiment_id: str | None = None  # when known as an id (KFP's plugin gives MLFLOW_EXPERIMENT_ID)


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
    plugin = kfp_plugin_config(environ)
    uri = args.tracking_uri or environ.get(ENV_TRACKING_URI) or (plugin or {}).get("endpoint")
    if args.enabled is False or not uri:
        return None
    if plugin is not None and environ.get(ENV_PARENT_RUN_ID) and not args.parent_run_id:
        # KFP's plugin: MLFLOW_RUN_ID is this task's own run; its parent is the pipeline's run.
        own_run, parent = args.run_id or environ[ENV_PARENT_RUN_ID], plugin.get("parentRunId") or None
    else:
        own_run, parent = args.run_id, args.parent_run_id or environ.get(ENV_PARENT_RUN_ID) or None
    return TrackingTarget(
        tracking_uri=uri,
        experiment_name=args.experiment_name or environ.get(ENV_EXPERIMENT_NAME) or DEFAULT_EXPERIMENT,
        parent_run_id=parent,
        run_name=args.run_name,
        connect_retries=args.connect_retries,
        connect_backoff_s=args.connect_backoff_s,
        log_model=args.log_model,
        run_id=own_run,
        experiment_id=None if args.experiment_name else environ.get(ENV_EXPERIMENT_ID) or (plugin or {}).get("experimentId"),
    )


def kfp_plugin_config(environ: Mapping[str, str] | None = None) -> dict | None:
    """KFP_MLFLOW_CONFIG as a dict (``endpoint``, ``parentRunId``, ``experimentId``, ...), or None when KFP's
    MLflow plugin is not active (the variable is unset, empty or not JSON: the latter is logged)."""
    environ = os.environ if environ is None else environ
    raw = environ.get(ENV_KFP_MLFLOW_CONFIG, "").strip()
    if not raw:
        return None
    try:
        config = json.loads(raw)
    except ValueError:
        logger.warning("%s is not JSON (%.80s...); ignoring KFP's MLflow plugin settings", ENV_KFP_MLFLOW_CONFIG, raw)
        return None
    return config if isinstance(config, dict) else None
