"""Progress on stderr for long work that is not training (eval, int8 calibration).

On a terminal: a tqdm bar (count, rate, ETA), gone when the work ends. Anywhere else (a log
file, a pipe, a job scheduler's output): one plain line a minute, as `googlenet train`
prints, since a bar's carriage returns would pile up into one unreadable line.
"""
from __future__ import annotations

import sys
import time
from typing import TextIO

PLAIN_EVERY_S = 60.0


class PlainProgress:
    """A line every `every_s` seconds: `  DESC: DONE/TOTAL UNIT, RATE UNIT/s, ~M min left`."""

    def __init__(self, total: int, desc: str, unit: str = "img", every_s: float | None = None,
                 file: TextIO | None = None) -> None:
        self.total, self.desc, self.unit, self.file = total, desc, unit, file
        self.every_s = PLAIN_EVERY_S if every_s is None else every_s
        self.done = 0
        self.started = self.last_line = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last_line < self.every_s or self.done >= self.total:
            return
        self.last_line = now
        rate = self.done / (now - self.started)
        left_min = (self.total - self.done) / rate / 60 if rate > 0 else float("inf")
        print(f"  {self.desc}: {self.done}/{self.total} {self.unit}, {rate:.1f} {self.unit}/s, "
              f"~{left_min:.1f} min left", file=self.file or sys.stderr, flush=True)

    def close(self) -> None:
        pass

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class NoProgress(PlainProgress):
    def update(self, n: int = 1) -> None:
        pass


def progress(total: int, desc: str, unit: str = "img", enabled: bool = True):
    """A context manager with `update(n)`: tqdm on a terminal, PlainProgress lines elsewhere,
    nothing when not `enabled` (the Python API's default)."""
    if not enabled:
        return NoProgress(total, desc, unit)
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(total=total, unit=unit, desc=desc, leave=False, dynamic_ncols=True)
    return PlainProgress(total, desc, unit)
