from kfp.dsl import Artifact, ClassificationMetrics, Input, Markdown, Metrics, Model, Output

from components.base import component


@component
def linear_probe(
    model: Input[Model],
    probe_train_uri: str,
    probe_val_uri: str,
    min_top1: float,
    baselines: bool,
    kfp_run_id: str,
    output_root: str,
    kfp_run_name: str,
    mlflow_tracking_uri: str,
    mlflow_experiment: str,
    kfp_ui_url: str,
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    summary: Output[Markdown],
    results: Output[Artifact],
) -> bool:
    """Score the frozen student with a linear probe and kNN on labeled images; decide the registration gate.

    Args:
        probe_train_uri: Labeled images the probes are fitted on (class-per-folder root or a manifest).
        probe_val_uri: Labeled images the probes are scored on.
        min_top1: The gate: linear top-1 at least this.
        baselines: Also score a random-init student and the teacher (the gap the student closed).
        metrics: Linear and kNN top-1/top-5 (and the references' with baselines).
        confusion: The linear probe's confusion matrix on the val images, with class names.
        summary: The student against its references, and the gate's decision.
        results: metrics.json, confusion_matrix.json and confusion_matrix.png.

    Returns:
        Whether the student passed the gate (the single return value: kfp.local resolves a condition on a
        task's "Output" but not on a named output).
    """
    import tempfile

    from kubedistill.pipeline import PipelineContext, artifacts, steps

    context = PipelineContext.of(kfp_run_id, output_root, kfp_run_name, mlflow_tracking_uri, mlflow_experiment, kfp_ui_url)
    with tempfile.TemporaryDirectory() as workdir:
        result = steps.probe(
            context, model_file=model.path, model_metadata=model.metadata, train_uri=probe_train_uri,
            val_uri=probe_val_uri, workdir=workdir, min_top1=min_top1, baselines=baselines,
        )
        artifacts.fill(results, folder=result.results_folder)
    artifacts.log_metrics(metrics, result.metrics)
    artifacts.log_confusion(confusion, result.classes, result.confusion)
    artifacts.fill(summary, text=result.summary_markdown)
    return result.passed_gate
