"""A local ``mlflow server`` process (sqlite backend store, proxied artifacts) for the demo, tests and benchmarks.

Use it as ``with MlflowServer(folder) as url: ...``. The server's output goes to ``folder/server.log``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from kubedistill.devtools.local_server import LocalServer, free_port

__all__ = ["MlflowServer", "free_port"]


class MlflowServer(LocalServer):
    """``mlflow server`` on 127.0.0.1 with ``folder/mlflow.db`` as its store; ``url`` once started.

    ``artifacts``: the ``--artifacts-destination`` (default ``folder/artifacts``; a gs:// URI works with the
    environment that reaches the bucket, e.g. STORAGE_EMULATOR_HOST in ``env``). The server's environment has
    no MLFLOW_* variables of the caller's (a developer's settings must not reconfigure it).
    """

    name = "mlflow server"
    health_path = "/health"
    startup_timeout_s = 120.0  # 8-11 s with sqlite here; much more on a loaded machine

    def __init__(self, folder: str | os.PathLike[str], *, artifacts: str | None = None,
                 env: dict[str, str] | None = None, port: int | None = None):  # fmt: skip
        self.folder = Path(folder).resolve()
        self.artifacts = artifacts or str(self.folder / "artifacts")
        server_env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        # MLflow 3's job runner (GenAI scorers and other server-side jobs, unused here) starts 7 worker processes
        # after /health answers, ~15 CPU-seconds that would land on the first pipeline steps of a 2-core machine.
        server_env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        super().__init__(self.folder / "server.log", port=port, env={**server_env, **(env or {})}, cwd=self.folder)

    def start(self) -> str:
        self.folder.mkdir(parents=True, exist_ok=True)  # the server's working directory
        return super().start()

    def command(self) -> list[str]:
        return [
            str(Path(sys.executable).with_name("mlflow")), "server",
            "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
            "--artifacts-destination", self.artifacts,
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]  # fmt: skip
