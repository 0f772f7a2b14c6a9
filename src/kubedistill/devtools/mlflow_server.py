"""A local ``mlflow server`` process (sqlite backend store, proxied artifacts) for the demo, tests and benchmarks.

Use it as ``with MlflowServer(folder) as url: ...``. The server's output goes to ``folder/server.log``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

__all__ = ["MlflowServer"]

STARTUP_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 with ``folder/mlflow.db`` as its store; ``url`` once started.

    ``artifacts``: the ``--artifacts-destination`` (default ``folder/artifacts``; a gs:// URI works with the
    environment that reaches the bucket, e.g. STORAGE_EMULATOR_HOST in ``env``). The server's environment has
    no MLFLOW_* variables of the caller's (a developer's settings must not reconfigure it).
    """

    def __init__(self, folder: str | os.PathLike[str], *, artifacts: str | None = None, env: dict[str, str] | None = None,
                 port: int | None = None):  # fmt: skip
        self.folder = Path(folder)
        self.artifacts = artifacts or str(self.folder / "artifacts")
        self.env = env or {}
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.folder / "server.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = STARTUP_TIMEOUT_S) -> str:
        self.folder.mkdir(parents=True, exist_ok=True)
        server_env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        command = [
            str(Path(sys.executable).with_name("mlflow")), "server",
            "--backend-store-uri", f"sqlite:///{self.folder.resolve() / 'mlflow.db'}",
            "--artifacts-destination", self.artifacts,
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env={**server_env, **self.env}, cwd=self.folder
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited ({self.process.returncode}): {self._log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                    if response.status == 200:
                        return self.url
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer on {self.url} within {timeout_s:.0f} s: {self._log_tail()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def _log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else "(no log)"

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
