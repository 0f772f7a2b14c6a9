"""What logging a training step's metrics to MLflow costs the training loop: the time spent in the call, with a
healthy local server and with a server that answers every request 2 s late (a proxy in front of the same
server), before and after the metrics were queued for a background sender, in one run.

- before: ``StepRun.log_metrics``, one synchronous ``log_batch`` request per logged step (what the training
  tracker did until it queued points);
- after: ``TrainingTracker.log_step`` (a bounded-queue put; one sender thread batches what is pending).

Between calls the loop sleeps ``--step-ms``: a training step that releases the GIL, as torch compute does.
``finish`` is timed too (after: the bounded flush, then closing the run).

    .venv/bin/python benchmarks/mlflow_logging.py [--steps 200] [--slow-steps 20] [--step-ms 20]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mlflow
import torch
from common import cpu_name

from kubedistill.devtools.mlflow_server import MlflowServer
from kubedistill.devtools.slow_proxy import SlowProxy
from kubedistill.tracking.config import resolve_target
from kubedistill.tracking.runs import StepRun
from kubedistill.tracking.training import STEP_METRICS, TrainingTracker

SLOW_SERVER_DELAY_S = 2.0
CONFIG = {"model": "torchvision/resnet18", "method": "distillation", "method_args": {"teacher": "dinov2/vits14"}}


@dataclass
class Result:
    server: str
    path: str
    calls_s: list[float]
    finish_s: float
    delivered: str


def record(step: int) -> dict:
    return {"step": step, "epoch": 0, "loss": 1.0 / step, "lr": 1e-3, "images_per_second": 250.0}


def timed_loop(log: Callable[[dict], None], steps: int, step_s: float) -> list[float]:
    """Seconds spent in ``log`` for each of ``steps`` records, with ``step_s`` of "training" between calls."""
    spent = []
    for step in range(1, steps + 1):
        time.sleep(step_s)
        started = time.perf_counter()
        log(record(step))
        spent.append(time.perf_counter() - started)
    return spent


def before(uri: str, proxy: SlowProxy | None, steps: int, step_s: float, server: str) -> Result:
    run = StepRun.open(resolve_target({"tracking_uri": uri, "experiment_name": "bench-before"}), "train", strict=False)
    if proxy is not None:
        proxy.delay_s = SLOW_SERVER_DELAY_S
    calls = timed_loop(lambda r: run.log_metrics({k: r[k] for k in STEP_METRICS}, step=r["step"]), steps, step_s)
    started = time.perf_counter()
    run.finish()
    finish_s = time.perf_counter() - started
    return Result(server, "before (synchronous log_batch)", calls, finish_s, "all (each call waits)")


def after(uri: str, proxy: SlowProxy | None, steps: int, step_s: float, server: str, out: Path) -> Result:
    out.mkdir()
    tracker = TrainingTracker.start({"tracking_uri": uri, "experiment_name": "bench-after"}, out=out, config=CONFIG,
                                    resume=False)  # fmt: skip
    if proxy is not None:
        proxy.delay_s = SLOW_SERVER_DELAY_S
    calls = timed_loop(tracker.log_step, steps, step_s)
    started = time.perf_counter()
    report = tracker.finish()
    finish_s = time.perf_counter() - started
    delivered = f"{report.sent} of {report.sent + report.lost} points"
    return Result(server, "after (queued, background sender)", calls, finish_s, delivered)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200, help="logged steps per measurement")
    parser.add_argument("--slow-steps", type=int, default=20, help="steps of 'before' against the slow server")
    parser.add_argument("--step-ms", type=float, default=20.0, help="simulated training step between calls")
    args = parser.parse_args()
    step_s = args.step_ms / 1000
    results = []
    with tempfile.TemporaryDirectory() as tmp, MlflowServer(Path(tmp) / "server") as url, SlowProxy(url) as proxy:
        slow = f"answers in {SLOW_SERVER_DELAY_S:g} s"
        results.append(before(url, None, args.steps, step_s, "healthy (local)"))
        results.append(after(url, None, args.steps, step_s, "healthy (local)", Path(tmp) / "a1"))
        results.append(before(proxy.url, proxy, args.slow_steps, step_s, slow))
        proxy.delay_s = 0.0
        results.append(after(proxy.url, proxy, args.steps, step_s, slow, Path(tmp) / "a2"))
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores; torch {torch.__version__}; mlflow {mlflow.__version__}; "
          f"date: {dt.date.today()}")  # fmt: skip
    print(f"command: .venv/bin/python benchmarks/mlflow_logging.py --steps {args.steps} --slow-steps "
          f"{args.slow_steps} --step-ms {args.step_ms:g}\n")  # fmt: skip
    print("| server | logging path | steps | per call, median (ms) | per call, max (ms) | in the loop, total (s) "
          "| finish (s) | delivered |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for r in results:
        print(f"| {r.server} | {r.path} | {len(r.calls_s)} | {statistics.median(r.calls_s) * 1e3:.3f} "
              f"| {max(r.calls_s) * 1e3:.3f} | {sum(r.calls_s):.2f} | {r.finish_s:.2f} | {r.delivered} |")  # fmt: skip


if __name__ == "__main__":
    main()
