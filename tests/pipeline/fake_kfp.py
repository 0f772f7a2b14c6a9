"""An HTTP server that speaks the KFP v2beta1 REST calls `submit` and `schedule` make, for their tests.

No KFP API server runs on these machines. This one answers healthz; experiments (list by name, create);
pipelines (upload, list by name) and their versions (upload); runs (create, get, terminate) with states the
test scripts; recurring runs (list, create, delete). It records every request, so tests can check what was
asked, and can refuse a token.
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


class FakeKfp:
    def __init__(self, *, run_states: list[str] | None = None, token: str | None = None):
        self.ids: Iterator[int] = itertools.count(1)
        self.experiments: dict[str, dict[str, Any]] = {}
        self.pipelines: dict[str, dict[str, Any]] = {}
        self.versions: dict[str, dict[str, Any]] = {}
        self.runs: dict[str, dict[str, Any]] = {}
        self.recurring: dict[str, dict[str, Any]] = {}
        self.run_states = list(run_states or ["RUNNING", "SUCCEEDED"])  # what successive GETs of a run see
        self.token = token
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
                return self._json({"multi_user": False, "pipeline_store": "database"})
            if path == "/experiments":
                return self._json({"experiments": _named(fake.experiments, query), "total_size": 0})
            if path == "/pipelines":
                return self._json({"pipelines": _named(fake.pipelines, query)})
            if match := re.fullmatch(r"/runs/([^/:]+)", path):
                return self._get_run(match[1])
            if path == "/recurringruns":
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
                if path == "/experiments":
                    experiment = json.loads(body)
                    experiment["experiment_id"] = fake.new_id("experiment")
                    fake.experiments[experiment["experiment_id"]] = experiment
                    return self._json(experiment)
                if path == "/pipelines/upload":
                    name = query.get("name") or _multipart_field(body, "name")
                    pipeline = {"pipeline_id": fake.new_id("pipeline"), "display_name": name}
                    fake.pipelines[pipeline["pipeline_id"]] = pipeline
                    self._version(pipeline["pipeline_id"], f"{name}-first", body)
                    return self._json(pipeline)
                if path == "/pipelines/upload_version":
                    pipeline_id = query.get("pipelineid")
                    if pipeline_id not in fake.pipelines:
                        return self._error(404, f"pipeline {pipeline_id} not found")
                    return self._json(self._version(pipeline_id, query.get("name"), body))
                if path == "/runs":
                    run = json.loads(body)
                    run.update(run_id=fake.new_id("run"), state="PENDING")
                    fake.runs[run["run_id"]] = run
                    return self._json(run)
                if match := re.fullmatch(r"/runs/([^/:]+):terminate", path):
                    fake.runs[match[1]]["terminated"] = True
                    fake.run_states = ["CANCELING", "CANCELED"]
                    return self._json({})
                if path == "/recurringruns":
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
                run = fake.runs.get(run_id)
                if run is None:
                    return self._error(404, f"run {run_id} not found")
                if fake.run_states:
                    run["state"] = fake.run_states.pop(0) if len(fake.run_states) > 1 else fake.run_states[0]
                if run["state"] == "FAILED":
                    run["error"] = {"code": 9, "message": "Task distill failed: node 0 exited with status 1"}
                return self._json(run)

        def _version(self, pipeline_id: str, name: str | None, body: bytes) -> dict[str, Any]:
            spec = _multipart_file(body)
            version = {"pipeline_version_id": fake.new_id("version"), "pipeline_id": pipeline_id,
                       "display_name": name, "pipeline_spec_bytes": len(spec)}  # fmt: skip
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

        def _error(self, code: int, message: str) -> None:
            self._json({"code": code, "message": message}, code)

    return Handler


def _multipart_file(body: bytes) -> bytes:
    match = re.search(rb'name="uploadfile".*?\r\n\r\n(.*?)\r\n--', body, re.S)
    return match.group(1) if match else b""


def _multipart_field(body: bytes, name: str) -> str | None:
    match = re.search(rb'name="' + name.encode() + rb'"\r\n\r\n(.*?)\r\n--', body, re.S)
    return match.group(1).decode() if match else None
