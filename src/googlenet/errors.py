"""Errors a user can cause. The CLI prints them as one line and exits with `exit_code`."""


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
