from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components.base import component


@component
def distill(
    manifest: Input[Dataset],
    student: str,
    teacher: str,
    teacher_weights_uri: str,
    epochs: int,
    batch_size: int,
    image_size: int,
    nodes: int,
    gpus_per_node: int,
    gpu_type: str,
    launcher: str,
    train_args: str,
    launch_args: str,
    trainer_image: str,
    kfp_run_id: str,
    output_root: str,
    kfp_run_name: str,
    mlflow_tracking_uri: str,
    mlflow_experiment: str,
    kfp_ui_url: str,
    model: Output[Model],
    training: Output[Artifact],
):
    """Distill the teacher into the student without labels, on nodes x gpus_per_node processes.

    Args:
        manifest: The validated images (read from the URI in its metadata; the images are never copied).
        launcher: Where training runs: local (torchrun in this task's container), pytorchjob or trainjob.
        launch_args: The cluster launchers' settings, space-separated key=value.
        trainer_image: The training pods' image (the pipeline's default is fixed when it is compiled).
        model: The exported student (weights + model name, feature dim, image size, normalization), with the
            run's facts in its metadata.
        training: The run's config.yaml, train.log, metrics.jsonl and MLflow run record.
    """
    import tempfile

    from kubedistill.pipeline import PipelineContext, artifacts, steps

    context = PipelineContext.of(kfp_run_id, output_root, kfp_run_name, mlflow_tracking_uri, mlflow_experiment, kfp_ui_url)
    with tempfile.TemporaryDirectory() as workdir:
        result = steps.distill(
            context, manifest_uri=manifest.metadata["uri"], workdir=workdir, student=student, teacher=teacher,
            teacher_weights=teacher_weights_uri, epochs=epochs, batch_size=batch_size, image_size=image_size,
            nodes=nodes, gpus_per_node=gpus_per_node, gpu_type=gpu_type, launcher=launcher, train_args=train_args,
            launch_args=launch_args, trainer_image=trainer_image,
        )
        artifacts.fill(model, file=result.model_file, metadata=result.metadata)
        artifacts.fill(training, folder=result.training_folder, metadata={"run_uri": result.run_uri})
