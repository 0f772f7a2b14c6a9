"""Node 0's log, streamed into the launcher's output by a thread, and followed again whenever the stream breaks
(an API server or kubelet restart, a dropped connection) until the container ends.

The log is read with the kubelet's timestamps (``timestamps=true``: each line starts with an RFC 3339 time with
up to nanoseconds). A stream followed again asks for the last ``since_seconds`` (the Python client has no
sinceTime) with a margin for clock skew, and the lines already printed are skipped by their timestamp.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

from kubedistill.kube.backends import Backend
from kubedistill.kube.cluster import Cluster

_STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$")


def split_stamp(line: str) -> tuple[tuple[str, int] | None, str]:
    """((seconds, nanoseconds), text) of a timestamped log line; (None, line) when it has no timestamp.
    The kubelet trims trailing zeros of the fraction, so the text itself does not sort."""
    head, _, text = line.partition(" ")
    match = _STAMP.match(head)
    if match is None:
        return None, line
    return (match[1], int((match[2] or "").ljust(9, "0"))), text


class Position:
    """What has been printed: the newest timestamp and how many lines carried it (several lines can share one)."""

    def __init__(self) -> None:
        self.last: tuple[str, int] | None = None
        self.at_last = 0  # lines printed with timestamp ``last``
        self.seen_at_last = 0  # lines with timestamp ``last`` met in the current stream
        self.received = time.monotonic()

    def new_stream(self) -> None:
        self.seen_at_last = 0

    def since_seconds(self, margin_s: int) -> int | None:
        """How far back to ask when following again; None (the whole log) before anything was printed."""
        return None if self.last is None else int(time.monotonic() - self.received) + margin_s

    def accept(self, line: str) -> str | None:
        """The line's text when it was not printed yet, else None."""
        self.received = time.monotonic()
        stamp, text = split_stamp(line)
        if stamp is None or self.last is None or stamp > self.last:
            if stamp is not None:
                self.last, self.at_last, self.seen_at_last = stamp, 1, 1
            return text
        if stamp < self.last:
            return None
        self.seen_at_last += 1
        if self.seen_at_last <= self.at_last:
            return None
        self.at_last += 1
        return text


class Rank0Log:
    """Streams node 0's log into ``output`` from a thread: waits for the pod to leave Pending, follows its log,
    and follows it again after a break until the container has ended."""

    def __init__(self, cluster: Cluster, backend: Backend, namespace: str, name: str, output: TextIO,
                 say: Callable[[str], None], *, retry_s: float = 2.0, margin_s: int = 300):  # fmt: skip
        self.cluster, self.backend, self.namespace, self.name = cluster, backend, namespace, name
        self.output, self.say, self.retry_s, self.margin_s = output, say, retry_s, margin_s
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._job_ended = threading.Event()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"log-{self.name}", daemon=True)
            self._thread.start()

    def finish(self, timeout_s: float = 10.0) -> None:
        """The job ended: let the stream print what is left, then stop."""
        self._job_ended.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        position = Position()
        while not self._stop.is_set():
            pod = self._rank0_pod()
            if pod is None:
                self._stop.wait(self.retry_s)
                continue
            pod_name = pod["metadata"]["name"]
            broken = self._follow(pod_name, position)
            if self._stop.is_set():
                return
            if broken is None and (self._job_ended.is_set() or self._ended(pod_name)):
                return  # the stream ended because the container did
            self.say(f"node 0's log ({pod_name}) {f'broke ({broken})' if broken else 'ended while the pod runs'}; "
                     "following it again after the last line printed")  # fmt: skip
            self._stop.wait(self.retry_s)

    def _follow(self, pod_name: str, position: Position) -> str | None:
        """Print the stream's new lines; None when it ended, else why it broke."""
        position.new_stream()
        try:
            for line in self.cluster.follow_log(self.namespace, pod_name, self.backend.container,
                                                position.since_seconds(self.margin_s)):  # fmt: skip
                if self._stop.is_set():
                    return None
                text = position.accept(line)
                if text is not None:
                    self.output.write(text + "\n")
                    self.output.flush()
            return None
        except Exception as e:  # a cut connection, an API error: followed again
            return str(e).splitlines()[0] if str(e) else type(e).__name__

    def _rank0_pod(self) -> dict[str, Any] | None:
        try:
            pods = self.cluster.pods(self.namespace, self.backend.rank0_selector(self.name))
        except Exception:  # the API is away for a while: the main loop decides whether the job goes on
            return None
        pods = [p for p in pods if self.backend.is_rank0(p, self.name) and phase(p) != "Pending"]
        return pods[0] if pods else None

    def _ended(self, pod_name: str) -> bool:
        try:
            pod = self.cluster.pod(self.namespace, pod_name)
        except Exception:
            return False
        return pod is None or phase(pod) in ("Succeeded", "Failed") or self._container_terminated(pod)

    def _container_terminated(self, pod: dict[str, Any]) -> bool:
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            if status.get("name") == self.backend.container:
                return "terminated" in (status.get("state") or {})
        return False


def phase(pod: dict[str, Any]) -> str:
    return (pod.get("status") or {}).get("phase") or "Pending"
