"""SIGTERM as an exception, so that a launcher can stop what it started (KFP's Terminate sends SIGTERM)."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def sigterm_raises(exception: type[BaseException]) -> Iterator[None]:
    """Within the block, SIGTERM raises ``exception`` in the main thread; the previous handler comes back after.
    Outside the main thread nothing changes (signals are delivered to the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise exception()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
