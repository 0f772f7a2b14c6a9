"""Telling a recurring run's run from a manual one by its Argo Workflow, as KFP's scheduled workflow controller
makes it; read through the Kubernetes API (an HTTP stand-in here)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kubedistill.pipeline.recurring import find_recurring_run, recurring_run_of


def _workflow(name: str, *, scheduled: bool) -> dict:
    """An Argo Workflow's metadata as KFP gives it: every run's Workflow carries pipeline/runid
    (backend/src/apiserver/template/v2_template.go); a recurring run's also the labels of SetCannonicalLabels and
    the controller reference of SetOwnerReferences (backend/src/common/util/workflow.go)."""
    metadata = {"name": name, "namespace": "kubeflow", "labels": {"pipeline/runid": "0f6c2a1e"}}
    if scheduled:
        metadata["labels"].update({
            "scheduledworkflows.kubeflow.org/scheduledWorkflowName": "kubedistill-nightly-7k2xq",
            "scheduledworkflows.kubeflow.org/workflowEpoch": "1796176800",  # 2026-12-02T02:00:00Z
            "scheduledworkflows.kubeflow.org/workflowIndex": "3",
            "scheduledworkflows.kubeflow.org/isOwnedByScheduledWorkflow": "true",
        })  # fmt: skip
        metadata["ownerReferences"] = [{
            "apiVersion": "kubeflow.org/v1beta1", "kind": "ScheduledWorkflow", "name": "kubedistill-nightly-7k2xq",
            "uid": "5d0e7a52-9c1b-4f8e-a0c3-2b7d1e6f4a90", "controller": True, "blockOwnerDeletion": True,
        }]  # fmt: skip
    return {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow", "metadata": metadata}


def test_a_recurring_runs_workflow_gives_its_id_and_scheduled_time():
    found = recurring_run_of(_workflow("kubedistill-nightly-7k2xq-3-1796176800", scheduled=True))
    assert found.recurring_run_id == "5d0e7a52-9c1b-4f8e-a0c3-2b7d1e6f4a90"  # the ScheduledWorkflow's UID
    assert found.scheduled_time == "2026-12-02T02:00:00Z" and found.name == "kubedistill-nightly-7k2xq"


def test_a_manual_runs_workflow_is_not_a_recurring_run():
    assert recurring_run_of(_workflow("kubedistill-distillation-x9z2p", scheduled=False)) is None
    owned_elsewhere = _workflow("w", scheduled=True)
    owned_elsewhere["metadata"]["ownerReferences"][0]["kind"] = "CronWorkflow"
    assert recurring_run_of(owned_elsewhere) is None


@pytest.fixture
def kube_api():
    """The Kubernetes API's GET of a namespaced Workflow; Forbidden for any other name."""
    workflows = {w["metadata"]["name"]: w for w in (_workflow("run-scheduled", scheduled=True),
                                                    _workflow("run-manual", scheduled=False))}  # fmt: skip
    prefix = "/apis/argoproj.io/v1alpha1/namespaces/kubeflow/workflows/"

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            name = self.path.removeprefix(prefix) if self.path.startswith(prefix) else None
            body, code = (workflows[name], 200) if name in workflows else (
                {"kind": "Status", "status": "Failure", "reason": "Forbidden", "code": 403}, 403)  # fmt: skip
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    from kubernetes import client

    configuration = client.Configuration()
    configuration.host = f"http://127.0.0.1:{server.server_address[1]}"
    yield client.ApiClient(configuration)
    server.shutdown()
    server.server_close()


def test_the_workflow_is_read_from_the_cluster(kube_api, caplog):
    scheduled = find_recurring_run("run-scheduled", api_client=kube_api, namespace="kubeflow")
    assert scheduled.recurring_run_id == "5d0e7a52-9c1b-4f8e-a0c3-2b7d1e6f4a90"
    assert find_recurring_run("run-manual", api_client=kube_api, namespace="kubeflow") is None
    assert find_recurring_run("run-hidden", api_client=kube_api, namespace="kubeflow") is None  # 403: untold
    assert "not tagged as a scheduled run" in caplog.text and "run-hidden" in caplog.text
    assert find_recurring_run("{{$.pipeline_job_resource_name}}", api_client=kube_api) is None
