"""TrainJob (``trainer.kubeflow.org/v1alpha1``, Kubeflow Trainer v2.3) as a plain dict.

The runtime (``runtimeRef``: our TrainingRuntime, or the platform's ``torch-distributed``) holds the JobSet
template, its failure policy and TTL; the TrainJob gives the image, command, nodes, processes per node,
resources and environment, and patches the pods (node selector, tolerations, /dev/shm, service account,
labels) through ``spec.runtimePatches``, Trainer v2.3's name for what v2.0 called ``podSpecOverrides`` and
v2.1-v2.2 ``podTemplateOverrides``. The torch runtimes name the replicated job and its container ``node``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from kubedistill.kube import pod
from kubedistill.kube.settings import JobSettings
from kubedistill.launch import LaunchRequest

API_VERSION, KIND, PLURAL, GROUP, VERSION = (
    "trainer.kubeflow.org/v1alpha1", "TrainJob", "trainjobs", "trainer.kubeflow.org", "v1alpha1",
)  # fmt: skip
NODE = "node"  # the replicated job and the trainer container of the torch runtimes
PATCH_MANAGER = "kubedistill.io/launcher"


def build(request: LaunchRequest, settings: JobSettings, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The TrainJob for ``request`` as the dict the API server takes."""
    environ = os.environ if environ is None else environ
    template = pod.to_dict(pod.pod_template(request, settings, NODE, environ))
    container = template["spec"].pop("containers")[0]
    trainer = {
        "image": container["image"], "command": container["command"], "numNodes": request.nodes,
        "numProcPerNode": request.procs_per_node, "resourcesPerNode": container.get("resources") or {},
        "env": container.get("env") or [],
    }  # fmt: skip
    template["spec"]["containers"] = [{"name": NODE, "volumeMounts": container["volumeMounts"]}]
    patch = {"manager": PATCH_MANAGER, "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [
        {"name": NODE, "template": {"spec": {"template": template}}},
    ]}}}}  # fmt: skip
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": pod.to_dict(pod.metadata(request, settings, environ)),
        "spec": {
            "runtimeRef": {"apiGroup": GROUP, "kind": settings.runtime_kind, "name": settings.runtime},
            "trainer": {k: v for k, v in trainer.items() if v != [] and v != {}},
            "activeDeadlineSeconds": settings.active_deadline_seconds,
            "runtimePatches": [patch],
        },
    }
