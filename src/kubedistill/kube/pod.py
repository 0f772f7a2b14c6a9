"""The pod settings every backend shares, as typed objects of the ``kubernetes`` client.

One place for: the training command, labels and annotations, GPUs and their node selector and tolerations,
the in-memory /dev/shm, the MLflow environment (credentials only as secretKeyRef), the service account, and
the owner reference that ties the job to the KFP run that launched it (deleted with the run; kube.owner).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from kubernetes import client as k8s

from kubedistill.config import to_key_values
from kubedistill.errors import ConfigError
from kubedistill.kube.settings import MLFLOW_CREDENTIAL_KEYS, JobSettings, own_namespace
from kubedistill.launch import LaunchRequest

APP_LABEL = "app.kubernetes.io/name"
JOB_LABEL = "kubedistill.io/job"
ISTIO_INJECT = "sidecar.istio.io/inject"  # a sidecar keeps a finished pod Running and can break NCCL's ports
KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
GKE_ACCELERATOR = "cloud.google.com/gke-accelerator"
SHM_VOLUME = "dshm"
# Forwarded to the pods by value: where to log (never a credential; those are in MLFLOW_CREDENTIAL_KEYS).
# MLFLOW_TRACKING_AUTH names an auth provider plugin and MLFLOW_WORKSPACE a workspace: settings, not secrets.
FORWARDED_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID",
                 "KFP_MLFLOW_CONFIG", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT",
                 "MLFLOW_TRACKING_AUTH", "MLFLOW_WORKSPACE")  # fmt: skip
KFP_POD_NAME, KFP_POD_UID = "KFP_POD_NAME", "KFP_POD_UID"


def train_command(request: LaunchRequest, settings: JobSettings) -> list[str]:
    """A bare torchrun: the operator's PET_* variables give it the nodes, the rank, the master and the
    processes per node. Always resumable: a pod restarted by the job, or a retried task, continues the run.
    A job that asks for GPUs trains with ``accelerator=gpu``: on a node whose GPU is not visible (no driver
    libraries, no device) training refuses to start instead of running on the CPU."""
    args = {**request.train_args, "resume_interrupted": True}
    if settings.accelerator == "gpu":
        args["accelerator"] = "gpu"
    return ["torchrun", "-m", "kubedistill", "train", *to_key_values(args)]


def accelerator_problems(request: LaunchRequest, settings: JobSettings) -> list[str]:
    """A train ``accelerator`` that contradicts the job's: GPUs asked for but training told to use the CPU."""
    asked = str(request.train_args.get("accelerator", "auto"))
    if settings.accelerator == "gpu" and asked == "cpu":
        return ["accelerator: the job asks for GPUs (accelerator=gpu launch setting) but the train arguments say "
                "accelerator=cpu; drop it, or launch with accelerator=cpu for a CPU job"]  # fmt: skip
    if settings.accelerator == "cpu" and asked in ("gpu", "cuda"):
        return [f"accelerator: train arguments ask for {asked} but the job asks for no GPU (accelerator=cpu)"]
    return []


def labels(request: LaunchRequest, settings: JobSettings, *, job: bool) -> dict[str, str]:
    """The job's and its pods' labels. Kueue's queue label goes on the job only: on the pods, Kueue's pod
    integration would queue each pod as a workload of its own."""
    found = {APP_LABEL: "kubedistill", JOB_LABEL: request.name, ISTIO_INJECT: "false"}
    if job and settings.kueue_queue:
        found[KUEUE_QUEUE] = settings.kueue_queue
    return found


def annotations() -> dict[str, str]:
    return {ISTIO_INJECT: "false"}


def environment(settings: JobSettings, environ: Mapping[str, str]) -> list[k8s.V1EnvVar]:
    """The pods' variables: ``settings.env``, MLflow's location from ``environ``, credentials by reference."""
    missing = [k for k in MLFLOW_CREDENTIAL_KEYS if environ.get(k)] if not settings.mlflow_secret else []
    if missing:
        raise ConfigError([
            f"{', '.join(missing)} is set here, but credentials never go into a job spec as values: put them in a "
            "Secret (keys named like the variables) and pass mlflow_secret=<its name> (KFP's MLflow plugin uses "
            "the Secret kfp-mlflow-credentials)"
        ])  # fmt: skip
    values = {**{k: environ[k] for k in FORWARDED_ENV if environ.get(k)}, **settings.env}
    env = [k8s.V1EnvVar(name=k, value=str(v)) for k, v in sorted(values.items())]
    if settings.mlflow_secret:
        env += [
            k8s.V1EnvVar(name=key, value_from=k8s.V1EnvVarSource(
                secret_key_ref=k8s.V1SecretKeySelector(name=settings.mlflow_secret, key=key, optional=True)))
            for key in MLFLOW_CREDENTIAL_KEYS
        ]  # fmt: skip
    return env


