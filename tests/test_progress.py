"""Progress for eval and int8 calibration: a bar on a terminal, plain lines in a log."""
from __future__ import annotations

import io

import pytest

from googlenet import progress as progress_module
from googlenet.progress import NoProgress, PlainProgress, progress


def test_plain_lines_say_done_total_rate_and_time_left(monkeypatch):
    out = io.StringIO()
    clock = iter([0.0, 30.0, 61.0, 90.0, 125.0])  # start, then one reading per update
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: next(clock))
    bar = PlainProgress(total=400, desc="eval", file=out)
    for _ in range(4):
        bar.update(100)
    # 30 s: under a minute, no line; 61 s: 200 done at 3.3 img/s; 90 s: within a minute of the
    # last line; 125 s: all done, nothing more to say.
    assert out.getvalue().splitlines() == ["  eval: 200/400 img, 3.3 img/s, 1.0 min in, ~1.0 min left"]


def test_a_postfix_ends_the_next_line_and_say_receives_it(monkeypatch):
    clock = iter([0.0, 61.0])
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: next(clock))
    said = []
    bar = PlainProgress(total=400, desc="epoch 1/3", say=said.append)
    bar.set_postfix_str("~2.0 h left in the whole run")
    bar.update(100)
    assert said == ["  epoch 1/3: 100/400 img, 1.6 img/s, 1.0 min in, ~3.0 min left, ~2.0 h left in the whole run"]


def test_a_terminal_gets_a_bar_a_log_gets_lines_and_the_api_gets_nothing(monkeypatch):
    monkeypatch.setattr(progress_module.sys.stderr, "isatty", lambda: False, raising=False)
    assert type(progress(10, "eval")) is PlainProgress
    assert type(progress(10, "eval", enabled=False)) is NoProgress
    monkeypatch.setattr(progress_module.sys.stderr, "isatty", lambda: True, raising=False)
    tqdm = pytest.importorskip("tqdm")
    with progress(10, "eval") as bar:
        assert isinstance(bar, tqdm.tqdm)
