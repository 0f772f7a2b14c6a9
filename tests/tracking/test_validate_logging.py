"""`kubedistill validate` logs its counts and report to a real MLflow server (the server fixture is in
conftest.py); the data outputs never depend on it."""

from __future__ import annotations

import json
from pathlib import Path

from mlflow.tracking import MlflowClient

from kubedistill.cli import EXIT_DATA_REJECTED, main


def test_validate_command_logs_a_run_with_counts_and_report(tmp_path: Path, corpus, mlflow_server, capsys) -> None:
    root = corpus.write(tmp_path / "data")
    code = main(
        ["validate", f"data={root}", f"out={tmp_path / 'out'}",
         f"mlflow.tracking_uri={mlflow_server}", "mlflow.experiment_name=validate-cli"]
    )  # fmt: skip
    assert code == EXIT_DATA_REJECTED  # the corpus is 17% bad: the run is logged all the same
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    run = MlflowClient(mlflow_server).get_run(summary["mlflow_run_id"])
    metrics = run.data.metrics
    assert metrics["images_ok"] == 34 and metrics["bad"] == 7 and metrics["passed"] == 0
    assert metrics["problem_decompression_bomb"] == 1 and metrics["problem_duplicate"] == 1
    assert run.data.tags["kubedistill.dataset_fingerprint"] == summary["fingerprint"]
    assert run.data.params["data"] == str(root)
    files = {a.path for a in MlflowClient(mlflow_server).list_artifacts(run.info.run_id, "validation")}
    assert files == {"validation/report.json", "validation/report.md"}
