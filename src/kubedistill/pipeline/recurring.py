"""Whether a KFP run is a run of a recurring run, and which: read from the run's Argo Workflow.

The schedule-time placeholder cannot tell: KFP 2.14 and 2.15 leave it unresolved, 2.16 fills in "", and from
2.17 on a manual run gets its creation time (backend/src/v2/cmd/driver/main.go,
resolvePipelineJobScheduleTimeUTCFromWorkflow). The Workflow of a recurring run's run says it: the scheduled
workflow controller labels it (backend/src/common/util/workflow.go, SetCannonicalLabels; the keys in
backend/src/common/util/consts.go) and makes its ScheduledWorkflow its controller (SetOwnerReferences), whose UID
is the recurring run's id (backend/src/apiserver/resource/resource_manager.go, CreateJob: ``job.UUID =
swf.UID``; the API server reads it back with ScheduledWorkflowUUIDAsStringOrEmpty). A manual run's Workflow has
neither. The pipeline runner's service account may read its Workflow in standalone KFP (pipeline-runner Role)
and in multi-user Kubeflow (kubeflow-edit); where it may not, the run is not tagged as a scheduled one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_LABELS = "scheduledworkflows.kubeflow.org/"  # constants.FullName of the ScheduledWorkflow CRD
OWNED_LABEL = _LABELS + "isOwnedByScheduledWorkflow"  # "true"
NAME_LABEL = _LABELS + "scheduledWorkflowName"
EPOCH_LABEL = _LABELS + "workflowEpoch"  # the scheduled time, Unix seconds
# The owner reference that names the recurring run (backend/src/common/util/workflow.go, isScheduledWorkflow).
OWNER_API_VERSION, OWNER_KIND = "kubeflow.org/v1beta1", "ScheduledWorkflow"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


@dataclass(frozen=True)
class RecurringRun:
    recurring_run_id: str  # the KFP recurring run's id (its ScheduledWorkflow's UID)
    name: str  # its ScheduledWorkflow's name
    scheduled_time: str  # this run's scheduled time, RFC 3339 UTC


def recurring_run_of(workflow: Mapping[str, Any]) -> RecurringRun | None:
    """The recurring run that made ``workflow`` (an Argo Workflow object), or None for a manual run."""
    metadata = workflow.get("metadata") or {}
    labels = metadata.get("labels") or {}
    owner = next((o for o in metadata.get("ownerReferences") or []
                  if o.get("apiVersion") == OWNER_API_VERSION and o.get("kind") == OWNER_KIND and o.get("uid")), None)  # fmt: skip
    if owner is None or labels.get(OWNED_LABEL) != "true":
        return None
    try:
        scheduled = datetime.fromtimestamp(int(labels[EPOCH_LABEL]), tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (KeyError, ValueError):
        scheduled = ""
    return RecurringRun(owner["uid"], labels.get(NAME_LABEL) or owner.get("name", ""), scheduled)


def find_recurring_run(workflow_name: str, *, api_client: Any = None, namespace: str | None = None) -> RecurringRun | None:
    """The recurring run of this pod's KFP run, whose Workflow is ``workflow_name`` (the
    ``{{$.pipeline_job_resource_name}}`` placeholder); None for a manual run, and when it cannot be told (no
    Workflow name, no access to the cluster or to the Workflow: logged)."""
    if not workflow_name or workflow_name.startswith("{{"):
        return None
    try:
        workflow = read_workflow(workflow_name, namespace=namespace, api_client=api_client)
    except Exception as e:  # no cluster config, 403, 404, a network error: the run is just not tagged
        logger.warning("cannot tell whether KFP run %s is a recurring run's (reading its Workflow failed: %s); it is "
                       "not tagged as a scheduled run", workflow_name, e)  # fmt: skip
        return None
    return recurring_run_of(workflow)


def read_workflow(name: str, *, namespace: str | None = None, api_client: Any = None) -> dict[str, Any]:
    """The Argo Workflow ``name`` in ``namespace`` (default: this pod's), with the pod's own credentials."""
    from kubernetes import client, config

    if api_client is None:
        config.load_incluster_config()
        api_client = client.ApiClient()
    namespace = namespace or SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    api = client.CustomObjectsApi(api_client)
    return api.get_namespaced_custom_object("argoproj.io", "v1alpha1", namespace, "workflows", name)
