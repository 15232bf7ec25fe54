"""Everything written to disk: the run spec, per-item records, and reading a run back.

One run = one directory:
    spec.json            RunSpec (written once; a rerun into the same dir must carry the same spec)
    records/<bench>.jsonl  append-only ItemRecord lines, one per (item, sample), each with its checksum
    records/<bench>.items.jsonl  the items as asked (id, question, gold, category, first-turn messages),
                         written once per run: what a reader needs to see a flipped item without the data
    manifest.json        sha256 of every records and items file, written when the run completes

Append-only + flush + fsync per record means a kill -9 loses at most the in-flight items; a torn last
line (killed mid-write: no newline) is detected, reported and cut off before the next append. A complete
line that does not decode, a record whose checksum does not match, a conflicting duplicate or a score
outside [0, 1] is an error naming the file and line: records are never silently dropped or trusted.

Nothing is ever written outside the run directory: every file is opened with O_NOFOLLOW, temporaries
are created with O_EXCL, and a run directory holding a symlink is refused. Nothing is written through a
shared inode either: every file the run writes is opened by open_run_file(), which first gives a file
with other hard links (a run directory copied with `cp -al`) or one owned by another user a private
copy of its own (see open_run_file), so the original is never modified.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import math
import os
import secrets
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


class Episode(msgspec.Struct, kw_only=True):
    """What a solver (engine/solvers.py) gives back for one item: the final reply and how it came about."""

    text: str  # the final reply: what the bench's score() sees (after the reasoning split)
    finish_reason: str  # of the final reply
    prompt_tokens: int  # summed over turns
    completion_tokens: int  # summed over turns
    prompt_hash: str  # of the first prompt
    reasoning_tokens: int | None = None
    turns: list[Turn] | None = None  # multi-turn episodes only
    stop_reason: str | None = None  # "answered", "turn_limit", ... (multi-turn episodes)
    replica: int | None = None  # data-parallel replica of the (final) reply, where there are several


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
    # The data-parallel replica that served the reply (--dp N > 1); informative, like latency_s.
    replica: int | None = None
    # sha256 (first 16 hex digits) of the record's other fields in canonical JSON: see seal().
    checksum: str = ""


_encoder = msgspec.json.Encoder()
# Canonical form for checksums: struct fields and dict keys sorted.
_canonical_encoder = msgspec.json.Encoder(order="sorted")
_record_decoder = msgspec.json.Decoder(ItemRecord)
_spec_decoder = msgspec.json.Decoder(RunSpec)

SPEC_FILE = "spec.json"
RECORDS_DIR = "records"
MANIFEST_FILE = "manifest.json"
SCORE_RANGE = (0.0, 1.0)  # every bench scores an item sample in [0, 1]


# ---- writing files inside the run directory ----------------------------------------------------


def _open_no_follow(path: Path, flags: int, mode: int = 0o644) -> int:
    """os.open that refuses a symlink (O_NOFOLLOW), with a one-line error instead of ELOOP."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UserError(f"{path}: is a symlink; the harness writes only real files in the run directory: remove it") from exc
        raise


def _shared(st: os.stat_result) -> str | None:
    """Why writing through this inode would modify someone else's file, or None."""
    if st.st_nlink > 1:
        return f"has {st.st_nlink - 1} other hard link(s)"
    if st.st_uid != os.geteuid():
        return f"is owned by uid {st.st_uid}, not this user"
    return None


