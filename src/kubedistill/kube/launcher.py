"""The cluster launcher: create (or adopt) the job, follow it to the end, and never report success on a failure.

- Create; on 409 (a KFP retry, or "Retry run", which keeps the run id and so the job name) read the job: a
  Running, Pending or Succeeded one is adopted, a Failed one is deleted and created again.
- Follow it with a watch that survives dropped streams (watch again from the last resourceVersion) and 410 Gone
  (read the job again, watch from there). Stream node 0's log into this process's output.
- While it is pending, say why (FailedScheduling events: no GPU of that type, quota); after
  ``pending_timeout_s`` delete it and fail naming the reason. After ``timeout_s`` in all, delete and fail.
- Failed: raise with the job's reason and the tail of the failing pod's log.
- SIGTERM (KFP's Terminate): delete the job, then fail. KFP does not forward signals reliably, so the owner
  reference to the KFP pod and the job's activeDeadlineSeconds are the backstops.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubedistill.kube.backends import Backend, State
from kubedistill.kube.cluster import AlreadyExistsError, Cluster, GoneError
from kubedistill.kube.settings import JobSettings
from kubedistill.launch import LaunchError, LaunchRequest
from kubedistill.launch.signals import sigterm_raises

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Timeouts:
    total_s: float | None = None  # None: only the job's own activeDeadlineSeconds
    pending_s: float = 30 * 60  # queued or unschedulable this long: give up (a GPU that never comes)
    watch_s: int = 30  # one watch request; the loop checks the clocks between requests
    reconnect_s: float = 2.0  # pause before watching again after an error
    max_watch_errors: int = 30  # in a row (a dropped stream that reconnects is not an error)


class _TerminatedError(BaseException):
    """SIGTERM arrived. A BaseException, like KeyboardInterrupt: no `except Exception` may swallow it."""


class KubeLauncher:
    """Runs a ``LaunchRequest`` as a ``backend`` job; ``run`` returns only when the job succeeded."""

    def __init__(self, backend: Backend, settings: JobSettings, *, cluster: Cluster | None = None,
                 timeouts: Timeouts | None = None, output=None, environ: Mapping[str, str] | None = None):  # fmt: skip
        self.backend = backend
        self.settings = settings
        self.cluster = cluster
        self.timeouts = timeouts or Timeouts()
        self.output = output or sys.stdout
        self.environ = environ
        self.name = backend.name

    def run(self, request: LaunchRequest) -> None:
        problems = request.problems() + self.settings.problems()
        if problems:
            from kubedistill.errors import ConfigError

            raise ConfigError(problems)
        job = self.backend.build(request, self.settings, self.environ)
        cluster = self.cluster or Cluster.connect()
        follower = _Follower(cluster, self.backend, job["metadata"]["namespace"], request.name, self.timeouts, self.output)
        try:
            with sigterm_raises(_TerminatedError):
                follower.submit(job)
                follower.follow()
        except _TerminatedError:
            follower.delete("SIGTERM (KFP Terminate, or the pod is being stopped)")
            raise LaunchError(f"{follower.what}: stopped by SIGTERM; the job was deleted") from None
        finally:
            follower.stop_logs()


class _Follower:
    """One job's life as seen from the launcher."""

    def __init__(self, cluster: Cluster, backend: Backend, namespace: str, name: str, timeouts: Timeouts, output):
        self.cluster, self.backend, self.namespace, self.name = cluster, backend, namespace, name
        self.timeouts, self.output = timeouts, output
        self.what = f"{backend.kind} {namespace}/{name}"
        self.started = time.monotonic()
        self.pending_since = self.started
        self.resource_version: str | None = None
        self.reported: set[str] = set()
        self.watch_errors = 0
        self._log_thread: threading.Thread | None = None
        self._stop = threading.Event()

    # ------------------------------------------------------------------ create or adopt

    def submit(self, job: dict[str, Any]) -> None:
        try:
            self.cluster.create(self.backend, job)
            self.say(f"created {self.what}")
            return
        except AlreadyExistsError:
            pass
        existing = self.cluster.get(self.backend, self.namespace, self.name)
        state, reason = self.backend.state(existing) if existing else ("failed", "gone")
        if state != "failed":
            self.say(f"{self.what} exists and is {state}: following it (a retry of the same pipeline run)")
            return
        self.say(f"{self.what} exists and failed earlier ({reason}): deleting it and starting again")
        self.cluster.delete(self.backend, self.namespace, self.name)
        self._wait_until_gone()
        self.cluster.create(self.backend, job)
        self.say(f"created {self.what}")

    def _wait_until_gone(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.cluster.get(self.backend, self.namespace, self.name) is not None:
            if time.monotonic() > deadline:
                raise LaunchError(f"{self.what} was deleted but is still there after {timeout_s:.0f} s (finalizers?)")
            time.sleep(1.0)

    # ------------------------------------------------------------------ follow

    def follow(self) -> None:
        job = self._read()
        while True:
            state, reason = self.backend.state(job)
            if self._settle(state, reason):
                return
            job = self._next(job)

    def _settle(self, state: State, reason: str) -> bool:
        """Act on the job's state; True when it succeeded (failures raise)."""
        if state == "succeeded":
            self.finish_logs()
            self.say(f"{self.what} succeeded ({reason})")
            return True
        if state == "failed":
            self.finish_logs()
            raise LaunchError(f"{self.what} failed: {reason}{self._failure_log()}")
        now = time.monotonic()
        if state == "running":
            self.pending_since = now
            self.start_logs()
        else:
            self._report_scheduling()
            if now - self.pending_since > self.timeouts.pending_s:
                why = "; ".join(sorted(self.reported)) or "no scheduling events (a queue that does not admit it?)"
                self.delete(f"pending for {now - self.pending_since:.0f} s")
                raise LaunchError(f"{self.what} did not start within {self.timeouts.pending_s:.0f} s: {why}. Deleted")
        if self.timeouts.total_s is not None and now - self.started > self.timeouts.total_s:
            self.delete("timeout")
            raise LaunchError(f"{self.what} did not finish within {self.timeouts.total_s:.0f} s: deleted")
        return False

    def _next(self, job: dict[str, Any]) -> dict[str, Any]:
        """The job's next version from the watch: the latest one seen before the request ends; on a dropped
        stream or an error, the same job again after a pause; on 410, the job read afresh."""
        try:
            for event, obj in self.cluster.watch(self.backend, self.namespace, self.name, self.resource_version,
                                                 self.timeouts.watch_s):  # fmt: skip
                self.watch_errors = 0
                self.resource_version = (obj.get("metadata") or {}).get("resourceVersion") or self.resource_version
                if event == "DELETED":
                    raise LaunchError(f"{self.what} was deleted by someone else before it finished")
                if event in ("ADDED", "MODIFIED"):
                    return obj
            return job  # the server ended the watch: check the clocks, then watch again from the same version
        except GoneError:
            logger.info("%s: watch expired (410); reading the job again", self.what)
            return self._read()
        except LaunchError:
            raise
        except Exception as e:  # a dropped connection, a 5xx: the job is still there
            status = getattr(e, "status", None)
            if status in (401, 403, 404):
                raise LaunchError(f"{self.what}: the API refused to watch it ({status}): {e}; check the service "
                                  "account's permissions (manifests/base/rbac) and that the operator is installed") from e  # fmt: skip
            self.watch_errors += 1
            if self.watch_errors >= self.timeouts.max_watch_errors:
                raise LaunchError(f"{self.what}: {self.watch_errors} watch requests in a row failed; last: {e}") from e
            logger.warning("%s: watch interrupted (%s); watching again", self.what, str(e).splitlines()[0] if str(e) else e)
            time.sleep(self.timeouts.reconnect_s)
            return job

    def _read(self) -> dict[str, Any]:
        job = self.cluster.get(self.backend, self.namespace, self.name)
        if job is None:
            raise LaunchError(f"{self.what} is gone (deleted before it finished)")
        self.resource_version = job["metadata"].get("resourceVersion")
        return job

    def delete(self, why: str) -> None:
        self.stop_logs()
        self.say(f"deleting {self.what}: {why}")
        self.cluster.delete(self.backend, self.namespace, self.name)

    # ------------------------------------------------------------------ what the user sees

    def _report_scheduling(self) -> None:
        pods = [p["metadata"]["name"] for p in self.cluster.pods(self.namespace, self.backend.pod_selector(self.name))]
        for message in self.cluster.scheduling_problems(self.namespace, pods):
            if message not in self.reported:
                self.reported.add(message)
                self.say(f"{self.what} is pending: {message}")

    def _failure_log(self) -> str:
        """The tail of the log of the first pod that failed (the one whose error matters), if any."""
        pods = self.cluster.pods(self.namespace, self.backend.pod_selector(self.name))
        failed = [p for p in pods if _failed(p)] or pods
        if not failed:
            return ""
        pod = failed[0]["metadata"]["name"]
        return f"\nThe last lines of {pod}'s log:\n{self.cluster.log_tail(self.namespace, pod)}"

    def start_logs(self) -> None:
        if self._log_thread is None:
            self._log_thread = threading.Thread(target=self._stream_rank0_log, daemon=True)
            self._log_thread.start()

    def finish_logs(self, timeout_s: float = 10.0) -> None:
        if self._log_thread is not None:
            self._log_thread.join(timeout=timeout_s)

    def stop_logs(self) -> None:
        self._stop.set()

    def _stream_rank0_log(self) -> None:
        selector = self.backend.rank0_selector(self.name)
        while not self._stop.is_set():
            pods = [p for p in self.cluster.pods(self.namespace, selector) if _phase(p) != "Pending"]
            if pods:
                try:
                    for line in self.cluster.follow_log(self.namespace, pods[0]["metadata"]["name"]):
                        if self._stop.is_set():
                            return
                        self.output.write(line + "\n")
                        self.output.flush()
                    return
                except Exception as e:  # the log stream broke: the job's state decides what happens next
                    logger.warning("log of %s interrupted: %s", pods[0]["metadata"]["name"], e)
                    return
            self._stop.wait(2.0)

    def say(self, line: str) -> None:
        logger.info("%s", line)


def _phase(pod: dict[str, Any]) -> str:
    return (pod.get("status") or {}).get("phase") or "Pending"


def _failed(pod: dict[str, Any]) -> bool:
    if _phase(pod) == "Failed":
        return True
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        terminated = (status.get("state") or {}).get("terminated") or {}
        if terminated.get("exitCode") not in (None, 0):
            return True
    return False
