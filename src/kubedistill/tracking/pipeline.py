"""The pipeline's own MLflow run: one parent run per KFP run, with every step's run nested under it.

With KFP's MLflow plugin the parent exists already (KFP_MLFLOW_CONFIG's ``parentRunId``). Without it (most
clusters), the first step that needs the parent creates it, tagged with the KFP run id; later steps, and the
exit handler (which cannot read other tasks' outputs), find it by that tag. A retried task finds the same run.

The parent carries the KFP run's id, name and link, the pipeline's parameters, the final probe metrics, the
registered version and alias, and the run's outcome (FINISHED, or FAILED with the failing step and reason).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubedistill.tracking.config import TrackingTarget, kfp_plugin_config
from kubedistill.tracking.runs import (
    StepRun,
    TrackingError,
    experiment_id_for,
    make_client,
    wait_until_reachable,
)

logger = logging.getLogger(__name__)

KFP_RUN_ID_TAG = "kfp.run_id"
KFP_RUN_NAME_TAG = "kfp.run_name"
KFP_RUN_URL_TAG = "kfp.run_url"
KFP_SCHEDULED_TIME_TAG = "kfp.scheduled_time"
KFP_RECURRING_RUN_TAG = "kfp.recurring_run_id"
STATE_TAG = "kubedistill.pipeline_state"
FAILED_STEP_TAG = "kubedistill.failed_step"
FAILURE_TAG = "kubedistill.failure"
MAX_TAG_CHARS = 5000  # MLflow's tag values are limited to 8000 characters


@dataclass(frozen=True)
class PipelineRunRef:
    """Where the pipeline's parent run is: server, run id, and whether KFP's plugin owns it."""

    tracking_uri: str
    run_id: str
    owned_by_kfp: bool  # KFP's MLflow plugin created it and will end it


def open_pipeline_run(
    target: TrackingTarget,
    *,
    kfp_run_id: str,
    kfp_run_name: str = "",
    kfp_run_url: str = "",
    scheduled_time: str = "",
    recurring_run_id: str = "",
    params: Mapping[str, Any] | None = None,
) -> PipelineRunRef:
    """The parent run of KFP run ``kfp_run_id``: KFP's plugin's, an existing one tagged with the id, or a new one.

    ``scheduled_time``/``recurring_run_id``: given only for a run of a recurring run (``pipeline.recurring``).

    Raises TrackingError when the server cannot be reached (after the target's bounded retries).
    """
    plugin = kfp_plugin_config()
    if plugin and plugin.get("parentRunId"):
        return PipelineRunRef(target.tracking_uri, str(plugin["parentRunId"]), owned_by_kfp=True)
    wait_until_reachable(target.tracking_uri, retries=target.connect_retries, backoff_s=target.connect_backoff_s)
    client = make_client(target.tracking_uri)
    try:
        experiment_id = target.experiment_id or experiment_id_for(client, target.experiment_name)
        found = find_pipeline_run(client, experiment_id, kfp_run_id)
        if found is not None:
            return PipelineRunRef(target.tracking_uri, found, owned_by_kfp=False)
        tags = {KFP_RUN_ID_TAG: kfp_run_id, KFP_RUN_NAME_TAG: kfp_run_name, STATE_TAG: "RUNNING"}
        if scheduled_time:  # a recurring run's: which night's run this is
            tags[KFP_SCHEDULED_TIME_TAG] = scheduled_time
        if recurring_run_id:
            tags[KFP_RECURRING_RUN_TAG] = recurring_run_id
        if kfp_run_url:
            tags[KFP_RUN_URL_TAG] = kfp_run_url
            tags["mlflow.note.content"] = f"KFP run: [{kfp_run_name or kfp_run_id}]({kfp_run_url})"
        run = client.create_run(experiment_id, tags=tags, run_name=kfp_run_name or f"kfp-{kfp_run_id}")
    except TrackingError:
        raise
    except Exception as e:  # MLflow raises several types (MlflowException, requests errors)
        raise TrackingError(f"could not open the pipeline's MLflow run at {target.tracking_uri}: {e}") from e
    ref = PipelineRunRef(target.tracking_uri, run.info.run_id, owned_by_kfp=False)
    if params:
        _step_run(ref, target).log_params(params)
    logger.info("MLflow pipeline run %s for KFP run %s", ref.run_id, kfp_run_id)
    return ref


def find_pipeline_run(client: Any, experiment_id: str, kfp_run_id: str) -> str | None:
    """The id of the oldest run in ``experiment_id`` tagged with ``kfp_run_id``, or None."""
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`{KFP_RUN_ID_TAG}` = '{_quote(kfp_run_id)}'",
        order_by=["attributes.start_time ASC"], max_results=1,
    )  # fmt: skip
    return runs[0].info.run_id if runs else None


def log_to_pipeline_run(
    ref: PipelineRunRef, target: TrackingTarget, *, params: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None, tags: Mapping[str, Any] | None = None,
) -> None:  # fmt: skip
    """Record a step's parameters and headline results on the parent run (never fatal: a warning when MLflow
    is away). Parameters are write-once in MLflow: a retried step logs the same values again, which is allowed."""
    run = _step_run(ref, target)
    if params:
        run.log_params(params)
    if metrics:
        run.log_metrics(metrics)
    if tags:
        run.set_tags({k: _tag_value(v) for k, v in tags.items()})


def close_pipeline_run(
    ref: PipelineRunRef, target: TrackingTarget, *, succeeded: bool, failed_step: str | None = None,
    reason: str | None = None,
) -> None:  # fmt: skip
    """Record the run's outcome on the parent and end it (KFP's plugin ends the runs it owns itself)."""
    run = _step_run(ref, target)
    tags: dict[str, str] = {STATE_TAG: "SUCCEEDED" if succeeded else "FAILED"}
    if failed_step:
        tags[FAILED_STEP_TAG] = failed_step
    if reason:
        tags[FAILURE_TAG] = _tag_value(reason)
    run.set_tags(tags)
    if not ref.owned_by_kfp:
        run.finish("FINISHED" if succeeded else "FAILED")


def _step_run(ref: PipelineRunRef, target: TrackingTarget) -> StepRun:
    return StepRun(make_client(ref.tracking_uri), ref.run_id, target, strict=False)


def _tag_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= MAX_TAG_CHARS else text[: MAX_TAG_CHARS - 3] + "..."


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")