def _private_copy(path: Path, fd: int) -> None:
    """Replace the directory entry `path` by a copy of the file open at `fd` that only this run holds."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    out = _open_no_follow(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        while block := os.read(fd, 1 << 20):
            os.write(out, block)
        os.fsync(out)
        os.close(out)
        out = -1
        os.rename(tmp, path)  # replaces our directory entry only: the other links keep the old inode
    except BaseException:
        if out >= 0:
            os.close(out)
        tmp.unlink(missing_ok=True)
        raise


def open_run_file(path: Path, flags: int, mode: int = 0o644) -> int:
    """The one way the harness opens a file of a run directory for writing (records, lock, notes,
    timing, temporaries of atomic_write, and any per-bench file added later): an fd that only this run
    writes through.

    A symlink is refused. An existing file with other hard links (a run directory copied with
    `cp -al` shares its inodes with the original) or owned by another user is COPIED first: the
    directory entry is replaced by a private copy of the same bytes, then opened; the other links keep
    the original inode, byte-identical. (Refusing would make a hard-linked copy unusable; copying is
    what the user who made it meant.) The check is made on the opened fd, so a file swapped in between
    is caught too; a directory where the copy cannot be made (not ours, read-only) is an error naming it.
    """
    path = Path(path)
    for _ in range(3):
        fd = _open_no_follow(path, flags, mode)
        why = _shared(os.fstat(fd))
        if why is None:
            return fd
        os.close(fd)
        reader = _open_no_follow(path, os.O_RDONLY)
        try:
            if _shared(os.fstat(reader)) is None:
                continue  # replaced meanwhile by a private file: open that one
            try:
                _private_copy(path, reader)
            except PermissionError as exc:
                raise UserError(
                    f"{path}: {why} and cannot be replaced by a private copy ({exc.strerror}); "
                    f"run into a new --out instead"
                ) from exc
        finally:
            os.close(reader)
        print(f"note: {path}: {why}; writing to a private copy, the other link(s) left untouched", file=sys.stderr)
    raise UserError(f"{path}: keeps being replaced by a shared file while the run opens it; is another program writing here?")


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` all at once: a fresh temporary (O_EXCL, O_NOFOLLOW) renamed over it.

    rename() replaces a directory entry and never follows a symlink, so nothing outside the folder is
    touched; a symlink at `path` is refused all the same.
    """
    path = Path(path)
    if path.is_symlink():
        raise UserError(f"{path}: is a symlink; the harness writes only real files in the run directory: remove it")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = open_run_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def refuse_symlinks(run_dir: Path) -> None:
    """A run directory whose entries (or records/ entries) are symlinks could redirect writes: refuse it."""
    run_dir = Path(run_dir)
    for folder in (run_dir, run_dir / RECORDS_DIR):
        if folder != run_dir and folder.is_symlink():
            raise UserError(f"{folder}: is a symlink; a run directory must hold real files only: remove it")
        if not folder.is_dir():
            continue
        for entry in os.scandir(folder):
            if entry.is_symlink():
                raise UserError(
                    f"{entry.path}: is a symlink; a run directory must hold real files only: remove it"
                )


# ---- record checksums ----------------------------------------------------------------------------


def record_checksum(record: ItemRecord) -> str:
    body = msgspec.structs.replace(record, checksum="")
    return hashlib.sha256(_canonical_encoder.encode(body)).hexdigest()[:16]


def seal(record: ItemRecord) -> ItemRecord:
    """The record as it reads back from disk, with its checksum set.

    It is first round-tripped through JSON so that the checksum is that of what a reader decodes
    (an int score written as 1 reads back as the float 1.0).
    """
    normalized = _record_decoder.decode(_encoder.encode(msgspec.structs.replace(record, checksum="")))
    return msgspec.structs.replace(normalized, checksum=record_checksum(normalized))


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


def _scan(path: Path) -> tuple[list[tuple[int, ItemRecord]], int, str | None]:
    """Parse a records file: ([(line number, record)], byte length of the complete lines, torn tail or None).

    Only an unterminated last line is a torn tail (a write cut by a kill); any complete line that does
    not decode, or whose checksum does not match, is an error: it was damaged or edited, not torn.
    """
    data = path.read_bytes()
    records: list[tuple[int, ItemRecord]] = []
    pos = 0
    line_no = 0
    while pos < len(data):
        line_no += 1
        nl = data.find(b"\n", pos)
        if nl < 0:
            return records, pos, f"torn last line {line_no} ({len(data) - pos} bytes without newline)"
        try:
            record = _record_decoder.decode(data[pos:nl])
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise UserError(
                f"{path}:{line_no}: corrupt record at byte {pos} ({exc}); the file was edited by hand? "
                f"move it away to rerun this bench"
            ) from exc
        _check_record(path, line_no, record)
        records.append((line_no, record))
        pos = nl + 1
    return records, pos, None


