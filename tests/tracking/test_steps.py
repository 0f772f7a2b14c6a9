"""validate and probe log their results as nested runs of the pipeline run; no server means a warning only."""

from __future__ import annotations

import json
import logging

from mlflow.tracking import MlflowClient

import kubedistill
from kubedistill.devtools.mlflow_server import free_port
from kubedistill.tracking.steps import log_validation

from ..evaluation.conftest import export_random_student, write_labeled_images


def _pipeline_run(client: MlflowClient, experiment: str) -> tuple[str, str]:
    experiment_id = client.create_experiment(experiment)
    return experiment_id, client.create_run(experiment_id, run_name="pipeline").info.run_id


def test_log_validation_records_counts_and_report_under_the_parent(tmp_path, mlflow_server, monkeypatch):
    client = MlflowClient(mlflow_server)
    _, parent = _pipeline_run(client, "validate-step")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MLFLOW_RUN_ID", parent)
    report = tmp_path / "report"
    report.mkdir()
    (report / "report.json").write_text(json.dumps({"fingerprint": "abc123", "num_images": 10}))
    (report / "report.md").write_text("# report\n")
    (report / "manifest.jsonl").write_text("{}\n")
    run_id = log_validation(report, {"num_images": 10, "num_valid": 9, "num_invalid": 1, "verdict": "passed"},
                            params={"data": "gs://bucket/images"})  # fmt: skip
    run = client.get_run(run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.tags["kubedistill.step"] == "validate"
    assert run.data.tags["kubedistill.dataset_fingerprint"] == "abc123"
    assert run.data.metrics == {"num_images": 10.0, "num_valid": 9.0, "num_invalid": 1.0}
    assert run.data.params == {"data": "gs://bucket/images"}
    files = {a.path for a in client.list_artifacts(run_id, "validation")}
    assert files == {"validation/report.json", "validation/report.md"}  # the manifest stays where it is


def test_probe_logs_metrics_and_plots(tmp_path, mlflow_server):
    student = export_random_student(tmp_path / "student.pt")
    train = write_labeled_images(tmp_path / "train", 3, seed=0)
    mlflow = {"tracking_uri": mlflow_server, "experiment_name": "probe-step"}
    result = kubedistill.probe(checkpoint=student, train=train, val=train, out=tmp_path / "p", num_workers=0,
                               mlflow=mlflow)  # fmt: skip
    client = MlflowClient(mlflow_server)
    run = client.get_run(result.mlflow_run_id)
    assert run.data.tags["kubedistill.step"] == "probe"
    assert run.data.metrics["linear_top1"] == result.metrics["linear_top1"]
    assert run.data.metrics["num_classes"] == 6
    assert run.data.params["k"] == "20"
    files = {a.path for a in client.list_artifacts(run.info.run_id, "probe")}
    assert files == {"probe/metrics.json", "probe/confusion_matrix.json", "probe/confusion_matrix.png"}


def test_unreachable_server_is_a_warning_for_the_steps(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("kubedistill"), "propagate", True)  # a train test may have unset it
    closed = f"http://127.0.0.1:{free_port()}"
    report = tmp_path / "report"
    report.mkdir()
    with caplog.at_level(logging.WARNING, logger="kubedistill"):
        run_id = log_validation(report, {"num_images": 1}, mlflow={"tracking_uri": closed, "connect_retries": 1})
    assert run_id is None
    assert f"MLflow tracking is off for this validate step: the MLflow server at {closed} is not reachable" in caplog.text
