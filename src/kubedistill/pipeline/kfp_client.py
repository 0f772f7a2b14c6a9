"""Submitting the compiled pipeline to a KFP API server: one run from CI (``submit``) and the nightly schedule
(``schedule``). ``python -m pipelines.submit`` / ``python -m pipelines.schedule`` are their command lines.

``kfp run create`` and ``Client.wait_for_run_completion`` exit 0 on a FAILED run and do not treat CANCELED as
final; ``submit`` returns a distinct exit status for every way a run can end. The recurring-run API has no update:
``schedule`` finds the recurring run by name, deletes it and creates it again, and says so.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
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
SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
# Exit statuses of `submit`: one per outcome, so CI can tell them apart.
EXIT_SUCCEEDED, EXIT_USAGE, EXIT_FAILED, EXIT_CANCELED, EXIT_TIMEOUT, EXIT_UNREACHABLE = 0, 2, 3, 4, 5, 6
FINAL_STATES = {"SUCCEEDED": EXIT_SUCCEEDED, "FAILED": EXIT_FAILED, "SKIPPED": EXIT_FAILED, "CANCELED": EXIT_CANCELED}


class EndpointError(KubedistillError):
    """The KFP API server cannot be reached, or refuses the credentials."""


@dataclass(frozen=True)
class Outcome:
    exit_code: int
    state: str
    run_id: str | None
    message: str


def connect(endpoint: str | None, token: str | None = None, *, timeout_s: float = 10.0) -> Any:
    """A ``kfp.Client`` for ``endpoint`` (KFP_ENDPOINT); the token from KFP_TOKEN or the pod's service account.

    The server's /healthz is checked first, once, with a timeout: kfp.Client's own check retries for ~25 s and
    then raises an error that does not say what to do. EndpointError when it does not answer.
    """
    endpoint = (endpoint or os.environ.get(ENDPOINT_ENV) or "").rstrip("/")
    if not endpoint:
        raise ConfigError([f"endpoint: none given; pass --endpoint or set {ENDPOINT_ENV} (e.g. https://kubeflow.example.com/pipeline)"])
    token = token or os.environ.get(TOKEN_ENV) or _service_account_token()
    request = urllib.request.Request(f"{endpoint}/apis/v2beta1/healthz")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            healthz = json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as e:
        raise EndpointError(f"the KFP API at {endpoint} answered {e.code} to /apis/v2beta1/healthz: "
                            + ("check the token (KFP_TOKEN)" if e.code in (401, 403) else "is this the pipeline endpoint?")) from e
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise EndpointError(f"the KFP API at {endpoint} is not reachable ({getattr(e, 'reason', e)}); check KFP_ENDPOINT "
                            "and the network path (port-forward, ingress, IAP)") from e  # fmt: skip
    from kfp import Client

    namespace = healthz.get("multi_user") and _service_account_namespace()
    with _quiet_stdout():
        return Client(host=endpoint, existing_token=token, namespace=namespace or "kubeflow")


def submit(client: Any, package: str | Path, *, arguments: Mapping[str, Any], run_name: str, experiment: str,
           timeout_s: float, poll_s: float = 10.0, cancel_on_timeout: bool = False) -> Outcome:  # fmt: skip
    """Create a run of ``package`` and wait for its end; the Outcome's exit code says which end."""
    with _quiet_stdout():
        run = client.create_run_from_pipeline_package(str(package), arguments=dict(arguments), run_name=run_name,
                                                      experiment_name=experiment)  # fmt: skip
    run_id = run.run_id
    print(f"run {run_name}: {run_link(client, run_id)}", flush=True)
    deadline = time.monotonic() + timeout_s
    state = "PENDING"
    while time.monotonic() < deadline:
        details = client.get_run(run_id)
        state = str(details.state or "RUNTIME_STATE_UNSPECIFIED")
        if state in FINAL_STATES:
            return Outcome(FINAL_STATES[state], state, run_id, _describe(state, run_id, details))
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
    if cancel_on_timeout:
        client.terminate_run(run_id)
    return Outcome(EXIT_TIMEOUT, state, run_id, (
        f"run {run_id} did not finish within {timeout_s:.0f} s (last state {state}); it "
        + ("was terminated" if cancel_on_timeout else "is still running (--cancel-on-timeout stops it)")
    ))  # fmt: skip


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
             arguments: Mapping[str, Any], version_name: str | None = None) -> Schedule:  # fmt: skip
    """Upload ``package`` as a new version of ``pipeline_name`` and (re)create the recurring run ``job_name``:
    one run at a time, no catch-up of missed runs."""
    validate_cron(cron)
    version_name = version_name or f"{pipeline_name}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    with _quiet_stdout():
        pipeline_id = client.get_pipeline_id(pipeline_name)
        if pipeline_id is None:
            pipeline = client.upload_pipeline(str(package), pipeline_name=pipeline_name)
            pipeline_id = pipeline.pipeline_id
        version = client.upload_pipeline_version(str(package), pipeline_version_name=version_name,
                                                 pipeline_id=pipeline_id)  # fmt: skip
        experiment_id = client.create_experiment(experiment).experiment_id
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


def _service_account_token() -> str | None:
    try:
        return SERVICE_ACCOUNT_TOKEN.read_text().strip() or None
    except OSError:
        return None


def _service_account_namespace() -> str | None:
    try:
        return (SERVICE_ACCOUNT_TOKEN.parent / "namespace").read_text().strip() or None
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
