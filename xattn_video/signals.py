"""SIGTERM as an exception, so that ``finally`` blocks run when a run is stopped.

Python's default SIGTERM action ends the process at once: no ``finally``, no ``atomic_write`` cleanup, so a
``kill`` (or a job scheduler's stop) during the mp4 write left the hidden temporary file behind. Inside
:func:`sigterm_raises` a SIGTERM raises :class:`Terminated` instead, which unwinds like ``KeyboardInterrupt``
does for SIGINT (both derive from ``BaseException``: an ``except Exception`` does not swallow them).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator

# Set in the ranks that `xvid generate --gpus N` starts: a signal there is reported once, by the parent.
LAUNCHED_ENV = "XVID_LAUNCHED"


class Terminated(BaseException):
    """The process got a termination signal (SIGTERM, or SIGHUP/SIGQUIT under the multi-rank launcher)."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        self.signum = int(signum)
        super().__init__(f"got signal {signal.Signals(self.signum).name}")

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as shells report a process ended by it (SIGTERM: 143)."""
        return 128 + self.signum


def _raise_terminated(signum: int, _frame: object) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated`; the previous handler comes back afterwards.

    Only the main thread can set signal handlers: elsewhere (and where SIGTERM is ignored, e.g. by the parent
    process) this changes nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous is signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def silence_stderr() -> None:
    """Send whatever this process still writes to stderr (file descriptor 2) to /dev/null.

    For a rank stopped by a signal, after its cleanup ran: the parent reports the stop in one line, and the
    process's own teardown would add C++ warnings (torch's ProcessGroup: "there are still 1 unwaited collective
    calls" when the signal landed inside a context-parallel all-to-all)."""
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)


__all__ = ["LAUNCHED_ENV", "Terminated", "sigterm_raises", "silence_stderr"]
