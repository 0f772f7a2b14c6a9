"""Exceptions raised on user input. Each message names the offending thing and what to do next."""

from __future__ import annotations


class KubedistillError(Exception):
    """Base class for errors caused by user input or the environment, not by a bug."""


class ConfigError(KubedistillError):
    """One or more configuration values are invalid. ``problems`` lists every one of them."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} configuration problem(s):\n{lines}")


class DataError(KubedistillError):
    """The dataset cannot be used: missing, empty, or too many unreadable images."""


class StorageError(KubedistillError):
    """A file or object cannot be listed, read or written (local path, gs:// or https://)."""


class WeightsError(KubedistillError):
    """Model weights cannot be fetched, verified or loaded."""


class OutputDirError(KubedistillError):
    """The output directory cannot be used as asked (non-empty without overwrite/resume, not writable)."""
