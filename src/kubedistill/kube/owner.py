"""Who owns the job, so that the garbage collector deletes it with the KFP run and never earlier.

KFP (v2 on Argo) runs each task in a pod whose controller owner is the run's Argo Workflow (argo-workflows
workflow/controller/workflowpod.go: ``metav1.NewControllerRef(woc.wf, ...Workflow)``). "Retry run" deletes the
failed pods and updates that same Workflow (kubeflow/pipelines backend/src/apiserver/resource/resource_manager.go
``RetryRun``, backend/src/common/util/workflow.go ``GenerateRetryExecution``): a job owned by the launching pod
would be garbage-collected, even while it trains, when a retry deletes that pod. So the job is owned by the pod's
controller, the Workflow, which lives as long as the run; the retried task adopts the running job (same name).

An ownerReference is namespaced: an owner in another namespace is "absent" to the garbage collector, which
deletes the dependent at once. A job in a namespace other than the launching pod's gets no owner at all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from kubedistill.kube.cluster import Cluster
from kubedistill.kube.pod import launching_pod
from kubedistill.kube.settings import own_namespace
from kubedistill.launch import LaunchError


def _reference(owner: Mapping[str, Any]) -> dict[str, Any]:
    # Not the job's controller (its operator is), and no blockOwnerDeletion: that would need update rights on
    # the owner's finalizers, and the run's deletion must not wait for the job.
    return {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["name"], "uid": owner["uid"],
            "controller": False, "blockOwnerDeletion": False}  # fmt: skip


def owners(cluster: Cluster, namespace: str, environ: Mapping[str, str],
           say: Callable[[str], None]) -> list[dict[str, Any]] | None:  # fmt: skip
    """The ownerReferences of a job in ``namespace`` launched from the pod ``environ`` names (KFP_POD_NAME/UID);
    None outside KFP or across namespaces. What was decided, and why, goes to ``say``."""
    pod_id = launching_pod(environ)
    if pod_id is None:
        return None
    name, uid = pod_id
    here = own_namespace(environ)
    if here is not None and here != namespace:
        say(f"no owner for the job: it runs in namespace {namespace}, this pod in {here}, and an owner in another "
            "namespace would make the garbage collector delete the job at once. Deleting the run leaves the job "
            "to this launcher (it deletes the job when stopped) and to activeDeadlineSeconds")  # fmt: skip
        return None
    try:
        pod = cluster.pod(namespace, name)
    except LaunchError as e:
        say(f"could not read this pod ({e}); the job is owned by the pod itself, so a KFP 'Retry run', which "
            "deletes the failed pod, deletes the job too. The launcher's Role needs get on pods (manifests/base/rbac)")  # fmt: skip
        return [_reference({"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid})]
    if pod is None or (pod.get("metadata") or {}).get("uid") != uid:
        say(f"no owner for the job: pod {name} (uid {uid}) is not in namespace {namespace}")
        return None
    controller = next((r for r in pod["metadata"].get("ownerReferences") or [] if r.get("controller")), None)
    if controller is None:
        say(f"the job is owned by pod {name} (it has no controller): deleting the pod deletes the job")
        return [_reference({"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid})]
    say(f"the job is owned by {controller['kind']} {controller['name']}, the controller of this pod: deleting the "
        "run deletes the job; a retry of the run keeps it and follows it")  # fmt: skip
    return [_reference(controller)]
