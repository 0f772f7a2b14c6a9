"""The cluster launcher: create (or adopt) the job, follow it to the end, and never report success on a failure.

- Create; on 409 (a KFP retry, or "Retry run", which keeps the run id and so the job name) read the job: a
  running, pending or succeeded one is adopted, a failed one is deleted and created again. The job is owned by
  the run's Argo Workflow (kube.owner), so that "Retry run" deleting the failed launcher pod leaves it running.
- Follow it with a watch that survives dropped streams (watch again from the last resourceVersion), 410 Gone
  (read the job again, watch from there) and ERROR events; every other API call retries transient errors
  (kube.cluster). Stream node 0's log into ``output``, following it again when the stream breaks (kube.logs).
- Say every change of state and why on ``status`` (stderr: the CLI's stderr, the KFP component's log):
  created, adopted, pending with the scheduler's or the queue's reason, running, succeeded, failed, deleting.
- A container stuck in a waiting reason the kubelet does not get out of by itself (a wrong image, a missing
  Secret key, a crash loop) for ``Timeouts.container_grace_s``: delete the job and fail naming pod, container,
  reason and message. Pending longer than ``settings.pending_timeout``, or running past ``settings.timeout``:
  delete and fail naming the reason.
- Failed: raise with the job's reason and the tail of the failing pod's log (the job stays, for its logs).
- Anything else that stops the launcher (SIGTERM from KFP's Terminate, Ctrl-C, an API that stays away, a bug)
  deletes the job first: no job trains on unwatched. When that delete fails too, the error says so and gives
  the kubectl command that deletes it. The job's activeDeadlineSeconds is the last backstop.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TextIO

from kubedistill.errors import ConfigError
from kubedistill.kube import owner, pod
from kubedistill.kube.backends import Backend, State
from kubedistill.kube.cluster import AlreadyExistsError, Cluster, GoneError
from kubedistill.kube.logs import Rank0Log, phase
from kubedistill.kube.settings import JobSettings
from kubedistill.launch import LaunchError, LaunchRequest
from kubedistill.launch.signals import sigterm_raises

# Container waiting reasons the kubelet keeps retrying without a change of the spec or the cluster fixing them:
# kubernetes pkg/kubelet/images/types.go (ImagePullBackOff, ErrImagePull, InvalidImageName, ErrImageNeverPull,
# ImageInspectError, SignatureValidationFailed), pkg/kubelet/kuberuntime/kuberuntime_container.go
# (CreateContainerConfigError, CreateContainerError), pkg/kubelet/container/sync_result.go (CrashLoopBackOff,
# RunContainerError). A passing registry hiccup clears within the grace; ContainerCreating and PodInitializing are
# normal and not listed.
STUCK_REASONS = {
    "ImagePullBackOff": "the image cannot be pulled: check image=... exists and the nodes may pull it",
    "ErrImagePull": "the image cannot be pulled: check image=... exists and the nodes may pull it",
    "InvalidImageName": "image=... is not a valid image reference",
    "ErrImageNeverPull": "image_pull_policy=Never but the image is not on the node",
    "ImageInspectError": "the container runtime cannot read the image",
    "SignatureValidationFailed": "the image's signature is refused by the node's policy",
    "CreateContainerConfigError": "a Secret, ConfigMap or key the pod refers to is missing (mlflow_secret=...?)",
    "CreateContainerError": "the container runtime cannot create the container",
    "RunContainerError": "the container runtime cannot start the container",
    "CrashLoopBackOff": "the container keeps exiting",
}


@dataclass(frozen=True)
class Timeouts:
    """The launcher's own clocks; the job's pending and total timeouts are launch settings (JobSettings)."""

    container_grace_s: float = 90.0  # a container in a STUCK_REASONS state this long fails the job
    watch_s: int = 30  # one watch request at most; the loop checks pods and clocks between requests
    reconnect_s: float = 2.0  # first pause before watching again after an error (doubles, up to 16x)
    max_watch_errors: int = 30  # in a row (a stream the server ends is not an error)
    log_retry_s: float = 2.0  # pause before following node 0's log again


class JobEndedError(LaunchError):
    """The job's own end, already dealt with: it failed, timed out or got stuck (and was deleted), or was deleted by
    someone else. Nothing is left for the launcher to clean up."""


class _TerminatedError(BaseException):
    """SIGTERM arrived. A BaseException, like KeyboardInterrupt: no `except Exception` may swallow it."""


class KubeLauncher:
    """Runs a ``LaunchRequest`` as a ``backend`` job; ``run`` returns only when the job succeeded. Node 0's log goes
    to ``output`` (stdout), what the launcher says to ``status`` (stderr)."""

    def __init__(self, backend: Backend, settings: JobSettings, *, cluster: Cluster | None = None,
                 timeouts: Timeouts | None = None, output: TextIO | None = None, status: TextIO | None = None,
                 environ: Mapping[str, str] | None = None):  # fmt: skip
        self.backend = backend
        self.settings = settings
        self.cluster = cluster
        self.timeouts = timeouts or Timeouts()
        self.output, self.status = output, status
        self.environ = environ
        self.name = backend.name

    def run(self, request: LaunchRequest) -> None:
        problems = request.problems() + self.settings.problems() + pod.accelerator_problems(request, self.settings)
        if problems:
            raise ConfigError(problems)
        environ = os.environ if self.environ is None else self.environ
        job = self.backend.build(request, self.settings, environ)
        cluster = self.cluster or Cluster.connect()
        follower = _Follower(cluster, self.backend, self.settings, job["metadata"]["namespace"], request.name,
                             self.timeouts, self.output or sys.stdout, self.status or sys.stderr)  # fmt: skip
        try:
            with sigterm_raises(_TerminatedError):
                _set_owners(job, owner.owners(cluster, job["metadata"]["namespace"], environ, follower.say))
                follower.submit(job)
                follower.follow()
        except _TerminatedError:
            raise follower.abandon("stopped by SIGTERM (KFP Terminate, or the pod is being stopped)") from None
        except KeyboardInterrupt:
            follower.abandon("interrupted")
            raise
        except JobEndedError:
            raise
        except Exception as e:  # the launcher itself failed: the job must not train on unwatched
            raise follower.abandon(f"the launcher failed: {e}") from e
        finally:
            follower.log.stop()


def _set_owners(job: dict[str, Any], owners: list[dict[str, Any]] | None) -> None:
    if owners:
        job["metadata"]["ownerReferences"] = owners
    else:
        job["metadata"].pop("ownerReferences", None)


class _Follower:
    """One job's life as seen from the launcher."""

    def __init__(self, cluster: Cluster, backend: Backend, settings: JobSettings, namespace: str, name: str,
                 timeouts: Timeouts, output: TextIO, status: TextIO):  # fmt: skip
        self.cluster, self.backend, self.namespace, self.name = cluster, backend, namespace, name
        self.timeouts, self.status = timeouts, status
        self.pending_s, self.total_s = settings.pending_timeout, settings.timeout
        self.what = f"{backend.kind} {namespace}/{name}"
        self.started = time.monotonic()
        self.pending_since = self.started
        self.resource_version: str | None = None
        self.said_state: tuple[State, str] | None = None
        self.warnings: dict[str, None] = {}  # the pending job's warning events, in the order seen
        self.stuck_since: dict[tuple[str, str], float] = {}  # (pod, container) -> when first seen stuck
        self.watch_errors = 0
        self.submitted = False  # created or adopted: there is a job to clean up
        self.log = Rank0Log(cluster, backend, namespace, name, output, self.say, retry_s=timeouts.log_retry_s)

    # ------------------------------------------------------------------ create or adopt

    def submit(self, job: dict[str, Any]) -> None:
        try:
            self.cluster.create(self.backend, job)
            self.submitted = True
            self.say(f"created {self.what}")
            return
        except AlreadyExistsError:
            pass
        existing = self.cluster.get(self.backend, self.namespace, self.name)
        state, reason = self.backend.state(existing) if existing else ("failed", "deleted meanwhile")
        if state != "failed":
            self.submitted = True
            self.say(f"{self.what} exists and is {state} ({reason}): following it (a retry of the same run)")
            return
        self.say(f"{self.what} exists and failed earlier ({reason}): deleting it and starting again")
        self.cluster.delete(self.backend, self.namespace, self.name)
        self._wait_until_gone()
        self.cluster.create(self.backend, job)
        self.submitted = True
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
        while not self._settle(job):
            job = self._next(job)

    def _settle(self, job: dict[str, Any]) -> bool:
        """Act on the job's state and its pods; True when it succeeded (failures raise)."""
        pods = self.cluster.pods(self.namespace, self.backend.pod_selector(self.name))
        node0 = next((p for p in pods if self.backend.is_rank0(p, self.name)), None)
        state, reason = self.backend.state(job, phase(node0) if node0 else None)
        self._say_state(state, reason)
        if state == "succeeded":
            self.log.finish()
            return True
        if state == "failed":
            self.log.finish()
            raise JobEndedError(f"{self.what} failed: {reason}{self._failure_log()}")
        now = time.monotonic()
        self._check_containers(pods, now)
        if state == "running":
            self.pending_since = now
            self.log.start()
        else:
            self._report_warnings(pods)
            self._check_pending(now)
        if self.total_s is not None and now - self.started > self.total_s:
            self.delete(f"running longer than timeout={self.total_s:g} s")
            raise JobEndedError(f"{self.what} did not finish within {self.total_s:g} s (timeout): deleted")
        return False

    def _check_pending(self, now: float) -> None:
        if now - self.pending_since <= self.pending_s:
            return
        why = "; ".join(self.warnings) or (
            f"no warning events (a queue that has not admitted it? `kubectl describe {self.backend.plural} -n "
            f"{self.namespace} {self.name}`)"
        )  # fmt: skip
        self.delete(f"pending for {now - self.pending_since:.0f} s")
        raise JobEndedError(f"{self.what} did not start within pending_timeout={self.pending_s:g} s: {why}. Deleted")

    def _check_containers(self, pods: list[dict[str, Any]], now: float) -> None:
        """Fail fast on a container the kubelet will not get running (STUCK_REASONS), after the grace."""
        stuck = dict(_stuck_containers(pods))
        self.stuck_since = {key: since for key, since in self.stuck_since.items() if key in stuck}
        for (pod_name, container), (reason, message) in stuck.items():
            if (pod_name, container) not in self.stuck_since:
                self.stuck_since[pod_name, container] = now
                self.say(f"pod {pod_name}, container {container}: {reason}: {message} (the job is deleted unless it "
                         f"recovers within {self.timeouts.container_grace_s:g} s)")  # fmt: skip
            if now - self.stuck_since[pod_name, container] >= self.timeouts.container_grace_s:
                self.delete(f"pod {pod_name}, container {container}: {reason}")
                raise JobEndedError(
                    f"{self.what}: pod {pod_name}, container {container} is stuck in {reason}: {message}. "
                    f"{STUCK_REASONS[reason]}. The job was deleted"
                )  # fmt: skip

    def _next(self, job: dict[str, Any]) -> dict[str, Any]:
        """The job's next version from the watch: the latest one seen before the request ends; on a dropped
        stream or an error, the same job again after a pause; on 410, the job read afresh."""
        try:
            for event, obj in self.cluster.watch(self.backend, self.namespace, self.name, self.resource_version,
                                                 self._watch_timeout()):  # fmt: skip
                self.watch_errors = 0
                self.resource_version = (obj.get("metadata") or {}).get("resourceVersion") or self.resource_version
                if event == "DELETED":
                    raise JobEndedError(f"{self.what} was deleted by someone else before it finished")
                if event in ("ADDED", "MODIFIED"):
                    return obj
            return job  # the server ended the watch: check the pods and clocks, then watch again
        except JobEndedError:
            raise
        except GoneError:
            return self._read()
        except Exception as e:  # a dropped connection, a 5xx, an ERROR event: the job is still there
            status = getattr(e, "status", None)
            if status in (401, 403, 404):
                raise LaunchError(f"the API refused to watch it ({status}): {e}; check the service account's "
                                  "permissions (manifests/base/rbac) and that the operator is installed") from e  # fmt: skip
            self.watch_errors += 1
            if self.watch_errors >= self.timeouts.max_watch_errors:
                raise LaunchError(f"{self.watch_errors} watch requests in a row failed; last: {e}") from e
            time.sleep(self.timeouts.reconnect_s * min(2 ** (self.watch_errors - 1), 16))
            return job

    def _watch_timeout(self) -> int:
        """One watch request ends by the next deadline (pending, total, a stuck container's grace)."""
        now = time.monotonic()
        deadlines = [self.pending_since + self.pending_s]
        if self.total_s is not None:
            deadlines.append(self.started + self.total_s)
        deadlines += [since + self.timeouts.container_grace_s for since in self.stuck_since.values()]
        return max(1, min(self.timeouts.watch_s, math.ceil(min(deadlines) - now)))

    def _read(self) -> dict[str, Any]:
        job = self.cluster.get(self.backend, self.namespace, self.name)
        if job is None:
            raise JobEndedError(f"{self.what} is gone (deleted before it finished)")
        self.resource_version = job["metadata"].get("resourceVersion")
        return job

    # ------------------------------------------------------------------ deleting

    def delete(self, why: str) -> bool:
        self.log.stop()
        self.say(f"deleting {self.what}: {why}")
        return self.cluster.delete(self.backend, self.namespace, self.name)

    def abandon(self, why: str) -> LaunchError:
        """The launcher stops before the job ended: delete the job, and say what became of it."""
        try:
            deleted = self.delete(why)
        except Exception as e:
            command = f"kubectl delete {self.backend.plural}.{self.backend.group} -n {self.namespace} {self.name}"
            state = "it may still be running" if self.submitted else "if its create reached the API, it runs"
            return LaunchError(f"{self.what}: {why}. Deleting the job failed too ({e}): {state}. "
                               f"Delete it with: {command}")  # fmt: skip
        return LaunchError(f"{self.what}: {why}; " + ("the job was deleted" if deleted else "no job was left"))

    # ------------------------------------------------------------------ what the user sees

    def say(self, line: str) -> None:
        self.status.write(f"{time.strftime('%H:%M:%S')} launcher: {line}\n")
        self.status.flush()

    def _say_state(self, state: State, reason: str) -> None:
        if (state, reason) != self.said_state:
            self.said_state = (state, reason)
            self.say(f"{self.what} is {state}: {reason}")

    def _report_warnings(self, pods: list[dict[str, Any]]) -> None:
        """The warning events of the job, its pods and its child Jobs (JobSet: <name>-node-0), each said once."""
        names = {p["metadata"]["name"] for p in pods} | {self.name}
        events = self.cluster.warnings(self.namespace, lambda n: n in names or n.startswith(f"{self.name}-"))
        for event in events:
            text = f"{event.get('reason')}: {event.get('message', '')}".strip()
            if text not in self.warnings:
                self.warnings[text] = None
                involved = (event.get("involvedObject") or {})
                self.say(f"{self.what} is pending: {involved.get('kind', '')} {involved.get('name', '')}: {text}")

    def _failure_log(self) -> str:
        """The tail of the log of the first pod that failed (the one whose error matters), if any."""
        pods = self.cluster.pods(self.namespace, self.backend.pod_selector(self.name))
        failed = [p for p in pods if _failed(p)] or pods
        if not failed:
            return ""
        name = failed[0]["metadata"]["name"]
        tail = self.cluster.log_tail(self.namespace, name, self.backend.container)
        return f"\nThe last lines of {name}'s log:\n{tail}"


def _stuck_containers(pods: list[dict[str, Any]]):
    """((pod, container), (reason, message)) of every container waiting in one of STUCK_REASONS."""
    for p in pods:
        status = p.get("status") or {}
        for container in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in STUCK_REASONS:
                yield (p["metadata"]["name"], container.get("name", "")), (waiting["reason"], waiting.get("message", ""))


def _failed(p: dict[str, Any]) -> bool:
    if phase(p) == "Failed":
        return True
    for status in (p.get("status") or {}).get("containerStatuses") or []:
        terminated = (status.get("state") or {}).get("terminated") or {}
        if terminated.get("exitCode") not in (None, 0):
            return True
    return False
