"""Starting a distributed ``kubedistill train`` and following it to the end: one interface, several backends.

A launcher takes a ``LaunchRequest`` (the train arguments and the process layout) and returns only when the
job succeeded; it raises ``LaunchError`` otherwise (never reports success on a failed job). ``local`` runs
torchrun on this machine (one torchrun agent per "node", on 127.0.0.1): the demo, tests and laptops.
``pytorchjob`` and ``trainjob`` run it as a job on the cluster (``kubedistill.kube``): node 0's log goes to
stdout, and every change of the job's state with its reason (created, pending and why, running, succeeded,
failed, deleting) to stderr, which is what the CLI user and a KFP component's log see.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from kubedistill.errors import ConfigError, KubedistillError

__all__ = ["LaunchError", "LaunchRequest", "Launcher", "available_launchers", "get_launcher", "job_name"]


class LaunchError(KubedistillError):
    """The training job failed, timed out or was stopped; the message says why, with the log's tail."""


@dataclass(frozen=True)
class LaunchRequest:
    """One distributed training job.

    ``train_args``: the ``kubedistill train`` arguments as a (nested) dict, ``out`` and ``data`` included.
    ``nodes`` x ``procs_per_node`` processes in all; on GPUs one process per GPU. ``name``: the job's name,
    deterministic from the pipeline run (a retried task finds its own job). ``gpu_type``: the accelerator the
    cluster backends ask for (ignored locally). ``env``: extra environment variables for every process.
    """

    name: str
    train_args: Mapping[str, Any]
    nodes: int = 1
    procs_per_node: int = 1
    gpu_type: str = ""
    env: Mapping[str, str] = field(default_factory=dict)

    def problems(self) -> list[str]:
        found = []
        if self.nodes < 1:
            found.append(f"nodes: must be >= 1, got {self.nodes}")
        if self.procs_per_node < 1:
            found.append(f"gpus_per_node: must be >= 1 (processes per node), got {self.procs_per_node}")
        for key in ("out", "data", "model"):
            if not self.train_args.get(key):
                found.append(f"train_args: {key!r} is required")
        return found


class Launcher(Protocol):
    name: str

    def run(self, request: LaunchRequest) -> None:
        """Start the job, stream its log, and return when it succeeded; LaunchError otherwise."""


def job_name(run_id: str, prefix: str = "kd") -> str:
    """A DNS-1035 label (lowercase, starts with a letter, <= 50 characters) that is the same for every attempt
    of one pipeline run: a retried task finds its own job."""
    cleaned = re.sub(r"[^a-z0-9-]+", "-", run_id.lower()).strip("-")
    name = f"{prefix}-{cleaned}"
    if len(name) > 50:
        digest = hashlib.sha256(run_id.encode()).hexdigest()[:8]
        name = f"{name[:41].rstrip('-')}-{digest}"
    return name


def _local(settings: Any) -> Launcher:
    from kubedistill.launch.local import LocalLauncher

    return LocalLauncher()


def _cluster(backend: str) -> Callable[[Any], Launcher]:
    def make(settings: Any) -> Launcher:
        from kubedistill.kube.backends import get_backend
        from kubedistill.kube.launcher import KubeLauncher
        from kubedistill.kube.settings import JobSettings

        return KubeLauncher(get_backend(backend), settings or JobSettings())

    return make


_FACTORIES: dict[str, Callable[[Any], Launcher]] = {
    "local": _local, "pytorchjob": _cluster("pytorchjob"), "trainjob": _cluster("trainjob"),
}  # fmt: skip


def available_launchers() -> list[str]:
    return sorted(_FACTORIES)


def get_launcher(name: str, settings: Any = None) -> Launcher:
    """The launcher called ``name``; ConfigError naming the valid ones otherwise. ``settings``: the cluster
    launchers' ``kube.settings.JobSettings`` (image, namespace, GPUs, ...); the local launcher ignores it."""
    factory = _FACTORIES.get(name)
    if factory is None:
        raise ConfigError([f"launcher: unknown launcher {name!r}; valid: {', '.join(available_launchers())}"])
    return factory(settings)
