"""Opening and writing one MLflow run per pipeline step, with a reachability check and bounded retries.

``strict`` runs (registration) raise ``TrackingError`` when MLflow cannot be reached. Non-strict runs
(training, validation, probing) warn once and carry on without MLflow: their outputs are written locally
whatever happens to the server.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from kubedistill.errors import KubedistillError
from kubedistill.tracking.config import TrackingTarget

logger = logging.getLogger(__name__)

HEALTH_TIMEOUT_S = 5.0
# MLflow's own per-request retries default to 7 with doubling waits (minutes per failed call once the
# server is gone); a training loop must not stall that long. Users can still set these variables themselves.
MLFLOW_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
# A non-strict run stops calling MLflow after this many failed calls in a row.
MAX_CONSECUTIVE_FAILURES = 3
PARAM_VALUE_LIMIT = 6000  # MLflow rejects longer parameter values


class TrackingError(KubedistillError):
    """MLflow cannot be reached or refused a call that the step cannot do without."""


def wait_until_reachable(uri: str, *, retries: int, backoff_s: float) -> None:
    """Return once the MLflow server at ``uri`` answers /health; TrackingError after ``retries`` attempts.

    Waits backoff_s, 2 * backoff_s, ... between attempts. Non-HTTP stores (sqlite:, file:) are not checked.
    """
    if urlparse(uri).scheme not in ("http", "https"):
        return
    url = uri.rstrip("/") + "/health"
    last_error = ""
    for attempt in range(retries):
        if attempt:
            time.sleep(backoff_s * 2 ** (attempt - 1))
        try:
            with urllib.request.urlopen(url, timeout=HEALTH_TIMEOUT_S) as response:
                if response.status == 200:
                    return
                last_error = f"HTTP {response.status}"
        except urllib.error.HTTPError as e:
            if e.code == 403:
                raise TrackingError(
                    f"the MLflow server at {uri} refused the request (403: {e.read(200).decode(errors='replace')}); "
                    "if it says 'Invalid Host header', start the server with --allowed-hosts listing this host name"
                ) from e
            last_error = f"HTTP {e.code}"
        except (urllib.error.URLError, OSError) as e:
            last_error = str(getattr(e, "reason", e))
    waited = sum(backoff_s * 2**i for i in range(retries - 1))
    raise TrackingError(
        f"the MLflow server at {uri} is not reachable after {retries} attempt(s) over {waited:.0f} s (last error: "
        f"{last_error}). Check tracking_uri / MLFLOW_TRACKING_URI and that the server is running"
    )


class StepRun:
    """One MLflow run of one step; nested under ``target.parent_run_id`` when the pipeline gave one.

    Use ``StepRun.open(...)``; every method is safe to call on a non-strict run whose server went away.
    """

    def __init__(self, client: Any, run_id: str, target: TrackingTarget, *, strict: bool):
        self.client = client
        self.run_id = run_id
        self.target = target
        self.strict = strict
        self.failures = 0
        self.disabled = False

    @classmethod
    def open(
        cls,
        target: TrackingTarget,
        step: str,
        *,
        strict: bool,
        tags: Mapping[str, str] | None = None,
        resume_run_id: str | None = None,
    ) -> StepRun | None:
        """Create (or, with ``resume_run_id``, reopen) the step's run. Non-strict: None when MLflow is down."""
        try:
            wait_until_reachable(target.tracking_uri, retries=target.connect_retries, backoff_s=target.connect_backoff_s)
            client = make_client(target.tracking_uri)
            run_id = _create_or_resume(client, target, step, tags or {}, resume_run_id)
        except Exception as e:  # MLflow raises several types (MlflowException, requests errors, TrackingError)
            if strict:
                if isinstance(e, TrackingError):
                    raise
                raise TrackingError(f"could not open an MLflow run at {target.tracking_uri}: {e}") from e
            logger.warning(
                "MLflow tracking is off for this %s step: %s. The step goes on; its outputs are written locally "
                "only", step, e,
            )  # fmt: skip
            return None
        logger.info("MLflow run %s (%s step) at %s", run_id, step, target.tracking_uri)
        return cls(client, run_id, target, strict=strict)

    # ------------------------------------------------------------------ logging

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        flat = flatten(params)
        entries = [Param(k, _param_value(v)) for k, v in flat.items()]
        self._call("log parameters", lambda: self.client.log_batch(self.run_id, params=entries))

    def log_metrics(self, metrics: Mapping[str, float], *, step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        entries = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        self._call("log metrics", lambda: self.client.log_batch(self.run_id, metrics=entries))

    def last_logged_step(self, key: str) -> int:
        """The highest step of metric ``key`` in the run: 0 when it has none (or MLflow cannot say)."""
        steps: list[int] = []
        self._call(f"read the history of {key}",
                   lambda: steps.extend(m.step for m in self.client.get_metric_history(self.run_id, key)))  # fmt: skip
        return max(steps, default=0)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        entries = [RunTag(k, str(v)) for k, v in tags.items()]
        self._call("set tags", lambda: self.client.log_batch(self.run_id, tags=entries))

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        if Path(path).exists():
            self._call(f"upload {path}", lambda: self.client.log_artifact(self.run_id, str(path), artifact_path))

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        self._call(f"upload {artifact_file}", lambda: self.client.log_dict(self.run_id, dict(data), artifact_file))

    def finish(self, status: str = "FINISHED") -> None:
        # MLflow prints the run's URL to stdout; commands keep stdout for their JSON result.
        with contextlib.redirect_stdout(sys.stderr):
            self._call("end the run", lambda: self.client.set_terminated(self.run_id, status))

    def _call(self, what: str, action) -> None:
        if self.disabled:
            return
        try:
            action()
            self.failures = 0
        except Exception as e:
            if self.strict:
                raise TrackingError(f"MLflow at {self.target.tracking_uri}: could not {what}: {e}") from e
            self.failures += 1
            logger.warning("MLflow: could not %s (%s)", what, str(e).splitlines()[0] if str(e) else type(e).__name__)
            if self.failures >= MAX_CONSECUTIVE_FAILURES:
                self.disabled = True
                logger.warning(
                    "MLflow: %d calls in a row failed; no more MLflow logging in this run. Everything is still "
                    "written locally (metrics.jsonl, train.log)", self.failures,
                )  # fmt: skip


def make_client(tracking_uri: str) -> Any:
    """An ``MlflowClient`` with bounded per-request retries (see MLFLOW_HTTP_DEFAULTS)."""
    for key, value in MLFLOW_HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _create_or_resume(
    client: Any, target: TrackingTarget, step: str, tags: Mapping[str, str], resume_run_id: str | None
) -> str:
    existing = resume_run_id or target.run_id
    if existing:
        client.update_run(existing, status="RUNNING")
        if target.run_id and not resume_run_id:  # a run made for us (KFP's plugin): say which step it is
            for key, value in {"kubedistill.step": step, **tags}.items():
                client.set_tag(existing, key, value)
        return existing
    all_tags = {"kubedistill.step": step, **tags}
    if target.parent_run_id:
        # Nested runs live in their parent's experiment, whatever MLFLOW_EXPERIMENT_NAME says.
        experiment_id = client.get_run(target.parent_run_id).info.experiment_id
        all_tags["mlflow.parentRunId"] = target.parent_run_id
    else:
        experiment_id = target.experiment_id or experiment_id_for(client, target.experiment_name)
    run = client.create_run(experiment_id, tags=all_tags, run_name=target.run_name or step)
    return run.info.run_id


def experiment_id_for(client: Any, name: str) -> str:
    """The id of experiment ``name``, created when missing (another process may create it at the same time)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= PARAM_VALUE_LIMIT else text[: PARAM_VALUE_LIMIT - 3] + "..."