def resources(request: LaunchRequest, settings: JobSettings) -> k8s.V1ResourceRequirements:
    """Requests = limits: GPUs (one per process), and CPU/memory when set."""
    amounts: dict[str, str] = {}
    if settings.accelerator == "gpu":
        amounts[settings.gpu_resource] = str(request.procs_per_node)
    if settings.cpu_per_node:
        amounts["cpu"] = str(settings.cpu_per_node)
    if settings.memory_per_node:
        amounts["memory"] = str(settings.memory_per_node)
    return k8s.V1ResourceRequirements(requests=dict(amounts) or None, limits=dict(amounts) or None)


def node_selector(settings: JobSettings) -> dict[str, str] | None:
    return {GKE_ACCELERATOR: settings.gpu_type} if settings.accelerator == "gpu" and settings.gpu_type else None


def tolerations(settings: JobSettings) -> list[k8s.V1Toleration] | None:
    """GPU node pools are tainted so that other pods stay off them (GKE taints nvidia.com/gpu)."""
    if settings.accelerator != "gpu":
        return None
    return [k8s.V1Toleration(key=settings.gpu_resource, operator="Exists", effect="NoSchedule")]


def shm_volume(settings: JobSettings) -> k8s.V1Volume:
    return k8s.V1Volume(name=SHM_VOLUME, empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory", size_limit=settings.shm_size))


def shm_mount() -> k8s.V1VolumeMount:
    return k8s.V1VolumeMount(name=SHM_VOLUME, mount_path="/dev/shm")


def launching_pod(environ: Mapping[str, str]) -> tuple[str, str] | None:
    """(name, uid) of the KFP pod running this launcher (KFP sets both variables), None outside KFP."""
    name, uid = environ.get(KFP_POD_NAME), environ.get(KFP_POD_UID)
    if not name and not uid:
        return None  # launched from a laptop or CI
    if not (name and uid):
        raise ConfigError([
            f"{KFP_POD_NAME} and {KFP_POD_UID} must be set together (KFP injects both); got only "
            f"{KFP_POD_NAME if name else KFP_POD_UID}. Unset it, or set both to the launching pod's name and uid"
        ])  # fmt: skip
    return name, uid


def owner_references(environ: Mapping[str, str], namespace: str) -> list[k8s.V1OwnerReference] | None:
    """What the spec says before the cluster is asked: the launching KFP pod owns the job when both are in one
    namespace. The launcher replaces it with the pod's own controller, the run's Argo Workflow (kube.owner).
    Never across namespaces: the garbage collector treats such an owner as absent and deletes the job."""
    pod = launching_pod(environ)
    if pod is None:
        return None
    here = own_namespace(environ)
    if here is not None and here != namespace:
        return None
    return [k8s.V1OwnerReference(api_version="v1", kind="Pod", name=pod[0], uid=pod[1], block_owner_deletion=False,
                                 controller=False)]  # fmt: skip


def metadata(request: LaunchRequest, settings: JobSettings, environ: Mapping[str, str]) -> k8s.V1ObjectMeta:
    namespace = settings.resolved_namespace()
    return k8s.V1ObjectMeta(
        name=request.name, namespace=namespace, labels=labels(request, settings, job=True),
        annotations=annotations(), owner_references=owner_references(environ, namespace),
    )  # fmt: skip


def pod_template(request: LaunchRequest, settings: JobSettings, container_name: str,
                 environ: Mapping[str, str] | None = None) -> k8s.V1PodTemplateSpec:  # fmt: skip
    """The pod of every node: one container running ``train_command``."""
    environ = os.environ if environ is None else environ
    container = k8s.V1Container(
        name=container_name, image=settings.image, image_pull_policy=settings.image_pull_policy,
        command=train_command(request, settings), env=environment(settings, environ) or None,
        resources=resources(request, settings), volume_mounts=[shm_mount()],
    )  # fmt: skip
    return k8s.V1PodTemplateSpec(
        metadata=k8s.V1ObjectMeta(labels=labels(request, settings, job=False), annotations=annotations()),
        spec=k8s.V1PodSpec(
            containers=[container], service_account_name=settings.service_account, node_selector=node_selector(settings),
            tolerations=tolerations(settings), volumes=[shm_volume(settings)],
        ),
    )  # fmt: skip


def to_dict(obj: Any) -> Any:
    """A ``kubernetes`` client model (or nested ones) as the plain dict the API takes (camelCase, no None)."""
    return k8s.ApiClient().sanitize_for_serialization(obj)
