"""Every Kubernetes API call the launcher makes, in one class: create, get, watch, delete a job; read the
launching pod, list pods and events; read logs. Tests drive it through an HTTP server that speaks these verbs.

Transient failures (no connection, a dropped response, 429, 5xx) are retried with a bounded exponential backoff
in every call; what is left is an answer (404 is None where absence is an answer) or a LaunchError naming the
call and the API's message.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from kubedistill.kube.backends import Backend
from kubedistill.launch import LaunchError

logger = logging.getLogger(__name__)

HTTP_CONFLICT, HTTP_GONE, HTTP_NOT_FOUND, HTTP_TOO_MANY = 409, 410, 404, 429
REQUEST_TIMEOUT_S = 30
T = TypeVar("T")


class AlreadyExistsError(LaunchError):
    """A job with this name exists (409)."""


class GoneError(LaunchError):
    """The watch's resourceVersion is too old (410): list again and watch from there."""


class WatchError(LaunchError):
    """The watch stream said ERROR (other than 410): watch again, as after a dropped stream."""


@dataclass(frozen=True)
class Retry:
    """Bounded exponential backoff for transient API errors: ``attempts`` tries, pauses from ``first_s`` doubling up
    to ``max_s`` (the defaults wait about 45 s in all before giving up)."""

    attempts: int = 8
    first_s: float = 0.5
    max_s: float = 10.0

    def pauses(self) -> Iterator[float]:
        pause = self.first_s
        for _ in range(self.attempts - 1):
            yield pause
            pause = min(pause * 2, self.max_s)


def transient(error: BaseException) -> bool:
    """An error that another try may not meet: no connection or a cut response (urllib3, OSError), 429, 5xx."""
    import urllib3

    status = _status(error)
    if isinstance(status, int) and status > 0:
        return status == HTTP_TOO_MANY or status >= 500
    return isinstance(error, (urllib3.exceptions.HTTPError, OSError))


