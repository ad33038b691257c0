"""Graceful stops: SIGINT (Ctrl-C) and SIGTERM (a cluster's warning before SIGKILL).

The first signal only sets ``stop.requested`` (the loop finishes the step and stops
cleanly); a second raises :class:`Interrupted` at once. The CLI exits 128 + the signal
number (130 for SIGINT, 143 for SIGTERM). Only the standard library is imported here.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType
from typing import Any

HANDLED = (signal.SIGINT, signal.SIGTERM)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class Interrupted(KeyboardInterrupt):
    """Training stopped on a signal; a KeyboardInterrupt, so it also stops a Hydra sweep.
    ``immediate``: a second signal, which did not wait for the step to finish."""

    def __init__(self, signum: int, message: str = "", immediate: bool = False) -> None:
        self.signum = signum
        self.immediate = immediate
        self.exit_code = 128 + signum
        super().__init__(message or f"interrupted by {signal_name(signum)}")


class GracefulStop:
    """A context manager: the first SIGINT/SIGTERM sets a flag, the second stops at once."""

    def __init__(self, signals: tuple[int, ...] = HANDLED) -> None:
        self.signals = signals
        self.signum: int | None = None  # the first signal received, if any
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:  # read after every training step
        return self.signum is not None

    def request(self, signum: int = signal.SIGTERM) -> None:
        """Ask for a stop as a signal would (for hooks and tests)."""
        if self.signum is None:
            self.signum = signum

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            # Second signal: the user does not want to wait. Put the old handlers back
            # first, so a third Ctrl-C during the unwinding behaves as Python's default.
            self.restore()
            raise Interrupted(signum, f"stopped at once by a second {signal_name(signum)}",
                              immediate=True)
        self.signum = signum
        # os.write, not print/logging: a handler may run in the middle of a write to
        # the same buffered stream, which would raise "reentrant call".
        os.write(2, (f"\n{signal_name(signum)} received: finishing the current step, then stopping "
                     "(send it again to stop at once)\n").encode())

    def install(self) -> GracefulStop:
        """Take over SIGINT and SIGTERM, remembering the handlers to put back (:meth:`restore`)."""
        # signal.signal only works in the main thread; elsewhere (a launcher's worker
        # thread) the default handlers stay and the flag is never set.
        if threading.current_thread() is threading.main_thread() and not self._previous:
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def restore(self) -> None:
        """Put the previous handlers back (idempotent)."""
        for s, h in self._previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
        self._previous.clear()

    def __enter__(self) -> GracefulStop:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.restore()
