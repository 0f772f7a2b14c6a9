"""An HTTP server that speaks the Kubernetes API verbs the launcher uses, for the launcher's tests.

No API server can run on these machines (no kind, k3s or docker daemon), so this stands in for one: create,
get, watch (chunked, newline-delimited events, with resourceVersion, timeoutSeconds, 410 Gone and ERROR events)
and delete on the job kinds; get and list pods, list events; read and follow pod logs (with the kubelet's
timestamps and sinceSeconds). Tests play the operators with the helpers below, which write what the upstream
controllers write (each names the upstream file), drop watch and log streams, fail requests, and read back which
requests were made.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

_JOB_PATH = re.compile(r"^/apis/(?P<group>[^/]+)/(?P<version>[^/]+)/namespaces/(?P<ns>[^/]+)/(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?$")
_POD_PATH = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/(?P<what>pods|events)(?:/(?P<name>[^/]+)(?P<log>/log)?)?$")


# ---------------------------------------------------------------------- what the operators write


def pytorchjob_condition(kind: str, name: str, status: str = "True") -> dict[str, Any]:
    """A PyTorchJob condition as Training Operator v1.9.0 writes it: types from
    pkg/apis/kubeflow.org/v1/common_types.go (Created, Running, Restarting, Succeeded, Failed, Suspended), reasons
    "PyTorchJob" + the type (pkg/util/status.go NewReason, JobCreatedReason...), messages as in
    pkg/controller.v1/pytorch/pytorchjob_controller.go; lastUpdateTime/lastTransitionTime from newCondition."""
    messages = {"Created": f"PyTorchJob {name} is created.", "Running": f"PyTorchJob {name} is running.",
                "Succeeded": f"PyTorchJob {name} is successfully completed.",
                "Failed": f"PyTorchJob {name} is failed because 1 Master replica(s) failed.",
                "Restarting": f"PyTorchJob {name} is restarting because 1 Master replica(s) failed.",
                "Suspended": f"PyTorchJob {name} is suspended."}  # fmt: skip
    now = _now()
    return {"type": kind, "status": status, "reason": f"PyTorchJob{kind}", "message": messages[kind],
            "lastUpdateTime": now, "lastTransitionTime": now}  # fmt: skip


def trainjob_condition(kind: str) -> dict[str, Any]:
    """A TrainJob condition as Trainer v2.3.0 writes it (a metav1.Condition): Suspended from
    pkg/controller/trainjob_controller.go setSuspendedCondition with pkg/constants/constants.go's message;
    Complete and Failed are the JobSet's conditions renamed (pkg/runtime/framework/plugins/jobset/jobset.go,
    Status), with JobSet v0.12.0's reasons and messages (pkg/constants/constants.go AllJobsCompleted,
    FailedJobs); DeadlineExceeded from trainjob_types.go / constants.go."""
    reason, message = {
        "Suspended": ("Suspended", "TrainJob is suspended"),
        "Complete": ("AllJobsCompleted", "jobset completed successfully"),
        "Failed": ("FailedJobs", "jobset failed due to one or more job failures"),
        "DeadlineExceeded": ("DeadlineExceeded", "TrainJob exceeded its active deadline"),
    }[kind]  # fmt: skip
    return {"type": "Failed" if kind == "DeadlineExceeded" else kind, "status": "True", "reason": reason,
            "message": message, "lastTransitionTime": _now(), "observedGeneration": 1}  # fmt: skip


def jobs_status(replicated_job: str, *, active: int = 0, ready: int = 0, succeeded: int = 0, failed: int = 0,
                suspended: int = 0) -> list[dict[str, Any]]:  # fmt: skip
    """``status.jobsStatus`` of a TrainJob: Trainer v2.3.0 copies JobSet's ReplicatedJobsStatus field by field
    (pkg/runtime/framework/plugins/jobset/jobset.go Status; JobStatus in pkg/apis/trainer/v1alpha1/
    trainjob_types.go: name, ready, succeeded, failed, active, suspended, each a count of child Jobs)."""
    return [{"name": replicated_job, "ready": ready, "succeeded": succeeded, "failed": failed, "active": active,
             "suspended": suspended}]  # fmt: skip


def jobset_pod(trainjob: str, node: int, *, replicated_job: str = "node", uid: str = "js-uid") -> dict[str, Any]:
    """Node ``node`` of a TrainJob: one child Job ``<jobset>-<replicatedjob>-0`` (JobSet v0.12.0
    pkg/util/placement/placement.go GenJobName) of ``numNodes`` completions, its pods named
    ``<job>-<index>-<random>`` (kubernetes pkg/controller/job/indexed_job_utils.go podGenerateNameWithIndex).
    Labels and annotations from JobSet v0.12.0 pkg/controllers/jobset_controller.go labelAndAnnotateObject
    (keys in api/jobset/v1alpha2/jobset_types.go; restart-attempt in pkg/constants/constants.go) and the Job
    controller (kubernetes indexed_job_utils.go addCompletionIndexAnnotation / addCompletionIndexLabel;
    batch.kubernetes.io/job-name and controller-uid from pkg/controller/job/job_controller.go)."""
    job = f"{trainjob}-{replicated_job}-0"
    index = str(node)
    labels = {
        "jobset.sigs.k8s.io/jobset-name": trainjob, "jobset.sigs.k8s.io/jobset-uid": uid,
        "jobset.sigs.k8s.io/replicatedjob-name": replicated_job, "jobset.sigs.k8s.io/replicatedjob-replicas": "1",
        "jobset.sigs.k8s.io/global-replicas": "1", "jobset.sigs.k8s.io/job-index": "0",
        "jobset.sigs.k8s.io/job-global-index": "0", "jobset.sigs.k8s.io/restart-attempt": "0",
        "jobset.sigs.k8s.io/group-name": "default", "jobset.sigs.k8s.io/job-key": "0f3c2b",
        "batch.kubernetes.io/job-name": job, "batch.kubernetes.io/controller-uid": "job-uid",
        "batch.kubernetes.io/job-completion-index": index,
    }  # fmt: skip
    annotations = {"jobset.sigs.k8s.io/jobset-name": trainjob, "jobset.sigs.k8s.io/replicatedjob-name": replicated_job,
                   "jobset.sigs.k8s.io/job-index": "0", "batch.kubernetes.io/job-completion-index": index}  # fmt: skip
    return {"metadata": {"name": f"{job}-{index}-x7k2p", "namespace": "ml", "labels": labels, "annotations": annotations,
                         "uid": f"pod-{job}-{index}"}, "status": {"phase": "Pending"}}  # fmt: skip


def pytorchjob_pod(pytorchjob: str, replica_type: str, index: int) -> dict[str, Any]:
    """A PyTorchJob pod as Training Operator v1.9.0 creates it: named <job>-<type>-<index> and labelled
    (pkg/controller.v1/common/pod.go; GenLabels in job_controller.go; label keys in
    pkg/apis/kubeflow.org/v1/common_types.go; the type lower-cased, "pytorchjob-controller" from
    pkg/controller.v1/pytorch/pytorchjob_controller.go)."""
    labels = {"training.kubeflow.org/operator-name": "pytorchjob-controller",
              "training.kubeflow.org/job-name": pytorchjob, "training.kubeflow.org/replica-type": replica_type,
              "training.kubeflow.org/replica-index": str(index)}  # fmt: skip
    if replica_type == "master":
        labels["training.kubeflow.org/job-role"] = "master"
    return {"metadata": {"name": f"{pytorchjob}-{replica_type}-{index}", "namespace": "ml", "labels": labels,
                         "uid": f"pod-{pytorchjob}-{replica_type}-{index}"}, "status": {"phase": "Pending"}}  # fmt: skip


def waiting(container: str, reason: str, message: str) -> dict[str, Any]:
    """A containerStatus waiting with the kubelet's reason (kubernetes pkg/kubelet/images/types.go,
    pkg/kubelet/kuberuntime/kuberuntime_container.go, pkg/kubelet/container/sync_result.go)."""
    return {"name": container, "ready": False, "restartCount": 0, "image": "r.example/trainer:1",
            "state": {"waiting": {"reason": reason, "message": message}}}  # fmt: skip


def running(container: str) -> dict[str, Any]:
    return {"name": container, "ready": True, "restartCount": 0, "state": {"running": {"startedAt": _now()}}}


def terminated(container: str, exit_code: int) -> dict[str, Any]:
    reason = "Completed" if exit_code == 0 else "Error"  # kubelet's terminated reasons for exit codes
    return {"name": container, "ready": False, "restartCount": 0,
            "state": {"terminated": {"exitCode": exit_code, "reason": reason}}}  # fmt: skip


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _log_stamp(seconds: float) -> str:
    """The kubelet's log timestamp: RFC 3339 with nanoseconds, trailing zeros trimmed (Go's RFC3339Nano)."""
    whole = datetime.fromtimestamp(int(seconds), timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{round((seconds % 1) * 1e9):09d}".rstrip("0")
    return f"{whole}.{fraction}Z" if fraction else f"{whole}Z"


# ---------------------------------------------------------------------- the server


class FakeKubernetes:
    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.jobs: dict[tuple[str, str, str], dict[str, Any]] = {}  # (plural, namespace, name) -> job
        self.history: list[tuple[int, str, tuple[str, str, str], dict[str, Any]]] = []  # (rv, type, key, job)
        self.pods: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.logs: dict[str, list[tuple[float, str]]] = {}  # pod -> (time, line) so far
        self.log_done: set[str] = set()  # pods whose log has ended
        self.log_breaks: dict[str, int] = {}  # pod -> cut its next follow stream after this many lines
        self.failures: list[dict[str, Any]] = []  # requests to answer with an error (see fail)
        self.watch_errors: list[dict[str, Any]] = []  # ERROR events the next watches send
        self.requests: list[tuple[str, str]] = []
        self.rv = 100
        self.oldest_rv = 0  # watches from an older resourceVersion get 410 Gone
        self.drop_watch_after: int | None = None  # end each watch stream after this many events
        self.on_create = None  # callback(job) after a create
        server = _QuietServer(("127.0.0.1", 0), _handler(self))
        server.daemon_threads = True
        self.server = server
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def close(self) -> None:
        with self.lock:
            self.log_done.update(self.logs)
            self.lock.notify_all()
        self.server.shutdown()
        self.server.server_close()

    # ------------------------------------------------------------------ the operator's side

    def put_job(self, job: dict[str, Any], event: str = "MODIFIED") -> None:
        with self.lock:
            self.rv += 1
            meta = job["metadata"]
            meta["resourceVersion"] = str(self.rv)
            key = (meta["_plural"], meta["namespace"], meta["name"])
            self.jobs[key] = job
            self.history.append((self.rv, event, key, _public(job)))
            self.lock.notify_all()

    def set_status(self, name: str, status: dict[str, Any]) -> None:
        job = self.job(name, private=True)
        job["status"] = status
        self.put_job(job)

    def job(self, name: str, private: bool = False) -> dict[str, Any]:
        with self.lock:
            (job,) = [j for (_, _, n), j in self.jobs.items() if n == name]
            return json.loads(json.dumps(job if private else _public(job)))

    def has_job(self, name: str) -> bool:
        with self.lock:
            return any(n == name for _, _, n in self.jobs)

    def put_pod(self, pod: dict[str, Any], phase: str | None = None, containers: list[dict[str, Any]] | None = None,
                init_containers: list[dict[str, Any]] | None = None) -> str:  # fmt: skip
        """Add or replace a pod (as the factories above build it); returns its name."""
        pod = json.loads(json.dumps(pod))
        status = pod.setdefault("status", {})
        if phase is not None:
            status["phase"] = phase
        if containers is not None:
            status["containerStatuses"] = containers
        if init_containers is not None:
            status["initContainerStatuses"] = init_containers
        with self.lock:
            self.pods[pod["metadata"]["name"]] = pod
        return pod["metadata"]["name"]

    def add_event(self, kind: str, name: str, reason: str, message: str, type_: str = "Warning") -> None:
        """An Event about ``kind``/``name`` (core/v1 Event: type, reason, message, involvedObject)."""
        with self.lock:
            self.events.append({"metadata": {"name": f"{name}.{len(self.events)}", "namespace": "ml"}, "type": type_,
                                "reason": reason, "message": message, "involvedObject": {"kind": kind, "name": name}})  # fmt: skip

    def log(self, pod: str, *lines: str, done: bool = False) -> None:
        with self.lock:
            entries = self.logs.setdefault(pod, [])
            for line in lines:
                entries.append((time.time(), line))
            if done:
                self.log_done.add(pod)
            self.lock.notify_all()

    def break_log(self, pod: str, after_lines: int) -> None:
        """Cut the next follow stream of ``pod`` (the connection dropped, no end chunk) after ``after_lines``."""
        with self.lock:
            self.log_breaks[pod] = after_lines

    def fail(self, method: str, path_part: str, status: int, times: int | None = 1) -> None:
        """Answer the next ``times`` (None: every) ``method`` requests whose path contains ``path_part`` with
        ``status`` (a Status body, as the API server sends)."""
        with self.lock:
            self.failures.append({"method": method, "part": path_part, "status": status, "times": times})

    def count(self, method: str, pattern: str = "") -> int:
        return sum(1 for m, path in list(self.requests) if m == method and pattern in path)

    def _failure(self, method: str, path: str) -> int | None:
        with self.lock:
            for failure in self.failures:
                if failure["method"] == method and failure["part"] in path and failure["times"] != 0:
                    if failure["times"] is not None:
                        failure["times"] -= 1
                    return failure["status"]
        return None


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up mid-stream (the launcher stops watching): nothing to report


def _public(job: dict[str, Any]) -> dict[str, Any]:
    copy = json.loads(json.dumps(job))
    copy["metadata"].pop("_plural", None)
    return copy


def _handler(fake: FakeKubernetes):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            if self._record():
                return
            match = _JOB_PATH.match(urlparse(self.path).path)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            key = (match["plural"], match["ns"], body["metadata"]["name"])
            with fake.lock:
                exists = key in fake.jobs
            if exists:
                return self._status(409, "AlreadyExists", f'{match["plural"]} "{key[2]}" already exists')
            body["metadata"]["_plural"] = match["plural"]
            body["metadata"]["uid"] = f"uid-{fake.rv}"
            fake.put_job(body, "ADDED")
            self._json(201, _public(body))
            if fake.on_create:
                threading.Thread(target=fake.on_create, args=(_public(body),), daemon=True).start()

        def do_DELETE(self) -> None:  # noqa: N802 (http.server's name)
            if self._record():
                return
            match = _JOB_PATH.match(urlparse(self.path).path)
            key = (match["plural"], match["ns"], match["name"])
            with fake.lock:
                job = fake.jobs.pop(key, None)
                if job is not None:
                    fake.rv += 1
                    fake.history.append((fake.rv, "DELETED", key, _public(job)))
                    fake.log_done.update(fake.logs)
                    fake.lock.notify_all()
            if job is None:
                return self._status(404, "NotFound", f'"{key[2]}" not found')
            self._json(200, {"kind": "Status", "status": "Success"})

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self._record():
                return
            url = urlparse(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            job_path, pod_path = _JOB_PATH.match(url.path), _POD_PATH.match(url.path)
            if job_path and job_path["name"]:
                key = (job_path["plural"], job_path["ns"], job_path["name"])
                with fake.lock:
                    job = fake.jobs.get(key)
                return self._json(200, _public(job)) if job else self._status(404, "NotFound", f'"{key[2]}" not found')
            if job_path and query.get("watch", "").lower() == "true":
                return self._watch(job_path, query)
            if pod_path and pod_path["log"]:
                return self._log(pod_path["name"], query)
            if pod_path and pod_path["what"] == "pods" and pod_path["name"]:
                with fake.lock:
                    pod = fake.pods.get(pod_path["name"])
                return self._json(200, pod) if pod else self._status(404, "NotFound", f'pods "{pod_path["name"]}" not found')
            if pod_path and pod_path["what"] == "pods":
                with fake.lock:
                    pods = _select(list(fake.pods.values()), query.get("labelSelector", ""))
                return self._json(200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": pods})
            if pod_path and pod_path["what"] == "events":
                wanted = dict(part.split("=", 1) for part in query.get("fieldSelector", "").split(",") if part)
                with fake.lock:
                    items = [e for e in fake.events if all(e.get(k) == v for k, v in wanted.items())]
                return self._json(200, {"kind": "EventList", "apiVersion": "v1", "metadata": {}, "items": items})
            self._status(404, "NotFound", self.path)

        def _watch(self, match, query) -> None:
            name = query.get("fieldSelector", "").removeprefix("metadata.name=")
            key = (match["plural"], match["ns"], name)
            since = int(query.get("resourceVersion") or 0)
            if since and since < fake.oldest_rv:
                return self._status(410, "Expired", f"too old resource version: {since} ({fake.oldest_rv})")
            deadline = time.monotonic() + int(query.get("timeoutSeconds", "30"))
            self._start_chunks()
            sent = 0
            with fake.lock:
                if fake.watch_errors:  # a watch ERROR event carries a Status (apimachinery watch.Error)
                    self._chunk(json.dumps({"type": "ERROR", "object": fake.watch_errors.pop(0)}) + "\n")
                    return self._end_chunks()
                while time.monotonic() < deadline:
                    new = [h for h in fake.history if h[2] == key and h[0] > since]
                    for rv, event, _, job in new:
                        self._chunk(json.dumps({"type": event, "object": job}) + "\n")
                        since, sent = rv, sent + 1
                        if fake.drop_watch_after is not None and sent >= fake.drop_watch_after:
                            return self._end_chunks()
                    fake.lock.wait(timeout=0.1)
            self._end_chunks()

        def _log(self, pod: str, query) -> None:
            stamps = query.get("timestamps", "").lower() == "true"
            since = time.time() - int(query["sinceSeconds"]) if "sinceSeconds" in query else 0.0
            render = lambda t, line: f"{_log_stamp(t)} {line}\n" if stamps else line + "\n"  # noqa: E731
            if query.get("follow", "").lower() != "true":
                entries = [e for e in fake.logs.get(pod, []) if e[0] >= since][-int(query.get("tailLines", "100000")):]
                body = "".join(render(t, line) for t, line in entries).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            self._start_chunks("text/plain")
            sent = 0
            with fake.lock:
                cut_after = fake.log_breaks.pop(pod, None)
                while True:
                    entries = fake.logs.get(pod, [])
                    for t, line in entries[sent:]:
                        if cut_after is not None and cut_after <= 0:
                            return self._cut()
                        if t >= since:
                            self._chunk(render(t, line))
                            cut_after = None if cut_after is None else cut_after - 1
                    sent = len(entries)
                    if pod in fake.log_done:
                        break
                    fake.lock.wait(timeout=0.1)
            self._end_chunks()

        # -------------------------------------------------------------- HTTP plumbing

        def _record(self) -> bool:
            """Note the request; True when it was answered with an injected failure."""
            fake.requests.append((self.command, self.path))
            status = fake._failure(self.command, self.path)
            if status is None:
                return False
            if self.command == "POST":
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self._status(status, "InternalError" if status >= 500 else "Forbidden", f"injected {status}")
            return True

        def _json(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _status(self, code: int, reason: str, message: str) -> None:
            self._json(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
                              "reason": reason, "code": code})  # fmt: skip

        def _start_chunks(self, content_type: str = "application/json") -> None:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()

        def _chunk(self, text: str) -> None:
            data = text.encode()
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        def _end_chunks(self) -> None:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

        def _cut(self) -> None:
            """Drop the connection mid-stream: no end chunk (the client sees an incomplete read)."""
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True

    return Handler


def _select(pods: list[dict[str, Any]], selector: str) -> list[dict[str, Any]]:
    wanted = dict(part.split("=", 1) for part in selector.split(",") if part)
    return [p for p in pods if all(p["metadata"]["labels"].get(k) == v for k, v in wanted.items())]
