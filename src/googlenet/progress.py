"""Progress on the console for long work: training epochs, eval, int8 calibration.

On a terminal: a tqdm bar (count, rate, ETA), gone when the work ends. Anywhere else (a log
file, a pipe, a job scheduler's output): one plain line a minute, since a bar's carriage
returns would pile up into one unreadable line. Both take `update(n)` and
`set_postfix_str(text)`, so a caller need not know which one it holds.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

PLAIN_EVERY_S = 60.0


class PlainProgress:
    """A line every `every_s` seconds while work remains:
    `  DESC: DONE/TOTAL UNIT, RATE UNIT/s, M min in, ~M min left[, POSTFIX]`,
    passed to `say` (default: printed to `file`, else stderr)."""

    def __init__(self, total: int, desc: str, unit: str = "img", every_s: float | None = None,
                 file: TextIO | None = None, say: Callable[[str], None] | None = None) -> None:
        self.total, self.desc, self.unit, self.file, self.say = total, desc, unit, file, say
        self.every_s = PLAIN_EVERY_S if every_s is None else every_s
        self.done = 0
        self.postfix = ""
        self.started = self.last_line = time.perf_counter()

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        """What the next line ends with (tqdm's name for the same thing)."""
        self.postfix = text

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last_line < self.every_s or self.done >= self.total:
            return
        self.last_line = now
        elapsed = now - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left_min = (self.total - self.done) / rate / 60 if rate > 0 else float("inf")
        line = (f"  {self.desc}: {self.done}/{self.total} {self.unit}, {rate:.1f} {self.unit}/s, "
                f"{elapsed / 60:.1f} min in, ~{left_min:.1f} min left")
        if self.postfix:
            line += f", {self.postfix}"
        if self.say is not None:
            self.say(line)
        else:
            print(line, file=self.file or sys.stderr, flush=True)

    def close(self) -> None:
        pass

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class NoProgress(PlainProgress):
    def update(self, n: int = 1) -> None:
        pass


def progress(total: int, desc: str, unit: str = "img", enabled: bool = True,
             say: Callable[[str], None] | None = None):
    """A context manager with `update(n)` and `set_postfix_str(text)`: tqdm on a terminal
    (stderr), PlainProgress lines elsewhere (to `say` if given, else stderr), nothing when
    not `enabled` (the Python API's default; a non-main process in distributed training)."""
    if not enabled:
        return NoProgress(total, desc, unit)
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(total=total, unit=unit, desc=desc, unit_scale=True, leave=False, dynamic_ncols=True)
    return PlainProgress(total, desc, unit, say=say)
