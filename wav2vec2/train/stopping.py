"""Stopping early with a checkpoint: preemption signals, Ctrl-C and the time limit.

SIGTERM / SIGUSR1 (SLURM's preemption warning) and Ctrl-C ask the run to stop after the
current update, with a checkpoint; a second Ctrl-C stops at once (the last checkpoint
stays). `train.time_limit_minutes` asks the same. Every rank stops at the same update, for
the same reason, whichever rank was asked.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from typing import Any

import torch

from wav2vec2.train import distributed as dist_utils

log = logging.getLogger("wav2vec2.train")


class StopRequests:
    """`with StopRequests(...) as stop:` installs the signal handlers (and restores the
    previous ones on leaving); `stop.reason()` after each update says whether to stop."""

    def __init__(self, *, time_limit_minutes: float, device: torch.device) -> None:
        self.time_limit_minutes = time_limit_minutes
        self.device = device
        self.requested = False
        self.interrupted = False
        self._previous: dict[int, Any] = {}
        self._start = time.monotonic()

    def _request(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT:
            if self.requested:
                raise KeyboardInterrupt
            log.warning("Ctrl-C: stopping with a checkpoint after this update (Ctrl-C again to quit now)")
            self.interrupted = True
        else:
            log.warning("%s: stopping with a checkpoint after this update", signal.Signals(signum).name)
        self.requested = True

    def __enter__(self) -> StopRequests:
        self._start = time.monotonic()
        for sig in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGUSR1", None)):
            if sig is not None:
                with contextlib.suppress(ValueError):  # not the main thread
                    self._previous[sig] = signal.signal(sig, self._request)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def reason(self) -> str | None:
        """None to go on, else why to stop: "interrupted" (Ctrl-C on any rank) or "preempted"
        (SIGTERM / SIGUSR1 or the time limit). Collective: every rank calls it each update."""
        limit = self.time_limit_minutes
        stop = self.requested or (limit > 0 and time.monotonic() - self._start > 60 * limit)
        flags = dist_utils.all_reduce_sum(torch.tensor([float(stop), float(self.interrupted)], device=self.device))
        stop_any, interrupted_any = flags.tolist()
        if not stop_any:
            return None
        return "interrupted" if interrupted_any else "preempted"