def _check_record(path: Path, line_no: int, record: ItemRecord) -> None:
    where = f"{path}:{line_no}: record {record.item_id!r} sample {record.sample}"
    if not record.checksum:
        raise UserError(
            f"{where} has no checksum: written by an older harness (before record checksums); rerun it into a new --out"
        )
    if record_checksum(record) != record.checksum:
        raise UserError(f"{where}: content does not match its checksum {record.checksum}; the record was edited or damaged")
    low, high = SCORE_RANGE
    if not (math.isfinite(record.score) and low <= record.score <= high):
        raise UserError(f"{where}: score {record.score!r} outside [{low:g}, {high:g}]")


def _unique(path: Path, records: list[tuple[int, ItemRecord]]) -> list[ItemRecord]:
    """First occurrence of each (item, sample); a duplicate with other content is an error, except that
    a retry replaces an error record (a request that had failed for good)."""
    first: dict[tuple[str, int], tuple[int, ItemRecord]] = {}
    for line_no, rec in records:
        key = (rec.item_id, rec.sample)
        if key not in first or first[key][1].error is not None:
            first[key] = (line_no, rec)
        elif rec.error is not None:
            continue  # a failed retry of an answered item: the answer stands
        elif first[key][1].checksum != rec.checksum:
            raise UserError(
                f"{path}:{line_no}: record {rec.item_id!r} sample {rec.sample} duplicates line {first[key][0]} "
                f"with other content; which one is right cannot be told: move the file away to rerun this bench"
            )
    return [rec for _, rec in first.values()]


def read_records(path: Path) -> list[ItemRecord]:
    """Records of one bench, each (item, sample) once, every record checked; a torn tail is ignored.

    An error record (a request that failed for good) stands for its (item, sample) only until a rerun
    writes the real one, which then replaces it.
    """
    if not path.is_file():
        return []
    records, _, problem = _scan(path)
    if problem:
        print(f"warning: {path}: {problem}; ignored (a rerun cuts it off and redoes that item)", file=sys.stderr)
        append_note(path.parent.parent, "torn_tail", f"{path.name}: {problem}; ignored")
    return _unique(path, records)


def answered(records: list[ItemRecord]) -> list[ItemRecord]:
    """The records that hold a generation (error records left out)."""
    return [r for r in records if r.error is None]


# ---- the manifest: records files as they were when the run completed -----------------------------


