"""The kubedistill pipeline: validate -> distill -> probe -> register (when the probe passes the gate).

The steps run inside an exit handler whose ``finalize_run`` task records the run's outcome (``run.json`` and
the MLflow run's status, with the failing step and its reason) whatever happened. Compile it with
``make compile`` (writes ``distillation_pipeline.yaml`` next to this file, which is committed and checked for
drift); run it locally with ``make demo``; upload the YAML in the KFP UI for a cluster.
"""

from pathlib import Path

from kfp import compiler, dsl

from components import distill, finalize_run, linear_probe, register_model, validate_dataset

PIPELINE_NAME = "kubedistill-distillation"
COMPILED = Path(__file__).with_name("distillation_pipeline.yaml")
# Validation and probing read remote data: a transient storage error should not fail a nightly run. KFP retries
# a failed task whatever the cause; a retried rejection of unchanged data fails at once (steps.validate).
RETRIES = {"num_retries": 2, "backoff_duration": "20s", "backoff_factor": 2.0, "backoff_max_duration": "300s"}


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
    launcher: str = "local",
    train_args: str = "",
    launch_args: str = "",
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
        output_root: Where every step writes, under <output_root>/<run id>/<step>/: a folder or gs://bucket/prefix.
        student: The student: torchvision/<name> (any torchvision classification model) or timm/<name>.
        teacher: The frozen teacher: dinov2/vits14, dinov2/vitb14, dinov2/vitl14, dinov2/vitg14, or a TorchScript file's path/URI.
        teacher_weights_uri: The teacher's checkpoint (path, https:// or gs://); empty for the official DINOv2 weights.
        epochs: Passes over the dataset.
        batch_size: The global batch, split over all processes.
        image_size: The training views' side in pixels.
        nodes: Machines the training job runs on.
        gpus_per_node: Training processes per node: one per GPU (with the local launcher on a CPU machine, the number of CPU processes).
        gpu_type: The GPU the training pods ask for (e.g. nvidia-l4 on GKE); empty for any. Not used by the local launcher.
        launcher: Where training runs: local (torchrun inside the distill task), pytorchjob (Training Operator v1) or trainjob (Kubeflow Trainer v2.3).
        train_args: More kubedistill train arguments, space-separated key=value, e.g. "optim=adamw optim_args.lr=0.001".
        launch_args: The cluster launchers' settings, space-separated key=value, e.g. "service_account=kd-trainer kueue_queue=gpu mlflow_secret=mlflow-credentials".
        max_bad_fraction: Validation fails the run when more than this share of the images is bad.
        mlflow_tracking_uri: The MLflow server; empty for the MLFLOW_TRACKING_URI of the environment (KFP's MLflow plugin sets it).
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
    finalize = finalize_run(**run).set_display_name("Record the run's outcome").set_caching_options(False)
    with dsl.ExitHandler(finalize, name="distill-and-register"):
        validated = (
            validate_dataset(dataset_uri=dataset_uri, max_bad_fraction=max_bad_fraction,
                             scheduled_time=dsl.PIPELINE_JOB_SCHEDULE_TIME_UTC_PLACEHOLDER, **run)
            .set_display_name("Validate the dataset")
            .set_caching_options(False)  # a nightly run with the same URI must see new files
            .set_retry(**RETRIES)
        )
        trained = distill(
            manifest=validated.outputs["manifest"], student=student, teacher=teacher,
            teacher_weights_uri=teacher_weights_uri, epochs=epochs, batch_size=batch_size, image_size=image_size,
            nodes=nodes, gpus_per_node=gpus_per_node, gpu_type=gpu_type, launcher=launcher, train_args=train_args,
            launch_args=launch_args, **run,
        ).set_display_name("Distill the student").set_caching_options(False)  # fmt: skip
        probed = (
            linear_probe(
                model=trained.outputs["model"], probe_train_uri=probe_train_uri, probe_val_uri=probe_val_uri,
                min_top1=min_top1, baselines=probe_baselines, **run,
            )  # fmt: skip
            .set_display_name("Linear probe and kNN")
            .set_retry(**RETRIES)
        )
        with dsl.If(probed.outputs["Output"] == True, name="probe-passed-the-gate"):  # noqa: E712 (a DSL condition)
            register_model(
                model=trained.outputs["model"], training=trained.outputs["training"], results=probed.outputs["results"],
                registered_model_name=registered_model_name, min_top1=min_top1, **run,
            ).set_display_name("Register in MLflow").set_caching_options(False)  # fmt: skip


def compile_pipeline(path: Path = COMPILED) -> Path:
    compiler.Compiler().compile(distillation_pipeline, str(path))
    return path


if __name__ == "__main__":
    print(f"compiled {compile_pipeline()}")
