"""A real ``mlflow server`` (sqlite store in a temp dir) shared by the tracking tests, and exported students."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from kubedistill.models.export import StudentMetadata, export_student
from kubedistill.models.students import build_student

MLFLOW = str(Path(sys.executable).with_name("mlflow"))
STARTUP_TIMEOUT_S = 120
MLFLOW_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_REGISTRY_URI")
# A small torchvision student: registry tests upload several versions of it.
SMALL_STUDENT = "torchvision/mobilenet_v3_small"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow_server(folder: Path, *, artifacts: str, env: dict[str, str] | None = None) -> tuple[str, subprocess.Popen]:
    """Start ``mlflow server`` on a free port with a sqlite store in ``folder``; wait for /health."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(folder / "server.log", "w")  # noqa: SIM115 (closed when the server stops)
    server_env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    proc = subprocess.Popen(
        [MLFLOW, "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}", "--artifacts-destination",
         artifacts, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, env={**server_env, **(env or {})}, cwd=folder,
    )  # fmt: skip
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {(folder / 'server.log').read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                if response.status == 200:
                    return url, proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"mlflow server did not start in {STARTUP_TIMEOUT_S} s: {(folder / 'server.log').read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> Iterator[str]:
    """URL of one MLflow server for the whole session (local artifact store, proxied)."""
    folder = tmp_path_factory.mktemp("mlflow")
    url, proc = start_mlflow_server(folder, artifacts=str(folder / "artifacts"))
    yield url
    stop(proc)


@pytest.fixture(autouse=True)
def _no_mlflow_environment(monkeypatch):
    # A developer's MLFLOW_* settings must not leak into the tests (nor the tests' into each other).
    for name in MLFLOW_ENV:
        monkeypatch.delenv(name, raising=False)


def make_exported_student(out: Path, *, seed: int, model: str = SMALL_STUDENT, size: int = 32) -> Path:
    """``out/exported/student.pt`` of a random-init student (different ``seed`` -> different weights)."""
    torch.manual_seed(seed)
    student = build_student(model, image_size=(size, size))
    metadata = StudentMetadata(
        model=model, feature_dim=student.feature_dim, image_size=(size, size),
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
    )  # fmt: skip
    path = out / "exported" / "student.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    export_student(student, metadata, path)
    return path
