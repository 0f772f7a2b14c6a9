"""Where a run's files live: a local folder, or a gs:// prefix that outlives the pods.

With ``out=gs://bucket/prefix`` each node works in a local staging folder (``$KUBEDISTILL_CACHE_DIR/runs/...``)
and rank 0 copies what it writes to the bucket: config.yaml when the run starts; each checkpoint as
``checkpoints/step-<N>.pt`` as soon as it is written (a GCS object becomes visible only when its upload is
complete, so a checkpoint in the bucket is always whole), with metrics.jsonl, train.log and the MLflow run
record; the export at the end. The bucket is the truth between restarts: ``resume_interrupted=true`` brings
the newest ``step-*.pt`` (and the logs) back into the staging folder of rank 0, which then shares it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
from pathlib import Path

from kubedistill import storage
from kubedistill.errors import OutputDirError
from kubedistill.training.checkpoint import LAST
from kubedistill.training.outdir import OutputLayout, prepare_output_dir

logger = logging.getLogger(__name__)

CACHE_ENV = "KUBEDISTILL_CACHE_DIR"
_STEP = re.compile(r"/checkpoints/step-(\d+)\.pt$")
# Small files that follow the run: copied with every checkpoint, and brought back on resume.
RECORD_FILES = ("config.yaml", "train.log", "metrics.jsonl", "mlflow_run.json")
RUN_ENTRIES = ("config.yaml", "train.log", "metrics.jsonl", "mlflow_run.json", "checkpoints/", "exported/")


class RunFolder:
    """A run's output folder. ``layout`` is where the trainer reads and writes (the staging folder for gs://)."""

    def __init__(self, out: str, *, cache_dir: str | os.PathLike[str] | None = None):
        self.uri = str(out)
        self.remote = storage.is_gcs(self.uri)
        local = staging_dir(self.uri, cache_dir) if self.remote else storage.to_local_path(self.uri)
        self.layout = OutputLayout(Path(local))

    def prepare(self, *, overwrite: bool, resume: bool) -> Path | None:
        """Rank 0 only: create or check the folder; returns the checkpoint to resume from (a local file), if any.
        The rules are ``prepare_output_dir``'s, applied to the bucket for gs://."""
        if not self.remote:
            return prepare_output_dir(self.layout, overwrite=overwrite, resume=resume)
        shutil.rmtree(self.layout.root, ignore_errors=True)  # the staging copy of an earlier attempt
        self.layout.root.mkdir(parents=True, exist_ok=True)
        existing = self._remote_run_files()
        checkpoints = sorted((int(m.group(1)), uri) for uri in existing if (m := _STEP.search(uri)))
        if resume and checkpoints:
            return self._pull(checkpoints[-1][1])
        if resume and existing:
            raise OutputDirError(
                f"resume_interrupted=true but {self.uri} holds no checkpoint (checkpoints/step-*.pt): nothing to "
                "resume. Start without resume_interrupted, or point out= at the interrupted run"
            )
        if resume:
            logger.info("resume_interrupted=true but %s holds no run yet: starting a new one", self.uri)
        elif existing and not overwrite:
            raise OutputDirError(
                f"out: {self.uri} already holds a run. Pass overwrite=true to replace its files, "
                "resume_interrupted=true to continue it, or choose a new prefix"
            )
        elif existing:
            for uri in existing:
                storage.delete(uri)
            logger.info("overwrite=true: removed the previous run's %d files under %s", len(existing), self.uri)
        return None

    def push(self, *paths: Path) -> None:
        """Copy files of the staging folder to the bucket (same relative paths); nothing for a local run."""
        if not self.remote:
            return
        for path in paths:
            if path.is_file():
                storage.upload_file(path, storage.join(self.uri, *path.relative_to(self.layout.root).parts))

    def push_checkpoint(self, path: Path, *, keep: int) -> None:
        """The records, then the checkpoint; then the bucket's oldest step-*.pt beyond the newest ``keep``.

        In that order, a checkpoint in the bucket always has records at least as new as itself (a resume
        drops metric lines past its step), whenever the upload is interrupted."""
        if not self.remote:
            return
        self.push(*(self.layout.root / name for name in RECORD_FILES), path)
        remote = sorted((int(m.group(1)), uri) for uri in self._remote_run_files() if (m := _STEP.search(uri)))
        for _, uri in remote[:-keep] if keep > 0 else []:
            storage.delete(uri)

    def _remote_run_files(self) -> list[str]:
        prefix = self.uri.rstrip("/") + "/"
        return [f.uri for f in storage.list_files(self.uri) if f.uri[len(prefix):].startswith(RUN_ENTRIES)]

    def _pull(self, checkpoint_uri: str) -> Path:
        """Bring the checkpoint and the run's records into the staging folder; returns the local checkpoint."""
        local = self.layout.checkpoints / checkpoint_uri.rsplit("/", 1)[1]
        storage.fetch(checkpoint_uri, local)
        for name in RECORD_FILES:
            uri = storage.join(self.uri, name)
            if storage.exists(uri):
                storage.fetch(uri, self.layout.root / name)
        last = self.layout.checkpoints / LAST
        shutil.copyfile(local, last)
        logger.info("resuming from %s (copied to %s)", checkpoint_uri, local)
        return last


def staging_dir(uri: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """A node-local folder for the run at ``uri``: the same one for every process of the node and every attempt."""
    root = Path(cache_dir or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "kubedistill")
    return root / "runs" / hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]
