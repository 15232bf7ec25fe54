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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

from engine.errors import UserError


class SamplingConfig(msgspec.Struct, frozen=True, kw_only=True):
    preset: str
    temperature: float
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    min_p: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0


class EngineSpec(msgspec.Struct, frozen=True, kw_only=True):
    backend: str
    dtype: str
    chunked_prefill: bool
    bs1: bool
    prefix_caching: bool
    max_model_len: int
    tensor_parallel: int = 1
    # vLLM scheduler token budget per step, with chunked prefill (None: vLLM's default). The
    # determinism experiment sets it small so that short prompts are really split into chunks.
    max_num_batched_tokens: int | None = None


class BenchSpec(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    version: str  # prompt + extraction + scoring version of the bench module
    data_fingerprint: str  # content hash of the loaded split
    n_items: int  # items chosen at this tier
    items_fingerprint: str  # hash of the chosen item ids, in order
    max_tokens: int
    samples: int = 1  # samples per item (the run's --samples, or the bench's own SAMPLES)
    # Full-split item count per category, when the tier ran a (stratified) subset of the split: what
    # estimates are reweighted back to. Empty when the whole split ran.
    strata_sizes: dict[str, int] = {}


class RunSpec(msgspec.Struct, frozen=True, kw_only=True):
    model: str  # as given on the command line (label)
    model_fingerprint: str
    tier: str
    seed: int
    think: bool
    samples: int
    sampling: SamplingConfig
    benches: tuple[BenchSpec, ...]
    engine: EngineSpec
    harness_version: str = ""
    versions: dict[str, str] = {}  # torch/vllm/transformers: informative, not part of the contract
    # "native" | "lm-eval" (imported by engine.importers.lm_eval): an imported run never grades against
    # a native one. source_contract: the source's own contract fields ("lm_eval.prompts", ...).
    source: str = "native"
    source_contract: dict[str, str] = {}


class ItemRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
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
    try:
        return _spec_decoder.decode(path.read_bytes())
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
    """Records of one bench, first occurrence of each (item, sample) kept; a torn tail is dropped."""
    if not path.is_file():
        return []
    records, _, problem = _scan(path)
    if problem:
        print(f"warning: {path}: {problem}; dropped it", file=sys.stderr)
    seen: set[tuple[str, int]] = set()
    unique = []
    for rec in records:
        key = (rec.item_id, rec.sample)
        if key not in seen:
            seen.add(key)
            unique.append(rec)
    return unique


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
                with open(path, "r+b") as f:
                    f.truncate(good_end)
                    os.fsync(f.fileno())
        self.done: set[tuple[str, int]] = {(r.item_id, r.sample) for r in existing}
        self.existing = existing
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def append(self, record: ItemRecord) -> None:
        key = (record.item_id, record.sample)
        if key in self.done:
            return
        # One write() of a whole line to an O_APPEND fd: a crash leaves either nothing or a prefix
        # of this line, which _scan recognises as a torn tail.
        os.write(self._fd, _encoder.encode(record) + b"\n")
        os.fsync(self._fd)
        self.done.add(key)

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


def iter_contract(spec: RunSpec) -> Iterator[tuple[str, object]]:
    """The fields a baseline and a candidate must share to be graded against each other.

    The model and its fingerprint are deliberately absent: they are what differs.
    """
    yield "source", spec.source
    yield from sorted(spec.source_contract.items())
    yield "tier", spec.tier
    yield "seed", spec.seed
    yield "think", spec.think
    yield "samples", spec.samples
    for field in msgspec.structs.fields(SamplingConfig):
        if field.name != "preset":
            yield f"sampling.{field.name}", getattr(spec.sampling, field.name)
    for field in ("backend", "dtype", "chunked_prefill", "bs1"):
        yield f"engine.{field}", getattr(spec.engine, field)
    for bench in spec.benches:
        for field in ("version", "data_fingerprint", "items_fingerprint", "max_tokens", "samples"):
            yield f"{bench.name}.{field}", getattr(bench, field)


def contract_diff(base: RunSpec, cand: RunSpec, only_benches: set[str] | None = None) -> list[tuple[str, object, object]]:
    """[(field, baseline value, candidate value)] for every differing contract field.

    Bench fields are compared for the benches both runs have (or `only_benches`); a bench missing
    from the baseline is reported as its own difference.
    """
    base_fields = dict(iter_contract(base))
    cand_fields = dict(iter_contract(cand))
    base_benches = {b.name for b in base.benches}
    cand_benches = {b.name for b in cand.benches}
    wanted = only_benches if only_benches is not None else cand_benches
    diffs = []
    for key, cval in cand_fields.items():
        bench = key.split(".", 1)[0]
        if bench in cand_benches and bench not in wanted:
            continue
        if bench in cand_benches and bench not in base_benches:
            continue
        bval = base_fields.get(key, "<absent>")
        if bval != cval:
            diffs.append((key, bval, cval))
    for name in sorted(wanted - base_benches):
        diffs.append((f"{name}", "<not in baseline>", "present"))
    return diffs
