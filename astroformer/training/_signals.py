"""Graceful stops: SIGINT (Ctrl-C) and SIGTERM ask the training loop to stop after the step in progress.

Raising `KeyboardInterrupt` from a signal handler is unreliable around JAX: during compilation or a device
call the exception can surface inside a callback where it is printed and ignored ("Exception ignored in:
_xla_gc_callback") and the run goes on. So the handlers only record the request; the loop checks it after
every step, writes a checkpoint of the last completed step, says so, and raises `Interrupted`.

A second signal while stopping only repeats the message (the checkpoint is still written); a third SIGINT
stops at once, without a checkpoint (the last periodic one remains).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any, Literal

_NAMES = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}


class Interrupted(KeyboardInterrupt):
    """Training stopped on a signal after writing a checkpoint; `signum` is the signal, `step` the step of the
    checkpoint. A `KeyboardInterrupt`, so code that handles Ctrl-C handles it too."""

    def __init__(self, message: str, *, signum: int, step: int | None):
        super().__init__(message)
        self.signum = signum
        self.step = step


class StopRequests:
    """Context manager: while active (main thread only), SIGINT and SIGTERM set `requested` instead of
    killing the process. Outside the main thread it does nothing (signals cannot be caught there)."""

    def __init__(self, what: str = "stopping after the current step, then writing a checkpoint"):
        self.what = what
        self.signum: int | None = None
        self.count = 0
        # signal.signal's return: a handler function, SIG_DFL/SIG_IGN (ints), or None (not set from Python)
        self._previous: dict[int, Callable[[int, FrameType | None], Any] | int | None] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame):
        self.count += 1
        if self.signum is None:
            self.signum = signum
            _say(
                f"\n{_NAMES.get(signum, signum)} received: {self.what} (Ctrl-C twice more stops at once, without it)\n"
            )
        elif signum == signal.SIGINT and self.count >= 3:
            _say("\nstopping at once, without a checkpoint\n")
            self._restore()
            raise KeyboardInterrupt
        else:
            _say(
                f"\n{_NAMES.get(signum, signum)} received: already stopping; the checkpoint is written after "
                "the current step\n"
            )

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for signum in _NAMES:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _restore(self):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def __exit__(self, *exc) -> Literal[False]:  # never swallows the exception
        self._restore()
        return False


def _say(message: str) -> None:
    try:  # os.write is safe in a signal handler; print may re-enter a buffered stream
        os.write(2, message.encode())
    except OSError:
        pass


def exit_code(signum: int | None) -> int:
    """The shell's convention: 128 + the signal number (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + (signal.SIGINT if signum is None else signum)
