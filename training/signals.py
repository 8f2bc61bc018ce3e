"""Stopping on SIGTERM (a preemption notice) and SIGINT (Ctrl-C) within a bounded time.

The first signal asks the training loop to save a checkpoint and stop at the next step boundary.
If the main thread does not reach one within `grace_seconds` (it may be blocked in data loading,
a collective or an evaluation), or a second signal arrives, the process exits at once without
saving. That never harms the last good checkpoint: Orbax writes a step to a temporary directory
and renames it only when it is complete.

With several processes, SIGTERM is left to JAX's preemption service, which makes every process
stop at the same step; SIGINT cannot be agreed on, so it exits at once and says where the last
checkpoint is.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable

from jax.experimental import multihost_utils


class StopSignals:
    def __init__(self, *, grace_seconds: float, multi_process: bool, last_checkpoint: Callable[[], str]):
        self.grace_seconds = grace_seconds
        self.multi_process = multi_process
        self.last_checkpoint = last_checkpoint
        self.signum: int | None = None
        self._timer: threading.Timer | None = None
        self._previous: dict[int, object] = {}
        if threading.current_thread() is not threading.main_thread():
            return  # Python delivers signals to the main thread only; an embedding caller handles them
        handled = (signal.SIGINT,) if multi_process else (signal.SIGTERM, signal.SIGINT)
        for sig in handled:
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame) -> None:
        if self.signum is not None or (self.multi_process and signum == signal.SIGINT):
            self.exit_now(signum, "a second signal" if self.signum is not None else "Ctrl-C with several processes")
        self.signum = signum
        self._timer = threading.Timer(
            self.grace_seconds, self.exit_now, args=(signum, f"no step boundary within {self.grace_seconds:g} s")
        )
        self._timer.daemon = True
        self._timer.start()

    def exit_now(self, signum: int, why: str) -> None:
        sys.stderr.write(
            f"{signal.Signals(signum).name}: exiting at once ({why}), without a new checkpoint; "
            f"{self.last_checkpoint()}\n"
        )
        sys.stderr.flush()
        os._exit(128 + signum)

    def should_stop(self, step: int) -> bool:
        """Checked at every step boundary; with several processes every process gets the same answer."""
        if self.multi_process:
            stop = multihost_utils.reached_preemption_sync_point(step)
            if stop and self.signum is None:
                self.signum = signal.SIGTERM
        else:
            stop = self.signum is not None
        if stop and self._timer is not None:
            self._timer.cancel()  # the loop is at a boundary and saves now
        return stop

    def close(self) -> None:
        """Put back the handlers that were there before (tests call the loop in-process)."""
        if self._timer is not None:
            self._timer.cancel()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
