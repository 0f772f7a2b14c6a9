"""``kubedistill launch``: train arguments plus the job's layout and cluster settings -> a job spec.

``kubedistill launch backend=pytorchjob nodes=2 gpus_per_node=8 image=... namespace=ml dry_run=true
out=gs://bucket/runs/r1 data=gs://bucket/data/manifest.jsonl model=torchvision/resnet50 epochs=100`` prints the
spec; without ``dry_run`` the job is submitted and followed. Keys that are not launch settings are train
arguments, checked like ``kubedistill train`` checks them (every problem at once).
"""

from __future__ import annotations

import dataclasses
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from kubedistill.config import build, build_train_config
from kubedistill.errors import ConfigError
from kubedistill.kube.backends import BACKENDS, get_backend
from kubedistill.kube.settings import JobSettings
from kubedistill.launch import LaunchRequest


@dataclass
class LaunchConfig:
    """The launch settings of ``kubedistill launch`` (every other key is a train argument)."""

    backend: str = "pytorchjob"
    nodes: int = 1
    gpus_per_node: int = 1
    name: str | None = None  # default: kd-<random>; the pipeline passes one derived from its run id
    dry_run: bool = False
    settings: JobSettings = field(default_factory=JobSettings)

    def problems(self) -> list[str]:
        found = []
        if self.backend not in BACKENDS:
            found.append(f"backend: unknown backend {self.backend!r}; valid: {', '.join(sorted(BACKENDS))}")
        for key in ("nodes", "gpus_per_node"):
            if getattr(self, key) < 1:
                found.append(f"{key}: must be >= 1, got {getattr(self, key)}")
        if self.name is not None and not _NAME.match(self.name):
            found.append(f"name: {self.name!r} is not a DNS-1035 label of at most 50 characters (a-z, 0-9, -)")
        return found


_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,48}[a-z0-9])?$")
LAUNCH_KEYS = {f.name for f in dataclasses.fields(LaunchConfig) if f.name != "settings"}
SETTINGS_KEYS = {f.name for f in dataclasses.fields(JobSettings)}


def split_arguments(values: Mapping[str, Any]) -> tuple[LaunchConfig, dict[str, Any]]:
    """(launch config, train arguments) from one ``key=value`` mapping; ConfigError lists every problem of both."""
    train = {k: v for k, v in values.items() if k not in LAUNCH_KEYS | SETTINGS_KEYS}
    problems: list[str] = []
    config = build(LaunchConfig, {k: v for k, v in values.items() if k in LAUNCH_KEYS}, problems=problems)
    settings = build(JobSettings, {k: v for k, v in values.items() if k in SETTINGS_KEYS}, problems=problems)
    if config is not None and settings is not None:
        config.settings = settings
    try:
        build_train_config(train)
    except ConfigError as e:
        problems += e.problems
    if problems or config is None:
        raise ConfigError(problems)
    return config, train


def durability_warning(train_args: Mapping[str, Any]) -> str | None:
    """A warning when ``out`` is a path inside the pods: outputs there vanish with the pods unless a volume that
    every node shares is mounted at it. None for gs:// (rank 0 writes the run to the bucket)."""
    out = str(train_args.get("out", ""))
    if out.startswith("gs://"):
        return None
    return (
        f"out={out} is a path inside the pods: unless a volume every node shares is mounted there, the run's "
        "checkpoints and export are lost with the pods; out=gs://bucket/prefix keeps them"
    )


def launch_request(config: LaunchConfig, train_args: Mapping[str, Any]) -> LaunchRequest:
    name = config.name or f"kd-{secrets.token_hex(4)}"
    return LaunchRequest(name=name, train_args=dict(train_args), nodes=config.nodes, procs_per_node=config.gpus_per_node,
                         gpu_type=config.settings.gpu_type)  # fmt: skip


def render(config: LaunchConfig, train_args: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> str:
    """The job spec as YAML (what ``dry_run=true`` prints)."""
    job = get_backend(config.backend).build(launch_request(config, train_args), config.settings, environ)
    return yaml.safe_dump(job, sort_keys=False)
