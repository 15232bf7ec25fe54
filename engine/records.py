"""Everything written to disk: the run spec, per-item records, and reading a run back.

One run = one directory:
    spec.json            RunSpec (written once; a rerun into the same dir must carry the same spec)
    records/<bench>.jsonl  append-only ItemRecord lines, one per (item, sample)

Append-only + flush + fsync per record means a kill -9 loses at most the in-flight items; a torn last
line (killed mid-write) is detected, reported and cut off before the next append.
"""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path
from typing import Any

import msgspec

from engine.errors import UserError
from engine.spec import FORMAT_VERSION, RunSpec


class Turn(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """One step of a multi-turn episode, kept compact: enough to replay and inspect a trajectory."""

    role: str  # "assistant" (a generation) | "tool" (a command's result)
    tokens: int = 0  # generated tokens (assistant) or output bytes (tool)
    text: str = ""  # the command (tool) or a head of the reply (assistant)
    exit_code: int | None = None
    extra: dict[str, Any] = {}


class ItemRecord(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    item_id: str
    sample: int
    seed: int
    prompt_hash: str
    completion: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length" | "abort"
    truncated: bool  # hit max_tokens (or max_model_len)
    answer: str | None
    score: float
    latency_s: float
    reasoning_tokens: int = 0
    category: str | None = None
    extra: dict[str, Any] = {}
    # Secondary scores by name (e.g. ifeval's loose variants, an imported run's other metrics); the
    # primary one is `score`.
    scores: dict[str, float] = {}
    # What majority voting (per_item "majority") groups samples by; None: no answer, no vote.
    vote_key: str | None = None
    turns: list[Turn] | None = None  # multi-turn episodes only
    stop_reason: str | None = None  # how an episode ended ("answered", "turn_limit", ...)
    # The request failed for good (after retries): not an answer, never scored as wrong; a rerun
    # retries it.
    error: str | None = None


_encoder = msgspec.json.Encoder()
_record_decoder = msgspec.json.Decoder(ItemRecord)
_spec_decoder = msgspec.json.Decoder(RunSpec)

SPEC_FILE = "spec.json"
RECORDS_DIR = "records"


def encode_spec(spec: RunSpec) -> bytes:
    return msgspec.json.format(_encoder.encode(spec), indent=1)


def read_spec(run_dir: Path) -> RunSpec:
    path = Path(run_dir) / SPEC_FILE
    if not path.is_file():
        raise UserError(f"{run_dir}: not a run directory ({SPEC_FILE} missing)")
    data = path.read_bytes()
    try:
        version = msgspec.json.decode(data).get("format_version", 1)
    except (msgspec.DecodeError, AttributeError) as exc:
        raise UserError(f"{path}: not a JSON object ({exc})") from exc
    if version != FORMAT_VERSION:
        how = (
            "upgrade the harness to read it"
            if isinstance(version, int) and version > FORMAT_VERSION
            else "regenerate it: rerun its command into a new --out (`make baseline` regenerates the committed baseline)"
        )
        raise UserError(f"{run_dir}: run format {version}, this harness reads format {FORMAT_VERSION}; {how}")
    try:
        return _spec_decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise UserError(f"{path}: invalid run spec ({exc}); was it written by another harness version?") from exc
    except msgspec.DecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from exc


def _scan(path: Path) -> tuple[list[ItemRecord], int, str | None]:
    """Parse a records file: (records, byte length of the valid prefix, problem with the tail or None)."""
    data = path.read_bytes()
    records: list[ItemRecord] = []
    good_end = 0
    pos = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        if nl < 0:
            return records, good_end, f"torn last line ({len(data) - pos} bytes without newline)"
        line = data[pos:nl]
        try:
            records.append(_record_decoder.decode(line))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            if data.find(b"\n", nl + 1) < 0 and nl + 1 >= len(data):
                return records, good_end, f"corrupt last line ({exc})"
            raise UserError(
                f"{path}: corrupt record at byte {pos} ({exc}); the file was edited by hand? "
                f"move it away to rerun this bench"
            ) from exc
        pos = nl + 1
        good_end = pos
    return records, good_end, None


def read_records(path: Path) -> list[ItemRecord]:
    """Records of one bench, one per (item, sample); a torn tail is dropped.

    An error record (a request that failed for good) stands for its (item, sample) only until a rerun
    writes the real one, which then replaces it.
    """
    if not path.is_file():
        return []
    records, _, problem = _scan(path)
    if problem:
        print(f"warning: {path}: {problem}; dropped it", file=sys.stderr)
        append_note(path.parent.parent, "torn_tail", f"{path.name}: {problem}; dropped it")
    chosen: dict[tuple[str, int], ItemRecord] = {}
    for rec in records:
        key = (rec.item_id, rec.sample)
        held = chosen.get(key)
        if held is None or (held.error is not None and rec.error is None):
            chosen[key] = rec
    return list(chosen.values())


def answered(records: list[ItemRecord]) -> list[ItemRecord]:
    """The records that hold a generation (error records left out)."""
    return [r for r in records if r.error is None]


class Run(msgspec.Struct):
    dir: Path
    spec: RunSpec
    records: dict[str, list[ItemRecord]]  # bench name -> records


def read_run(run_dir: Path | str) -> Run:
    """The one way to read a run back from disk."""
    run_dir = Path(run_dir)
    spec = read_spec(run_dir)
    records = {b.name: read_records(run_dir / RECORDS_DIR / f"{b.name}.jsonl") for b in spec.benches}
    return Run(dir=run_dir, spec=spec, records=records)


class RecordWriter:
    """Append-only writer for one bench's records; repairs a torn tail before the first append."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        existing: list[ItemRecord] = []
        if path.is_file():
            existing, good_end, problem = _scan(path)
            if problem:
                print(f"warning: {path}: {problem}; cutting it off before resuming", file=sys.stderr)
                append_note(path.parent.parent, "torn_tail", f"{path.name}: {problem}; cut off before resuming")
                with open(path, "r+b") as f:
                    f.truncate(good_end)
                    os.fsync(f.fileno())
        # Error records are not done: a rerun retries them.
        self.done: set[tuple[str, int]] = {(r.item_id, r.sample) for r in existing if r.error is None}
        self.existing = [r for r in existing if r.error is None]
        self.appended: list[ItemRecord] = []  # written by this writer (this session of the run)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def append(self, record: ItemRecord) -> None:
        key = (record.item_id, record.sample)
        if key in self.done:
            return
        # One write() of a whole line to an O_APPEND fd: a crash leaves either nothing or a prefix
        # of this line, which _scan recognises as a torn tail.
        os.write(self._fd, _encoder.encode(record) + b"\n")
        os.fsync(self._fd)
        if record.error is None:
            self.done.add(key)
        self.appended.append(record)

    def close(self) -> None:
        os.close(self._fd)


class RunLock:
    """Exclusive lock on a run directory so two runners never append to the same files."""

    def __init__(self, run_dir: Path):
        run_dir.mkdir(parents=True, exist_ok=True)
        self._f = open(run_dir / ".lock", "w")
        try:
            fcntl.flock(self._f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            self._f.close()
            raise UserError(f"{run_dir}: another run is writing to this directory right now") from exc

    def release(self) -> None:
        fcntl.flock(self._f, fcntl.LOCK_UN)
        self._f.close()


def records_path(run_dir: Path, bench: str) -> Path:
    return Path(run_dir) / RECORDS_DIR / f"{bench}.jsonl"


NOTES_FILE = "notes.jsonl"


class Note(msgspec.Struct, kw_only=True):
    time: float
    kind: str  # "torn_tail" | "dropped_rows" | "early_stop" | "errors" | ...
    message: str


def append_note(run_dir: Path, kind: str, message: str) -> None:
    """Warnings that matter after the terminal scrolled away: appended to the run's notes.jsonl."""
    import time

    run_dir = Path(run_dir)
    if not (run_dir / SPEC_FILE).is_file():
        return  # not (yet) a run directory: nothing to attach the note to
    line = _encoder.encode(Note(time=round(time.time(), 3), kind=kind, message=message)) + b"\n"
    fd = os.open(run_dir / NOTES_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_notes(run_dir: Path) -> list[Note]:
    path = Path(run_dir) / NOTES_FILE
    if not path.is_file():
        return []
    decoder = msgspec.json.Decoder(Note)
    notes = []
    for line in path.read_bytes().splitlines():
        try:
            notes.append(decoder.decode(line))
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue  # notes are advisory; a torn one is not worth failing a comparison
    return notes


NOISE_FLOOR_FILE = "noise_floor.json"  # beside a baseline: written by `python -m engine noise-floor`


class BenchNoise(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    n: int  # items paired
    same_seed: float  # share of items whose value differs from the baseline's, same per-request seeds
    other_seed: float  # the same with other sampling seeds (same items)


class NoiseFloor(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    same_seed_run: str
    other_seed_run: str
    benches: dict[str, BenchNoise]


def read_noise_floor(run_dir: Path) -> NoiseFloor | None:
    path = Path(run_dir) / NOISE_FLOOR_FILE
    if not path.is_file():
        return None
    try:
        return msgspec.json.decode(path.read_bytes(), type=NoiseFloor)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise UserError(f"{path}: invalid noise floor ({exc}); rerun `python -m engine noise-floor` to rewrite it") from exc
