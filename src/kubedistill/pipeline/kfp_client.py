"""Submitting the compiled pipeline to a KFP API server: one run from CI (``submit``) and the nightly schedule
(``schedule``). ``python -m pipelines.submit`` / ``python -m pipelines.schedule`` are their command lines.

``kfp run create`` and ``Client.wait_for_run_completion`` exit 0 on a FAILED run and do not treat CANCELED as
final; ``submit`` returns a distinct exit status for every way a run can end, and rides out a status check that
fails (a restarting API server, a dropped connection) with bounded retries. The recurring-run API has no update:
``schedule`` finds the recurring run by name, deletes it and creates it again, and says so.

Both check the backend's version (healthz ``tag_name``) where it is given: the exit handler's final-status input
needs KFP >= 2.14. Multi-user KFP: runs and experiments go to ``namespace`` (the profile's namespace), and inside
a cluster the pod's projected KFP token authenticates.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kubedistill.errors import ConfigError, KubedistillError

logger = logging.getLogger(__name__)

ENDPOINT_ENV, TOKEN_ENV = "KFP_ENDPOINT", "KFP_TOKEN"
# The KFP token a pod gets by projecting a service account token with audience pipelines.kubeflow.org, and the
# variable that moves it: the SDK's own names (sdk/python/kfp/client/__init__.py, KF_PIPELINES_SA_TOKEN_ENV and
# KF_PIPELINES_SA_TOKEN_PATH). kfp.Client reads it only when no host is given; we always give one.
KFP_TOKEN_PATH_ENV = "KF_PIPELINES_SA_TOKEN_PATH"
KFP_TOKEN_PATH = Path("/var/run/secrets/kubeflow/pipelines/token")
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# The exit handler's PipelineTaskFinalStatus input is resolved by the backend's driver from 2.14.0 on
# (backend/src/v2/driver, commit 0d857b6 "support PipelineTaskFinalStatus input", first in tag 2.14.0).
MIN_BACKEND_VERSION = (2, 14, 0)
# Exit statuses of `submit`: one per outcome, so CI can tell them apart.
EXIT_SUCCEEDED, EXIT_USAGE, EXIT_FAILED, EXIT_CANCELED, EXIT_TIMEOUT, EXIT_UNREACHABLE = 0, 2, 3, 4, 5, 6
# The final values of v2beta1 RuntimeState (backend/api/v2beta1/run.proto); PENDING, RUNNING, CANCELING and
# PAUSED are not final, RUNTIME_STATE_UNSPECIFIED is what a run without a state reads as.
FINAL_STATES = {"SUCCEEDED": EXIT_SUCCEEDED, "FAILED": EXIT_FAILED, "SKIPPED": EXIT_FAILED, "CANCELED": EXIT_CANCELED}
# HTTP statuses of a status check worth retrying: the server or a proxy in front of it is restarting or busy.
RETRIED_HTTP = frozenset({408, 429, 500, 502, 503, 504})


class EndpointError(KubedistillError):
    """The KFP API server cannot be reached, refuses the credentials, or is too old for the pipeline."""


@dataclass(frozen=True)
class Connection:
    """A checked connection: the kfp.Client, the namespace of its runs (multi-user KFP; None otherwise), and the
    backend's version as healthz reports it."""

    client: Any
    namespace: str | None
    backend_version: str


@dataclass(frozen=True)
class Outcome:
    exit_code: int
    state: str
    run_id: str | None
    message: str


def connect(endpoint: str | None, token: str | None = None, *, namespace: str | None = None,
            timeout_s: float = 10.0) -> Connection:  # fmt: skip
    """A checked ``kfp.Client`` for ``endpoint`` (KFP_ENDPOINT), with the token from ``token``, KFP_TOKEN or the
    pod's projected KFP token, in ``namespace`` (multi-user KFP; default: this pod's namespace).

    The server's /healthz is checked first, once, with a timeout: kfp.Client's own check retries for ~25 s and
    then raises an error that does not say what to do. EndpointError when it does not answer, refuses the token,
    or reports a backend older than MIN_BACKEND_VERSION.
    """
    endpoint = (endpoint or os.environ.get(ENDPOINT_ENV) or "").rstrip("/")
    if not endpoint:
        raise ConfigError([f"endpoint: none given; pass --endpoint or set {ENDPOINT_ENV} (e.g. https://kubeflow.example.com/pipeline)"])
    token = token or os.environ.get(TOKEN_ENV) or _projected_kfp_token()
    healthz = _healthz(endpoint, token, timeout_s)
    version = str(healthz.get("tag_name") or "unknown")
    check_backend_version(version, endpoint)
    namespace = namespace or (_service_account_namespace() if healthz.get("multi_user") else None)
    if healthz.get("multi_user") and not namespace:
        raise ConfigError([f"namespace: {endpoint} is a multi-user KFP; pass --namespace <your profile's namespace>"])
    from kfp import Client

    with _quiet_stdout():
        client = Client(host=endpoint, existing_token=token, namespace=namespace or "kubeflow")
    return Connection(client, namespace, version)


