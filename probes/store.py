"""The reference file: probe text plus the baseline's top-K distribution at every scored position.

Layout (little-endian):

    8 bytes   magic b"DHKLREF1"
    8 bytes   header length H (uint64)
    H bytes   header (JSON, `Header`): fingerprints, K, dtypes, and where every array lies
    ...       the arrays, raw, in header order
    32 bytes  sha256 of everything before it

Arrays, with N scored positions over S sequences:
    tokens        int32 [T]      all sequences' token ids, concatenated
    seq_offsets   int64 [S+1]    sequence s is tokens[seq_offsets[s]:seq_offsets[s+1]]
    prompt_lens   int32 [S]      response tokens (the scored ones) start at this index
    topk_ids      int32 [N, K]   the baseline's K most likely next tokens, sorted by id
    topk_logprobs float32|float16 [N, K]
    log_tail      float32 [N]    log of the baseline's mass outside the K ids
    target_lp     float32 [N]    the baseline's log-prob of the actual next token

A row n belongs to the logits at position p of its sequence and predicts token p+1; rows run over
positions prompt_len-1 .. len-2 of each sequence, sequences in order. K = vocab size stores the
full distribution (then log_tail is -inf).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import msgspec
import numpy as np

from engine.errors import UserError

MAGIC = b"DHKLREF1"
FORMAT_VERSION = 1
ARRAY_DTYPES = {
    "tokens": "int32",
    "seq_offsets": "int64",
    "prompt_lens": "int32",
    "topk_ids": "int32",
    "topk_logprobs": None,  # header.logprob_dtype
    "log_tail": "float32",
    "target_lp": "float32",
}


class ArrayEntry(msgspec.Struct, kw_only=True):
    name: str
    dtype: str
    shape: list[int]
    offset: int  # bytes from the start of the array section


class SequenceInfo(msgspec.Struct, kw_only=True):
    source: str  # bench name, "gsm8k-reference", "text:<file>", ...
    id: str


class Header(msgspec.Struct, kw_only=True):
    format_version: int
    model: str
    model_fingerprint: str
    tokenizer_fingerprint: str
    vocab_size: int  # width of a logits row
    top_k: int
    logprob_dtype: str  # float32 | float16
    backend: str  # what computed the reference logits (vllm | hf)
    engine_dtype: str  # the model's compute dtype
    tier: str
    think: bool
    sequences: list[SequenceInfo]
    arrays: list[ArrayEntry] = []
    # KL of the stored (rounded) bins against the live logits they were made from: the storage floor.
    storage_floor: dict[str, float] = {}


class Reference(msgspec.Struct, kw_only=True):
    header: Header
    tokens: np.ndarray
    seq_offsets: np.ndarray
    prompt_lens: np.ndarray
    topk_ids: np.ndarray
    topk_logprobs: np.ndarray
    log_tail: np.ndarray
    target_lp: np.ndarray

    def sequence(self, s: int) -> np.ndarray:
        return self.tokens[self.seq_offsets[s] : self.seq_offsets[s + 1]]

    def row_ranges(self) -> list[tuple[int, int]]:
        """[start, end) of each sequence's rows in the per-position arrays."""
        lengths = np.diff(self.seq_offsets)
        counts = lengths - self.prompt_lens
        ends = np.cumsum(counts)
        return [(int(e - c), int(e)) for c, e in zip(counts, ends, strict=True)]


def write_reference(path: Path, ref: Reference) -> None:
    arrays = {name: np.ascontiguousarray(getattr(ref, name), dtype=dtype or ref.header.logprob_dtype) for name, dtype in ARRAY_DTYPES.items()}
    entries, offset = [], 0
    for name, arr in arrays.items():
        entries.append(ArrayEntry(name=name, dtype=str(arr.dtype), shape=list(arr.shape), offset=offset))
        offset += arr.nbytes
    header = msgspec.structs.replace(ref.header, arrays=entries)
    head = msgspec.json.encode(header)
    digest = hashlib.sha256()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as f:
        for chunk in (MAGIC, len(head).to_bytes(8, "little"), head, *(a.tobytes() for a in arrays.values())):
            digest.update(chunk)
            f.write(chunk)
        f.write(digest.digest())
    tmp.replace(path)


def read_reference(path: Path) -> Reference:
    """Read and verify a reference file; any damage is a one-line UserError."""
    path = Path(path)
    if path.is_dir():
        path = path / REFERENCE_FILE
    if not path.is_file():
        raise UserError(f"{path}: no probe reference there (build one with `python -m engine probe --build-reference`)")
    data = path.read_bytes()
    if len(data) < len(MAGIC) + 8 + 32 or data[: len(MAGIC)] != MAGIC:
        raise UserError(f"{path}: not a probe reference file (bad magic or too short)")
    body, stored = data[:-32], data[-32:]
    if hashlib.sha256(body).digest() != stored:
        raise UserError(f"{path}: checksum mismatch: the file is truncated or corrupt; rebuild it with --build-reference")
    head_len = int.from_bytes(body[8:16], "little")
    try:
        header = msgspec.json.decode(body[16 : 16 + head_len], type=Header)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise UserError(f"{path}: unreadable header ({exc})") from exc
    if header.format_version != FORMAT_VERSION:
        raise UserError(f"{path}: format version {header.format_version}, this harness reads {FORMAT_VERSION}; rebuild it")
    section = memoryview(body)[16 + head_len :]
    arrays = {}
    for entry in header.arrays:
        count = int(np.prod(entry.shape)) if entry.shape else 1
        nbytes = count * np.dtype(entry.dtype).itemsize
        if entry.offset + nbytes > len(section):
            raise UserError(f"{path}: array {entry.name} runs past the end of the file; rebuild it")
        arrays[entry.name] = np.frombuffer(section, dtype=entry.dtype, count=count, offset=entry.offset).reshape(entry.shape)
    missing = set(ARRAY_DTYPES) - set(arrays)
    if missing:
        raise UserError(f"{path}: arrays {sorted(missing)} missing; rebuild it")
    ref = Reference(header=header, **arrays)
    n_rows = int(np.sum(np.diff(ref.seq_offsets) - ref.prompt_lens))
    if ref.topk_ids.shape != (n_rows, header.top_k) or ref.log_tail.shape != (n_rows,):
        raise UserError(f"{path}: array shapes disagree with the sequences ({n_rows} scored positions); rebuild it")
    return ref


REFERENCE_FILE = "kl_reference.dhref"


def tokenizer_fingerprint(tokenizer) -> str:
    """Identity of the token -> id map and the special tokens: what logits rows are indexed by."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    digest = hashlib.sha256(msgspec.json.encode(vocab))
    digest.update(msgspec.json.encode(sorted(map(str, tokenizer.all_special_tokens))))
    return digest.hexdigest()[:16]
