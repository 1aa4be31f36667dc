"""Errors a user can cause. The CLI prints them as one line and exits with `exit_code`."""
from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Iterator


class UserError(Exception):
    """A mistake the user can fix (bad flag, missing data, wrong file): exit code 2."""

    exit_code = 2


class RunError(UserError):
    """A run that could not finish for a reason outside the code (disk full, NaN loss): exit 1."""

    exit_code = 1


def first_line(error: BaseException, limit: int | None = None) -> str:
    """An exception's message cut to its first line (its type name if it has none), for
    one-line errors; `limit` caps the length of messages that can be long (parsers)."""
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else type(error).__name__
    return text[:limit] if limit else text


# A path that cannot name a file (a missing folder that cannot be made, a file where a folder
# should be): the user's to fix (exit 2). Anything else (permissions, a full disk): exit 1.
_PATH_MISTAKES = (errno.ENOENT, errno.EEXIST, errno.ENOTDIR, errno.EISDIR)


def path_error_kind(error: OSError) -> type[UserError]:
    """UserError (exit 2) for a path that cannot name a file, RunError (exit 1) otherwise."""
    return UserError if error.errno in _PATH_MISTAKES else RunError


def output_error(error: BaseException, out: str | os.PathLike, fix: str = "pick another --out") -> UserError | None:
    """A failed write of the output file `out` as one line, or None if `error` is about another file.

    Claims OSErrors on `out` itself, on a temporary file beside it (atomic writes) or on one of
    its folders, e.g. `--out notes.txt/model.onnx` or a folder the user cannot create.
    """
    if not isinstance(error, OSError) or not error.filename:
        return None
    target = Path(out).resolve()
    where = Path(os.fsdecode(error.filename)).resolve()
    beside = where == target or where.parent == target.parent
    if not (beside or where in target.parents):
        return None
    reason = error.strerror or first_line(error)
    if not beside:  # name the folder that is the problem (mkdir says only "File exists" of a file in the way)
        in_the_way = Path(os.fsdecode(error.filename)).is_file()
        reason = f"{error.filename} is a file, not a folder" if in_the_way else f"{reason}: {error.filename}"
    return path_error_kind(error)(f"cannot write {out} ({reason}); {fix}")


@contextlib.contextmanager
def output_errors(out: str | os.PathLike, fix: str = "pick another --out") -> Iterator[None]:
    """Around writing `out`: an OSError about it (see output_error) becomes one line, not a traceback."""
    try:
        yield
    except OSError as e:
        failed = output_error(e, out, fix)
        if failed is None:
            raise
        raise failed from None