def _healthz(endpoint: str, token: str | None, timeout_s: float) -> dict[str, Any]:
    """The API server's /apis/v2beta1/healthz: commit_sha, tag_name, multi_user, pipeline_store
    (backend/src/apiserver/main.go writes it)."""
    request = urllib.request.Request(f"{endpoint}/apis/v2beta1/healthz")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as e:
        raise EndpointError(f"the KFP API at {endpoint} answered {e.code} to /apis/v2beta1/healthz: "
                            + ("check the token (KFP_TOKEN)" if e.code in (401, 403) else "is this the pipeline endpoint?")) from e
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise EndpointError(f"the KFP API at {endpoint} is not reachable ({getattr(e, 'reason', e)}); check KFP_ENDPOINT "
                            "and the network path (port-forward, ingress, IAP)") from e  # fmt: skip


def check_backend_version(tag_name: str, endpoint: str = "the KFP API") -> bool:
    """EndpointError when ``tag_name`` (healthz; the release's tag, e.g. 2.16.0, set when the server image was
    built) is a version older than MIN_BACKEND_VERSION. A tag that is not a version (``unknown`` in a build
    without it, a commit) cannot be checked: a warning on stderr, and False."""
    match = re.match(r"^v?(\d+)\.(\d+)\.(\d+)", tag_name.strip())
    needed = ".".join(map(str, MIN_BACKEND_VERSION))
    if match is None:
        print(f"warning: {endpoint} does not say which KFP version it runs (healthz tag_name {tag_name!r}); the "
              f"pipeline's exit handler needs KFP >= {needed}", file=sys.stderr, flush=True)  # fmt: skip
        return False
    if tuple(int(part) for part in match.groups()) < MIN_BACKEND_VERSION:
        raise EndpointError(f"{endpoint} runs KFP {tag_name}; the pipeline needs KFP >= {needed} (its exit handler "
                            "takes the run's final status, which older backends cannot resolve): upgrade KFP")  # fmt: skip
    return True


def submit(client: Any, package: str | Path, *, arguments: Mapping[str, Any], run_name: str, experiment: str,
           timeout_s: float, poll_s: float = 10.0, cancel_on_timeout: bool = False, namespace: str | None = None,
           retry_for_s: float = 900.0) -> Outcome:  # fmt: skip
    """Create a run of ``package`` and wait for its end; the Outcome's exit code says which end.

    A status check that fails (connection refused or dropped, 5xx, 408, 429) is retried with a growing pause (at
    most a minute), for up to ``retry_for_s`` seconds in a row; then EXIT_UNREACHABLE, and the run goes on.
    """
    try:
        with _quiet_stdout():
            run = client.create_run_from_pipeline_package(str(package), arguments=dict(arguments), run_name=run_name,
                                                          experiment_name=experiment, namespace=namespace)  # fmt: skip
    except Exception as e:
        return _not_created(e)
    run_id = run.run_id
    print(f"run {run_name}: {run_link(client, run_id)}", flush=True)
    deadline = time.monotonic() + timeout_s
    state = "PENDING"
    while time.monotonic() < deadline:
        details = _run_details(client, run_id, deadline=deadline, poll_s=poll_s, retry_for_s=retry_for_s)
        if isinstance(details, Outcome):
            return details
        state = str(details.state or "RUNTIME_STATE_UNSPECIFIED")
        if state in FINAL_STATES:
            return Outcome(FINAL_STATES[state], state, run_id, _describe(state, run_id, details))
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
    return _timed_out(client, run_id, state, timeout_s, cancel_on_timeout)


