"""Errors that end a command with a one-line message instead of a traceback, and the exit codes."""

from enum import IntEnum


class ExitCode(IntEnum):
    """The one exit-code table of every command (README, `--help` epilogs and this enum agree)."""

    PASS = 0  # graded; no signal fired (the headline still says what the run is too small to rule out)
    DEGRADED = 1  # graded; at least one signal fired (every reason named in the verdict)
    BAD_INPUT = 2  # a flag, file or field is wrong: one-line error, nothing written
    NOT_COMPARABLE = 3  # the runs differ in contract fields: no number is printed
    ERROR = 4  # the engine or server failed, or an unexpected error: never a verdict
    INCOMPLETE = 5  # a run lacks items, samples or answers (failed requests): not graded
    GATE_FAILED = 6  # a judged bench's absolute trait gate failed
    NOT_SHOWN = 7  # --margin given: nothing fired, but a drop as large as the margin is not ruled out
    INVALID = 8  # a bench could not measure (an exam whose tool calls were never read, a judge that never answered)
    INTERRUPTED = 130  # Ctrl-C / SIGTERM: finished items are on disk; rerun to resume


# What each code means, one line each: the `--help` epilogs are generated from this (a test checks
# that it covers the enum).
MEANING = {
    ExitCode.PASS: "pass: graded, no signal fired (EQUIVALENT, PASS, or INCONCLUSIVE without --margin)",
    ExitCode.DEGRADED: "degraded: a signal fired (accuracy, a canary, the KL tripwire, ...): every reason is named",
    ExitCode.BAD_INPUT: "bad input: a flag, file or field is wrong (one-line error)",
    ExitCode.NOT_COMPARABLE: "not comparable: the runs differ in contract fields",
    ExitCode.ERROR: "error: the engine or server failed, or an unexpected error (traceback in the run's harness.log)",
    ExitCode.INCOMPLETE: "incomplete: a run lacks items or samples against its spec (rerun, or --allow-incomplete)",
    ExitCode.GATE_FAILED: "gate failed: a judged bench's trait gate failed (takes precedence over 1)",
    ExitCode.NOT_SHOWN: "not shown: --margin given, nothing fired, but the run cannot rule out a drop of that size",
    ExitCode.INVALID: "invalid: a bench could not measure (e.g. an exam that did not run)",
    ExitCode.INTERRUPTED: "interrupted: finished items are on disk; rerun to resume",
}


def exit_code_epilog() -> str:
    return "exit codes:\n" + "\n".join(f"  {int(code):>3}  {MEANING[code]}" for code in ExitCode)


class UserError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""

    exit_code = ExitCode.BAD_INPUT


class NotComparable(Exception):
    """Two runs whose contract fields differ: exit code 3."""

    exit_code = ExitCode.NOT_COMPARABLE


class EngineFailed(Exception):
    """The engine or the server behind it failed mid-run: no verdict; records so far stay (exit 4)."""

    exit_code = ExitCode.ERROR


class Interrupted(Exception):
    """Ctrl-C / SIGTERM: the run stopped cleanly; finished items are on disk. Exit code 130."""

    exit_code = ExitCode.INTERRUPTED


EXIT_CRASH = ExitCode.ERROR  # an unexpected error: never read as a verdict (0 pass, 1 degraded)


class RunIncomplete(Exception):
    """A run ended with (item, sample)s whose requests failed for good: no manifest, not graded."""

    exit_code = ExitCode.INCOMPLETE
