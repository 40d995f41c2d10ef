"""SIGTERM during a run: clean up, then stop as a terminated process does.

By default SIGTERM ends a Python process at once: no ``finally`` block runs,
so staging folders, temporary group stores and worker processes would be
left behind.  While a step of this package runs, SIGTERM instead raises
:class:`Terminated` in the main thread; the run unwinds through its
clean-up code and the exception, a :class:`SystemExit` with status
128 + 15 = 143 (what a shell reports for a process ended by SIGTERM), ends
the program unless something catches it.  The previous handler is put back
when the run ends; if it was a Python function it is called as well, after
the clean-up.  A second SIGTERM during the clean-up is handed to the
previous handler at once (by default: the process ends there).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["Terminated", "sigterm_raises"]

log = logging.getLogger(__name__)

_installed = False


class Terminated(SystemExit):
    """SIGTERM arrived during a run; raised so that clean-up code runs.

    Parameters
    ----------
    signum : int
        The signal received.
    """

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(128 + int(signum))
        self.signum = int(signum)


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread.

    Does nothing outside the main thread (where handlers cannot be set),
    when SIGTERM is ignored, when its handler was not set from Python (it
    could not be put back), or inside another such block.
    """
    global _installed
    if _installed or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous is None or previous == signal.SIG_IGN:
        yield
        return
    received = []

    def handler(signum, frame):
        if received:
            # Second signal while cleaning up: do what would have been done.
            signal.signal(signal.SIGTERM, previous)
            signal.raise_signal(signum)
            return
        received.append(frame)
        raise Terminated(signum)

    signal.signal(signal.SIGTERM, handler)
    _installed = True
    try:
        yield
    except Terminated as exc:
        signal.signal(signal.SIGTERM, previous)
        log.warning("Stopped by signal %d; temporary files and worker processes were removed.", exc.signum)
        if callable(previous):
            previous(exc.signum, received[0] if received else None)
        raise
    finally:
        _installed = False
        signal.signal(signal.SIGTERM, previous)
