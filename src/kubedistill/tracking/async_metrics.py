"""Metric points sent to MLflow by one background thread, so that a slow or dead server costs the training
loop no more than appending to a bounded queue.

MLflow's own asynchronous logging (``log_batch(..., synchronous=False)``) is not used: its queue has no bound,
it sends from a pool of up to 10 threads (batches can land out of order), its flush (also run at interpreter
exit) waits with no time limit, and it logs an error for every failed batch. Here: one sender thread, a
bounded queue that drops (and counts) when full, batches of what is pending, a flush with a deadline, and one
warning per outage.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

logger = logging.getLogger(__name__)

MAX_PENDING_RECORDS = 10_000  # records (one step's metrics each) waiting to be sent; more are dropped
MAX_BATCH_POINTS = 1000  # MLflow's limit of metrics in one log_batch request
FLUSH_TIMEOUT_S = 10.0  # how long closing waits for pending points to reach the server


class Point(NamedTuple):
    """One metric value as MLflow stores it; made cheaply in the training loop, turned into an MLflow
    ``Metric`` by the sender thread."""

    key: str
    value: float
    timestamp_ms: int
    step: int


@dataclass(frozen=True)
class DeliveryReport:
    """What became of the points handed to a ``MetricSender``, counted in points."""

    sent: int  # accepted by the server
    dropped: int  # never queued: the queue was full
    failed: int  # in a batch the server rejected or that did not reach it
    unsent: int  # still queued or in flight when closing gave up waiting

    @property
    def undelivered(self) -> int:
        """Queued but not known to have arrived."""
        return self.failed + self.unsent

    @property
    def lost(self) -> int:
        return self.dropped + self.undelivered


class MetricSender:
    """Queues metric points for one MLflow run and sends them, in order and batched, from one daemon thread.

    ``put`` never blocks on the server. ``close`` waits at most ``timeout_s`` for the queue to drain, then
    reports what was not delivered; the thread, if still stuck in a request, is left behind (it is a daemon
    and sends nothing more).
    """

    def __init__(self, client: Any, run_id: str, *, max_pending: int = MAX_PENDING_RECORDS):
        self.client = client
        self.run_id = run_id
        self.max_pending = max_pending
        self.sent = self.dropped = self.failed = 0
        self.attempts = 0  # log_batch calls made, for tests and diagnostics
        self._queue: deque[list[Point]] = deque()
        self._in_flight = 0  # points in the request under way
        self._failing = False  # the last request failed (an outage: warned once)
        self._closing = self._abandoned = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="kubedistill-mlflow-metrics", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Points queued or in flight."""
        with self._changed:
            return self._in_flight + sum(len(record) for record in self._queue)

    @property
    def failing(self) -> bool:
        """Whether the last request failed."""
        return self._failing

    def put(self, points: list[Point]) -> None:
        """Queue one record's points, or drop and count them when the queue is full or closed."""
        with self._changed:
            if self._closing or len(self._queue) >= self.max_pending:
                self.dropped += len(points)
                return
            self._queue.append(points)
            self._changed.notify()

    def close(self, timeout_s: float = FLUSH_TIMEOUT_S) -> DeliveryReport:
        """Send what is pending, waiting at most ``timeout_s``; further ``put``s are dropped."""
        with self._changed:
            self._closing = True
            self._changed.notify_all()
            self._changed.wait_for(lambda: not self._queue and not self._in_flight, timeout=max(timeout_s, 0.0))
            self._abandoned = True  # a request still under way finishes, but nothing more is sent
            unsent = self._in_flight + sum(len(record) for record in self._queue)
            self._queue.clear()
            self._changed.notify_all()
            return DeliveryReport(sent=self.sent, dropped=self.dropped, failed=self.failed, unsent=unsent)

    # ------------------------------------------------------------------ the sender thread

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            ok = self._send(batch)
            with self._changed:
                self._in_flight = 0
                if ok:
                    self.sent += len(batch)
                else:
                    self.failed += len(batch)
                self._changed.notify_all()

    def _next_batch(self) -> list[Point] | None:
        """The oldest pending records, up to MAX_BATCH_POINTS points; None once closed and drained."""
        with self._changed:
            self._changed.wait_for(lambda: self._queue or self._closing or self._abandoned)
            if self._abandoned or not self._queue:
                return None
            batch = list(self._queue.popleft())
            while self._queue and len(batch) + len(self._queue[0]) <= MAX_BATCH_POINTS:
                batch += self._queue.popleft()
            self._in_flight = len(batch)
            return batch

    def _send(self, batch: list[Point]) -> bool:
        from mlflow.entities import Metric

        self.attempts += 1
        try:
            metrics = [Metric(p.key, p.value, p.timestamp_ms, p.step) for p in batch]
            self.client.log_batch(self.run_id, metrics=metrics, synchronous=True)
        except Exception as e:  # MLflow raises several types (MlflowException, requests errors)
            if not self._failing and not self._abandoned:
                logger.warning(
                    "MLflow: could not send %d metric point(s) (%s); training goes on, later failures are counted "
                    "and reported when the run ends", len(batch), str(e).splitlines()[0] if str(e) else type(e).__name__,
                )  # fmt: skip
            self._failing = True
            return False
        if self._failing:
            logger.info("MLflow: metric points are reaching the server again")
        self._failing = False
        return True


def points(metrics: Mapping[str, float], step: int) -> list[Point]:
    """``metrics`` at ``step``, stamped now."""
    now = int(time.time() * 1000)
    return [Point(key, float(value), now, step) for key, value in metrics.items()]
