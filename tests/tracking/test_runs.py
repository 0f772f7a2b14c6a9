"""Resolving the MLflow destination, and what a step run does when its server goes away mid-run."""

from __future__ import annotations

import logging

import pytest
from mlflow.tracking import MlflowClient

from kubedistill.devtools.mlflow_server import free_port
from kubedistill.errors import ConfigError
from kubedistill.tracking.config import DEFAULT_EXPERIMENT, MLflowArgs, resolve_target
from kubedistill.tracking.runs import MAX_CONSECUTIVE_FAILURES, StepRun, TrackingError, flatten


def test_environment_fills_what_the_arguments_leave_unset():
    env = {"MLFLOW_TRACKING_URI": "http://env:5000", "MLFLOW_EXPERIMENT_NAME": "exp", "MLFLOW_RUN_ID": "parent1"}
    target = resolve_target(None, env)
    assert (target.tracking_uri, target.experiment_name, target.parent_run_id) == ("http://env:5000", "exp", "parent1")
    given = resolve_target({"tracking_uri": "http://arg:1", "experiment_name": "mine"}, env)
    assert (given.tracking_uri, given.experiment_name, given.parent_run_id) == ("http://arg:1", "mine", "parent1")
    assert resolve_target(None, {}) is None  # nowhere to log: tracking is off
    assert resolve_target({"enabled": False}, env) is None
    assert resolve_target({"tracking_uri": "http://x"}, {}).experiment_name == DEFAULT_EXPERIMENT


def test_train_config_reports_bad_mlflow_settings_with_the_others():
    from kubedistill.config import build_train_config

    with pytest.raises(ConfigError) as raised:
        build_train_config({"out": "o", "data": "d", "model": "torchvision/resnet18", "epochs": 0,
                            "mlflow": {"connect_retries": 0, "trackin_uri": "x"}})  # fmt: skip
    text = str(raised.value)
    assert "epochs: must be >= 1" in text
    assert "mlflow.connect_retries: must be >= 1" in text
    assert "unknown key 'mlflow.trackin_uri'" in text
    config = build_train_config({"out": "o", "data": "d", "model": "torchvision/resnet18",
                                 "mlflow": {"tracking_uri": "http://mlflow:5000"}})  # fmt: skip
    assert config.mlflow == MLflowArgs(tracking_uri="http://mlflow:5000")


def test_flatten_nests_with_dots():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None}) == {"a.b": 1, "a.c.d": [1, 2], "e": None}


def test_a_lost_server_mid_run_warns_then_stops_logging(mlflow_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail fast: the retries are MLflow's own
    target = resolve_target({"tracking_uri": mlflow_server, "experiment_name": "lost-server"})
    run = StepRun.open(target, "train", strict=False)
    run.log_metrics({"loss": 1.0}, step=1)
    gone = MlflowClient(f"http://127.0.0.1:{free_port()}")  # the server "went away"
    run.client = gone
    # A handler on the module's own logger: independent of what earlier tests did to propagation and levels.
    messages: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    runs_logger = logging.getLogger("kubedistill.tracking.runs")
    runs_logger.addHandler(handler)
    try:
        for step in range(2, 2 + MAX_CONSECUTIVE_FAILURES + 2):
            run.log_metrics({"loss": 0.5}, step=step)  # never raises
    finally:
        runs_logger.removeHandler(handler)
    assert run.disabled
    assert sum("MLflow: could not log metrics" in m for m in messages) == MAX_CONSECUTIVE_FAILURES
    assert any("no more MLflow logging in this run" in m for m in messages)
    history = MlflowClient(mlflow_server).get_metric_history(run.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 1.0)]

    strict = StepRun.open(target, "register", strict=True)
    strict.client = gone
    with pytest.raises(TrackingError, match="could not log metrics"):
        strict.log_metrics({"x": 1.0})
