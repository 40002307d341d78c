"""Signals during a long write: SIGINT and SIGTERM become KeyboardInterrupt, so partial outputs are removed."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def interrupt_flag() -> Iterator[list]:
    """SIGINT and SIGTERM raise KeyboardInterrupt (so the atomic folder is removed and the CLI says
    "interrupted"); the yielded list becomes non-empty once one arrived, for errors TVM wraps it in."""
    received: list = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum, frame):
        received.append(signum)
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
