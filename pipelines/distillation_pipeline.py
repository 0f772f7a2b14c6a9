"""The kubedistill pipeline: validate -> distill -> probe -> register (when the probe passes the gate).

The steps run inside an exit handler whose ``finalize_run`` task records the run's outcome (``run.json`` and
the MLflow run's status, with the failing step and its reason) whatever happened. Compile it with
``make compile`` (writes ``distillation_pipeline.yaml`` next to this file, which is committed and checked for
drift); run it locally with ``make demo``; upload the YAML in the KFP UI for a cluster.
"""

import argparse
from pathlib import Path

from kfp import compiler, dsl, kubernetes

from components import distill, finalize_run, linear_probe, register_model, validate_dataset
from kubedistill.pipeline.images import TRAINER_IMAGE

PIPELINE_NAME = "kubedistill-distillation"
COMPILED = Path(__file__).with_name("distillation_pipeline.yaml")
# Validation and probing read remote data: a transient storage error should not fail a nightly run. KFP retries
# a failed task whatever the cause; a retried rejection of unchanged data fails at once (steps.validate).
RETRIES = {"num_retries": 2, "backoff_duration": "20s", "backoff_factor": 2.0, "backoff_max_duration": "300s"}
# Each task's CPU and memory: (request, limit) pairs. validate decodes every image; distill only follows the
# cluster job (launcher=local trains inside it: for small runs only); probe embeds the probe images with the
# student (and, with probe_baselines, the teacher) on the CPU; register and finalize talk to MLflow.
RESOURCES = {
    "validate": {"cpu": ("1", "4"), "memory": ("2Gi", "8Gi")},
    "distill": {"cpu": ("500m", "2"), "memory": ("1Gi", "4Gi")},
    "probe": {"cpu": ("2", "4"), "memory": ("4Gi", "16Gi")},
    "register": {"cpu": ("500m", "1"), "memory": ("1Gi", "4Gi")},
    "finalize": {"cpu": ("250m", "1"), "memory": ("512Mi", "2Gi")},
}
# The cluster autoscaler must not move the distill pod to scale a node down while it follows a training job
# (kfp-kubernetes pod metadata, which KFP's backend puts on the task's pod: backend/src/v2/compiler/argocompiler/
# container.go, extendPodMetadata).
NOT_EVICTABLE = ("cluster-autoscaler.kubernetes.io/safe-to-evict", "false")


def sized(task, step: str):
    """``task`` with the CPU and memory of ``step`` from RESOURCES."""
    (cpu_request, cpu_limit), (memory_request, memory_limit) = RESOURCES[step]["cpu"], RESOURCES[step]["memory"]
    return (task.set_cpu_request(cpu_request).set_cpu_limit(cpu_limit).set_memory_request(memory_request)
            .set_memory_limit(memory_limit))  # fmt: skip


@dsl.pipeline(name=PIPELINE_NAME, description="Label-free distillation of a DINOv2 teacher into a torchvision "
              "student: validate the images, distill, probe, and register the student in MLflow when it passes.")  # fmt: skip
