"""Run logging: train.log, metrics.jsonl, and progress (a tqdm bar on a terminal, log lines otherwise)."""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

PACKAGE_LOGGER = "kubedistill"
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(log_file: Path | None, *, main_process: bool) -> None:
    """INFO to stderr and (main process only) to ``log_file``, appended so a resumed run keeps its history.

    Non-main ranks log warnings and errors only, so N processes do not print N copies of each line.
    """
    logger = logging.getLogger(PACKAGE_LOGGER)
    logger.setLevel(logging.INFO if main_process else logging.WARNING)
    for handler in list(logger.handlers):
        if getattr(handler, "_kubedistill", False):
            logger.removeHandler(handler)
            handler.close()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None and main_process:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="a"))
    for handler in handlers:
        handler.setFormatter(logging.Formatter(_FORMAT))
        handler._kubedistill = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.propagate = False


def close_logging() -> None:
    logger = logging.getLogger(PACKAGE_LOGGER)
    for handler in list(logger.handlers):
        if getattr(handler, "_kubedistill", False):
            logger.removeHandler(handler)
            handler.close()


class MetricsWriter:
    """Appends one JSON object per line and flushes it, so the file is complete up to the last step logged."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (written after the checkpoint a resumed run starts from)."""
        if not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in kept))


class Progress:
    """Shows training progress: a tqdm bar when stderr is a terminal, else an INFO line per log interval."""

    def __init__(self, *, total_steps: int, start_step: int, enabled: bool):
        self.total_steps = total_steps
        self.start_step = start_step
        self.start_time = time.perf_counter()
        self.enabled = enabled
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def eta_seconds(self, step: int) -> float:
        done = step - self.start_step
        if done <= 0:
            return math.nan
        return (time.perf_counter() - self.start_time) / done * (self.total_steps - step)

    def update(self, step: int, *, loss: float | None = None, images_per_second: float | None = None) -> None:
        """Called after every step; ``loss`` is given on logging steps only."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            if loss is not None:
                self.bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{images_per_second:.1f}")
            return
        if loss is not None:
            logging.getLogger(PACKAGE_LOGGER).info(
                "step %d/%d loss %.5f %.1f img/s ETA %s",
                step,
                self.total_steps,
                loss,
                images_per_second,
                format_duration(self.eta_seconds(step)),
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def format_duration(seconds: float) -> str:
    if math.isnan(seconds):
        return "?"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"
