"""Every Kubernetes API call the launcher makes, in one class: create, get, watch, delete a job; list pods and
events; read logs. Tests drive it through an HTTP server that speaks these verbs."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from typing import Any

from kubedistill.kube.backends import Backend
from kubedistill.launch import LaunchError

logger = logging.getLogger(__name__)

HTTP_CONFLICT, HTTP_GONE, HTTP_NOT_FOUND = 409, 410, 404
REQUEST_TIMEOUT_S = 30


class AlreadyExistsError(LaunchError):
    """A job with this name exists (409)."""


class GoneError(LaunchError):
    """The watch's resourceVersion is too old (410): list again and watch from there."""


class Cluster:
    """The API of one cluster (kubeconfig, or the pod's service account inside a cluster)."""

    def __init__(self, api_client: Any):
        from kubernetes import client

        self.api_client = api_client
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)

    @classmethod
    def connect(cls) -> Cluster:
        """In a pod: its service account; elsewhere: the kubeconfig (KUBECONFIG or ~/.kube/config)."""
        from kubernetes import client, config

        try:
            if os.environ.get("KUBERNETES_SERVICE_HOST"):
                config.load_incluster_config()
            else:
                config.load_kube_config()
        except Exception as e:  # ConfigException, missing files, bad YAML
            raise LaunchError(
                f"no Kubernetes cluster to talk to ({e}); set KUBECONFIG (or ~/.kube/config), or run inside a pod "
                "whose service account may create the job (manifests/base/rbac)"
            ) from e
        return cls(client.ApiClient())

    # ------------------------------------------------------------------ the job

    def create(self, backend: Backend, job: dict[str, Any]) -> dict[str, Any]:
        namespace = job["metadata"]["namespace"]
        try:
            return self.custom.create_namespaced_custom_object(
                backend.group, backend.version, namespace, backend.plural, job, _request_timeout=REQUEST_TIMEOUT_S
            )
        except Exception as e:
            if _status(e) == HTTP_CONFLICT:
                raise AlreadyExistsError(f"{backend.kind} {namespace}/{job['metadata']['name']} exists") from e
            raise LaunchError(f"could not create {backend.kind} {namespace}/{job['metadata']['name']}: {_why(e)}") from e

    def get(self, backend: Backend, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.custom.get_namespaced_custom_object(
                backend.group, backend.version, namespace, backend.plural, name, _request_timeout=REQUEST_TIMEOUT_S
            )
        except Exception as e:
            if _status(e) == HTTP_NOT_FOUND:
                return None
            raise LaunchError(f"could not read {backend.kind} {namespace}/{name}: {_why(e)}") from e

    def delete(self, backend: Backend, namespace: str, name: str) -> None:
        """Delete the job and, in the background, its pods; nothing happens when it is gone already."""
        try:
            self.custom.delete_namespaced_custom_object(
                backend.group, backend.version, namespace, backend.plural, name,
                propagation_policy="Background", _request_timeout=REQUEST_TIMEOUT_S,
            )  # fmt: skip
        except Exception as e:
            if _status(e) != HTTP_NOT_FOUND:
                raise LaunchError(f"could not delete {backend.kind} {namespace}/{name}: {_why(e)}") from e

    def watch(self, backend: Backend, namespace: str, name: str, resource_version: str | None,
              timeout_s: int) -> Iterator[tuple[str, dict[str, Any]]]:  # fmt: skip
        """(event type, job) until the server ends the stream (after ``timeout_s``, or a dropped connection:
        the caller watches again from the last resourceVersion). GoneError when that version is too old."""
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
                    raise LaunchError(f"watching {backend.kind} {namespace}/{name}: {status.get('message')}")
                yield event["type"], event["object"]
        finally:
            response.release_conn()

    # ------------------------------------------------------------------ pods, events, logs

    def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        """The pods matching ``selector``, as the API's JSON (plain dicts: the launcher reads a few fields)."""
        return _items(self.core.list_namespaced_pod(
            namespace, label_selector=selector, _preload_content=False, _request_timeout=REQUEST_TIMEOUT_S))  # fmt: skip

    def scheduling_problems(self, namespace: str, pod_names: list[str]) -> list[str]:
        """The FailedScheduling messages of these pods (no GPU of that type, quota, ...), oldest first."""
        if not pod_names:
            return []
        events = _items(self.core.list_namespaced_event(
            namespace, field_selector="reason=FailedScheduling", _preload_content=False,
            _request_timeout=REQUEST_TIMEOUT_S))  # fmt: skip
        return [e.get("message", "") for e in events if (e.get("involvedObject") or {}).get("name") in pod_names]

    def follow_log(self, namespace: str, pod: str) -> Iterator[str]:
        """The pod's log, line by line, until its container ends."""
        response = self.core.read_namespaced_pod_log(pod, namespace, follow=True, _preload_content=False)
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

    def log_tail(self, namespace: str, pod: str, lines: int = 60) -> str:
        try:
            return self.core.read_namespaced_pod_log(pod, namespace, tail_lines=lines, _request_timeout=REQUEST_TIMEOUT_S)
        except Exception as e:
            return f"(no log of {pod}: {_why(e)})"


def _items(response: Any) -> list[dict[str, Any]]:
    try:
        return json.loads(response.data).get("items") or []
    finally:
        response.release_conn()


def _status(error: Exception) -> int | None:
    return getattr(error, "status", None)


def _why(error: Exception) -> str:
    """An API error in one line: the Status message when there is one."""
    body = getattr(error, "body", None)
    if body:
        try:
            return f"{_status(error)} {json.loads(body).get('message')}"
        except (ValueError, AttributeError):
            pass
    return str(error).splitlines()[0] if str(error) else type(error).__name__
