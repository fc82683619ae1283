"""SIGINT and SIGTERM as requests to stop at the next step boundary, so the driver can checkpoint first.

Schedulers (SLURM, Kubernetes) send SIGTERM some time before they kill a job; a user presses Ctrl-C. Inside
``with StopSignals() as signals:`` the first of either only records itself (``signals.received``); the training
loop looks after each step, saves a checkpoint and ends with exit code ``128 + signal``. A second signal while
that happens interrupts at once (``KeyboardInterrupt``), as the user would expect of a second Ctrl-C. Handlers can
only be installed from the main thread; elsewhere the signals keep their usual behaviour.
"""
from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """Record the first SIGINT or SIGTERM instead of dying; a second one raises ``KeyboardInterrupt``."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def name(self) -> str:
        """``SIGTERM`` or ``SIGINT`` (empty when nothing was received)."""
        return signal.Signals(self.received).name if self.received is not None else ""

    @property
    def exit_code(self) -> int:
        """The shell's code for death by that signal: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + int(self.received or 0)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