class Cluster:
    """The API of one cluster (kubeconfig, or the pod's service account inside a cluster)."""

    def __init__(self, api_client: Any, retry: Retry | None = None):
        from kubernetes import client

        self.api_client = api_client
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.retry = retry or Retry()

    @classmethod
    def connect(cls) -> Cluster:
        """In a pod: its service account; elsewhere: the kubeconfig (KUBECONFIG or ~/.kube/config)."""
        from kubernetes import client, config

        try:
            if os.environ.get("KUBERNETES_SERVICE_HOST"):
                config.load_incluster_config()
            else:  # KUBECONFIG as it is now (the client reads it once, when imported)
                config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None)
        except Exception as e:  # ConfigException, missing files, bad YAML
            raise LaunchError(
                f"no Kubernetes cluster to talk to ({e}); set KUBECONFIG (or ~/.kube/config), or run inside a pod "
                "whose service account may create the job (manifests/base/rbac)"
            ) from e
        return cls(client.ApiClient())

    def call(self, what: str, request: Callable[[], T], *, absent_ok: bool = False) -> T | None:
        """``request()`` with retries on transient errors; None on 404 when ``absent_ok``; LaunchError otherwise."""
        pauses = self.retry.pauses()
        while True:
            try:
                return request()
            except Exception as e:
                if absent_ok and _status(e) == HTTP_NOT_FOUND:
                    return None
                pause = next(pauses, None) if transient(e) else None
                if pause is None:
                    raise LaunchError(f"could not {what}: {_why(e)}") from e
                logger.debug("%s: %s; trying again in %.1f s", what, _why(e), pause)
                time.sleep(pause)

    # ------------------------------------------------------------------ the job

    def create(self, backend: Backend, job: dict[str, Any]) -> dict[str, Any]:
        namespace, name = job["metadata"]["namespace"], job["metadata"]["name"]
        request = lambda: self.custom.create_namespaced_custom_object(  # noqa: E731
            backend.group, backend.version, namespace, backend.plural, job, _request_timeout=REQUEST_TIMEOUT_S)  # fmt: skip
        try:
            return self.call(f"create {backend.kind} {namespace}/{name}", request)
        except LaunchError as e:
            # A retried create whose first try reached the server meets its own job: the caller adopts it.
            if _status(e.__cause__) == HTTP_CONFLICT:
                raise AlreadyExistsError(f"{backend.kind} {namespace}/{name} exists") from e.__cause__
            raise

    def get(self, backend: Backend, namespace: str, name: str) -> dict[str, Any] | None:
        return self.call(f"read {backend.kind} {namespace}/{name}", lambda: self.custom.get_namespaced_custom_object(
            backend.group, backend.version, namespace, backend.plural, name, _request_timeout=REQUEST_TIMEOUT_S),
            absent_ok=True)  # fmt: skip

    def delete(self, backend: Backend, namespace: str, name: str) -> bool:
        """Delete the job and, in the background, its pods. False when it was not there."""
        done = self.call(f"delete {backend.kind} {namespace}/{name}", lambda: self.custom.delete_namespaced_custom_object(
            backend.group, backend.version, namespace, backend.plural, name, propagation_policy="Background",
            _request_timeout=REQUEST_TIMEOUT_S), absent_ok=True)  # fmt: skip
        return done is not None

    def watch(self, backend: Backend, namespace: str, name: str, resource_version: str | None,
              timeout_s: int) -> Iterator[tuple[str, dict[str, Any]]]:  # fmt: skip
        """(event type, job) until the server ends the stream (after ``timeout_s``, or a dropped connection:
        the caller watches again from the last resourceVersion). GoneError when that version is too old,
        WatchError for any other ERROR event. Not retried here: the caller's loop watches again."""
        from kubernetes.watch.watch import iter_resp_lines

        try:
            response = self.custom.list_namespaced_custom_object(
                backend.group, backend.version, namespace, backend.plural, field_selector=f"metadata.name={name}",
                resource_version=resource_version, watch=True, timeout_seconds=timeout_s, allow_watch_bookmarks=True,
                _preload_content=False, _request_timeout=timeout_s + REQUEST_TIMEOUT_S,
            )  # fmt: skip
        except Exception as e:
            if _status(e) == HTTP_GONE:
                raise GoneError(f"resourceVersion {resource_version} expired") from e
            raise
        try:
            for line in iter_resp_lines(response):
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object") or {}
                    if status.get("code") == HTTP_GONE:
                        raise GoneError(status.get("message") or "resourceVersion expired")
                    raise WatchError(f"watching {backend.kind} {namespace}/{name}: {status.get('code')} "
                                     f"{status.get('message')}")  # fmt: skip
                yield event["type"], event["object"]
        finally:
            response.release_conn()

    # ------------------------------------------------------------------ pods, events, logs

    def pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        """One pod as the API's JSON; None when there is none of that name in ``namespace``."""
        return self.call(f"read pod {namespace}/{name}", lambda: _json(self.core.read_namespaced_pod(
            name, namespace, _preload_content=False, _request_timeout=REQUEST_TIMEOUT_S)), absent_ok=True)  # fmt: skip

    def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        """The pods matching ``selector``, as the API's JSON (plain dicts: the launcher reads a few fields)."""
        return self.call(f"list pods {selector} in {namespace}", lambda: _json(self.core.list_namespaced_pod(
            namespace, label_selector=selector, _preload_content=False, _request_timeout=REQUEST_TIMEOUT_S)
        ).get("items") or [])  # fmt: skip

    def warnings(self, namespace: str, about: Callable[[str], bool]) -> list[dict[str, Any]]:
        """The Warning events of the objects whose name ``about`` accepts (FailedScheduling on a pod, FailedCreate
        on a child Job: a missing service account, a quota), oldest first."""
        events = self.call(f"list events in {namespace}", lambda: _json(self.core.list_namespaced_event(
            namespace, field_selector="type=Warning", _preload_content=False, _request_timeout=REQUEST_TIMEOUT_S)
        ).get("items") or [])  # fmt: skip
        return [e for e in events if about((e.get("involvedObject") or {}).get("name", ""))]

    def follow_log(self, namespace: str, pod: str, container: str, since_seconds: int | None = None) -> Iterator[str]:
        """The container's log with the kubelet's timestamps, line by line, until the container ends or the
        stream breaks (the caller follows again with ``since_seconds``)."""
        response = self.core.read_namespaced_pod_log(
            pod, namespace, container=container, follow=True, timestamps=True, since_seconds=since_seconds,
            _preload_content=False,
        )  # fmt: skip
        try:
            pending = b""
            for chunk in response.stream(4096):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                yield from (line.decode(errors="replace") for line in lines)
            if pending:
                yield pending.decode(errors="replace")
        finally:
            response.release_conn()

    def log_tail(self, namespace: str, pod: str, container: str, lines: int = 60) -> str:
        try:
            return self.call(f"read the log of {pod}", lambda: self.core.read_namespaced_pod_log(
                pod, namespace, container=container, tail_lines=lines, _request_timeout=REQUEST_TIMEOUT_S))  # fmt: skip
        except LaunchError as e:
            return f"(no log of {pod}: {e})"


def _json(response: Any) -> dict[str, Any]:
    try:
        return json.loads(response.data)
    finally:
        response.release_conn()


def _status(error: BaseException | None) -> int | None:
    return getattr(error, "status", None)


def _why(error: BaseException) -> str:
    """An API error in one line: the Status message when there is one."""
    body = getattr(error, "body", None)
    if body:
        try:
            return f"{_status(error)} {json.loads(body).get('message')}"
        except (ValueError, AttributeError):
            pass
    return str(error).splitlines()[0] if str(error) else type(error).__name__
