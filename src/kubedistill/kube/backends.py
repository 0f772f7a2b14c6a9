"""The one interface the launcher drives: where a job kind lives in the API, how to build one, how to read its
state, and which pod runs rank 0 (whose log is streamed).

Each state function reads what its operator writes (checked against the upstream source):

- PyTorchJob, Training Operator v1.9.0: conditions ``Created``, ``Running``, ``Restarting``, ``Succeeded``,
  ``Failed``, ``Suspended`` (pkg/apis/kubeflow.org/v1/common_types.go); the newest true one is the state.
- TrainJob, Trainer v2.3.0: conditions ``Suspended``, ``Complete``, ``Failed`` only
  (pkg/apis/trainer/v1alpha1/trainjob_types.go); Complete and Failed are the JobSet's conditions renamed, with the
  JobSet's reasons (pkg/runtime/framework/plugins/jobset/jobset.go ``Status``; reasons in jobset v0.12.0
  pkg/constants/constants.go: AllJobsCompleted, FailedJobs, ReachedMaxRestarts, ...), or DeadlineExceeded set by
  the TrainJob controller. No condition says "running": ``status.jobsStatus[]`` counts the replicated job's child
  Jobs (``ready``: every pod ready; ``active``: a pod running *or pending*), so running is ``ready > 0`` or node
  0's pod Running, and ``active > 0`` alone is still pending (an unschedulable pod keeps its Job active).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from kubedistill.errors import ConfigError
from kubedistill.kube import pytorchjob, trainjob
from kubedistill.kube.settings import JobSettings
from kubedistill.launch import LaunchRequest

State = Literal["pending", "running", "succeeded", "failed"]
SUSPENDED = "Suspended"  # both operators' condition type while a queue (Kueue) holds the job
# The Job controller's completion index of a pod of an Indexed Job (node N of a TrainJob): an annotation always,
# and a label since Kubernetes 1.28 (kubernetes pkg/controller/job/indexed_job_utils.go,
# addCompletionIndexAnnotation / addCompletionIndexLabel).
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"


@dataclass(frozen=True)
class Backend:
    name: str
    group: str
    version: str
    plural: str
    kind: str
    build: Callable[[LaunchRequest, JobSettings, Mapping[str, str] | None], dict[str, Any]]
    read_state: Callable[[Mapping[str, Any]], tuple[State, str]]
    container: str  # the training container of every pod (the one whose log is read)
    job_label: str  # the label the operator puts on every pod of a job, with the job's name
    rank0_labels: str  # what selects node 0's pod among them (with COMPLETION_INDEX for a TrainJob)
    rank0_index_annotation: str | None = None  # an annotation node 0's pod must carry as "0" (not selectable)

    def pod_selector(self, name: str) -> str:
        return f"{self.job_label}={name}"

    def rank0_selector(self, name: str) -> str:
        return f"{self.job_label}={name},{self.rank0_labels}"

    def is_rank0(self, pod: Mapping[str, Any], name: str) -> bool:
        meta = pod.get("metadata") or {}
        wanted = dict(part.split("=", 1) for part in self.rank0_selector(name).split(","))
        labels = meta.get("labels") or {}
        if any(labels.get(k) != v for k, v in wanted.items()):
            return False
        if self.rank0_index_annotation is None:
            return True
        index = labels.get(self.rank0_index_annotation, (meta.get("annotations") or {}).get(self.rank0_index_annotation))
        return index == "0"

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"

    def state(self, job: Mapping[str, Any], node0_phase: str | None = None) -> tuple[State, str]:
        """(state, reason) of the job; ``node0_phase``: the phase of node 0's pod when known (a job whose node 0
        runs is running, whatever its status has caught up with)."""
        state, reason = self.read_state(job)
        if state == "pending" and node0_phase == "Running" and not _true(job, SUSPENDED):
            return "running", "node 0's pod is Running"
        return state, reason


def _true_conditions(job: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [c for c in (job.get("status") or {}).get("conditions") or [] if c.get("status") == "True"]


def _true(job: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    return next((c for c in _true_conditions(job) if c.get("type") == kind), None)


def _why(condition: Mapping[str, Any]) -> str:
    reason, message = condition.get("reason") or condition.get("type"), condition.get("message")
    return f"{reason}: {message}" if message and message != reason else str(reason)


def _queued(job: Mapping[str, Any], condition: Mapping[str, Any]) -> str:
    namespace = (job.get("metadata") or {}).get("namespace", "")
    return (f"suspended ({_why(condition)}): queued until a queue admits it (Kueue: `kubectl get workloads -n "
            f"{namespace}`), or spec.suspend is set")  # fmt: skip


def pytorchjob_state(job: Mapping[str, Any]) -> tuple[State, str]:
    """Training Operator v1.9.0: the newest true condition decides (pkg/util/status.go keeps one condition per
    type and sets Running to False when Succeeded or Failed is set)."""
    conditions = _true_conditions(job)
    for condition in reversed(conditions):
        kind = condition.get("type")
        if kind == "Failed":
            return "failed", _why(condition)
        if kind == "Succeeded":
            return "succeeded", _why(condition)
        if kind in ("Running", "Restarting"):
            return "running", _why(condition)
        if kind == SUSPENDED:
            return "pending", _queued(job, condition)
    return "pending", _why(conditions[-1]) if conditions else "created; the operator has not reported on it yet"


def trainjob_state(job: Mapping[str, Any]) -> tuple[State, str]:
    """Trainer v2.3.0: Failed / Complete / Suspended conditions, else the child Jobs' counts in jobsStatus."""
    for kind, state in (("Failed", "failed"), ("Complete", "succeeded")):
        condition = _true(job, kind)
        if condition is not None:
            return state, _why(condition)  # type: ignore[return-value]
    suspended = _true(job, SUSPENDED)
    if suspended is not None:
        return "pending", _queued(job, suspended)
    jobs = (job.get("status") or {}).get("jobsStatus") or []
    ready = [f"{j.get('name')}: {j.get('ready')} ready" for j in jobs if (j.get("ready") or 0) > 0]
    finished = [f"{j.get('name')}: {j.get('succeeded')} succeeded" for j in jobs if (j.get("succeeded") or 0) > 0]
    if ready or finished:
        return "running", ", ".join(ready + finished)
    if any((j.get("active") or 0) > 0 for j in jobs):
        return "pending", "pods created, not all running yet"
    return "pending", "created; the JobSet and its pods are not there yet"


