"""Curve points reach a real MLflow server from the tracker's background sender: in order and batched, never
twice for a resumed run; a slow, hung or vanished server costs ``log_step`` no more than a queue put, and
``finish`` returns within its bound and says what was not delivered."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from kubedistill.devtools.slow_proxy import SlowProxy
from kubedistill.tracking.async_metrics import DeliveryReport
from kubedistill.tracking.training import DROPPED_TAG, STEP_METRICS, UNDELIVERED_TAG, TrainingTracker

CONFIG = {"model": "torchvision/resnet18", "method": "distillation", "method_args": {"teacher": "dinov2/vits14"}}


def _start(out: Path, uri: str, *, resume: bool = False, **options: float) -> TrainingTracker:
    out.mkdir(parents=True, exist_ok=True)
    mlflow = {"tracking_uri": uri, "experiment_name": "async-metrics", "connect_retries": 1}
    tracker = TrainingTracker.start(mlflow, out=out, config=CONFIG, resume=resume, **options)
    assert tracker.active
    return tracker


def _record(step: int, attempt: int = 1) -> dict:
    return {"step": step, "epoch": 0, "loss": attempt + 1.0 / step, "lr": 0.01 * step, "images_per_second": 100.0}


def _wait_for(condition: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture
def warnings_seen() -> Iterator[list[str]]:
    """Warnings of kubedistill.tracking.*, captured by a handler of our own (whatever other tests did to
    propagation and levels above it)."""
    messages: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    tracking_logger = logging.getLogger("kubedistill.tracking")
    tracking_logger.addHandler(handler)
    yield messages
    tracking_logger.removeHandler(handler)


def test_points_arrive_in_order_batched_with_their_steps(tmp_path, mlflow_server):
    with SlowProxy(mlflow_server) as proxy:
        tracker = _start(tmp_path / "out", proxy.url)
        proxy.delay_s = 0.2  # records pile up behind the first request: the next one carries them all
        for step in range(1, 121):
            tracker.log_step(_record(step))
        tracker.log_epoch(1, 12.5)
        report = tracker.finish()
    assert report == DeliveryReport(sent=120 * 3 + 1, dropped=0, failed=0, unsent=0)
    bodies = [json.loads(body) for path, body in proxy.bodies if path.endswith("/runs/log-batch")]
    batches = [body["metrics"] for body in bodies if body.get("metrics")]  # (not the parameters' call)
    sent = [(m["key"], m["step"]) for batch in batches for m in batch]
    expected = [(key, step) for step in range(1, 121) for key in STEP_METRICS] + [("epoch_time_s", 1)]
    assert sent == expected  # one sender: arrival order is logging order
    assert len(batches) < 20  # batched (typically 2 requests), not one request per step
    client = MlflowClient(mlflow_server)
    for key in STEP_METRICS:
        history = sorted(client.get_metric_history(tracker.run.run_id, key), key=lambda m: m.step)
        assert [(m.step, m.value) for m in history] == [(s, _record(s)[key]) for s in range(1, 121)], key
    assert [(m.step, m.value) for m in client.get_metric_history(tracker.run.run_id, "epoch_time_s")] == [(1, 12.5)]
    assert client.get_run(tracker.run.run_id).info.status == "FINISHED"
    assert UNDELIVERED_TAG not in client.get_run(tracker.run.run_id).data.tags


def test_a_resumed_run_writes_no_duplicate_steps(tmp_path, mlflow_server):
    out = tmp_path / "out"
    first = _start(out, mlflow_server)
    for step in range(1, 11):
        first.log_step(_record(step, attempt=1))
    first.log_epoch(1, 3.0)
    first.finish(failed=True)  # the process died after step 10; its last checkpoint was step 5
    again = _start(out, mlflow_server, resume=True)
    assert again.run.run_id == first.run.run_id and again.logged_through_step == 10
    for step in range(6, 16):
        again.log_step(_record(step, attempt=2))
    again.log_epoch(1, 4.0)  # epoch 1 is in the run already
    again.log_epoch(2, 5.0)
    assert again.finish() == DeliveryReport(sent=5 * 3 + 1, dropped=0, failed=0, unsent=0)
    client = MlflowClient(mlflow_server)
    for key in STEP_METRICS:
        history = sorted(client.get_metric_history(first.run.run_id, key), key=lambda m: m.step)
        assert [m.step for m in history] == list(range(1, 16)), key
        expected = [_record(s, attempt=1 if s <= 10 else 2)[key] for s in range(1, 16)]
        assert [m.value for m in history] == expected, key
    epochs = client.get_metric_history(first.run.run_id, "epoch_time_s")
    assert sorted((m.step, m.value) for m in epochs) == [(1, 3.0), (2, 5.0)]


def test_a_server_answering_in_2s_never_blocks_log_step(tmp_path, mlflow_server, warnings_seen):
    with SlowProxy(mlflow_server) as proxy:
        tracker = _start(tmp_path / "out", proxy.url, flush_timeout_s=0.5)
        proxy.delay_s = 2.0
        answered = proxy.answered["log-batch"]  # the parameters
        started = time.perf_counter()
        for step in range(1, 51):
            tracker.log_step(_record(step))
        logging_s = time.perf_counter() - started
        # All 50 calls returned while the sender still waits for its first answer.
        assert proxy.answered["log-batch"] == answered and tracker.sender.sent == 0
        assert tracker.sender.pending == 150 and tracker.sender.dropped == 0
        assert logging_s < 1.0  # one answer alone takes 2 s; 50 queue puts take about a millisecond
        started = time.perf_counter()
        report = tracker.finish()
        finish_s = time.perf_counter() - started
    assert report == DeliveryReport(sent=0, dropped=0, failed=0, unsent=150)
    # 0.5 s of flushing, then the health check, the tag and closing the run at 2 s per request.
    assert finish_s < 30.0
    assert [m for m in warnings_seen if "curve point(s) did not reach the run" in m] == [
        "MLflow: 150 of 150 curve point(s) did not reach the run: 0 dropped while the queue was full, 0 failed to "
        "send, 150 still unsent after 0.5 s (metrics.jsonl has them all)"
    ]
    run = MlflowClient(mlflow_server).get_run(tracker.run.run_id)  # the server is slow but reachable
    assert run.data.tags[UNDELIVERED_TAG] == "150" and run.data.tags[DROPPED_TAG] == "0"
    assert run.info.status == "FINISHED"


def test_a_hung_server_fills_the_queue_then_drops_and_finish_gives_up_in_time(tmp_path, mlflow_server,
                                                                              warnings_seen):  # fmt: skip
    with SlowProxy(mlflow_server) as proxy:
        tracker = _start(tmp_path / "out", proxy.url, flush_timeout_s=0.5, max_pending=10)
        proxy.hang = True  # accepts connections, never answers
        for step in range(1, 51):
            tracker.log_step(_record(step))
        # 10 records queued, and in flight what the queue held when the sender took it: the rest was dropped.
        assert tracker.sender.dropped + tracker.sender.pending == 150
        assert 30 <= tracker.sender.pending <= 60 and tracker.sender.dropped >= 90
        started = time.perf_counter()
        report = tracker.finish(artifacts=[(tmp_path / "out" / "mlflow_run.json", None)])
        finish_s = time.perf_counter() - started
        assert proxy.received["update"] == 0  # the run was not closed: nothing more was attempted
    assert report.sent == report.failed == 0 and report.dropped + report.unsent == 150
    assert finish_s < 30.0  # 0.5 s of flushing + one health check (5 s timeout)
    assert sum("did not reach the run" in m for m in warnings_seen) == 1
    assert sum("does not answer: the run" in m for m in warnings_seen) == 1
    assert MlflowClient(mlflow_server).get_run(tracker.run.run_id).info.status == "RUNNING"


def test_a_vanished_server_is_reported_once_not_per_step(tmp_path, mlflow_server, warnings_seen, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail fast: the retries are MLflow's own
    with SlowProxy(mlflow_server) as proxy:
        tracker = _start(tmp_path / "out", proxy.url, flush_timeout_s=5.0)
        for step in range(1, 6):
            tracker.log_step(_record(step))
        _wait_for(lambda: tracker.sender.sent == 15)
    # The server went away (connection refused): three more steps, each sent and failed on its own.
    for step in range(6, 9):
        attempts = tracker.sender.attempts
        tracker.log_step(_record(step))
        _wait_for(lambda: tracker.sender.attempts > attempts and tracker.sender.pending == 0)  # noqa: B023
    assert tracker.sender.failed == 9
    report = tracker.finish()
    assert report == DeliveryReport(sent=15, dropped=0, failed=9, unsent=0)
    assert sum("could not send" in m for m in warnings_seen) == 1
    assert sum("did not reach the run" in m for m in warnings_seen) == 1
    assert sum("does not answer: the run" in m for m in warnings_seen) == 1
    assert not tracker.active