def _run_details(client: Any, run_id: str, *, deadline: float, poll_s: float, retry_for_s: float) -> Any:
    """``client.get_run(run_id)``, retried while the failure is transient; an Outcome when it cannot be had."""
    failing_since, pause, error = time.monotonic(), max(poll_s, 0.05), None
    while True:
        try:
            return client.get_run(run_id)
        except Exception as e:
            if not is_transient(e):
                return Outcome(EXIT_UNREACHABLE, "UNKNOWN", run_id, f"reading the state of run {run_id} failed: "
                               f"{_error_text(e)}; the run goes on ({run_link(client, run_id)})")  # fmt: skip
            error = e
        now = time.monotonic()
        if now - failing_since >= retry_for_s or now >= deadline:
            return Outcome(EXIT_UNREACHABLE, "UNKNOWN", run_id, (
                f"the KFP API did not answer for run {run_id} for {now - failing_since:.0f} s ({_error_text(error)}); "
                f"the run goes on: {run_link(client, run_id)}"
            ))  # fmt: skip
        print(f"reading the state of run {run_id} failed ({_error_text(error)}); trying again in {pause:.0f} s",
              file=sys.stderr, flush=True)  # fmt: skip
        time.sleep(min(pause, max(0.0, deadline - now), max(0.0, failing_since + retry_for_s - now)))
        pause = min(pause * 2, 60.0)


def is_transient(error: BaseException) -> bool:
    """Whether a failed KFP API call may work when tried again: an HTTP status in RETRIED_HTTP (kfp_server_api's
    ApiException), or no answer at all (urllib3 and socket errors: refused, dropped, timed out)."""
    import urllib3

    status = getattr(error, "status", None)
    if status is not None and type(error).__name__ == "ApiException":
        return int(status) in RETRIED_HTTP
    return isinstance(error, (urllib3.exceptions.HTTPError, OSError))


def api_failure(error: BaseException) -> str | None:
    """A line saying how a KFP API call failed (an HTTP error, or no answer); None for any other exception."""
    if type(error).__name__ == "ApiException" or is_transient(error):
        return _error_text(error)
    return None


def _not_created(error: Exception) -> Outcome:
    status = getattr(error, "status", None)
    if status == 400:  # the server's validation, e.g. a parameter the pipeline does not have
        return Outcome(EXIT_USAGE, "UNKNOWN", None, f"the KFP API refused the run: {_error_text(error)}")
    if status in (401, 403):
        return Outcome(EXIT_UNREACHABLE, "UNKNOWN", None, f"the KFP API refused the token: {_error_text(error)}")
    if status is None and not is_transient(error):
        raise error
    return Outcome(EXIT_UNREACHABLE, "UNKNOWN", None, f"the run could not be created: {_error_text(error)}")


def _timed_out(client: Any, run_id: str, state: str, timeout_s: float, cancel: bool) -> Outcome:
    what = "is still running (--cancel-on-timeout stops it)"
    if cancel:
        try:
            client.terminate_run(run_id)
            what = "was terminated"
        except Exception as e:
            what = f"could not be terminated ({_error_text(e)}): stop it in the KFP UI"
    return Outcome(EXIT_TIMEOUT, state, run_id, f"run {run_id} did not finish within {timeout_s:.0f} s (last state "
                   f"{state}); it {what}")  # fmt: skip


def _error_text(error: BaseException | None) -> str:
    """An API error in a line: its HTTP status and the server's message, not the whole response."""
    if error is None:
        return "no answer"
    status, body = getattr(error, "status", None), getattr(error, "body", None)
    if status is None:
        return f"{type(error).__name__}: {error}"
    try:
        message = json.loads(body or b"{}").get("message") or ""
    except (ValueError, AttributeError):
        message = ""
    return f"HTTP {status} {getattr(error, 'reason', '') or ''}".strip() + (f": {message}" if message else "")


def run_link(client: Any, run_id: str) -> str:
    return f"{client._get_url_prefix()}/#/runs/details/{run_id}"


def _describe(state: str, run_id: str, details: Any) -> str:
    if state == "SUCCEEDED":
        return f"run {run_id} SUCCEEDED"
    error = getattr(details, "error", None)
    why = f": {error.message}" if error is not None and getattr(error, "message", None) else ""
    return f"run {run_id} {state}{why}"