BACKENDS: dict[str, Backend] = {
    "pytorchjob": Backend(
        name="pytorchjob", group=pytorchjob.GROUP, version=pytorchjob.VERSION, plural=pytorchjob.PLURAL,
        kind=pytorchjob.KIND, build=pytorchjob.build, read_state=pytorchjob_state, container=pytorchjob.CONTAINER,
        # training-operator v1.9.0 pkg/apis/kubeflow.org/v1/common_types.go (JobNameLabel, ReplicaTypeLabel,
        # ReplicaIndexLabel); the replica type is lower-cased (pkg/controller.v1/pytorch/pytorchjob_controller.go).
        job_label="training.kubeflow.org/job-name",
        rank0_labels="training.kubeflow.org/replica-type=master,training.kubeflow.org/replica-index=0",
    ),
    "trainjob": Backend(
        name="trainjob", group=trainjob.GROUP, version=trainjob.VERSION, plural=trainjob.PLURAL, kind=trainjob.KIND,
        build=trainjob.build, read_state=trainjob_state, container=trainjob.NODE,
        # The JobSet is named like the TrainJob; JobSet v0.12.0 labels every pod with its name, the replicated job
        # and the child Job's index (api/jobset/v1alpha2/jobset_types.go; pkg/controllers/jobset_controller.go,
        # labelAndAnnotateObject). Node 0 is child Job 0's completion index 0 (Trainer v2.3.0's torch plugin sets
        # PET_NODE_RANK from that index and the master address to <name>-node-0-0).
        job_label="jobset.sigs.k8s.io/jobset-name",
        rank0_labels=f"jobset.sigs.k8s.io/replicatedjob-name={trainjob.NODE},jobset.sigs.k8s.io/job-index=0",
        rank0_index_annotation=COMPLETION_INDEX,
    ),
}  # fmt: skip


def get_backend(name: str) -> Backend:
    backend = BACKENDS.get(name)
    if backend is None:
        raise ConfigError([f"backend: unknown backend {name!r}; valid: {', '.join(sorted(BACKENDS))}"])
    return backend
