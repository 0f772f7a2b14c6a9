"""What a training job on the cluster needs besides the train arguments: image, namespace, GPUs, limits.

Defaults suit a GKE node pool of NVIDIA GPUs; every field is a ``kubedistill launch`` argument.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from kubedistill.pipeline.images import TRAINER_IMAGE

SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
# MLflow's credential variables: forwarded to the pods only as references to a Secret, never as values.
MLFLOW_CREDENTIAL_KEYS = ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
TRAINER_SERVICE_ACCOUNT = "kubedistill-trainer"  # manifests/base/rbac/serviceaccount.yaml
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?([EPTGMK]i?|[mkMGTPE])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


@dataclass
class JobSettings:
    """The cluster side of a training job.

    ``gpu_type``: the GKE accelerator (``cloud.google.com/gke-accelerator`` node label, e.g. nvidia-l4,
    nvidia-tesla-a100, nvidia-h100-80gb); empty: no node selector. ``accelerator``: ``gpu`` asks for one GPU per
    process, ``cpu`` for none (a CPU cluster: gloo). ``mlflow_secret``: a Secret whose keys are MLflow's
    credential variables (MLFLOW_TRACKING_TOKEN, or _USERNAME and _PASSWORD), passed as secretKeyRef.
    """

    namespace: str | None = None  # None: this pod's namespace (in a cluster), else "default"
    image: str = TRAINER_IMAGE
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    # The manifests' trainer account (manifests/base/rbac; Workload Identity for gs:// on GKE, no keys in any
    # spec). null: the namespace's `default` (PyTorchJob) or what the TrainingRuntime names (TrainJob).
    service_account: str | None = TRAINER_SERVICE_ACCOUNT
    accelerator: Literal["gpu", "cpu"] = "gpu"
    gpu_type: str = ""
    gpu_resource: str = "nvidia.com/gpu"
    cpu_per_node: str | None = None  # requests = limits; None: no CPU request/limit
    memory_per_node: str | None = None
    shm_size: str = "16Gi"  # /dev/shm for DataLoader workers (the container default is 64 MB)
    kueue_queue: str | None = None
    restart_policy: Literal["Never", "ExitCode"] = "Never"  # OnFailure restarts a rank in place: it cannot rejoin
    backoff_limit: int = 0  # job-level retries; the pipeline's retry and resume_interrupted handle restarts
    active_deadline_seconds: int = 7 * 24 * 3600  # the backstop when nobody deletes a stuck job
    ttl_seconds_after_finished: int = 7 * 24 * 3600  # finished jobs (and their logs) stay a week
    runtime: str = "kubedistill-torch"  # TrainJob: the TrainingRuntime (or ClusterTrainingRuntime) to use
    runtime_kind: Literal["TrainingRuntime", "ClusterTrainingRuntime"] = "TrainingRuntime"
    mlflow_secret: str | None = None
    env: dict[str, str] = field(default_factory=dict)  # more variables (values: nothing secret here)
    # Seconds. Pending (queued, unschedulable, pulling) this long: delete and fail (GPU capacity can take hours).
    pending_timeout: float = 30 * 60
    timeout: float | None = None  # from creation to the end; None: only active_deadline_seconds

    def problems(self) -> list[str]:
        found = []
        if not self.image:
            found.append("image: empty; give the trainer image (images/trainer, `make images`)")
        for name in ("cpu_per_node", "memory_per_node", "shm_size"):
            value = getattr(self, name)
            if value is not None and not _QUANTITY.match(str(value)):
                found.append(f"{name}: {value!r} is not a Kubernetes quantity (e.g. 8, 500m, 64Gi)")
        for name in ("backoff_limit", "active_deadline_seconds", "ttl_seconds_after_finished"):
            if getattr(self, name) < 0:
                found.append(f"{name}: must be >= 0, got {getattr(self, name)}")
        if not _LABEL_VALUE.match(self.gpu_type or ""):
            found.append(f"gpu_type: {self.gpu_type!r} is not a node label value (e.g. nvidia-l4)")
        if self.kueue_queue is not None and not _LABEL_VALUE.match(self.kueue_queue):
            found.append(f"kueue_queue: {self.kueue_queue!r} is not a label value")
        if self.pending_timeout <= 0:
            found.append(f"pending_timeout: must be > 0 seconds, got {self.pending_timeout}")
        if self.timeout is not None and self.timeout <= 0:
            found.append(f"timeout: must be > 0 seconds (or null for none), got {self.timeout}")
        for key in self.env:
            if key in MLFLOW_CREDENTIAL_KEYS:
                found.append(f"env: {key} is a credential; put it in a Secret and pass mlflow_secret=<its name>")
        return found

    def resolved_namespace(self) -> str:
        """``namespace``, else the namespace of the pod this runs in, else "default"."""
        return self.namespace or own_namespace() or "default"


def own_namespace(environ: Mapping[str, str] | None = None) -> str | None:
    """The namespace of the pod this process runs in (its service account's), else POD_NAMESPACE, else None."""
    try:
        with open(SERVICE_ACCOUNT_NAMESPACE) as f:
            found = f.read().strip()
            if found:
                return found
    except OSError:
        pass
    return (os.environ if environ is None else environ).get("POD_NAMESPACE") or None
