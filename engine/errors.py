"""Errors that end a command with a one-line message instead of a traceback."""


class UserError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""

    exit_code = 2


class NotComparable(Exception):
    """Two runs whose contract fields differ: exit code 3."""

    exit_code = 3


class EngineFailed(Exception):
    """The engine or the server behind it failed mid-run: no verdict; records so far stay (exit 4)."""

    exit_code = 4


class Interrupted(Exception):
    """Ctrl-C / SIGTERM: the run stopped cleanly; finished items are on disk. Exit code 130."""

    exit_code = 130


EXIT_CRASH = 4  # an unexpected error: never read as a verdict (0 no degradation, 1 degraded)
