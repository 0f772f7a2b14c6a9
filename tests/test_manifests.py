"""The kustomize manifests, rendered with `kubectl kustomize` (offline) and checked: built-in kinds with
kubernetes-validate --strict, the TrainingRuntime against the upstream CRD; RBAC confined to its namespace and
away from Secrets; nothing runs as root; no secret value anywhere. No cluster runs here."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ["manifests/base", "manifests/overlays/gke"]
SCHEMAS = ROOT.parent / "shared" / "k8s-schemas"
BUILT_IN = {"ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Service", "Deployment", "StatefulSet"}


def _render(target: str) -> list[dict]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed: `kubectl kustomize` renders the manifests offline")
    done = subprocess.run(["kubectl", "kustomize", str(ROOT / target)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module", params=TARGETS)
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, _render(request.param)


def test_every_object_is_expected_and_built_in_kinds_validate_strictly(rendered, tmp_path):
    target, objects = rendered
    assert {o["kind"] for o in objects} == BUILT_IN | {"TrainingRuntime"}
    path = tmp_path / "rendered.yaml"
    path.write_text(yaml.safe_dump_all([o for o in objects if o["kind"] in BUILT_IN]))
    validate = Path(sys.executable).with_name("kubernetes-validate")
    done = subprocess.run([str(validate), "--strict", "--quiet", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ERROR" not in done.stdout + done.stderr


def test_the_training_runtime_validates_against_the_upstream_crd(rendered):
    import jsonschema

    crd = SCHEMAS / "trainer.kubeflow.org_trainingruntimes.yaml"
    if not crd.is_file():
        pytest.skip(f"{crd} is absent: the upstream CRD schemas live in ../shared/k8s-schemas next to the checkout")
    (runtime,) = [o for o in rendered[1] if o["kind"] == "TrainingRuntime"]
    (version,) = [v for v in yaml.safe_load(crd.read_text())["spec"]["versions"] if v.get("served")]
    errors = list(jsonschema.Draft7Validator(version["schema"]["openAPIV3Schema"]).iter_errors(runtime))
    assert not errors, [e.message for e in errors]
    assert runtime["metadata"]["name"] == "kubedistill-torch"  # what kube.settings.JobSettings.runtime names


def test_rbac_stays_in_its_namespace_and_away_from_secrets(rendered):
    target, objects = rendered
    assert not [o for o in objects if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    (role,) = [o for o in objects if o["kind"] == "Role"]
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    assert not [g for g in granted if "secrets" in g[1] or "*" in g]
    job_verbs = {"create", "get", "list", "watch", "delete"}
    assert {v for g, r, v in granted if r == "pytorchjobs"} == job_verbs
    assert {v for g, r, v in granted if r == "trainjobs"} == job_verbs
    assert {(r, v) for g, r, v in granted if g == ""} == {("pods", "get"), ("pods", "list"), ("pods/log", "get"),
                                                           ("events", "list")}  # fmt: skip
    (binding,) = [o for o in objects if o["kind"] == "RoleBinding"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "kubedistill-launcher"}
    if target.endswith("gke"):
        (subject,) = binding["subjects"]
        assert subject["name"] == "pipeline-runner" and subject["namespace"] == binding["metadata"]["namespace"] == "kubeflow"


def _pod_specs(objects: list[dict]) -> list[tuple[str, dict]]:
    found = []
    for o in objects:
        if o["kind"] in ("Deployment", "StatefulSet"):
            found.append((o["metadata"]["name"], o["spec"]["template"]["spec"]))
        elif o["kind"] == "TrainingRuntime":
            for job in o["spec"]["template"]["spec"]["replicatedJobs"]:
                found.append((o["metadata"]["name"], job["template"]["spec"]["template"]["spec"]))
    return found


def test_no_container_runs_as_root(rendered):
    specs = _pod_specs(rendered[1])
    assert len(specs) == 3
    for name, spec in specs:
        pod = spec.get("securityContext") or {}
        for container in spec["containers"]:
            merged = {**pod, **(container.get("securityContext") or {})}
            assert merged.get("runAsNonRoot") is True and merged.get("runAsUser", 0) != 0, f"{name}/{container['name']}"
            assert (container.get("securityContext") or {}).get("allowPrivilegeEscalation") is False


def test_no_secret_value_in_any_manifest(rendered):
    objects = rendered[1]
    assert not [o for o in objects if o["kind"] == "Secret"]
    for name, spec in _pod_specs(objects):
        for container in spec["containers"]:
            for env in container.get("env", []):
                if re.search(r"PASSWORD|TOKEN|SECRET|KEY", env["name"]):
                    assert "value" not in env and "secretKeyRef" in env["valueFrom"], f"{name}: {env['name']}"
            for arg in container.get("args", []):
                assert not re.search(r"postgresql://[^:]+:(?!\$\()", arg), f"{name}: a literal password in {arg}"


def test_mlflow_server_settings(rendered):
    (deployment,) = [o for o in rendered[1] if o["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"ghcr.io/mlflow/mlflow:v{mlflow.__version__}-full"  # the version kubedistill runs
    args = dict(a.removeprefix("--").split("=", 1) for a in container["args"][1:])
    hosts = args["allowed-hosts"].split(",")
    assert all(re.fullmatch(r"[\w.$()-]+:5000", host) for host in hosts), hosts  # exact, port included
    assert "kubedistill-mlflow.$(POD_NAMESPACE).svc.cluster.local:5000" in hosts
    assert args["artifacts-destination"] == "$(MLFLOW_ARTIFACTS_DESTINATION)"
    assert container["readinessProbe"]["httpGet"]["path"] == container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    (configmap,) = [o for o in rendered[1] if o["kind"] == "ConfigMap"]
    assert configmap["data"]["mlflowArtifacts"].startswith("gs://")
