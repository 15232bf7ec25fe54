"""`python -m engine export RUN [--baseline B] --format csv|parquet|jsonl [--out FILE]`: one row per
item and side, for notebooks and spreadsheets.

A row holds the item's value as the grade pairs it (mean or maj@k of its samples; a judged bench: the
share of its samples the judge passed), the mean sample
score, the first sample's answer and finish reason, mean lengths, the shares of samples truncated or
without an answer, whether the item flipped, and the question and gold answer where the run kept
them. Counting rows with flip == "lost" / "gained" per bench gives the grade's b / c.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path
from typing import Any

import msgspec

from engine import pairing, stats
from engine.errors import UserError
from engine.evidence import item_values, items_of
from engine.records import ItemRecord, Run

FORMATS = ("csv", "parquet", "jsonl")
COLUMNS = (
    "bench", "item_id", "side", "model", "run", "category", "value", "samples", "score_mean", "answer", "finish_reason",
    "prompt_tokens", "completion_tokens", "reasoning_tokens", "truncated", "no_answer", "flip", "question", "target",
)  # fmt: skip


def _no_answer(rec: ItemRecord) -> bool:
    return rec.answer is None or "scorer_error" in rec.extra


def _side_rows(run: Run, side: str, bench: str, values: dict[str, float], flip_of: dict[str, str], items) -> list[dict[str, Any]]:
    rows = []
    for item_id, recs in pairing.grouped(run.records.get(bench, [])).items():
        item = items.get(item_id)
        rows.append(
            {
                "bench": bench, "item_id": item_id, "side": side, "model": run.spec.model, "run": str(run.dir),
                "category": recs[0].category, "value": values[item_id], "samples": len(recs),
                "score_mean": stats.mean([r.score for r in recs]), "answer": recs[0].answer,
                "finish_reason": recs[0].finish_reason,
                "prompt_tokens": stats.mean([float(r.prompt_tokens) for r in recs]),
                "completion_tokens": stats.mean([float(r.completion_tokens) for r in recs]),
                "reasoning_tokens": stats.mean([float(r.reasoning_tokens) for r in recs]),
                "truncated": stats.mean([float(r.truncated) for r in recs]),
                "no_answer": stats.mean([float(_no_answer(r)) for r in recs]),
                "flip": flip_of.get(item_id, "unpaired"),
                "question": item.question if item is not None else None,
                "target": item.target if item is not None else None,
            }  # fmt: skip
        )
    return rows


def rows(cand: Run, base: Run | None = None) -> list[dict[str, Any]]:
    """One dict per (bench, item, side): the candidate's rows (and the baseline's, for shared benches)."""
    out: list[dict[str, Any]] = []
    base_benches = {b.name for b in base.spec.benches} if base is not None else set()
    for spec in cand.spec.benches:
        cand_values, _ = item_values(cand, spec.name)
        paired = base is not None and spec.name in base_benches
        base_values = item_values(base, spec.name)[0] if paired else {}
        flip_of = {}
        for item_id, c in cand_values.items():
            if item_id in base_values:
                b = base_values[item_id]
                flip_of[item_id] = "lost" if b > c else "gained" if c > b else "same"
        items, _ = items_of([cand, base] if paired else [cand], spec.name)
        out += _side_rows(cand, "candidate", spec.name, cand_values, flip_of, items)
        if paired:
            out += _side_rows(base, "baseline", spec.name, base_values, flip_of, items)
    return out


def to_pandas(cand: Run, base: Run | None = None):
    """The rows as a pandas DataFrame (columns as in COLUMNS)."""
    import pandas as pd

    return pd.DataFrame(rows(cand, base), columns=list(COLUMNS))


def encode(table: list[dict[str, Any]], fmt: str) -> bytes:
    if fmt == "jsonl":
        return b"".join(msgspec.json.encode(row) + b"\n" for row in table)
    if fmt == "csv":
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=list(COLUMNS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(table)
        return text.getvalue().encode()
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        sink = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(table, schema=_schema()), sink)
        return sink.getvalue()
    raise UserError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")


def _schema():
    import pyarrow as pa

    text = {"bench", "item_id", "side", "model", "run", "category", "answer", "finish_reason", "flip", "question", "target"}
    return pa.schema([(c, pa.string() if c in text else pa.int64() if c == "samples" else pa.float64()) for c in COLUMNS])


def cmd_export(argv: list[str]) -> int:
    from engine import baselines
    from engine.records import read_run

    p = argparse.ArgumentParser(prog="python -m engine export", description="One row per item and side of RUN (and its baseline).")
    p.add_argument("run", type=Path, help="run directory")
    p.add_argument("--baseline", default=None, help="baseline run dir or name under baselines/ ('none': the run alone; default: found by model)")
    p.add_argument("--format", default="csv", choices=FORMATS, help="csv (default), parquet or jsonl")
    p.add_argument("--out", type=Path, default=None, help="output file (default: standard output; parquet needs --out)")
    args = p.parse_args(argv)
    if args.format == "parquet" and args.out is None:
        raise UserError("export --format parquet: give --out FILE (parquet is binary)")
    cand = read_run(args.run)
    resolved = baselines.resolve_baseline(args.baseline, cand, [n for n in (cand.spec.base_model, cand.spec.model) if n], ())
    if resolved.run is None and args.baseline != "none":
        print(f"{resolved.message}; exporting {args.run} alone", file=sys.stderr)
    data = encode(rows(cand, resolved.run), args.format)
    if args.out is None:
        sys.stdout.buffer.write(data)
    else:
        from engine.records import atomic_write

        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(args.out, data)
        print(f"export: {args.out}", file=sys.stderr)
    return 0
