from kfp.dsl import PipelineTaskFinalStatus

from components.base import component


@component
def finalize_run(
    kfp_run_id: str,
    output_root: str,
    kfp_run_name: str,
    mlflow_tracking_uri: str,
    mlflow_experiment: str,
    kfp_ui_url: str,
    status: PipelineTaskFinalStatus,
):
    """The exit handler: record the run's outcome (run.json, the MLflow run's status) whatever happened.

    Args:
        status: The final status of the pipeline's steps (KFP fills it in).
    """
    import json

    from kubedistill.pipeline import PipelineContext, steps

    context = PipelineContext.of(kfp_run_id, output_root, kfp_run_name, mlflow_tracking_uri, mlflow_experiment, kfp_ui_url)
    result = steps.finalize(context, state=status.state, error_message=status.error_message)
    print(json.dumps(result.summary, indent=2))
