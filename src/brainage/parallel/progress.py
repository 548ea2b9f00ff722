"""Progress of long work: a bar on a terminal, else lines in the log (always in the log file).

Shared by the executors (:mod:`brainage.parallel`) and the stage engine (:mod:`brainage.workflow`).
"""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("brainage")


class StageProgress:
    """Progress of one stage's items.

    Parameters
    ----------
    description : str
    total : int
        Items to compute.
    enabled : bool
        Show a rich bar when stderr is a terminal; when it is not (a batch job, CI), log a line
        at every 10 % (at most one each 5 s) and when the stage is done.
    """

    def __init__(self, description: str, total: int, enabled: bool = True) -> None:
        self.description = description
        self.total = int(total)
        self.done = 0
        self.failed = 0
        self._t0 = time.perf_counter()
        self._next_log = 0.1
        self._last_log = self._t0
        self._bar = None
        self._task = None
        self._tty = enabled and sys.stderr.isatty()
        self._enabled = enabled
        if self._tty and self.total:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self._bar.start()
            self._task = self._bar.add_task(description, total=self.total, status="")

    def advance(self, n: int = 1, failed: int = 0, status: str = "") -> None:
        """Count ``n`` finished items (``failed`` of them failed)."""
        self.done += n
        self.failed += failed
        if self.failed:
            status = f"failed {self.failed} {status}".strip()
        if self._bar is not None:
            self._bar.update(self._task, advance=n, status=status)
            return
        frac = self.done / max(self.total, 1)
        now = time.perf_counter()
        step = frac >= self._next_log and now - self._last_log >= 5.0  # 10 %, at most every 5 s
        if self._enabled and (step or self.done == self.total):
            while self._next_log <= frac:
                self._next_log += 0.1
            self._last_log = now
            msg = f"{self.description}: {self.done}/{self.total}"
            if self.failed:
                msg += f" ({self.failed} failed)"
            log.info("%s %s [%.0f s]", msg, status, time.perf_counter() - self._t0)

    def status(self, status: str) -> None:
        """Show a status text (e.g. the validation MAE of the epoch being trained)."""
        if self._bar is not None:
            self._bar.update(self._task, status=status)

    def close(self) -> None:
        """Stop the bar and log the stage's totals."""
        if self._bar is not None:
            self._bar.stop()
        log.debug(
            "%s: %d computed, %d failed in %.1f s",
            self.description,
            self.done,
            self.failed,
            time.perf_counter() - self._t0,
        )
