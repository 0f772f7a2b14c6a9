"""The pipeline's parent run on a real MLflow server: found again by the KFP run id, closed with the outcome;
and KFP's MLflow plugin, whose runs the steps log into instead of making their own."""

from __future__ import annotations

import json

from mlflow.tracking import MlflowClient

from kubedistill.tracking.config import MLflowArgs, resolve_target
from kubedistill.tracking.pipeline import (
    close_pipeline_run,
    log_to_pipeline_run,
    open_pipeline_run,
)
from kubedistill.tracking.runs import experiment_id_for
from kubedistill.tracking.steps import log_probe


def _target(url: str, experiment: str):
    return resolve_target(MLflowArgs(tracking_uri=url, experiment_name=experiment), environ={})


def test_the_parent_run_is_found_again_by_the_kfp_run_id(mlflow_server):
    target = _target(mlflow_server, "pipeline-parent")
    first = open_pipeline_run(target, kfp_run_id="run-a", kfp_run_name="nightly-1",
                              kfp_run_url="https://kfp.example.com/#/runs/details/run-a",
                              scheduled_time="2026-12-01T02:00:00Z", recurring_run_id="9b1f7c2e-swf-uid")  # fmt: skip
    again = open_pipeline_run(target, kfp_run_id="run-a")  # a later step, a retried task, the exit handler
    other = open_pipeline_run(target, kfp_run_id="run-b")
    assert again.run_id == first.run_id != other.run_id and not first.owned_by_kfp
    client = MlflowClient(mlflow_server)
    run = client.get_run(first.run_id)
    assert run.info.run_name == "nightly-1"
    assert run.data.tags["kfp.run_id"] == "run-a" and run.data.tags["kfp.run_url"].endswith("/run-a")
    assert "https://kfp.example.com/#/runs/details/run-a" in run.data.tags["mlflow.note.content"]
    assert run.data.tags["kfp.scheduled_time"] == "2026-12-01T02:00:00Z"
    assert run.data.tags["kfp.recurring_run_id"] == "9b1f7c2e-swf-uid"
    assert not {"kfp.scheduled_time", "kfp.recurring_run_id"} & set(client.get_run(other.run_id).data.tags)

    log_to_pipeline_run(first, target, params={"student": "torchvision/resnet18"}, metrics={"linear_top1": 0.5},
                        tags={"kubedistill.alias": "champion"})  # fmt: skip
    log_to_pipeline_run(first, target, params={"student": "torchvision/resnet18"})  # a retry logs the same again
    close_pipeline_run(first, target, succeeded=False, failed_step="distill", reason="node 0 exited with status 1")
    run = client.get_run(first.run_id)
    assert run.info.status == "FAILED" and run.data.params["student"] == "torchvision/resnet18"
    assert run.data.metrics["linear_top1"] == 0.5
    assert run.data.tags["kubedistill.failed_step"] == "distill"
    assert run.data.tags["kubedistill.failure"] == "node 0 exited with status 1"
    assert run.data.tags["kubedistill.pipeline_state"] == "FAILED"


def test_resolve_target_under_kfps_mlflow_plugin():
    plugin = json.dumps({"endpoint": "http://mlflow:5000", "parentRunId": "p1", "experimentId": "7"})
    target = resolve_target(None, {"KFP_MLFLOW_CONFIG": plugin, "MLFLOW_RUN_ID": "task1"})
    # MLFLOW_RUN_ID is the task's own run there, not a parent
    assert (target.tracking_uri, target.run_id, target.parent_run_id, target.experiment_id) == (
        "http://mlflow:5000", "task1", "p1", "7")
    without_plugin = resolve_target(None, {"MLFLOW_TRACKING_URI": "http://m:1", "MLFLOW_RUN_ID": "p2"})
    assert (without_plugin.run_id, without_plugin.parent_run_id) == (None, "p2")
    garbled = resolve_target(None, {"KFP_MLFLOW_CONFIG": "{not json", "MLFLOW_TRACKING_URI": "http://m:1",
                                    "MLFLOW_RUN_ID": "p3"})  # fmt: skip
    assert (garbled.run_id, garbled.parent_run_id) == (None, "p3")


def test_steps_log_into_the_plugins_runs(mlflow_server, monkeypatch, tmp_path):
    client = MlflowClient(mlflow_server)
    experiment = experiment_id_for(client, "plugin-experiment")
    parent = client.create_run(experiment, run_name="kfp-parent").info.run_id  # what the plugin makes
    task = client.create_run(experiment, tags={"mlflow.parentRunId": parent}, run_name="linear-probe").info.run_id
    monkeypatch.setenv("KFP_MLFLOW_CONFIG", json.dumps({"endpoint": mlflow_server, "parentRunId": parent,
                                                        "experimentId": experiment}))  # fmt: skip
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MLFLOW_RUN_ID", task)
    (tmp_path / "metrics.json").write_text("{}")

    ref = open_pipeline_run(resolve_target(None), kfp_run_id="run-c")
    assert ref.run_id == parent and ref.owned_by_kfp
    run_id = log_probe(tmp_path, {"linear_top1": 0.75}, mlflow=None)
    assert run_id == task
    assert client.get_run(task).data.metrics["linear_top1"] == 0.75
    assert client.get_run(task).data.tags["kubedistill.step"] == "probe"
    assert len(client.search_runs([experiment])) == 2  # nothing of our own was created
    close_pipeline_run(ref, resolve_target(None), succeeded=True)
    assert client.get_run(parent).info.status == "RUNNING"  # KFP ends the runs it owns
    assert client.get_run(parent).data.tags["kubedistill.pipeline_state"] == "SUCCEEDED"