class ManifestEntry(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    sha256: str
    bytes: int
    # The checksum of each line's record, in file order: lets a mismatch name its first changed line.
    # Empty in manifests written before it existed (then only the file is named).
    lines: list[str] = []


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(run_dir: Path, bench_names: list[str]) -> None:
    """On run completion: the hash of every records and items file, so later edits are caught by compare."""
    run_dir = Path(run_dir)
    entries = {}
    for name in bench_names:
        path = records_path(run_dir, name)
        if path.is_file():
            scanned, _, _ = _scan(path)
            entries[f"{RECORDS_DIR}/{path.name}"] = ManifestEntry(
                sha256=_file_sha256(path), bytes=path.stat().st_size, lines=[rec.checksum for _, rec in scanned]
            )
        items = items_path(run_dir, name)
        if items.is_file():  # the items as asked: the file as a whole (its lines are no records)
            entries[f"{RECORDS_DIR}/{items.name}"] = ManifestEntry(sha256=_file_sha256(items), bytes=items.stat().st_size)
    atomic_write(run_dir / MANIFEST_FILE, msgspec.json.format(_encoder.encode(entries), indent=1))


def clear_manifest(run_dir: Path) -> None:
    """Before appending to a run whose manifest was just verified (an early-stopped run taken further):
    it would no longer describe the files. A manifest that does not match is never cleared: see
    refuse_edited_finished_run."""
    path = Path(run_dir) / MANIFEST_FILE
    if path.is_symlink() or path.exists():
        path.unlink()


def verify_manifest(run_dir: Path) -> str:
    """'verified (N files)' or 'absent'; a records file that changed after completion is an error."""
    path = Path(run_dir) / MANIFEST_FILE
    if not path.is_file():
        return "absent"
    try:
        entries = msgspec.json.decode(path.read_bytes(), type=dict[str, ManifestEntry])
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise UserError(f"{path}: invalid manifest ({exc}); it is written by the harness, do not edit it") from exc
    for relative, entry in entries.items():
        target = Path(run_dir) / relative
        if not target.is_file():
            raise UserError(f"{target}: listed in {path} but missing: records were removed after the run completed")
        if target.stat().st_size != entry.bytes or _file_sha256(target) != entry.sha256:
            raise UserError(
                f"{_first_changed_line(target, entry)}: does not match {path} (sha256 {entry.sha256[:12]}…): "
                f"the records changed after the run completed"
            )
    return f"verified ({len(entries)} files)"


def _first_changed_line(target: Path, entry: ManifestEntry) -> str:
    """'FILE:LINE' of the first line that differs from the manifest's record list, else 'FILE'."""
    if not entry.lines:
        return str(target)
    data = target.read_bytes()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for line_no, line in enumerate(lines, 1):
        if line_no > len(entry.lines):
            return f"{target}:{line_no}"  # added after completion
        try:
            checksum = _record_decoder.decode(line).checksum
        except (msgspec.DecodeError, msgspec.ValidationError):
            return f"{target}:{line_no}"
        if checksum != entry.lines[line_no - 1]:
            return f"{target}:{line_no}"
    return f"{target}:{len(lines) + 1}"  # lines removed from the end (or the bytes of a line changed)


def refuse_edited_finished_run(run_dir: Path) -> None:
    """Before resuming into a run directory: a finished run (manifest present) whose records no longer
    match the manifest is refused with the file and line, as `compare` refuses it. Nothing is cut,
    deleted or regenerated: the manifest and the edited records stay as the evidence of the edit."""
    try:
        verify_manifest(run_dir)
    except UserError as exc:
        raise UserError(
            f"{exc}; this finished run is left as it is (nothing deleted): to run again, "
            f"choose a new directory with --out"
        ) from exc


class Run(msgspec.Struct):
    dir: Path
    spec: RunSpec
    records: dict[str, list[ItemRecord]]  # bench name -> records
    manifest: str = ""  # "verified (N files)" | "absent" (run not completed); "" when not read from disk


def read_run(run_dir: Path | str) -> Run:
    """The one way to read a run back from disk: every record checked, the manifest verified."""
    run_dir = Path(run_dir)
    refuse_symlinks(run_dir)
    spec = read_spec(run_dir)
    manifest = verify_manifest(run_dir)
    records = {b.name: read_records(run_dir / RECORDS_DIR / f"{b.name}.jsonl") for b in spec.benches}
    return Run(dir=run_dir, spec=spec, records=records, manifest=manifest)


def incomplete_reason(run: Run) -> str | None:
    """None for a finished run (manifest verified); else the one line that says it is not one, for
    every headline that shows a run on its own (it is never to be committed as a baseline)."""
    if run.manifest.startswith("verified"):
        return None
    done = sum(len({(r.item_id, r.sample) for r in answered(run.records.get(b.name, []))}) for b in run.spec.benches)
    failed = sum(1 for b in run.spec.benches for r in run.records.get(b.name, []) if r.error is not None)
    total = sum(b.n_items * b.samples for b in run.spec.benches)
    why = f"{failed} request(s) failed" if failed else "interrupted"
    return (
        f"INCOMPLETE run: {done} of {total} item samples answered ({why}; no manifest); "
        f"rerun its command to finish it; not usable as a baseline"
    )


class RecordWriter:
    """Append-only writer for one bench's records; repairs a torn tail before the first append."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        existing: list[ItemRecord] = []
        if path.is_symlink():
            raise UserError(f"{path}: is a symlink; the harness writes only real files in the run directory: remove it")
        if path.is_file():
            scanned, good_end, problem = _scan(path)
            existing = _unique(path, scanned)
            if problem:
                print(f"warning: {path}: {problem}; cutting it off before resuming", file=sys.stderr)
                append_note(path.parent.parent, "torn_tail", f"{path.name}: {problem}; cut off before resuming")
                fd = open_run_file(path, os.O_WRONLY)
                try:
                    os.ftruncate(fd, good_end)
                    os.fsync(fd)
                finally:
                    os.close(fd)
        # Error records are not done: a rerun retries them.
        self.done: set[tuple[str, int]] = {(r.item_id, r.sample) for r in existing if r.error is None}
        # (item, sample) whose last word is an error record: while any remain the run is incomplete.
        self.failed: set[tuple[str, int]] = {(r.item_id, r.sample) for r in existing if r.error is not None}
        self.existing = [r for r in existing if r.error is None]
        self.appended: list[ItemRecord] = []  # written by this writer (this session of the run)
        self._fd = open_run_file(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)

    def append(self, record: ItemRecord) -> None:
        key = (record.item_id, record.sample)
        if key in self.done:
            return
        # One write() of a whole line to an O_APPEND fd: a crash leaves either nothing or a prefix
        # of this line, which _scan recognises as a torn tail.
        os.write(self._fd, _encoder.encode(seal(record)) + b"\n")
        os.fsync(self._fd)
        if record.error is None:
            self.done.add(key)
            self.failed.discard(key)
        else:
            self.failed.add(key)
        self.appended.append(record)

    def close(self) -> None:
        os.close(self._fd)


class RunLock:
    """Exclusive lock on a run directory so two runners never append to the same files."""

    def __init__(self, run_dir: Path):
        run_dir.mkdir(parents=True, exist_ok=True)
        refuse_symlinks(run_dir)
        # No O_TRUNC: the lock file's content is never used, only its flock.
        self._fd = open_run_file(run_dir / ".lock", os.O_WRONLY | os.O_CREAT)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(self._fd)
            raise UserError(f"{run_dir}: another run is writing to this directory right now") from exc

    def release(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)


def being_written(run_dir: Path) -> bool:
    """True while a runner holds the run's lock (a run in progress, not one to grade yet)."""
    path = Path(run_dir) / ".lock"
    if not path.is_file() or path.is_symlink():
        return False
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock we took
    return False


def progress(run_dir: Path, spec: RunSpec) -> tuple[int, int]:
    """(item samples on disk, item samples the run will have): what 'interrupted: N of M done' says."""
    done = total = 0
    for bench in spec.benches:
        total += bench.n_items * bench.samples
        path = records_path(run_dir, bench.name)
        if path.is_file() and not path.is_symlink():
            scanned, _, _ = _scan(path)
            done += len({(rec.item_id, rec.sample) for _, rec in scanned if rec.error is None})
    return done, total


def append_line(path: Path, line: bytes) -> None:
    """Append one line to a run directory's advisory log (timing, notes) through open_run_file."""
    fd = open_run_file(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def records_path(run_dir: Path, bench: str) -> Path:
    return Path(run_dir) / RECORDS_DIR / f"{bench}.jsonl"


class ItemText(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """One item as it was asked: enough to read a flipped item without the data set at hand."""

    id: str
    question: str
    target: str  # the gold answer
    category: str | None = None
    messages: list[dict[str, Any]] = []  # the first turn's chat messages as sent (before the template)


_items_decoder = msgspec.json.Decoder(ItemText)


def items_path(run_dir: Path, bench: str) -> Path:
    return Path(run_dir) / RECORDS_DIR / f"{bench}.items.jsonl"


def write_items(run_dir: Path, bench: str, items: list[ItemText]) -> None:
    """Once per run and bench: a resumed run keeps the file its first session wrote (same spec, same items)."""
    path = items_path(run_dir, bench)
    if path.is_file():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, b"".join(_encoder.encode(item) + b"\n" for item in items))


def read_items(run_dir: Path, bench: str) -> dict[str, ItemText]:
    """item id -> the item as asked; empty for a run written before items files (or an imported one)."""
    path = items_path(run_dir, bench)
    if not path.is_file():
        return {}
    out: dict[str, ItemText] = {}
    for line_no, line in enumerate(path.read_bytes().splitlines(), 1):
        try:
            item = _items_decoder.decode(line)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise UserError(f"{path}:{line_no}: not an item ({exc}); the file is written by the harness, do not edit it") from exc
        out[item.id] = item
    return out


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
    append_line(run_dir / NOTES_FILE, _encoder.encode(Note(time=round(time.time(), 3), kind=kind, message=message)) + b"\n")


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
