"""The output folder: its layout, and the rules for reusing a non-empty one."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from kubedistill.errors import OutputDirError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutputLayout:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def train_log(self) -> Path:
        return self.root / "train.log"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def exported(self) -> Path:
        return self.root / "exported" / "student.pt"

    def run_files(self) -> list[Path]:
        """What a run writes; ``overwrite`` removes exactly these and nothing else a user put there."""
        return [self.config, self.train_log, self.metrics, self.checkpoints, self.exported.parent]


def prepare_output_dir(layout: OutputLayout, *, overwrite: bool, resume: bool) -> Path | None:
    """Create or check ``layout.root``; returns the checkpoint to resume from, if any.

    A non-empty folder is refused unless ``overwrite`` (the previous run's files are removed) or ``resume``
    (it must hold checkpoints/last.pt; an empty or missing folder starts a new run).
    """
    root = layout.root
    if root.exists() and not root.is_dir():
        raise OutputDirError(f"out: {root} exists and is not a directory; choose another path")
    if resume:
        if layout.last_checkpoint.exists():
            return layout.last_checkpoint
        if not root.exists() or not any(root.iterdir()):
            # A launcher may always pass resume_interrupted=true (a PyTorchJob pod that Kubernetes restarts
            # must resume; its first start finds nothing): with nothing there, start the run.
            logger.info("resume_interrupted=true but %s holds no run yet: starting a new one", root)
            root.mkdir(parents=True, exist_ok=True)
            return None
        raise OutputDirError(
            f"resume_interrupted=true but {layout.last_checkpoint} does not exist: there is nothing to resume. "
            "Start without resume_interrupted (a fresh run) or point out= at the interrupted run"
        )
    if root.is_dir() and any(root.iterdir()):
        if not overwrite:
            raise OutputDirError(
                f"out: {root} is not empty. Pass overwrite=true to replace the previous run's files, "
                "resume_interrupted=true to continue it, or choose a new folder"
            )
        for path in layout.run_files():
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        logger.info("overwrite=true: removed the previous run's files in %s", root)
    root.mkdir(parents=True, exist_ok=True)
    return None
