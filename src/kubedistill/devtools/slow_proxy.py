"""A forwarding HTTP proxy on 127.0.0.1 that makes a healthy server slow or hung, for the tests and the
benchmark of MLflow logging.

    with SlowProxy("http://127.0.0.1:5000") as proxy:   # proxy.url forwards there
        proxy.delay_s = 2.0    # from now on every request is answered 2 s late
        proxy.hang = True      # from now on requests are accepted and never answered (until the proxy stops)

``received`` and ``answered`` count requests by the last part of their path (``log-batch``, ``health``, ...).
"""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_HOP_HEADERS = {"host", "connection", "keep-alive", "transfer-encoding", "content-length"}


class SlowProxy:
    """Forwards every request to ``target`` after ``delay_s`` seconds, or holds it while ``hang`` is set."""

    def __init__(self, target: str, *, delay_s: float = 0.0):
        self.target = target.rstrip("/")
        self.delay_s = delay_s
        self.hang = False
        self.received: Counter[str] = Counter()
        self.answered: Counter[str] = Counter()
        self.bodies: list[tuple[str, bytes]] = []  # (path, request body) of every POST, in arrival order
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._server = _QuietServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> SlowProxy:
        threading.Thread(target=self._server.serve_forever, name="slow-proxy", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop listening; held and delayed requests are closed unanswered."""
        if not self._stopped.is_set():
            self._stopped.set()
            self._server.shutdown()
            self._server.server_close()

    def _forward(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict, bytes] | None:
        """(status, headers, body) from the target, or None when the request is to go unanswered."""
        name = path.split("?")[0].rstrip("/").rsplit("/", 1)[-1]
        with self._lock:
            self.received[name] += 1
            if method == "POST":
                self.bodies.append((path, body))
        if self.hang:
            self._stopped.wait()
        elif self.delay_s:
            self._stopped.wait(self.delay_s)
        if self._stopped.is_set():
            return None
        request = urllib.request.Request(self.target + path, data=body or None, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                answer = response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as e:
            answer = e.code, dict(e.headers), e.read()
        with self._lock:
            self.answered[name] += 1
        return answer


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up on a held request is expected here


def _handler(proxy: SlowProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _relay(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
            answer = proxy._forward(self.command, self.path, headers, body)
            if answer is None:
                self.close_connection = True
                return
            status, response_headers, content = answer
            self.send_response(status)
            for key, value in response_headers.items():
                if key.lower() not in _HOP_HEADERS | {"date", "server"}:
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _relay  # noqa: N815 (http.server's names)

    return Handler
