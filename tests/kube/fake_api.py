"""An HTTP server that speaks the Kubernetes API verbs the launcher uses, for the launcher's tests.

No API server can run on these machines (no kind, k3s or docker daemon), so this stands in for one: create,
get, watch (chunked, newline-delimited events, with resourceVersion, timeoutSeconds and 410 Gone) and delete on
the job kinds; list pods and events; read and follow pod logs. Tests play the operator: they change a job's
status, add pods, events and log lines, drop watch streams, and read back which requests were made.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

_JOB_PATH = re.compile(r"^/apis/(?P<group>[^/]+)/(?P<version>[^/]+)/namespaces/(?P<ns>[^/]+)/(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?$")
_POD_PATH = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/(?P<what>pods|events)(?:/(?P<name>[^/]+)(?P<log>/log)?)?$")


class FakeKubernetes:
    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.jobs: dict[tuple[str, str, str], dict[str, Any]] = {}  # (plural, namespace, name) -> job
        self.history: list[tuple[int, str, tuple[str, str, str], dict[str, Any]]] = []  # (rv, type, key, job)
        self.pods: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.logs: dict[str, list[str]] = {}  # pod -> lines so far
        self.log_done: set[str] = set()  # pods whose log has ended
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

    def set_conditions(self, name: str, *conditions: tuple[str, str, str], message: str = "") -> None:
        """``conditions``: (type, status, reason); the job's other fields stay."""
        job = self.job(name)
        job["status"] = {"conditions": [{"type": t, "status": s, "reason": r, "message": message or r}
                                        for t, s, r in conditions]}  # fmt: skip
        self.put_job(job)

    def job(self, name: str) -> dict[str, Any]:
        with self.lock:
            (job,) = [j for (_, _, n), j in self.jobs.items() if n == name]
            return json.loads(json.dumps(job))

    def add_pod(self, name: str, labels: dict[str, str], phase: str = "Running", exit_code: int | None = None) -> None:
        status: dict[str, Any] = {"phase": phase}
        if exit_code is not None:
            status["containerStatuses"] = [{"name": "c", "state": {"terminated": {"exitCode": exit_code}}}]
        with self.lock:
            self.pods = [p for p in self.pods if p["metadata"]["name"] != name]
            self.pods.append({"metadata": {"name": name, "namespace": "ml", "labels": labels}, "status": status})

    def add_event(self, pod: str, reason: str, message: str) -> None:
        with self.lock:
            self.events.append({"metadata": {"name": f"{pod}.{len(self.events)}"}, "reason": reason, "message": message,
                                "involvedObject": {"kind": "Pod", "name": pod}})  # fmt: skip

    def log(self, pod: str, *lines: str, done: bool = False) -> None:
        with self.lock:
            self.logs.setdefault(pod, []).extend(lines)
            if done:
                self.log_done.add(pod)
            self.lock.notify_all()

    def count(self, method: str, pattern: str = "") -> int:
        return sum(1 for m, path in list(self.requests) if m == method and pattern in path)


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
            self._record()
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
            self._record()
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
            self._record()
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
            if pod_path and pod_path["what"] == "pods":
                return self._json(200, {"kind": "PodList", "apiVersion": "v1", "metadata": {},
                                        "items": _select(fake.pods, query.get("labelSelector", ""))})  # fmt: skip
            if pod_path and pod_path["what"] == "events":
                reason = query.get("fieldSelector", "").removeprefix("reason=")
                items = [e for e in fake.events if not reason or e["reason"] == reason]
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
            if query.get("follow", "").lower() != "true":
                lines = fake.logs.get(pod, [])[-int(query.get("tailLines", "100000")):]
                body = "".join(line + "\n" for line in lines).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            self._start_chunks("text/plain")
            sent = 0
            with fake.lock:
                while True:
                    lines = fake.logs.get(pod, [])
                    for line in lines[sent:]:
                        self._chunk(line + "\n")
                    sent = len(lines)
                    if pod in fake.log_done:
                        break
                    fake.lock.wait(timeout=0.1)
            self._end_chunks()

        # -------------------------------------------------------------- HTTP plumbing

        def _record(self) -> None:
            fake.requests.append((self.command, self.path))

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

    return Handler


def _select(pods: list[dict[str, Any]], selector: str) -> list[dict[str, Any]]:
    wanted = dict(part.split("=", 1) for part in selector.split(",") if part)
    return [p for p in pods if all(p["metadata"]["labels"].get(k) == v for k, v in wanted.items())]
