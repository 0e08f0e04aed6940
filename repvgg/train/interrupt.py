"""Stopping a run cleanly: SIGINT/SIGTERM finish the current step, then a resumable state is saved."""
from __future__ import annotations

import signal
import sys
import threading


class TrainingInterrupted(Exception):
    """Stopped by a signal after saving a resumable state; `exit_code` is 128 + signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class StopFlag:
    """SIGINT/SIGTERM set a flag; the loop stops after the current step. A second SIGINT aborts."""

    def __init__(self):
        self.signum = 0
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\n{signal.Signals(signum).name} received: finishing the current step, then saving "
              f"a resumable checkpoint (send SIGINT again to abort without saving)",
              file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
