"""Build a reference from a baseline model, score a candidate against it (HF or vLLM candidate side).

    build_reference(...)  corpus -> baseline logits -> top-K bins per scored position -> file
    score_candidate(...)  file -> candidate logits -> per-position statistics -> Summary
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from engine.errors import NotComparable, UserError
from probes import corpus, metrics
from probes.reduce import BuildJob, ScoreJob, concat, reduce_rows
from probes.store import (
    REFERENCE_FILE,
    Header,
    Reference,
    SequenceInfo,
    read_reference,
    tokenizer_fingerprint,
    write_reference,
)

HF_CHUNK_ROWS = 512
_DTYPES = {"bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16", "float32": "float32", "fp32": "float32"}


def _vocab_size(checkpoint: Path) -> int:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(checkpoint)
    return int(getattr(config.get_text_config(), "vocab_size", 0) or config.vocab_size)


def hf_rows(checkpoint: Path, dtype: str, sequences: list[np.ndarray], score_from: list[int], jobs: list) -> list[list]:
    """Per sequence its [(first_row, arrays)]: one forward per sequence, logits made and reduced
    HF_CHUNK_ROWS positions at a time, so no full [positions, vocab] tensor is ever held."""
    import torch
    from transformers import AutoModelForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=getattr(torch, _DTYPES.get(dtype, dtype)))
    model.to(device).eval()
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    softcap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)
    out = []
    with torch.inference_mode():
        for tokens, start, job in zip(sequences, score_from, jobs, strict=True):
            ids = torch.as_tensor(np.asarray(tokens, dtype=np.int64), device=device)
            hidden = decoder(input_ids=ids[None]).last_hidden_state[0]
            parts = []
            for a in range(start, len(tokens) - 1, HF_CHUNK_ROWS):
                b = min(a + HF_CHUNK_ROWS, len(tokens) - 1)
                logits = head(hidden[a:b])
                if softcap:
                    logits = torch.tanh(logits / softcap) * softcap
                parts.append((a - start, reduce_rows(logits, ids[a + 1 : b + 1], job, a - start)))
            out.append(parts)
    return out


def _compute(
    backend: str, checkpoint: Path, dtype: str, tp: int, sequences: list[np.ndarray], score_from: list[int], jobs: list,
    engine_args: dict | None = None,
) -> list[list]:
    if engine_args and backend != "vllm":
        raise UserError(f"--engine-arg is for --backend vllm (the probe runs --backend {backend})")
    if backend == "hf":
        return hf_rows(checkpoint, dtype, sequences, score_from, jobs)
    if backend == "vllm":
        from engine.backends.vllm_logits import open_probe_engine

        max_len = max(len(s) for s in sequences) + 1  # +1: the one token vLLM must generate
        engine = open_probe_engine(checkpoint, dtype=dtype, max_model_len=max_len, tensor_parallel=tp, engine_args=engine_args)
        try:
            return engine.run([list(s) for s in sequences], score_from, jobs)
        finally:
            engine.close()
    raise UserError(f"--backend {backend}: unknown backend (choose vllm or hf)")


def reference_path(out: Path) -> Path:
    """`--out` may name the file or a directory (then the file inside it has the standard name)."""
    out = Path(out)
    return out if out.suffix == ".dhref" else out / REFERENCE_FILE


def build_reference(
    *,
    model: str,
    out: Path,
    run_dir: Path | None,
    data_dir: Path | None,
    text_files: list[Path],
    tier: str = "smoke",
    think: bool = False,
    top_k: int = 64,
    logprob_dtype: str = "float32",
    backend: str = "vllm",
    dtype: str = "bfloat16",
    tp: int = 1,
    budget: int | None = None,
    engine_args: dict | None = None,
) -> tuple[Path, Reference]:
    from engine import models
    from engine.backends import load_tokenizer
    from engine.records import read_spec

    if logprob_dtype not in ("float32", "float16"):
        raise UserError(f"--store-dtype {logprob_dtype}: choose float32 or float16")
    checkpoint = models.resolve_model(model)
    tokenizer = load_tokenizer(checkpoint)
    if run_dir is not None:
        think = read_spec(run_dir).think  # the baseline's own operating point
    chosen = corpus.build_corpus(tokenizer, run_dir=run_dir, data_dir=data_dir, text_files=text_files, tier=tier, think=think, budget=budget)
    vocab = _vocab_size(checkpoint)
    k = vocab if top_k <= 0 else min(top_k, vocab)
    sequences = [np.asarray(s.prompt_ids + s.response_ids, dtype=np.int32) for s in chosen]
    score_from = [len(s.prompt_ids) - 1 for s in chosen]
    job = BuildJob(top_k=k, logprob_dtype=logprob_dtype)
    print(f"probe: building the reference over {sum(len(s.response_ids) for s in chosen)} positions "
          f"in {len(chosen)} sequences ({backend}, top-{k})", file=sys.stderr)  # fmt: skip
    parts = _compute(backend, checkpoint, dtype, tp, sequences, score_from, [job] * len(chosen), engine_args)
    rows = [concat(p, len(s.response_ids), f"sequence {s.id}") for p, s in zip(parts, chosen, strict=True)]
    floor = np.concatenate([r["floor_kl"] for r in rows]).astype(np.float64)
    header = Header(
        format_version=1,
        model=models.model_label(model),
        model_fingerprint=models.checkpoint_fingerprint(checkpoint),
        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
        vocab_size=vocab,
        top_k=k,
        logprob_dtype=logprob_dtype,
        backend=backend,
        engine_dtype=dtype,
        tier=tier,
        think=think,
        sequences=[SequenceInfo(source=s.source, id=s.id) for s in chosen],
        storage_floor={"kl_mean": float(floor.mean()), "kl_max": float(floor.max())},
    )
    ref = Reference(
        header=header,
        tokens=np.concatenate(sequences),
        seq_offsets=np.concatenate([[0], np.cumsum([len(s) for s in sequences])]).astype(np.int64),
        prompt_lens=np.asarray([len(s.prompt_ids) for s in chosen], dtype=np.int32),
        topk_ids=np.concatenate([r["ids"] for r in rows]),
        topk_logprobs=np.concatenate([r["logprobs"] for r in rows]),
        log_tail=np.concatenate([r["log_tail"] for r in rows]),
        target_lp=np.concatenate([r["target_lp"] for r in rows]),
    )
    path = reference_path(out)
    write_reference(path, ref)
    return path, ref


def check_comparable(ref: Reference, checkpoint: Path, tokenizer) -> None:
    diffs = []
    got = tokenizer_fingerprint(tokenizer)
    if got != ref.header.tokenizer_fingerprint:
        diffs.append(f"  tokenizer fingerprint: reference {ref.header.tokenizer_fingerprint}, candidate {got}")
    vocab = _vocab_size(checkpoint)
    if vocab != ref.header.vocab_size:
        diffs.append(f"  vocab size: reference {ref.header.vocab_size}, candidate {vocab}")
    if diffs:
        raise NotComparable("⚠ NOT COMPARABLE: the candidate's token ids do not index the reference's distributions\n" + "\n".join(diffs))


def score_candidate(
    *, model: str, reference: Path, backend: str = "vllm", dtype: str = "bfloat16", tp: int = 1, engine_args: dict | None = None
) -> metrics.Summary:
    from engine import models
    from engine.backends import load_tokenizer

    ref = read_reference(reference)
    checkpoint = models.resolve_model(model)
    check_comparable(ref, checkpoint, load_tokenizer(checkpoint))
    ranges = ref.row_ranges()
    sequences = [ref.sequence(s) for s in range(len(ranges))]
    score_from = [int(p) - 1 for p in ref.prompt_lens]
    jobs = [ScoreJob(ids=ref.topk_ids[a:b], logprobs=ref.topk_logprobs[a:b], log_tail=ref.log_tail[a:b]) for a, b in ranges]
    parts = _compute(backend, checkpoint, dtype, tp, sequences, score_from, jobs, engine_args)
    rows = [concat(p, b - a, f"sequence {ref.header.sequences[s].id}") for s, (p, (a, b)) in enumerate(zip(parts, ranges, strict=True))]
    return metrics.summarize_rows(ref, rows)
