"""What the evidence pages read: the grade of a pair (one adapter), the flipped items, the items as asked.

`grade_pair` is the one place the evidence commands (show, report --markdown, card, export) obtain
a grade; they read only the `Graded` fields below, so the grading code behind it can change without
touching them. Flipped items are found from the runs' records (per-item values as the grade pairs
them; a judged bench's PASS/FAIL verdicts), and shown with the items file each run keeps
(records/<bench>.items.jsonl); a run written before items files falls back to the bench's own data
when it is on this machine and its fingerprint matches.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from engine import judge, pairing
from engine.errors import UserError
from engine.grade.decide import GradeOptions
from engine.grade.load import grade_runs
from engine.grade.verdict import Verdict
from engine.records import ItemRecord, ItemText, Run, read_items

Graded = Verdict  # the grade as the evidence pages read it: the decision's own Verdict


def without(run: Run, names: set[str]) -> Run:
    keep = tuple(b for b in run.spec.benches if b.name not in names)
    return msgspec.structs.replace(run, spec=msgspec.structs.replace(run.spec, benches=keep))


def grade_pair(
    base: Run,
    cand: Run,
    *,
    alpha: float = 0.05,
    waive: tuple[str, ...] = (),
    allow_incomplete: bool = False,
    margin: float | None = None,
) -> Verdict | None:
    """The Verdict of the pair, graded by the one decision (engine/grade); None when they share no bench."""
    if not {b.name for b in cand.spec.benches} & {b.name for b in base.spec.benches}:
        return None
    options = GradeOptions(alpha=alpha, waive=tuple(waive), allow_incomplete=allow_incomplete, margin=margin)
    return grade_runs(base, cand, options)


# ---------------------------------------------------------------------------------------------------
# Items as asked


def _items_from_data(run: Run, bench: str, data_dir: Path | None) -> dict[str, ItemText]:
    """A run without an items file: the bench's data on this machine, when it is the very split the run used."""
    import benches as bench_registry

    spec = pairing.bench_spec(run, bench)
    if spec is None or run.spec.source != "native" or bench not in bench_registry.BENCHES:
        return {}
    module = bench_registry.get_bench(bench)
    if data_dir is None and bench not in bench_registry.OFFLINE_BENCHES:
        return {}
    try:
        items = module.load(data_dir)
    except (UserError, OSError):
        return {}
    if bench_registry.data_fingerprint(items) != spec.data_fingerprint:
        return {}
    # The prompt is the one sent only while the bench's prompt code is the run's version (a tool-using
    # bench's prompt also depends on the tool format: left out).
    same_prompt = module.VERSION == spec.version and not getattr(module, "TOOLS", None)
    return {
        it.id: ItemText(
            id=it.id, question=it.question, target=it.target, category=it.category,
            messages=module.messages(it, run.spec.think) if same_prompt else [],
        )  # fmt: skip
        for it in items
    }


def items_of(runs: list[Run], bench: str, data_dir: Path | None = None) -> tuple[dict[str, ItemText], str]:
    """(item id -> item as asked, where they came from): the first run's items file that exists, else the data."""
    for run in runs:
        found = read_items(run.dir, bench)
        if found:
            return found, f"{run.dir}/records/{bench}.items.jsonl"
    for run in runs:
        found = _items_from_data(run, bench, data_dir)
        if found:
            return found, f"the {bench} data on this machine (fingerprint matches {run.dir})"
    return {}, "neither run (both written before items files; pass --data-dir to read them from the data)"


# ---------------------------------------------------------------------------------------------------
# Flipped items


class Side(msgspec.Struct, kw_only=True):
    value: float  # the item's value as graded (mean / maj@k of its samples; judged: PASS = 1)
    records: list[ItemRecord]  # its samples, in sample order
    rationale: list[str] = []  # judged benches: the judge's rationale per sample


class Flip(msgspec.Struct, kw_only=True):
    bench: str
    item_id: str
    direction: str  # "lost" (baseline better) | "gained" (candidate better) | "same"
    category: str | None
    item: ItemText | None  # None: question and gold not recorded
    base: Side
    cand: Side


def _judged_sides(run: Run, bench: str) -> tuple[dict[str, float], dict[str, list[str]]]:
    spec = pairing.bench_spec(run, bench)
    records = run.records.get(bench, [])
    found = judge.judgments(run.dir, run.spec, spec, records)
    values: dict[str, list[float]] = {}
    rationale: dict[str, list[str]] = {}
    for (item_id, _sample), j in sorted(found.items()):
        values.setdefault(item_id, []).append(1.0 if j is not None and j.verdict == "PASS" else 0.0)
        rationale.setdefault(item_id, []).append("(cut inside its reasoning: FAIL, not judged)" if j is None else j.rationale)
    return {k: sum(v) / len(v) for k, v in values.items()}, rationale


def item_values(run: Run, bench: str) -> tuple[dict[str, float], dict[str, list[str]]]:
    """(item id -> its value as graded, item id -> the judge's rationale per sample for a judged bench)."""
    spec = pairing.bench_spec(run, bench)
    if spec.name in {b.name for b in judge.judged_benches(run.spec)}:
        return _judged_sides(run, bench)
    return pairing.per_item_values(spec, run.records.get(bench, [])), {}


def flips(
    base: Run, cand: Run, bench: str, *, item_id: str | None = None, data_dir: Path | None = None
) -> list[Flip]:
    """Items whose value differs between the runs (or the one `item_id`, flipped or not), losses first."""
    spec = pairing.bench_spec(cand, bench)
    if spec is None or pairing.bench_spec(base, bench) is None:
        raise UserError(f"--bench {bench}: not in both runs (candidate has {', '.join(b.name for b in cand.spec.benches)})")
    base_groups = pairing.grouped(base.records.get(bench, []))
    cand_groups = pairing.grouped(cand.records.get(bench, []))
    (base_values, base_why), (cand_values, cand_why) = item_values(base, bench), item_values(cand, bench)
    items, _ = items_of([cand, base], bench, data_dir)
    ids = [i for i in base_groups if i in cand_groups]
    if item_id is not None:
        if item_id not in ids:
            raise UserError(f"--item {item_id}: not an item both runs answered in {bench}")
        ids = [item_id]
    out = []
    for i in ids:
        b, c = base_values.get(i, 0.0), cand_values.get(i, 0.0)
        if b == c and item_id is None:
            continue
        out.append(
            Flip(
                bench=bench, item_id=i, direction="lost" if b > c else "gained" if c > b else "same",
                category=cand_groups[i][0].category, item=items.get(i),
                base=Side(value=b, records=base_groups[i], rationale=base_why.get(i, [])),
                cand=Side(value=c, records=cand_groups[i], rationale=cand_why.get(i, [])),
            )  # fmt: skip
        )
    order = {"lost": 0, "gained": 1, "same": 2}
    return sorted(out, key=lambda f: order[f.direction])


def shared_benches(base: Run, cand: Run) -> list[str]:
    names = {b.name for b in base.spec.benches}
    return [b.name for b in cand.spec.benches if b.name in names]
