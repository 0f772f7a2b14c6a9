from kfp.dsl import Dataset, Markdown, Metrics, Output

from components.base import component


@component
def validate_dataset(
    dataset_uri: str,
    max_bad_fraction: float,
    kfp_run_id: str,
    output_root: str,
    kfp_run_name: str,
    mlflow_tracking_uri: str,
    mlflow_experiment: str,
    kfp_ui_url: str,
    kfp_run_resource_name: str,
    manifest: Output[Dataset],
    report: Output[Markdown],
    counts: Output[Metrics],
):
    """Decode every image under dataset_uri and keep a manifest of the good ones; fail when too many are bad.

    Args:
        dataset_uri: The images: a folder or gs://bucket/prefix (they stay there; only the manifest travels).
        max_bad_fraction: The share of bad images above which the data is rejected and the run fails.
        kfp_run_resource_name: The run's Argo Workflow (KFP fills it in): it tells a recurring run's run, whose
            scheduled time and recurring run are recorded on the MLflow run.
        manifest: manifest.jsonl of the good images; its metadata carries its URI and the dataset fingerprint.
        report: The validation report (problems by kind, every offending file with its reason).
        counts: Images kept, bad, duplicates and the bad fraction.
    """
    import tempfile

    from kubedistill.pipeline import PipelineContext, artifacts, steps

    context = PipelineContext.of(kfp_run_id, output_root, kfp_run_name, mlflow_tracking_uri, mlflow_experiment, kfp_ui_url,
                                 kfp_run_resource_name)
    with tempfile.TemporaryDirectory() as workdir:
        result = steps.validate(context, dataset_uri=dataset_uri, max_bad_fraction=max_bad_fraction,
                                workdir=workdir)
        artifacts.fill(manifest, file=result.manifest_file, metadata=result.metadata)
    artifacts.fill(report, text=result.report_markdown)
    artifacts.log_metrics(counts, result.counts)
