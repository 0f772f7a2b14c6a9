"""Running the compiled pipeline's DAG on this machine with kfp.local (no cluster, no docker, no KFP server).

kfp.local's ``SubprocessRunner(use_venv=False)`` runs each component in a subprocess of the current Python
environment, which must have kubedistill and kfp installed (``make setup`` does that). kfp.local (2.17) runs the
exit handler and ``dsl.If``, and retries failed tasks with the compiled backoff as KFP does; it ignores display
names, kfp-kubernetes settings and resources, and does not take gs:// pipeline roots. It evaluates a condition
on a task's single return value ("Output") but not on a named output (the gate is the probe's return value).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubedistill.errors import KubedistillError
from kubedistill.pipeline.context import RUN_FILE

logger = logging.getLogger(__name__)


class PipelineFailedError(KubedistillError):
    """A local pipeline run failed; the message names the step and its reason."""


@dataclass(frozen=True)
class LocalRun:
    run_id: str
    run_dir: Path  # <output_root>/<run id>
    summary: dict[str, Any]  # run.json, as the exit handler wrote it

    def step_dir(self, step: str) -> Path:
        return self.run_dir / step


def run_locally(
    compiled: str | Path, arguments: dict[str, Any], *, pipeline_root: str | Path, log_file: str | Path | None = None,
    echo: Callable[[str], None] | None = None,
) -> LocalRun:  # fmt: skip
    """Run the compiled pipeline ``compiled`` with ``arguments`` (``output_root`` must be a local folder).

    ``log_file``: kfp.local's whole output (every task's log) goes there instead of the console, and ``echo``
    gets the lines worth showing (tasks starting and ending, training progress, errors).
    Returns the run's record once it succeeded; raises PipelineFailedError naming the failing step and its
    reason otherwise (the exit handler has run by then).
    """
    from kfp import components, local

    output_root = Path(arguments["output_root"])
    before = _run_dirs(output_root)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root), raise_on_error=True)
    pipeline = components.load_component_from_text(_for_kfp_local(Path(compiled)))
    error: Exception | None = None
    with warnings.catch_warnings(), _captured_output(log_file, echo):
        # Our components image is not named "python"; locally the components run in this environment anyway.
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        # Display names are for the KFP UI; kfp.local says so once per task.
        warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
        try:
            pipeline(**arguments)
        except RuntimeError as e:  # kfp.local: "Pipeline ... finished with status FAILURE. Inner task failed: ..."
            error = e
    new = sorted(_run_dirs(output_root) - before, key=lambda p: p.stat().st_mtime)
    if not new:
        raise PipelineFailedError(f"the pipeline wrote nothing under {output_root}: {error or 'no run folder'}")
    run_dir = new[-1]
    summary = json.loads((run_dir / RUN_FILE).read_text()) if (run_dir / RUN_FILE).is_file() else {}
    if error is not None or not summary.get("succeeded"):
        step, reason = summary.get("failed_step"), summary.get("reason")
        where = f"at step {step}: {reason}" if step else f"({reason or error})"
        raise PipelineFailedError(f"the pipeline run {run_dir.name} failed {where}; its outputs are in {run_dir}")
    return LocalRun(run_dir.name, run_dir, summary)


# kfp.local's lines about tasks, the trainer's progress lines, and errors: what a person watching wants to see.
_SHOWN = re.compile(
    r"Executing task|finished with status|Skipping|kubedistill: step \d+/\d+|Error|error:|Traceback|launching "
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class _LineFilter(io.TextIOBase):
    """A text stream that writes everything to ``file`` and passes the lines matching _SHOWN to ``echo``."""

    def __init__(self, file, echo: Callable[[str], None] | None, console):
        self.file, self.echo, self.console, self.pending = file, echo, console, ""

    def write(self, text: str) -> int:
        self.file.write(text)
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            if self.echo is not None and _SHOWN.search(line):
                with contextlib.redirect_stdout(self.console):  # the echo prints to the console, not to us
                    self.echo(_ANSI.sub("", line).strip())
        return len(text)

    def flush(self) -> None:
        self.file.flush()


@contextlib.contextmanager
def _captured_output(log_file: str | Path | None, echo: Callable[[str], None] | None) -> Iterator[None]:
    if log_file is None:
        yield
        return
    Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "w") as file:
        stream = _LineFilter(file, echo, sys.stdout)
        with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
            yield
        stream.flush()


# Placeholders KFP fills in on a cluster that kfp.local does not know (it fails on them): a local run has no
# Argo Workflow and no scheduled time.
_UNKNOWN_TO_KFP_LOCAL = {"{{$.pipeline_job_resource_name}}": "", "{{$.pipeline_job_schedule_time_utc}}": ""}


def _for_kfp_local(compiled: Path) -> str:
    """The text of ``compiled`` with the placeholders kfp.local cannot resolve replaced by what they mean
    locally (the committed file is what KFP gets)."""
    text = compiled.read_text()
    for placeholder, value in _UNKNOWN_TO_KFP_LOCAL.items():
        text = text.replace(placeholder, value)
    return text


def _run_dirs(root: Path) -> set[Path]:
    return {p for p in root.iterdir() if p.is_dir()} if root.is_dir() else set()
