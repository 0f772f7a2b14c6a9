"""One pipeline run as its steps see it: where its outputs go and which MLflow run is its parent.

Every step writes under ``<output root>/<KFP run id>/<step>/`` (a local path or gs://), so two runs never
overwrite each other and a run's files are found from its id. A KFP retry of a task, or "Retry run", keeps the
run id: the step finds its own earlier outputs (training resumes from its checkpoints).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from kubedistill import storage
from kubedistill.errors import ConfigError
from kubedistill.tracking.config import MLflowArgs, TrackingTarget, kfp_plugin_config, resolve_target

logger = logging.getLogger(__name__)

STEPS = ("validate", "distill", "probe", "register")
FAILURE_FILE = "failure.json"
RUN_FILE = "run.json"
DEFAULT_EXPERIMENT = "kubedistill"
# KFP's backend sets these in the main container of every task pod (backend/src/v2/compiler/argocompiler/common.go,
# `commonEnvs`, used by container.go for the executor; from 2.0 on); kfp.local sets neither.
KFP_POD_NAME_ENV = "KFP_POD_NAME"
# A run id is one path segment of the output URI and a tag value: letters, digits and - _ . only.
_RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


@dataclass(frozen=True)
class PipelineContext:
    """The pipeline parameters every step shares.

    ``run_id``/``run_name``: the KFP run (``dsl.PIPELINE_JOB_ID_PLACEHOLDER`` / ``..._NAME_...``).
    ``output_root``: local path or gs:// URI. ``tracking_uri``: the MLflow server; empty means the environment's
    (MLFLOW_TRACKING_URI, or KFP's MLflow plugin), and no tracking when there is none. ``kfp_ui_url``: the
    KFP UI's base URL, for the link from the MLflow run back to the KFP run (optional).
    """

    run_id: str
    output_root: str
    run_name: str = ""
    tracking_uri: str = ""
    experiment: str = DEFAULT_EXPERIMENT
    kfp_ui_url: str = ""
    workflow_name: str = ""  # the run's Argo Workflow (dsl.PIPELINE_JOB_RESOURCE_NAME_PLACEHOLDER): see recurring.py
    _parent: list = field(default_factory=list, repr=False, compare=False)  # cache: [PipelineRunRef | None]

    def __post_init__(self) -> None:
        problems = []
        if not _RUN_ID_RE.match(self.run_id or ""):
            problems.append(
                f"run id {self.run_id!r}: expected the KFP run id (letters, digits, - _ .); components get it from "
                "dsl.PIPELINE_JOB_ID_PLACEHOLDER, which only KFP (or kfp.local) fills in"
            )
        if not self.output_root:
            problems.append("output_root: empty; give a local folder or a gs://bucket/prefix for the run's outputs")
        elif "://" in self.output_root and not self.output_root.startswith(("gs://", "file://")):
            problems.append(f"output_root: {self.output_root!r} is neither a local path nor gs://bucket/prefix")
        if problems:
            raise ConfigError(problems)

    @classmethod
    def of(cls, run_id: str, output_root: str, run_name: str, tracking_uri: str, experiment: str,
           kfp_ui_url: str, workflow_name: str = "") -> PipelineContext:  # fmt: skip
        """From the pipeline parameters every component takes, in the order the components declare them.
        ``workflow_name``: the KFP run's Workflow, which tells a recurring run's run from a manual one (the step
        that opens the MLflow parent run gives it); a placeholder left unresolved (kfp.local) means none."""
        workflow = "" if workflow_name.startswith("{{") else workflow_name
        return cls(run_id=run_id, output_root=output_root, run_name=run_name, tracking_uri=tracking_uri,
                   experiment=experiment or DEFAULT_EXPERIMENT, kfp_ui_url=kfp_ui_url, workflow_name=workflow)  # fmt: skip

    def refuse_a_local_output_root_on_kfp(self, environ: Mapping[str, str] | None = None) -> None:
        """ConfigError when a KFP backend runs this step and ``output_root`` is a local folder: every task runs in
        its own pod with its own disk, so the next step (and the exit handler) would never see what this one wrote.
        Under kfp.local (one machine) a local folder is right."""
        if on_kfp_backend(environ) and not storage.is_gcs(self.output_root):
            raise ConfigError([
                f"output_root: {self.output_root!r} is a folder on this task's own disk, but this pipeline runs on a "
                "KFP backend where each step is a separate pod that cannot see it: give a gs://bucket/prefix"
            ])  # fmt: skip

    @property
    def run_uri(self) -> str:
        return storage.join(self.output_root, self.run_id)

    def step_uri(self, step: str) -> str:
        return storage.join(self.output_root, self.run_id, step)

    @property
    def kfp_run_link(self) -> str:
        return f"{self.kfp_ui_url.rstrip('/')}/#/runs/details/{self.run_id}" if self.kfp_ui_url else ""

    # ------------------------------------------------------------------ MLflow

    def tracking_target(self, *, required: bool = False) -> TrackingTarget | None:
        """The MLflow server of this run, or None when none is configured (a ConfigError if ``required``)."""
        target = resolve_target(MLflowArgs(tracking_uri=self.tracking_uri or None, experiment_name=self.experiment or None))
        if target is None and required:
            raise ConfigError([
                "mlflow_tracking_uri: empty, and MLFLOW_TRACKING_URI is not set; registering a model needs an "
                "MLflow server (e.g. http://kubedistill-mlflow.kubeflow.svc.cluster.local:5000, the Service manifests/ "
                "creates, in the namespace they were applied to)"
            ])  # fmt: skip
        return target

    def pipeline_run(self, *, required: bool = False):
        """The MLflow parent run of this pipeline run (``PipelineRunRef``), created on first use; None when
        tracking is off, or when the server cannot be reached and the step can do without it."""
        if self._parent:
            return self._parent[0]
        from kubedistill.tracking.pipeline import open_pipeline_run
        from kubedistill.tracking.runs import TrackingError

        target = self.tracking_target(required=required)
        ref = None
        if target is not None:
            recurring = self.recurring_run()
            try:
                ref = open_pipeline_run(
                    target, kfp_run_id=self.run_id, kfp_run_name=self.run_name, kfp_run_url=self.kfp_run_link,
                    scheduled_time=recurring.scheduled_time if recurring else "",
                    recurring_run_id=recurring.recurring_run_id if recurring else "",
                )
            except TrackingError as e:
                if required:
                    raise
                logger.warning("MLflow is off for this step (%s); its outputs are written to %s", e, self.run_uri)
        self._parent.append(ref)
        return ref

    def recurring_run(self, environ: Mapping[str, str] | None = None):
        """The KFP recurring run this run belongs to (``recurring.RecurringRun``), read from the run's Workflow on
        a KFP backend; None for a manual run, under kfp.local, or when it cannot be told."""
        from kubedistill.pipeline.recurring import find_recurring_run

        if not self.workflow_name or not on_kfp_backend(environ):
            return None
        return find_recurring_run(self.workflow_name)

    @property
    def known_parent(self):
        """The parent run if a step already opened it in this process, else None (never connects)."""
        return self._parent[0] if self._parent else None

    def step_mlflow(self, step: str, parent) -> MLflowArgs:
        """The ``mlflow=`` argument of a library call made by ``step``: a run nested under ``parent``, or, with
        KFP's MLflow plugin, the run KFP made for this task; tracking off without a parent."""
        if parent is None:
            return MLflowArgs(enabled=False)
        plugin = kfp_plugin_config()
        task_run = _plugin_task_run() if plugin else None
        return MLflowArgs(
            enabled=True, tracking_uri=parent.tracking_uri, experiment_name=self.experiment or None,
            parent_run_id=parent.run_id, run_name=step, run_id=task_run,
        )  # fmt: skip

    # ------------------------------------------------------------------ failures

    def record_failure(self, step: str, error: BaseException) -> str:
        """Write ``<step>/failure.json`` and tag the parent run (when this process opened it) with the step and
        the reason; returns the reason."""
        from kubedistill.tracking.pipeline import FAILED_STEP_TAG, FAILURE_TAG, log_to_pipeline_run

        reason = str(error) or type(error).__name__
        record = {"step": step, "error": type(error).__name__, "reason": reason}
        if getattr(error, "details", None):
            record["details"] = error.details
        try:
            storage.write_bytes(storage.join(self.step_uri(step), FAILURE_FILE), json.dumps(record, indent=2).encode())
        except Exception as e:  # the original failure matters more than its record
            logger.warning("could not record the failure of %s under %s: %s", step, self.step_uri(step), e)
        parent = self.known_parent
        if parent is not None:
            log_to_pipeline_run(parent, self.tracking_target(), tags={FAILED_STEP_TAG: step, FAILURE_TAG: reason})
        return reason

    def clear_failure(self, step: str) -> None:
        storage.delete(storage.join(self.step_uri(step), FAILURE_FILE))

    def failures(self) -> list[dict[str, str]]:
        """The failures recorded by this run's steps, in pipeline order."""
        found = []
        for step in STEPS:
            uri = storage.join(self.step_uri(step), FAILURE_FILE)
            try:
                found.append(json.loads(storage.read_bytes(uri)))
            except Exception:  # absent (the usual case) or unreadable: nothing recorded
                continue
        return found


def on_kfp_backend(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process is a task of a KFP backend's run (not kfp.local, not a plain process): the backend
    names the task's pod in KFP_POD_NAME."""
    env = os.environ if environ is None else environ
    return bool(env.get(KFP_POD_NAME_ENV))


def _plugin_task_run() -> str | None:
    return os.environ.get("MLFLOW_RUN_ID") or None
