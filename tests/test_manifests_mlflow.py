"""The MLflow server and its Postgres, as `kubectl kustomize` renders them (offline, like tests/test_manifests.py):
no Istio sidecar in their pods, so that KFP's pipeline pods and the training pods (which run without one) reach
MLflow in a namespace with Istio injection and STRICT mTLS; and the Service the pipeline's MLflow URI names."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _render(target: str) -> list[dict]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed: `kubectl kustomize` renders the manifests offline")
    done = subprocess.run(["kubectl", "kustomize", str(ROOT / target)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.mark.parametrize("target", ["manifests/base", "manifests/overlays/gke"])
def test_mlflow_and_postgres_pods_have_no_istio_sidecar(target):
    objects = _render(target)
    workloads = {o["metadata"]["name"]: o for o in objects if o["kind"] in ("Deployment", "StatefulSet")}
    assert set(workloads) == {"kubedistill-mlflow", "kubedistill-postgres"}
    for name, workload in workloads.items():
        annotations = workload["spec"]["template"]["metadata"].get("annotations") or {}
        assert annotations.get("sidecar.istio.io/inject") == "false", name  # a string: Istio reads "false"


def test_the_documented_mlflow_uri_names_the_service_of_the_manifests(monkeypatch):
    from kubedistill.errors import ConfigError
    from kubedistill.pipeline.context import PipelineContext

    objects = _render("manifests/overlays/gke")
    (service,) = [o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == "kubedistill-mlflow"]
    (port,) = service["spec"]["ports"]
    uri = f"http://{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local:{port['port']}"
    assert uri == "http://kubedistill-mlflow.kubeflow.svc.cluster.local:5000"
    spec = yaml.safe_load_all((ROOT / "pipelines" / "distillation_pipeline.yaml").read_text())
    parameters = next(spec)["root"]["inputDefinitions"]["parameters"]
    assert uri in " ".join(parameters["mlflow_tracking_uri"]["description"].split())  # the run form's help
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ConfigError, match=uri):  # what register says when no server is given
        PipelineContext(run_id="r1", output_root="gs://b/runs").tracking_target(required=True)