@dataclass(frozen=True)
class Schedule:
    pipeline_id: str
    version_id: str
    experiment_id: str
    recurring_run_id: str
    replaced: str | None  # the id of the recurring run it replaced


def validate_cron(cron: str) -> None:
    """KFP's cron has 6 fields, seconds first (``0 0 2 * * *`` is 02:00:00 every day)."""
    fields = cron.split()
    if len(fields) != 6:
        raise ConfigError([
            f"cron: {cron!r} has {len(fields)} fields; KFP wants 6, seconds first (e.g. '0 0 2 * * *' for 02:00 daily)"
        ])  # fmt: skip


def schedule(client: Any, package: str | Path, *, pipeline_name: str, experiment: str, job_name: str, cron: str,
             arguments: Mapping[str, Any], version_name: str | None = None, namespace: str | None = None) -> Schedule:  # fmt: skip
    """Upload ``package`` as a new version of ``pipeline_name`` and (re)create the recurring run ``job_name`` in
    ``experiment`` (in ``namespace`` on a multi-user KFP): one run at a time, no catch-up of missed runs."""
    validate_cron(cron)
    version_name = version_name or f"{pipeline_name}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    with _quiet_stdout():
        pipeline_id = client.get_pipeline_id(pipeline_name)
        if pipeline_id is None:
            pipeline = client.upload_pipeline(str(package), pipeline_name=pipeline_name)
            pipeline_id = pipeline.pipeline_id
        version = client.upload_pipeline_version(str(package), pipeline_version_name=version_name,
                                                 pipeline_id=pipeline_id)  # fmt: skip
        experiment_id = client.create_experiment(experiment, namespace=namespace).experiment_id
    replaced = None
    for old in _recurring_runs_named(client, experiment_id, job_name):
        replaced = old.recurring_run_id
        print(f"replacing recurring run {job_name!r} ({replaced}): KFP cannot update a recurring run, so it is "
              "deleted and created again", flush=True)  # fmt: skip
        client.delete_recurring_run(replaced)
    created = client.create_recurring_run(
        experiment_id=experiment_id, job_name=job_name, cron_expression=cron, max_concurrency=1, no_catchup=True,
        params=dict(arguments), pipeline_id=pipeline_id, version_id=version.pipeline_version_id,
    )  # fmt: skip
    return Schedule(pipeline_id, version.pipeline_version_id, experiment_id, created.recurring_run_id, replaced)


def _recurring_runs_named(client: Any, experiment_id: str, name: str) -> list[Any]:
    found, token = [], ""
    while True:
        page = client.list_recurring_runs(experiment_id=experiment_id, page_token=token, page_size=100)
        found += [r for r in page.recurring_runs or [] if r.display_name == name]
        token = page.next_page_token
        if not token:
            return found


def parse_arguments(pairs: list[str], params_file: str | None = None) -> dict[str, Any]:
    """Pipeline arguments from a YAML file and ``key=value`` pairs (values parsed as YAML; pairs win)."""
    import yaml

    from kubedistill.config import parse_value

    arguments: dict[str, Any] = (yaml.safe_load(Path(params_file).read_text()) or {}) if params_file else {}
    problems = [f"param {p!r} is not key=value" for p in pairs if "=" not in p or p.startswith("=")]
    if problems:
        raise ConfigError(problems)
    arguments.update({k: parse_value(v) for k, v in (p.split("=", 1) for p in pairs)})
    return arguments


def _projected_kfp_token() -> str | None:
    """The pod's KFP token (a service account token for audience pipelines.kubeflow.org, which multi-user KFP
    checks), where kfp.Client looks for it: $KF_PIPELINES_SA_TOKEN_PATH, else KFP_TOKEN_PATH."""
    path = Path(os.environ.get(KFP_TOKEN_PATH_ENV) or KFP_TOKEN_PATH)
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _service_account_namespace() -> str | None:
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or None
    except OSError:
        return None


@contextlib.contextmanager
def _quiet_stdout():
    """kfp.Client prints links and a FutureWarning banner to stdout; ours prints what matters."""
    import warnings

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.filterwarnings("ignore", category=FutureWarning, module="kfp")
        yield


def main_exit(outcome: Outcome) -> int:
    print(outcome.message, file=sys.stderr if outcome.exit_code else sys.stdout, flush=True)
    return outcome.exit_code
