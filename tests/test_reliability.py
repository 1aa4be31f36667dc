"""RELIABILITY.md stays true: every test it names exists, and every reliability test is named there."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "RELIABILITY.md"
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)::(\w+)")


def _references() -> list[tuple[str, str]]:
    return REFERENCE.findall(DOC.read_text())


def test_every_test_named_in_reliability_md_exists():
    references = _references()
    assert len(references) >= 20
    missing = [f"{path}::{name}" for path, name in references
               if not (ROOT / path).is_file() or f"def {name}(" not in (ROOT / path).read_text()]
    assert not missing, f"RELIABILITY.md names tests that do not exist: {missing}"


def test_every_reliability_test_is_in_the_table():
    named = {(path, name) for path, name in _references()}
    for path in sorted((ROOT / "tests" / "reliability").glob("test_*.py")):
        relative = path.relative_to(ROOT).as_posix()
        for name in re.findall(r"^def (test_\w+)\(", path.read_text(), re.M):
            assert (relative, name) in named, f"{relative}::{name} is missing from RELIABILITY.md"
