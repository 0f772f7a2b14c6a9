"""PyTorchJob (``kubeflow.org/v1``, Training Operator v1), built from the ``kubeflow-training`` SDK's models.

Master (1 replica) + (nodes - 1) Workers, the container named ``pytorch`` (the operator requires it),
``nprocPerNode`` = processes per node. The operator sets RANK to the *pod* index and WORLD_SIZE to
replicas x nprocPerNode; torchrun ignores both and reads the PET_* variables.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubedistill.kube import pod
from kubedistill.kube.settings import JobSettings
from kubedistill.launch import LaunchRequest

API_VERSION, KIND, PLURAL, GROUP, VERSION = "kubeflow.org/v1", "PyTorchJob", "pytorchjobs", "kubeflow.org", "v1"
CONTAINER = "pytorch"
MASTER, WORKER = "Master", "Worker"


def build(request: LaunchRequest, settings: JobSettings, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The PyTorchJob for ``request`` as the dict the API server takes."""
    from kubeflow.training import models

    template = pod.pod_template(request, settings, CONTAINER, environ)
    replicas = {MASTER: models.KubeflowOrgV1ReplicaSpec(replicas=1, restart_policy=settings.restart_policy, template=template)}
    if request.nodes > 1:
        replicas[WORKER] = models.KubeflowOrgV1ReplicaSpec(
            replicas=request.nodes - 1, restart_policy=settings.restart_policy, template=template
        )
    job = models.KubeflowOrgV1PyTorchJob(
        api_version=API_VERSION, kind=KIND, metadata=pod.metadata(request, settings, _environ(environ)),
        spec=models.KubeflowOrgV1PyTorchJobSpec(
            nproc_per_node=str(request.procs_per_node), pytorch_replica_specs=replicas,
            run_policy=models.KubeflowOrgV1RunPolicy(
                clean_pod_policy="Running",  # failed pods stay, with their logs; running ones are stopped
                ttl_seconds_after_finished=settings.ttl_seconds_after_finished,
                active_deadline_seconds=settings.active_deadline_seconds, backoff_limit=settings.backoff_limit,
            ),
        ),
    )  # fmt: skip
    return pod.to_dict(job)


def _environ(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    import os

    return os.environ if environ is None else environ
