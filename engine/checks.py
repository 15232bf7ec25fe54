"""Checks of command-line values, made before any model loads or engine starts.

Each raises UserError with one line that names the flag, the value and what is allowed.
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
import tempfile
from pathlib import Path

from engine.errors import UserError


def at_least_one(flag: str, value: int | None) -> None:
    """An optional count that, when given, must be a positive number (`--limit`, `--max-tokens`, ...)."""
    if value is not None and value < 1:
        raise UserError(f"{flag} {value}: must be at least 1")


def alpha(value: float, flag: str = "--alpha") -> None:
    if not (math.isfinite(value) and 0 < value < 1):
        raise UserError(f"{flag} {value:g}: the significance level must lie strictly between 0 and 1 (e.g. 0.05)")


def _cannot_write_in(folder: Path) -> str | None:
    """Why a file cannot be created in `folder` (missing folders included), or None when it can.

    Tried for real (a folder made and removed, a temporary file made and removed): permission bits say
    nothing for root, nor for /proc or a read-only mount.
    """
    existing = folder
    while not (existing.exists() or existing.is_symlink()) and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a directory"
    try:
        if existing == folder:
            fd, name = tempfile.mkstemp(dir=folder, prefix=".dh-write-check-")
            os.close(fd)
            os.unlink(name)
        else:
            probe = existing / folder.relative_to(existing).parts[0]
            probe.mkdir()
            probe.rmdir()
    except OSError as exc:
        return f"{exc.strerror or exc} in {existing}"
    return None


def writable_dir(flag: str, path: Path | None) -> None:
    """A directory the command will create or write into."""
    if path is None:
        return
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path}: exists and is not a directory")
    if reason := _cannot_write_in(path):
        raise UserError(f"{flag} {path}: cannot be written ({reason})")


def writable_file(flag: str, path: Path) -> None:
    """A file the command will write (its folder is created when missing)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"{flag} {path}: is a directory; give a file name")
    if reason := _cannot_write_in(path.parent if str(path.parent) else Path(".")):
        raise UserError(f"{flag} {path}: cannot be written ({reason})")


def top_k(value: str, flag: str = "--top-k") -> int:
    """'full' (0: the whole vocabulary) or a positive count."""
    if value == "full":
        return 0
    try:
        count = int(value)
    except ValueError:
        raise UserError(f"{flag} {value}: give a positive number of bins, or 'full'") from None
    if count < 1:
        raise UserError(f"{flag} {value}: give a positive number of bins, or 'full'")
    return count


def unknown_command(word: str, commands: list[str]) -> UserError:
    close = difflib.get_close_matches(word, commands, n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'?" if close else f"commands: {', '.join(commands)}; a run starts with --model"
    return UserError(f"unknown command '{word}'; {hint}")


def split_own_flags(p: argparse.ArgumentParser, argv: list[str]) -> tuple[list[str], list[str]]:
    """(the flags `p` knows, with their values; every other token): a command that takes its own flags
    and hands the rest to each run it starts (sweep, baseline)."""
    own, run_flags, rest = [], [], list(argv)
    while rest:
        token = rest.pop(0)
        action = p._option_string_actions.get(token.split("=")[0])
        if action is None:
            run_flags.append(token)
            continue
        own.append(token)
        if action.nargs != 0 and "=" not in token and rest:
            own.append(rest.pop(0))
    return own, run_flags
