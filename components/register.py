from typing import NamedTuple

from kfp.dsl import Artifact, Input, Markdown, Metrics, Model, Output

from components.base import component


@component
def register_model(
    model: Input[Model],
    training: Input[Artifact],
    results: Input[Artifact],
    registered_model_name: str,
    min_top1: float,
    kfp_run_id: str,
    output_root: str,
    kfp_run_name: str,
    mlflow_tracking_uri: str,
    mlflow_experiment: str,
    kfp_ui_url: str,
    summary: Output[Markdown],
    registration: Output[Metrics],
) -> NamedTuple("Registration", version=int, alias=str):
    """Register the student in the MLflow Model Registry: alias champion when it beats the current champion.

    Args:
        training: The training run's record (lineage: config hash, dataset fingerprint, MLflow run).
        results: The probe's metrics.json (the alias decision compares its linear top-1).
        registered_model_name: The registered model's name.
        summary: The version, its alias and why.
        registration: The registered version.
    """
    from kubedistill.pipeline import PipelineContext, artifacts, steps

    context = PipelineContext.of(kfp_run_id, output_root, kfp_run_name, mlflow_tracking_uri, mlflow_experiment, kfp_ui_url)
    result = steps.register(
        context, model_file=model.path, training_folder=training.path, probe_folder=results.path,
        name=registered_model_name, min_top1=min_top1,
    )
    artifacts.fill(summary, text=result.summary_markdown)
    artifacts.log_metrics(registration, {"version": result.version, "created": int(result.created)})
    return (result.version, result.alias)
