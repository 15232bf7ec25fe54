"""Run directories as payloads: packed on one node, shipped as bytes (Ray's object store, a task's return
value, a file), unpacked and verified on another. No shared filesystem is assumed.

    shipment = pack(run_dir)               # a finished run: its manifest verified, every file's sha256
    unpack(shipment, dest)                 # every file checked against its sha256, the manifest verified
                                           # again, then swapped in for `dest` in one rename

A partial run (a run still writing, or one that stopped midway) is packed with `partial=True`: its records
files are cut after their last whole line, so what arrives is a run the runner resumes without repair.
A baseline travels the same way; `unpack_cached` keeps one copy per content on a node.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import secrets
import shutil
from pathlib import Path

import msgspec

from engine.errors import UserError
from engine.records import MANIFEST_FILE, RECORDS_DIR, atomic_write, refuse_symlinks, verify_manifest

LOCK_FILE = ".lock"  # the runner's flock: per node, never shipped


class Shipment(msgspec.Struct, frozen=True, kw_only=True):
    """A run directory's regular files as bytes, each with the sha256 taken when it was read."""

    name: str  # the run directory's folder name (for messages)
    blobs: dict[str, bytes]  # path relative to the run directory ("spec.json", "records/arith.jsonl") -> content
    sha256: dict[str, str]  # same keys -> hex digest of the content at packing
    sealed: bool  # packed as a finished run (manifest verified): verified again on arrival

    @property
    def n_bytes(self) -> int:
        return sum(len(b) for b in self.blobs.values())

    @property
    def digest(self) -> str:
        """One name for the content: the same files give the same digest wherever they were packed."""
        return hashlib.sha256("\n".join(f"{k} {v}" for k, v in sorted(self.sha256.items())).encode()).hexdigest()


def _files(run_dir: Path) -> list[Path]:
    """The run's regular files, relative: everything but the lock and unfinished atomic writes."""
    found = []
    for path in sorted(run_dir.rglob("*")):
        relative = path.relative_to(run_dir)
        if path.is_symlink():
            raise UserError(f"{path}: is a symlink; a run directory must hold real files only: remove it")
        if not path.is_file() or relative.name == LOCK_FILE or relative.name.endswith(".tmp"):
            continue
        found.append(relative)
    return found


def pack(run_dir: Path, *, partial: bool = False) -> Shipment:
    """The run directory's files. Without `partial` the run must be finished: its manifest verified."""
    run_dir = Path(run_dir)
    refuse_symlinks(run_dir)
    blobs = {}
    for relative in _files(run_dir):
        try:
            data = (run_dir / relative).read_bytes()
        except FileNotFoundError:  # replaced by an atomic write between listing and reading: in the next one
            continue
        if partial and relative.parts[0] == RECORDS_DIR and relative.suffix == ".jsonl":
            data = data[: data.rfind(b"\n") + 1]  # a line being written now is left for the next shipment
        blobs[relative.as_posix()] = data
    sealed = False
    if MANIFEST_FILE in blobs:
        # Checked after reading the records: the manifest must describe exactly the bytes shipped.
        try:
            sealed = verify_manifest(run_dir).startswith("verified") and all(
                blobs[k] == (run_dir / k).read_bytes() for k in blobs if k.startswith(RECORDS_DIR + "/")
            )
        except UserError:
            sealed = False
    if not sealed:
        blobs.pop(MANIFEST_FILE, None)  # a manifest that does not describe the records shipped stays behind
    if not partial and not sealed:
        raise UserError(f"{run_dir}: not a finished run (no manifest matching its records); only a finished run is "
                        "shipped whole")  # fmt: skip
    sums = {k: hashlib.sha256(v).hexdigest() for k, v in blobs.items()}
    return Shipment(name=run_dir.name, blobs=blobs, sha256=sums, sealed=sealed)


def _safe_relative(key: str, shipment: Shipment) -> Path:
    relative = Path(key)
    if relative.is_absolute() or not relative.parts or any(p in ("", ".", "..") for p in relative.parts):
        raise UserError(f"shipment of {shipment.name}: file name {key!r} points outside the run directory; refused")
    return relative


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_verified(shipment: Shipment, folder: Path) -> None:
    if set(shipment.blobs) != set(shipment.sha256):
        raise UserError(f"shipment of {shipment.name}: its file list and its checksums disagree; refused")
    for key, data in shipment.blobs.items():
        if hashlib.sha256(data).hexdigest() != shipment.sha256[key]:
            raise UserError(f"shipment of {shipment.name}: {key} does not match its sha256 "
                            f"{shipment.sha256[key][:12]}…: damaged in transit; nothing was replaced")  # fmt: skip
        target = folder / _safe_relative(key, shipment)
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, data)
    for sub in {folder / Path(k).parent for k in shipment.blobs}:
        _fsync_dir(sub)
    if shipment.sealed:
        verify_manifest(folder)  # raises, naming the file, when the records do not match the run's manifest


def unpack(shipment: Shipment, dest: Path) -> Path:
    """Write the shipment as the run directory `dest`, replacing what is there: written and verified in a
    fresh sibling folder first, then renamed into place, so `dest` is either the old run or the new one."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    incoming = dest.with_name(f".{dest.name}.incoming-{secrets.token_hex(4)}")
    incoming.mkdir()
    old = dest.with_name(f".{dest.name}.replaced-{secrets.token_hex(4)}")
    try:
        _write_verified(shipment, incoming)
        if dest.is_symlink():
            raise UserError(f"{dest}: is a symlink; the harness writes only real run directories: remove it")
        if dest.exists():
            os.rename(dest, old)
        os.rename(incoming, dest)
        _fsync_dir(dest.parent)
    except BaseException:
        if old.exists() and not dest.exists():
            os.rename(old, dest)  # the old run back in place
        shutil.rmtree(incoming, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return dest


def unpack_cached(shipment: Shipment, store: Path) -> Path:
    """The shipment as `store/<digest>` (a baseline shipped to a node once per content, kept for later runs);
    runs starting on the node at once take turns (a lock file in `store`)."""
    store = Path(store)
    store.mkdir(parents=True, exist_ok=True)
    dest = store / shipment.digest[:20]
    with open(store / LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if dest.is_dir() and not dest.is_symlink():
            try:
                held = pack(dest, partial=not shipment.sealed)
            except UserError:
                held = None
            if held is not None and held.sha256 == shipment.sha256:
                return dest
        return unpack(shipment, dest)


def records_in(shipment: Shipment) -> int:
    """Whole records lines the shipment carries (what a resumed run starts from)."""
    return sum(v.count(b"\n") for k, v in shipment.blobs.items() if k.startswith(RECORDS_DIR + "/") and k.endswith(".jsonl"))
