"""An HTTP server that speaks the KFP v2beta1 REST calls `submit` and `schedule` make, for their tests.

No KFP API server runs on these machines. This one answers healthz; experiments (list by name, create);
pipelines (upload, list by name) and their versions (upload); runs (create, get, terminate) with states the
test scripts; recurring runs (list, create, delete). It records every request, so tests can check what was
asked; it can refuse a token, and fail a run's status checks (HTTP 500/503, or a connection dropped without an
answer) as a restarting API server or proxy does.

What it answers follows the upstream API (kubeflow/pipelines, tag 2.14.0; unchanged through 2.17.0): field names
are the JSON names of backend/api/v2beta1/swagger/*.swagger.json (snake_case, except ListRecurringRunsResponse's
``recurringRuns``), run states are v2beta1 RuntimeState (backend/api/v2beta1/run.proto), and healthz is the JSON
backend/src/apiserver/main.go writes. Fields named ``_fake_*`` are this stand-in's own bookkeeping.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

# v2beta1 RuntimeState values (backend/api/v2beta1/run.proto, enum RuntimeState; swagger v2beta1RuntimeState).
RUNTIME_STATES = frozenset({"RUNTIME_STATE_UNSPECIFIED", "PENDING", "RUNNING", "SUCCEEDED", "SKIPPED", "FAILED",
                            "CANCELING", "CANCELED", "PAUSED"})  # fmt: skip
# What a status check can meet instead of an answer: an HTTP error status, or the connection closed unanswered.
POLL_FAILURES = frozenset({"500", "503", "drop"})


class FakeKfp:
    def __init__(self, *, run_states: list[str] | None = None, token: str | None = None, multi_user: bool = False,
                 tag_name: str = "2.16.0", poll_failures: list[str] | None = None):  # fmt: skip
        self.ids: Iterator[int] = itertools.count(1)
        self.experiments: dict[str, dict[str, Any]] = {}
        self.pipelines: dict[str, dict[str, Any]] = {}
        self.versions: dict[str, dict[str, Any]] = {}
        self.runs: dict[str, dict[str, Any]] = {}
        self.recurring: dict[str, dict[str, Any]] = {}
        self.run_states = list(run_states or ["RUNNING", "SUCCEEDED"])  # what successive GETs of a run see
        unknown = set(self.run_states) - RUNTIME_STATES
        assert not unknown, f"not a v2beta1 RuntimeState: {unknown}"
        self.poll_failures = list(poll_failures or [])  # what the next GETs of a run meet instead, one each
        assert set(self.poll_failures) <= POLL_FAILURES, self.poll_failures
        self.token = token
        self.multi_user = multi_user
        self.tag_name = tag_name
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.server = _QuietServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def new_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self.ids)}"

    def healthz(self) -> dict[str, Any]:
        # backend/src/apiserver/main.go, /apis/v2beta1/healthz: commit_sha and tag_name from the server image's
        # COMMIT_SHA/TAG_NAME ("unknown" when unset), multi_user, pipeline_store ("database" or "kubernetes").
        return {"commit_sha": "0d857b6f8a", "tag_name": self.tag_name, "multi_user": self.multi_user,
                "pipeline_store": "database"}  # fmt: skip


# google.rpc.Code of the HTTP statuses this stand-in answers with (the gateway maps one to the other).
_GRPC_CODES = {400: 3, 401: 16, 403: 7, 404: 5, 500: 13}


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


def _named(items: dict[str, dict[str, Any]], query: dict[str, str]) -> list[dict[str, Any]]:
    """``items`` matching a KFP filter on display_name (the only filter the client sends here)."""
    if "filter" not in query:
        return list(items.values())
    predicates = json.loads(query["filter"]).get("predicates", [])
    wanted = {p["key"]: p.get("stringValue", p.get("string_value")) for p in predicates}
    return [i for i in items.values() if all(i.get(k) == v for k, v in wanted.items())]


def _handler(fake: FakeKfp):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if not self._authorized():
                return
            url = urlparse(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            path = url.path.removeprefix("/apis/v2beta1")
            if path == "/healthz":
                return self._json(fake.healthz())
            if path == "/experiments":  # experiment.swagger.json, v2beta1ListExperimentsResponse
                found = _named(fake.experiments, query)
                return self._json({"experiments": found, "total_size": len(found)})
            if path == "/pipelines":  # pipeline.swagger.json, v2beta1ListPipelinesResponse
                found = _named(fake.pipelines, query)
                return self._json({"pipelines": found, "total_size": len(found)})
            if match := re.fullmatch(r"/runs/([^/:]+)", path):
                return self._get_run(match[1])
            if path == "/recurringruns":  # recurring_run.swagger.json, v2beta1ListRecurringRunsResponse
                found = [r for r in fake.recurring.values() if r["experiment_id"] == query.get("experiment_id")]
                return self._json({"recurringRuns": found, "total_size": len(found)})
            self._error(404, f"no route for GET {path}")

        def do_POST(self) -> None:  # noqa: N802
            if not self._authorized():
                return
            url = urlparse(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            path = url.path.removeprefix("/apis/v2beta1")
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with fake.lock:
                if path == "/experiments":  # the request is a v2beta1Experiment; the answer too, with its id
                    experiment = json.loads(body)
                    experiment["experiment_id"] = fake.new_id("experiment")
                    fake.experiments[experiment["experiment_id"]] = experiment
                    return self._json(experiment)
                if path == "/pipelines/upload":  # pipeline.upload.swagger.json: a v2beta1Pipeline
                    name = query.get("name") or _multipart_field(body, "name")
                    pipeline = {"pipeline_id": fake.new_id("pipeline"), "display_name": name}
                    fake.pipelines[pipeline["pipeline_id"]] = pipeline
                    self._version(pipeline["pipeline_id"], f"{name}-first", body)
                    return self._json(pipeline)
                if path == "/pipelines/upload_version":  # a v2beta1PipelineVersion
                    pipeline_id = query.get("pipelineid")
                    if pipeline_id not in fake.pipelines:
                        return self._error(404, f"pipeline {pipeline_id} not found")
                    return self._json(self._version(pipeline_id, query.get("name"), body))
                if path == "/runs":  # the request is a v2beta1Run; the answer adds run_id and state
                    run = json.loads(body)
                    run.update(run_id=fake.new_id("run"), state="PENDING")
                    fake.runs[run["run_id"]] = run
                    return self._json(run)
                if match := re.fullmatch(r"/runs/([^/:]+):terminate", path):  # run.swagger.json: {} on success
                    fake.runs[match[1]]["_fake_terminated"] = True
                    fake.run_states = ["CANCELING", "CANCELED"]  # RuntimeState while and after terminating
                    return self._json({})
                if path == "/recurringruns":  # a v2beta1RecurringRun; the answer adds recurring_run_id
                    recurring = json.loads(body)
                    recurring["recurring_run_id"] = fake.new_id("recurring")
                    fake.recurring[recurring["recurring_run_id"]] = recurring
                    return self._json(recurring)
            self._error(404, f"no route for POST {path}")

        def do_DELETE(self) -> None:  # noqa: N802
            if not self._authorized():
                return
            path = urlparse(self.path).path.removeprefix("/apis/v2beta1")
            if match := re.fullmatch(r"/recurringruns/([^/]+)", path):
                with fake.lock:
                    if fake.recurring.pop(match[1], None) is None:
                        return self._error(404, f"recurring run {match[1]} not found")
                return self._json({})
            self._error(404, f"no route for DELETE {path}")

        def _get_run(self, run_id: str) -> None:
            with fake.lock:
                failure = fake.poll_failures.pop(0) if fake.poll_failures else None
                run = fake.runs.get(run_id)
            if failure == "drop":  # the connection closes without an answer (RemoteDisconnected on the client)
                self.close_connection = True
                return
            if failure is not None:  # what a proxy in front of a restarting server answers: plain text
                return self._text(int(failure), "upstream connect error or disconnect/reset before headers")
            with fake.lock:
                if run is None:
                    return self._error(404, f"run {run_id} not found")
                if fake.run_states:
                    run["state"] = fake.run_states.pop(0) if len(fake.run_states) > 1 else fake.run_states[0]
                if run["state"] == "FAILED":  # run.proto: `google.rpc.Status error` (code, message, details)
                    run["error"] = {"code": 9, "message": "Task distill failed: node 0 exited with status 1"}
                return self._json(run)

        def _version(self, pipeline_id: str, name: str | None, body: bytes) -> dict[str, Any]:
            spec = _multipart_file(body)
            version = {"pipeline_version_id": fake.new_id("version"), "pipeline_id": pipeline_id,
                       "display_name": name, "_fake_spec_bytes": len(spec)}  # fmt: skip
            fake.versions[version["pipeline_version_id"]] = version
            return version

        def _authorized(self) -> bool:
            fake.requests.append((self.command, self.path))
            if fake.token and self.headers.get("Authorization") != f"Bearer {fake.token}":
                self._error(401, "unauthenticated")
                return False
            return True

        def _json(self, body: dict[str, Any], code: int = 200) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str) -> None:
            # The API server's error body: a google.rpc.Status as JSON (googlerpcStatus in the swagger files),
            # whose code is the gRPC code behind the HTTP status.
            self._json({"code": _GRPC_CODES[status], "message": message}, status)

        def _text(self, status: int, text: str) -> None:
            data = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


def _multipart_file(body: bytes) -> bytes:
    match = re.search(rb'name="uploadfile".*?\r\n\r\n(.*?)\r\n--', body, re.S)
    return match.group(1) if match else b""


def _multipart_field(body: bytes, name: str) -> str | None:
    match = re.search(rb'name="' + name.encode() + rb'"\r\n\r\n(.*?)\r\n--', body, re.S)
    return match.group(1).decode() if match else None
