"""A text progress bar for long explanations (no dependency: a few lines of stderr output)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


def _duration(seconds: float) -> str:
    if seconds < 100:
        return f"{seconds:.0f} s"
    if seconds < 6000:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    """A text progress bar on stderr that stays silent for runs shorter than ``delay`` seconds.

    A short run prints nothing, and a run that finishes before the bar first shows never shows
    it. On a terminal the bar redraws in place (carriage return); elsewhere (a log file, CI) a
    plain line is written at most every ``interval`` seconds and when done. ``clock`` can be
    replaced so tests need not sleep.
    """

    def __init__(self, total: int, label: str = "explain", unit: str = "item",
                 stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic,
                 delay: float = 2.0, interval: float = 10.0, enabled: bool = True,
                 tty: bool | None = None, width: int = 10) -> None:
        self.total, self.label, self.unit, self.width = int(total), label, unit, width
        self.stream = sys.stderr if stream is None else stream
        self.clock, self.delay, self.interval, self.enabled = clock, delay, interval, enabled
        if tty is None:
            isatty = getattr(self.stream, "isatty", None)
            tty = bool(isatty()) if callable(isatty) else False
        self.tty = tty
        self.start = clock()
        self.done = 0
        self.shown = False
        self._last = -float("inf")  # when the last plain line was written
        self._drawn = 0             # length of the line on a terminal, to blank it on redraw

    def line(self, now: float | None = None) -> str:
        """The bar as text: ``explain [####......] 3/8 items, 1.2 s/item, ETA 6 s``."""
        now = self.clock() if now is None else now
        filled = int(self.width * self.done / self.total + 0.5) if self.total > 0 else self.width
        text = (f"{self.label} [{'#' * filled}{'.' * (self.width - filled)}] "
                f"{self.done}/{self.total} {self.unit}s")
        if self.done > 0:
            per = (now - self.start) / self.done
            text += (f", {per:.1f} s/{self.unit}" if per >= 0.1 else f", {per:.3f} s/{self.unit}")
            text += f", ETA {_duration(per * (self.total - self.done))}"
        return text

    def update(self, n: int = 1) -> None:
        """Count ``n`` more items done and redraw if the run has lasted long enough."""
        self.done = min(self.total, self.done + n)
        now = self.clock()
        if not self.enabled or now - self.start < self.delay:
            return
        finished = self.done >= self.total
        if not self.shown and finished:
            return
        text = self.line(now)
        if self.tty:
            self.stream.write("\r" + text.ljust(self._drawn))
            self._drawn = len(text)
        elif not self.shown or finished or now - self._last >= self.interval:
            self.stream.write(text + "\n")
            self._last = now
        else:
            return
        self.shown = True
        self.stream.flush()

    def close(self) -> None:
        """End the bar's line on a terminal (nothing if the bar never showed)."""
        if self.shown and self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