def distillation_pipeline(
    dataset_uri: str,
    probe_train_uri: str,
    probe_val_uri: str,
    output_root: str,
    student: str = "torchvision/resnet18",
    teacher: str = "dinov2/vitb14",
    teacher_weights_uri: str = "",
    epochs: int = 100,
    batch_size: int = 128,
    image_size: int = 224,
    nodes: int = 1,
    gpus_per_node: int = 1,
    gpu_type: str = "",
    launcher: str = "pytorchjob",
    train_args: str = "",
    launch_args: str = "",
    trainer_image: str = TRAINER_IMAGE,
    max_bad_fraction: float = 0.05,
    mlflow_tracking_uri: str = "",
    mlflow_experiment: str = "kubedistill",
    registered_model_name: str = "kubedistill-student",
    min_top1: float = 0.0,
    probe_baselines: bool = True,
    kfp_ui_url: str = "",
):
    """Distill a frozen teacher into a student without labels, score it, and register it when it passes.

    Args:
        dataset_uri: The unlabeled training images: a folder or gs://bucket/prefix, searched recursively.
        probe_train_uri: Labeled images the linear probe and kNN are fitted on (one folder per class, or a manifest with labels).
        probe_val_uri: Labeled images the probes are scored on (same layout as probe_train_uri).
        output_root: Where every step writes, under <output_root>/<run id>/<step>/: gs://bucket/prefix on a KFP cluster (each step is its own pod); a local folder only with kfp.local.
        student: The student: torchvision/<name> (any torchvision classification model) or timm/<name>.
        teacher: The frozen teacher: dinov2/vits14, dinov2/vitb14, dinov2/vitl14, dinov2/vitg14, or a TorchScript file's path/URI.
        teacher_weights_uri: The teacher's checkpoint (path, https:// or gs://); empty for the official DINOv2 weights.
        epochs: Passes over the dataset.
        batch_size: The global batch, split over all processes.
        image_size: The training views' side in pixels.
        nodes: Machines the training job runs on.
        gpus_per_node: Training processes per node: one per GPU (with the local launcher on a CPU machine, the number of CPU processes).
        gpu_type: The GPU the training pods ask for (e.g. nvidia-l4 on GKE); empty for any. Not used by the local launcher.
        launcher: Where training runs: pytorchjob (Training Operator v1), trainjob (Kubeflow Trainer v2.3) or local (torchrun inside the distill task, with its CPU and memory: for kfp.local and small runs).
        train_args: More kubedistill train arguments, space-separated key=value, e.g. "optim=adamw optim_args.lr=0.001".
        launch_args: The cluster launchers' settings, space-separated key=value, e.g. "kueue_queue=gpu mlflow_secret=mlflow-credentials pending_timeout=7200" (not gpu_type or image: they are parameters of their own; the pods run as kubedistill-trainer unless service_account=... says otherwise).
        trainer_image: The image of the training pods (PyTorchJob/TrainJob); its default is fixed when the pipeline is compiled (make compile, KUBEDISTILL_IMAGE_REGISTRY). Not used by the local launcher.
        max_bad_fraction: Validation fails the run when more than this share of the images is bad.
        mlflow_tracking_uri: The MLflow server, e.g. http://kubedistill-mlflow.kubeflow.svc.cluster.local:5000 (the Service of manifests/, in the namespace it was applied to); empty for the MLFLOW_TRACKING_URI of the environment (KFP's MLflow plugin sets it).
        mlflow_experiment: The MLflow experiment of the pipeline's runs.
        registered_model_name: The name of the model in the MLflow Model Registry.
        min_top1: The gate: the student is registered only when its linear probe top-1 reaches this (0 registers every run; the champion alias still needs a better score than the current champion's).
        probe_baselines: Also probe a random-init student and the teacher, to report the share of the gap the student closed.
        kfp_ui_url: The KFP UI's base URL (e.g. https://kubeflow.example.com/pipeline): the MLflow run then links back to this KFP run.
    """
    run = {
        "kfp_run_id": dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        "output_root": output_root,
        "kfp_run_name": dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
        "mlflow_tracking_uri": mlflow_tracking_uri,
        "mlflow_experiment": mlflow_experiment,
        "kfp_ui_url": kfp_ui_url,
    }
    finalize = sized(finalize_run(**run), "finalize").set_display_name("Record the run's outcome").set_caching_options(False)
    with dsl.ExitHandler(finalize, name="distill-and-register"):
        validated = (
            sized(validate_dataset(dataset_uri=dataset_uri, max_bad_fraction=max_bad_fraction,
                                   kfp_run_resource_name=dsl.PIPELINE_JOB_RESOURCE_NAME_PLACEHOLDER, **run), "validate")
            .set_display_name("Validate the dataset")
            .set_caching_options(False)  # a nightly run with the same URI must see new files
            .set_retry(**RETRIES)
        )
        trained = sized(distill(
            manifest=validated.outputs["manifest"], student=student, teacher=teacher,
            teacher_weights_uri=teacher_weights_uri, epochs=epochs, batch_size=batch_size, image_size=image_size,
            nodes=nodes, gpus_per_node=gpus_per_node, gpu_type=gpu_type, launcher=launcher, train_args=train_args,
            launch_args=launch_args, trainer_image=trainer_image, **run,
        ), "distill").set_display_name("Distill the student").set_caching_options(False)  # fmt: skip
        kubernetes.add_pod_annotation(trained, *NOT_EVICTABLE)
        probed = (
            sized(linear_probe(
                model=trained.outputs["model"], probe_train_uri=probe_train_uri, probe_val_uri=probe_val_uri,
                min_top1=min_top1, baselines=probe_baselines, **run,
            ), "probe")  # fmt: skip
            .set_display_name("Linear probe and kNN")
            .set_retry(**RETRIES)
        )
        with dsl.If(probed.outputs["Output"] == True, name="probe-passed-the-gate"):  # noqa: E712 (a DSL condition)
            sized(register_model(
                model=trained.outputs["model"], training=trained.outputs["training"], results=probed.outputs["results"],
                registered_model_name=registered_model_name, min_top1=min_top1, **run,
            ), "register").set_display_name("Register in MLflow").set_caching_options(False)  # fmt: skip


def compile_pipeline(path: Path = COMPILED) -> Path:
    compiler.Compiler().compile(distillation_pipeline, str(path))
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Compile the pipeline (images from kubedistill.pipeline.images: "
                                     "KUBEDISTILL_IMAGE_REGISTRY points both at another registry).")  # fmt: skip
    parser.add_argument("--out", type=Path, default=COMPILED, help=f"where to write it (default {COMPILED.name})")
    print(f"compiled {compile_pipeline(parser.parse_args().out)}")
