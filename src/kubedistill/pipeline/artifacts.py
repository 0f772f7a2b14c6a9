"""Filling KFP output artifacts from step results (duck-typed: anything with ``path`` and ``metadata``).

Kept out of the components so that what an artifact holds is decided (and tested) here, and a component
body stays a call and a few fills.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def fill(artifact: Any, *, file: str | Path | None = None, folder: str | Path | None = None,
         text: str | None = None, metadata: Mapping[str, Any] | None = None) -> None:  # fmt: skip
    """Write ``artifact.path`` from a file, a folder (copied below it) or a text, and merge ``metadata``.

    Metadata values must be JSON: anything else is written as its string.
    """
    target = Path(artifact.path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if file is not None:
        shutil.copyfile(file, target)
    elif folder is not None:
        shutil.copytree(folder, target, dirs_exist_ok=True)
    elif text is not None:
        target.write_text(text)
    for key, value in (metadata or {}).items():
        artifact.metadata[key] = _json_value(value)


def log_metrics(artifact: Any, metrics: Mapping[str, Any]) -> None:
    """``artifact.log_metric`` for every finite number in ``metrics`` (KFP shows them on the run's page)."""
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            artifact.log_metric(key, float(value))


def log_confusion(artifact: Any, classes: Sequence[str], matrix: Sequence[Sequence[int]]) -> None:
    """A ClassificationMetrics artifact's confusion matrix (rows = true class), with the class names."""
    artifact.log_confusion_matrix([str(c) for c in classes], [[int(v) for v in row] for row in matrix])


def _json_value(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    return str(value)
