"""Errors a user can cause. The CLI prints them as one line and exits with `exit_code`."""


class UserError(Exception):
    """A mistake the user can fix (bad flag, missing data, wrong file): exit code 2."""

    exit_code = 2


class RunError(UserError):
    """A run that could not finish for a reason outside the code (disk full, NaN loss): exit 1."""

    exit_code = 1
