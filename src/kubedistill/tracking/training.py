"""MLflow logging of a training run (rank 0 only): params, per-step curves, epoch times, artifacts.

Curve points go through a ``MetricSender`` (a bounded queue and one background thread): the training loop
never waits for the server. What could not be delivered is reported when the run ends.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from kubedistill.tracking.async_metrics import (
    FLUSH_TIMEOUT_S,
    MAX_PENDING_RECORDS,
    DeliveryReport,
    MetricSender,
    points,
)
from kubedistill.tracking.config import MLflowArgs, resolve_target
from kubedistill.tracking.lineage import RUN_FILE, config_hash, dataset_fingerprint, write_run_file
from kubedistill.tracking.runs import StepRun, TrackingError, wait_until_reachable

logger = logging.getLogger(__name__)

STEP_METRICS = ("loss", "lr", "images_per_second")
EPOCH_METRIC = "epoch_time_s"
# Run tags written when points were lost (and the server can still be reached when the run ends).
DROPPED_TAG = "kubedistill.metric_points_dropped"
UNDELIVERED_TAG = "kubedistill.metric_points_undelivered"


class TrainingTracker:
    """Logs one training run to MLflow; does nothing when tracking is off or the server is unreachable.

    A resumed run (``resume=True`` and ``out/mlflow_run.json`` present) continues the same MLflow run and skips
    the steps and epochs that run already has, so its curves have no duplicate points.
    """

    def __init__(
        self,
        run: StepRun | None,
        *,
        logged_through_step: int = 0,
        logged_through_epoch: int = 0,
        flush_timeout_s: float = FLUSH_TIMEOUT_S,
        max_pending: int = MAX_PENDING_RECORDS,
    ):
        self.run = run
        self.logged_through_step = logged_through_step
        self.logged_through_epoch = logged_through_epoch
        self.flush_timeout_s = flush_timeout_s
        self.sender = MetricSender(run.client, run.run_id, max_pending=max_pending) if run is not None else None

    @classmethod
    def start(
        cls,
        args: MLflowArgs | Mapping | None,
        *,
        out: Path,
        config: Mapping[str, Any],
        resume: bool,
        flush_timeout_s: float = FLUSH_TIMEOUT_S,
        max_pending: int = MAX_PENDING_RECORDS,
    ) -> TrainingTracker:
        """Open (or reopen) the run; ``flush_timeout_s`` bounds the wait for unsent points in ``finish``, and
        ``max_pending`` the records queued for a slow server before new ones are dropped."""
        target = resolve_target(args)
        if not resume:
            (out / RUN_FILE).unlink(missing_ok=True)  # left by an overwritten run: it no longer describes `out`
        if target is None:
            return cls(None)
        previous = _previous_run_id(out, target.tracking_uri) if resume else None
        run = StepRun.open(target, "train", strict=False, tags=_tags(config), resume_run_id=previous)
        if run is None:
            logger.warning("training continues without MLflow; metrics are written to %s", out / "metrics.jsonl")
            return cls(None)
        write_run_file(out, run_id=run.run_id, tracking_uri=target.tracking_uri)
        if previous is None:
            run.log_params(config)
        logged_step, logged_epoch = _logged_through(run) if previous else (0, 0)
        return cls(run, logged_through_step=logged_step, logged_through_epoch=logged_epoch,
                   flush_timeout_s=flush_timeout_s, max_pending=max_pending)  # fmt: skip

    @property
    def active(self) -> bool:
        return self.run is not None and not self.run.disabled

    @property
    def log_model(self) -> bool:
        return self.run is not None and self.run.target.log_model

    def log_step(self, record: Mapping[str, Any]) -> None:
        """``record``: a metrics.jsonl line (step, loss, lr, images_per_second, ...). Queued, never blocks."""
        step = int(record["step"])
        if self.sender is not None and step > self.logged_through_step:
            self.sender.put(points({k: record[k] for k in STEP_METRICS if k in record}, step))

    def log_epoch(self, epoch: int, seconds: float) -> None:
        if self.sender is not None and epoch > self.logged_through_epoch:
            self.sender.put(points({EPOCH_METRIC: seconds}, epoch))

    def finish(
        self, *, artifacts: Iterable[tuple[Path, str | None]] = (), failed: bool = False
    ) -> DeliveryReport | None:
        """Flush the curves (at most ``flush_timeout_s``), upload ``(path, artifact folder)`` pairs that exist and
        close the run. Returns what became of the curve points (None without MLflow); never raises.

        When points are still stuck and the server does not answer its health check, nothing more is sent: the
        run stays RUNNING in MLflow, and every file is still in the run folder.
        """
        if self.run is None:
            return None
        report, stuck = self._close_sender()
        if stuck and not self.run.disabled and not _answers(self.run.target.tracking_uri):
            self.run.disabled = True
            logger.warning(
                "MLflow at %s does not answer: the run %s is left as it is (not closed, no artifacts uploaded); "
                "everything is in the run folder", self.run.target.tracking_uri, self.run.run_id,
            )  # fmt: skip
        if report is not None and report.lost:
            self.run.set_tags({DROPPED_TAG: report.dropped, UNDELIVERED_TAG: report.undelivered})
        for path, folder in artifacts:
            self.run.log_artifact(path, folder)
        self.run.finish("FAILED" if failed else "FINISHED")
        return report

    def _close_sender(self) -> tuple[DeliveryReport | None, bool]:
        """(the sender's report, whether the server looked stuck or down); warns about lost points. Once."""
        if self.sender is None:
            return None, False
        report = self.sender.close(self.flush_timeout_s)
        stuck = bool(report.unsent) or self.sender.failing
        self.sender = None
        if report.lost:
            logger.warning(
                "MLflow: %d of %d curve point(s) did not reach the run: %d dropped while the queue was full, %d "
                "failed to send, %d still unsent after %g s (metrics.jsonl has them all)", report.lost,
                report.lost + report.sent, report.dropped, report.failed, report.unsent, self.flush_timeout_s,
            )  # fmt: skip
        return report, stuck


def _logged_through(run: StepRun) -> tuple[int, int]:
    """(last step, last epoch) a reopened run already has: the resumed training logs later ones only."""
    step, epoch = run.last_logged_step(STEP_METRICS[0]), run.last_logged_step(EPOCH_METRIC)
    if step:
        logger.info("MLflow run %s has steps up to %d: the resumed run logs later steps only", run.run_id, step)
    return step, epoch


def _answers(tracking_uri: str) -> bool:
    """Whether the server answers one health check (a few seconds at most)."""
    try:
        wait_until_reachable(tracking_uri, retries=1, backoff_s=0.0)
    except TrackingError:
        return False
    return True


def _tags(config: Mapping[str, Any]) -> dict[str, str]:
    method_args = config.get("method_args") or {}
    tags = {
        "kubedistill.student": str(config.get("model")),
        "kubedistill.teacher": str(method_args.get("teacher")),
        "kubedistill.method": str(config.get("method")),
        "kubedistill.config_hash": config_hash(config),
        "kubedistill.data": str(config.get("data")),
    }
    fingerprint = dataset_fingerprint(config)
    if fingerprint:
        tags["kubedistill.dataset_fingerprint"] = fingerprint
    teacher_sha256 = (config.get("resolved") or {}).get("teacher_sha256")
    if teacher_sha256:
        tags["kubedistill.teacher_sha256"] = teacher_sha256
    return tags


def _previous_run_id(out: Path, tracking_uri: str) -> str | None:
    import json

    try:
        previous = json.loads((out / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    return previous.get("run_id") if previous.get("tracking_uri") == tracking_uri else None
