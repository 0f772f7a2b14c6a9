"""Job specs for both backends, validated against the upstream CRD schemas (../shared/k8s-schemas: the
PyTorchJob of Training Operator v1.9.4, the TrainJob of Trainer v2.3.0); no API server runs here."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kubedistill.errors import ConfigError
from kubedistill.kube import pytorchjob, trainjob
from kubedistill.kube.backends import BACKENDS, get_backend
from kubedistill.kube.settings import JobSettings
from kubedistill.kube.spec import split_arguments
from kubedistill.launch import LaunchRequest

from .fake_api import jobs_status, jobset_pod, pytorchjob_condition, pytorchjob_pod, trainjob_condition

SCHEMAS = Path(__file__).resolve().parents[2].parent / "shared" / "k8s-schemas"
CRDS = {"pytorchjob": "kubeflow.org_pytorchjobs.yaml", "trainjob": "trainer.kubeflow.org_trainjobs.yaml"}
TOKEN = "s3cr3t-t0ken-value"
KFP_ENV = {"MLFLOW_TRACKING_URI": "http://mlflow.kubeflow:5000", "MLFLOW_RUN_ID": "parent123",
           "MLFLOW_TRACKING_TOKEN": TOKEN, "KFP_POD_NAME": "kd-run-distill-123", "KFP_POD_UID": "0a1b-2c3d"}  # fmt: skip
TRAIN = {"out": "gs://bucket/runs/r1/distill", "data": "gs://bucket/runs/r1/validate/manifest.jsonl",
         "model": "torchvision/resnet50", "epochs": 100, "optim_args": {"lr": 0.5}}  # fmt: skip


def _schema(backend: str) -> dict:
    path = SCHEMAS / CRDS[backend]
    if not path.is_file():
        pytest.skip(f"{path} is absent: the upstream CRD schemas live in ../shared/k8s-schemas next to the checkout")
    crd = yaml.safe_load(path.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v.get("served")]
    return version["schema"]["openAPIV3Schema"]


def _validate(backend: str, job: dict) -> None:
    import jsonschema

    errors = sorted(jsonschema.Draft7Validator(_schema(backend)).iter_errors(job), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors[:10])
    # What the API server adds to the schema: the name is a DNS-1035 label.
    assert re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", job["metadata"]["name"])


def _request(nodes: int, procs: int = 4) -> LaunchRequest:
    return LaunchRequest(name="kd-0a1b2c3d", train_args=TRAIN, nodes=nodes, procs_per_node=procs, gpu_type="nvidia-l4")


SETTINGS = JobSettings(namespace="ml", gpu_type="nvidia-l4", service_account="kubedistill-trainer", kueue_queue="gpu",
                       mlflow_secret="mlflow-credentials", cpu_per_node="30", memory_per_node="200Gi")  # fmt: skip


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("nodes", [1, 2, 4])
def test_specs_validate_against_the_upstream_crds(backend, nodes):
    job = get_backend(backend).build(_request(nodes), SETTINGS, KFP_ENV)
    _validate(backend, job)
    assert TOKEN not in json.dumps(job)  # no secret value in any spec


def test_the_schema_check_catches_a_wrong_spec():
    import jsonschema

    job = trainjob.build(_request(2), SETTINGS, KFP_ENV)
    job["spec"]["trainer"]["numNodes"] = "two"
    job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0].pop("name")
    errors = list(jsonschema.Draft7Validator(_schema("trainjob")).iter_errors(job))
    assert {e.message for e in errors} == {"'two' is not of type 'integer'", "'name' is a required property"}


@pytest.mark.parametrize("nodes", [1, 2, 4])
def test_pytorchjob_layout(nodes):
    job = pytorchjob.build(_request(nodes), SETTINGS, KFP_ENV)
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1
    assert replicas.get("Worker", {}).get("replicas", 0) == nodes - 1
    assert job["spec"]["nprocPerNode"] == "4"
    policy = job["spec"]["runPolicy"]
    assert policy["cleanPodPolicy"] == "Running" and policy["backoffLimit"] == 0
    assert policy["ttlSecondsAfterFinished"] > 0 and policy["activeDeadlineSeconds"] > 0
    for spec in replicas.values():
        assert spec["restartPolicy"] == "Never"  # never the default OnFailure: a rank restarted in place cannot rejoin
        (container,) = spec["template"]["spec"]["containers"]
        assert container["name"] == "pytorch"
        assert container["command"][:4] == ["torchrun", "-m", "kubedistill", "train"]
        assert "resume_interrupted=true" in container["command"] and "optim_args.lr=0.5" in container["command"]
        assert not any(arg.startswith(("--nnodes", "--node-rank", "--nproc")) for arg in container["command"])  # PET_*
        assert container["resources"]["limits"] == {"nvidia.com/gpu": "4", "cpu": "30", "memory": "200Gi"}
        assert container["resources"]["requests"] == container["resources"]["limits"]


def test_pytorchjob_round_trips_through_the_sdk_models():
    from kubeflow.training import ApiClient

    job = pytorchjob.build(_request(2), SETTINGS, KFP_ENV)
    client = ApiClient()
    model = client._ApiClient__deserialize(job, "KubeflowOrgV1PyTorchJob")
    assert model.spec.pytorch_replica_specs["Worker"].replicas == 1
    assert client.sanitize_for_serialization(model) == job


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_pod_settings_shared_by_both_backends(backend):
    job = get_backend(backend).build(_request(2), SETTINGS, KFP_ENV)
    pod = _pod_template(backend, job)
    assert job["metadata"]["labels"]["sidecar.istio.io/inject"] == "false"
    assert job["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
    assert pod["metadata"]["labels"]["sidecar.istio.io/inject"] == "false"
    assert pod["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu"
    assert "kueue.x-k8s.io/queue-name" not in pod["metadata"]["labels"]  # pods are not workloads of their own
    spec = pod["spec"]
    assert spec["serviceAccountName"] == "kubedistill-trainer"
    assert spec["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert spec["volumes"] == [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}}]
    assert spec["containers"][0]["volumeMounts"] == [{"name": "dshm", "mountPath": "/dev/shm"}]
    owner = job["metadata"]["ownerReferences"]
    assert owner == [{"apiVersion": "v1", "kind": "Pod", "name": "kd-run-distill-123", "uid": "0a1b-2c3d",
                      "blockOwnerDeletion": False, "controller": False}]  # fmt: skip
    env = {e["name"]: e for e in _env(backend, job)}
    assert env["MLFLOW_TRACKING_URI"]["value"] == "http://mlflow.kubeflow:5000"
    assert env["MLFLOW_RUN_ID"]["value"] == "parent123"  # the pipeline's parent run
    assert env["MLFLOW_TRACKING_TOKEN"] == {"name": "MLFLOW_TRACKING_TOKEN", "valueFrom": {"secretKeyRef": {
        "name": "mlflow-credentials", "key": "MLFLOW_TRACKING_TOKEN", "optional": True}}}  # fmt: skip


def test_trainjob_targets_trainer_v2_3():
    job = trainjob.build(_request(4, procs=8), SETTINGS, KFP_ENV)
    assert job["spec"]["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "TrainingRuntime",
                                         "name": "kubedistill-torch"}  # fmt: skip
    trainer = job["spec"]["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (4, 8)
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "8"
    assert trainer["command"][:4] == ["torchrun", "-m", "kubedistill", "train"]
    assert "podSpecOverrides" not in job["spec"] and "podTemplateOverrides" not in job["spec"]  # renamed in 2.3
    platform = trainjob.build(_request(1), JobSettings(runtime="torch-distributed", runtime_kind="ClusterTrainingRuntime"), {})
    assert platform["spec"]["runtimeRef"]["name"] == "torch-distributed"
    assert "ownerReferences" not in platform["metadata"]  # launched outside KFP


def test_cpu_jobs_ask_for_no_gpu():
    job = pytorchjob.build(_request(2), JobSettings(namespace="ml", accelerator="cpu"), {})
    spec = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert "resources" not in spec["containers"][0] or not spec["containers"][0]["resources"]
    assert "nodeSelector" not in spec and "tolerations" not in spec


def test_credentials_never_go_in_as_values_and_half_set_kfp_env_is_refused():
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_TOKEN is set here.*mlflow_secret"):
        pytorchjob.build(_request(1), JobSettings(namespace="ml"), {"MLFLOW_TRACKING_TOKEN": TOKEN})
    with pytest.raises(ConfigError, match="KFP_POD_NAME and KFP_POD_UID must be set together"):
        trainjob.build(_request(1), JobSettings(namespace="ml"), {"KFP_POD_NAME": "p"})
    assert "env: MLFLOW_TRACKING_PASSWORD is a credential" in JobSettings(env={"MLFLOW_TRACKING_PASSWORD": "x"}).problems()[0]


def test_pytorchjob_state_follows_training_operator_conditions():
    torch = get_backend("pytorchjob")
    status = lambda *conds: {"status": {"conditions": list(conds)}}  # noqa: E731
    created, running = pytorchjob_condition("Created", "j"), pytorchjob_condition("Running", "j")
    assert torch.state({})[0] == "pending"
    assert torch.state(status(created)) == ("pending", "PyTorchJobCreated: PyTorchJob j is created.")
    assert torch.state(status(created, running)) == ("running", "PyTorchJobRunning: PyTorchJob j is running.")
    assert torch.state(status(created, pytorchjob_condition("Restarting", "j")))[0] == "running"
    assert torch.state(status(created, pytorchjob_condition("Running", "j", "False"),
                              pytorchjob_condition("Succeeded", "j")))[0] == "succeeded"  # fmt: skip
    assert torch.state(status(created, pytorchjob_condition("Running", "j", "False"), pytorchjob_condition("Failed", "j"))) == (
        "failed", "PyTorchJobFailed: PyTorchJob j is failed because 1 Master replica(s) failed.")  # fmt: skip
    assert "queued until a queue admits it" in torch.state(status(created, pytorchjob_condition("Suspended", "j")))[1]


def test_trainjob_state_follows_trainer_v2_3_status():
    """No Running condition: jobsStatus ready (or node 0's pod Running) is running; active alone is pending
    (an unschedulable pod keeps its Job active); Suspended is queued; Complete/Failed carry JobSet's reasons."""
    train = get_backend("trainjob")
    assert train.state({"status": {"jobsStatus": jobs_status("node", active=1)}})[0] == "pending"
    assert train.state({"status": {"jobsStatus": jobs_status("node", active=1)}}, node0_phase="Running") == (
        "running", "node 0's pod is Running")
    assert train.state({"status": {"jobsStatus": jobs_status("node", active=1, ready=1)}}) == ("running", "node: 1 ready")
    assert train.state({"status": {"conditions": [trainjob_condition("Complete")]}}) == (
        "succeeded", "AllJobsCompleted: jobset completed successfully")
    assert train.state({"status": {"conditions": [trainjob_condition("Failed")]}}) == (
        "failed", "FailedJobs: jobset failed due to one or more job failures")
    assert train.state({"status": {"conditions": [trainjob_condition("DeadlineExceeded")]}})[1].startswith("DeadlineExceeded")
    suspended = {"metadata": {"namespace": "ml"}, "status": {"conditions": [trainjob_condition("Suspended")]}}
    state, reason = train.state(suspended, node0_phase="Running")
    assert state == "pending" and "Kueue: `kubectl get workloads -n ml`" in reason
    assert train.state({"status": {"conditions": [{**trainjob_condition("Suspended"), "status": "False", "reason": "Resumed"}],
                                   "jobsStatus": jobs_status("node", ready=1)}})[0] == "running"  # fmt: skip


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_node_0_is_found_among_the_operators_pods(backend):
    kind = get_backend(backend)
    if backend == "pytorchjob":
        pods = [pytorchjob_pod("j", "worker", 0), pytorchjob_pod("j", "master", 0)]
    else:
        pods = [jobset_pod("j", 1), jobset_pod("j", 0)]
        no_label = jobset_pod("j", 1)  # Kubernetes < 1.28: the completion index is only an annotation
        del no_label["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"]
        assert not kind.is_rank0(no_label, "j")
    assert [kind.is_rank0(p, "j") for p in pods] == [False, True]
    assert not kind.is_rank0(pods[1], "other")


def test_a_gpu_job_trains_with_accelerator_gpu_and_a_cpu_job_does_not():
    job = pytorchjob.build(_request(1), SETTINGS, {})
    command = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["command"]
    assert "accelerator=gpu" in command
    cpu = trainjob.build(_request(1), JobSettings(namespace="ml", accelerator="cpu"), {})
    assert not any(arg.startswith("accelerator=") for arg in cpu["spec"]["trainer"]["command"])
    # `accelerator` is a launch setting; from the pipeline's train_args it reaches the train arguments instead
    from kubedistill.kube.launcher import KubeLauncher

    request = LaunchRequest(name="kd-x", train_args={**TRAIN, "accelerator": "cpu"}, nodes=1, procs_per_node=1)
    with pytest.raises(ConfigError, match="the job asks for GPUs .* but the train arguments say accelerator=cpu"):
        KubeLauncher(get_backend("trainjob"), SETTINGS, environ={}).run(request)  # refused before any API call


def test_training_told_to_use_a_gpu_refuses_to_start_without_one():
    """What accelerator=gpu does in a pod whose GPU is not visible: a clear refusal, not a run on the CPU."""
    import torch

    from kubedistill.training.precision import resolve_device

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible here")
    with pytest.raises(ConfigError, match="no CUDA device is visible"):
        resolve_device("gpu")


def test_pods_run_as_the_trainer_service_account_unless_told_otherwise():
    for backend in sorted(BACKENDS):
        pod = _pod_template(backend, get_backend(backend).build(_request(1), JobSettings(namespace="ml"), {}))
        assert pod["spec"]["serviceAccountName"] == "kubedistill-trainer"  # manifests/base/rbac/serviceaccount.yaml
    from kubedistill.config import parse_key_values

    config, _ = split_arguments({**TRAIN, **parse_key_values(["service_account=null"])})
    assert config.settings.service_account is None  # the namespace's default / the runtime's
    pod = _pod_template("pytorchjob", pytorchjob.build(_request(1), config.settings, {}))
    assert "serviceAccountName" not in pod["spec"]


def test_the_manifests_define_the_default_trainer_service_account():
    root = Path(__file__).resolve().parents[2] / "manifests" / "base"
    account = yaml.safe_load((root / "rbac" / "serviceaccount.yaml").read_text())
    assert account["metadata"]["name"] == JobSettings().service_account
    runtime = yaml.safe_load((root / "runtime" / "trainingruntime.yaml").read_text())
    pod = runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == JobSettings().service_account


def test_no_owner_reference_across_namespaces_in_the_spec():
    environ = {**KFP_ENV, "POD_NAMESPACE": "kubeflow"}  # the launching pod's namespace; the job goes to ml
    assert "ownerReferences" not in pytorchjob.build(_request(1), SETTINGS, environ)["metadata"]
    assert pytorchjob.build(_request(1), SETTINGS, {**environ, "POD_NAMESPACE": "ml"})["metadata"]["ownerReferences"]


def test_mlflow_auth_provider_and_workspace_are_forwarded():
    environ = {"MLFLOW_TRACKING_URI": "http://mlflow:5000", "MLFLOW_TRACKING_AUTH": "my_auth_plugin",
               "MLFLOW_WORKSPACE": "vision"}  # fmt: skip
    env = {e["name"]: e.get("value") for e in _env("trainjob", trainjob.build(_request(1), SETTINGS, environ))}
    assert env["MLFLOW_TRACKING_AUTH"] == "my_auth_plugin" and env["MLFLOW_WORKSPACE"] == "vision"
    assert "MLFLOW_WORKSPACE" not in {e["name"] for e in _env("trainjob", trainjob.build(_request(1), SETTINGS, {}))}


def test_timeouts_are_launch_settings_and_checked():
    config, _ = split_arguments({**TRAIN, "pending_timeout": 7200, "timeout": 86400})
    assert (config.settings.pending_timeout, config.settings.timeout) == (7200, 86400)
    with pytest.raises(ConfigError) as error:
        split_arguments({**TRAIN, "pending_timeout": 0, "timeout": -1})
    problems = "\n".join(error.value.problems)
    assert "pending_timeout: must be > 0 seconds, got 0" in problems and "timeout: must be > 0 seconds" in problems


def test_launch_arguments_are_split_and_checked_together():
    config, train = split_arguments({"backend": "trainjob", "nodes": 2, "gpus_per_node": 8, "namespace": "ml",
                                     "gpu_type": "nvidia-h100-80gb", "dry_run": True, **TRAIN})  # fmt: skip
    assert (config.backend, config.nodes, config.gpus_per_node, config.dry_run) == ("trainjob", 2, 8, True)
    assert config.settings.namespace == "ml" and config.settings.gpu_type == "nvidia-h100-80gb"
    assert train == TRAIN
    with pytest.raises(ConfigError) as error:
        split_arguments({"backend": "k8s", "name": "Not_A_Label", "shm_size": "lots", **TRAIN, "epochs": 0})
    problems = "\n".join(error.value.problems)
    for expected in ("backend: unknown backend 'k8s'", "name: 'Not_A_Label'", "shm_size: 'lots'", "epochs: must be >= 1"):
        assert expected in problems
    with pytest.raises(ConfigError, match="out: s3://bucket/r is neither a local folder nor gs://"):
        split_arguments({**TRAIN, "out": "s3://bucket/r"})  # not silently a local folder named "s3:"


def test_cli_dry_run_prints_the_spec():
    command = [sys.executable, "-m", "kubedistill", "launch", "backend=pytorchjob", "nodes=2", "gpus_per_node=8",
               "namespace=ml", "name=kd-nightly", "dry_run=true", *[f"{k}={v}" for k, v in TRAIN.items() if k != "optim_args"]]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    job = yaml.safe_load(done.stdout)
    assert job["kind"] == "PyTorchJob" and job["metadata"]["name"] == "kd-nightly"
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1
    bad = subprocess.run([*command, "nodes=0"], capture_output=True, text=True)
    assert bad.returncode == 2 and "nodes: must be >= 1" in bad.stderr


def _pod_template(backend: str, job: dict) -> dict:
    if backend == "pytorchjob":
        return job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
    (patch,) = job["spec"]["runtimePatches"]
    (replicated,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    return replicated["template"]["spec"]["template"]


def _env(backend: str, job: dict) -> list[dict]:
    if backend == "pytorchjob":
        return _pod_template(backend, job)["spec"]["containers"][0]["env"]
    return job["spec"]["trainer"]["env"]
