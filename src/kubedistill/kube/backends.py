"""The one interface the launcher drives: where a job kind lives in the API, how to build one, how to read its
state, and which pod runs rank 0 (whose log is streamed)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from kubedistill.errors import ConfigError
from kubedistill.kube import pytorchjob, trainjob
from kubedistill.kube.settings import JobSettings
from kubedistill.launch import LaunchRequest

State = Literal["pending", "running", "succeeded", "failed"]


@dataclass(frozen=True)
class Backend:
    name: str
    group: str
    version: str
    plural: str
    kind: str
    build: Callable[[LaunchRequest, JobSettings, Mapping[str, str] | None], dict[str, Any]]
    succeeded_condition: str
    failed_condition: str
    job_label: str  # the label the operator puts on every pod of a job, with the job's name
    rank0_labels: str  # what selects node 0's pod among them

    def pod_selector(self, name: str) -> str:
        return f"{self.job_label}={name}"

    def rank0_selector(self, name: str) -> str:
        return f"{self.job_label}={name},{self.rank0_labels}"

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"

    def state(self, job: Mapping[str, Any]) -> tuple[State, str]:
        """(state, reason) from the job's status conditions: the latest true condition decides."""
        conditions = [c for c in (job.get("status") or {}).get("conditions") or [] if c.get("status") == "True"]
        for condition in reversed(conditions):
            kind = condition.get("type")
            detail = condition.get("message") or condition.get("reason") or kind
            if kind == self.failed_condition:
                return "failed", f"{condition.get('reason') or kind}: {detail}"
            if kind == self.succeeded_condition:
                return "succeeded", detail
            if kind == "Running":
                return "running", detail
        return "pending", conditions[-1].get("reason", "created") if conditions else "created"


BACKENDS: dict[str, Backend] = {
    "pytorchjob": Backend(
        name="pytorchjob", group=pytorchjob.GROUP, version=pytorchjob.VERSION, plural=pytorchjob.PLURAL,
        kind=pytorchjob.KIND, build=pytorchjob.build, succeeded_condition="Succeeded", failed_condition="Failed",
        job_label="training.kubeflow.org/job-name",
        rank0_labels="training.kubeflow.org/replica-type=master,training.kubeflow.org/replica-index=0",
    ),
    "trainjob": Backend(
        name="trainjob", group=trainjob.GROUP, version=trainjob.VERSION, plural=trainjob.PLURAL, kind=trainjob.KIND,
        build=trainjob.build, succeeded_condition="Complete", failed_condition="Failed",
        job_label="jobset.sigs.k8s.io/jobset-name",
        rank0_labels=f"jobset.sigs.k8s.io/replicatedjob-name={trainjob.NODE},batch.kubernetes.io/job-completion-index=0",
    ),
}  # fmt: skip


def get_backend(name: str) -> Backend:
    backend = BACKENDS.get(name)
    if backend is None:
        raise ConfigError([f"backend: unknown backend {name!r}; valid: {', '.join(sorted(BACKENDS))}"])
    return backend
