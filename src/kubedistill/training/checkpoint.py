"""Checkpoints: written atomically (temp file + rename), the newest k kept, loaded without pickle."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import torch

from kubedistill.errors import KubedistillError
from kubedistill.utils import atomic_save

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "kubedistill.checkpoint/v1"
LAST = "last.pt"
_PERIODIC = re.compile(r"^step-(\d+)\.pt$")


class CheckpointError(KubedistillError):
    """A checkpoint cannot be read or does not fit the run."""


def save_checkpoint(state: dict[str, Any], directory: Path, *, step: int, keep: int) -> Path:
    """Write ``step-<step>.pt`` and point ``last.pt`` at it; delete periodic files beyond the newest ``keep``."""
    state = {"format": CHECKPOINT_FORMAT, **state}
    path = directory / f"step-{step:08d}.pt"
    atomic_save(state, path)
    _link_last(path)
    for old in periodic_checkpoints(directory)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def _link_last(path: Path) -> None:
    # A hard link costs no space and is swapped in atomically, like the file itself.
    tmp = path.with_name(f".{LAST}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)
    except OSError:  # file systems without hard links (some FUSE mounts): copy instead
        tmp.write_bytes(path.read_bytes())
    os.replace(tmp, path.parent / LAST)


def periodic_checkpoints(directory: Path) -> list[Path]:
    """``step-*.pt`` files, oldest first."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _PERIODIC.match(p.name))]
    return [p for _, p in sorted(found)]


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint written by save_checkpoint (tensors and plain containers only)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise CheckpointError(f"checkpoint {path} does not exist") from e
    except Exception as e:  # torch raises several types for a damaged file
        raise CheckpointError(f"checkpoint {path} cannot be read ({e}); it may be damaged: delete it") from e
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a kubedistill training checkpoint (format {CHECKPOINT_FORMAT})")
    return state
