"""Compare a candidate run against a baseline run, bench by bench, on items aligned by id."""

from __future__ import annotations

import sys
from pathlib import Path

import msgspec

from engine import stats
from engine.errors import NotComparable
from engine.records import SPEC_FILE, ItemRecord, Run, contract_diff, read_run

# Contract fields a user may knowingly waive (noise-floor experiments: the same model at another seed
# or in another engine configuration). Everything else keeps its items or prompts from lining up.
WAIVABLE = ("seed", "engine.backend", "engine.dtype", "engine.chunked_prefill", "engine.bs1")


class BenchComparison(msgspec.Struct, kw_only=True):
    bench: str
    n: int  # aligned items
    n_baseline: int
    base_acc: float
    cand_acc: float
    delta: float  # candidate - baseline, accuracy units
    b: int  # baseline better on the item
    c: int  # candidate better on the item
    p_two_sided: float
    p_degraded: float
    p_degraded_holm: float
    p_improved_holm: float
    base_trunc: float
    cand_trunc: float
    verdict: str


class Comparison(msgspec.Struct, kw_only=True):
    baseline: str
    candidate: str
    baseline_model: str
    candidate_model: str
    alpha: float
    method: str
    waived: list[tuple[str, object, object]]
    benches: list[BenchComparison]
    degraded: bool


def _per_item(bench: str, records: list[ItemRecord]) -> tuple[dict[str, float], dict[str, float]]:
    """item id -> per-item score (the bench's `aggregate`, else the mean over samples), and -> share of
    its samples that hit the cap."""
    import benches

    module = benches.get_bench(bench)
    aggregate = getattr(module, "aggregate", None)
    grouped: dict[str, list[ItemRecord]] = {}
    for rec in records:
        grouped.setdefault(rec.item_id, []).append(rec)
    scores = {
        k: aggregate(v) if aggregate else stats.mean([r.score for r in v]) for k, v in grouped.items()
    }
    truncs = {k: stats.mean([float(r.truncated) for r in v]) for k, v in grouped.items()}
    return scores, truncs


def check_comparable(base: Run, cand: Run, waive: tuple[str, ...] = ()) -> list[tuple[str, object, object]]:
    """Raise NotComparable listing every differing contract field; return the waived differences."""
    bad = [w for w in waive if w not in WAIVABLE]
    if bad:
        raise NotComparable(f"--allow-differ {','.join(bad)}: only {', '.join(WAIVABLE)} can be waived")
    diffs = contract_diff(base.spec, cand.spec)
    blocking = [d for d in diffs if d[0] not in waive]
    if blocking:
        lines = [f"⚠ NOT COMPARABLE: {cand.dir} cannot be graded against {base.dir}"]
        lines += [f"  {field}: baseline {bval!r} vs candidate {cval!r}" for field, bval, cval in blocking]
        raise NotComparable("\n".join(lines))
    return [d for d in diffs if d[0] in waive]


def compare_runs(base: Run, cand: Run, alpha: float = 0.05, waive: tuple[str, ...] = ()) -> Comparison:
    waived = check_comparable(base, cand, waive)
    rows: list[BenchComparison] = []
    for bench in [b.name for b in cand.spec.benches]:
        base_scores, base_trunc = _per_item(bench, base.records.get(bench, []))
        cand_scores, cand_trunc = _per_item(bench, cand.records.get(bench, []))
        ids = [i for i in base_scores if i in cand_scores]
        x = [base_scores[i] for i in ids]
        y = [cand_scores[i] for i in ids]
        b, c = stats.discordant(x, y)
        test = stats.mcnemar_exact(b, c)
        rows.append(
            BenchComparison(
                bench=bench,
                n=len(ids),
                n_baseline=len(base_scores),
                base_acc=stats.mean(x),
                cand_acc=stats.mean(y),
                delta=stats.mean(y) - stats.mean(x) if ids else float("nan"),
                b=b,
                c=c,
                p_two_sided=test.p_two_sided,
                p_degraded=test.p_degraded,
                p_degraded_holm=test.p_degraded,
                p_improved_holm=test.p_improved,
                base_trunc=stats.mean([base_trunc[i] for i in ids]),
                cand_trunc=stats.mean([cand_trunc[i] for i in ids]),
                verdict="",
            )
        )
    # Holm over the benches of this run, separately for each one-sided direction.
    for row, p in zip(rows, stats.holm([r.p_degraded for r in rows]), strict=True):
        row.p_degraded_holm = p
    for row, p in zip(rows, stats.holm([r.p_improved_holm for r in rows]), strict=True):
        row.p_improved_holm = p
    for row in rows:
        if row.n == 0:
            row.verdict = "no aligned items"
        elif row.p_degraded_holm < alpha:
            row.verdict = "DEGRADED"
        elif row.p_improved_holm < alpha:
            row.verdict = "IMPROVED"
        else:
            row.verdict = "no change detected"
    return Comparison(
        baseline=str(base.dir),
        candidate=str(cand.dir),
        baseline_model=base.spec.model,
        candidate_model=cand.spec.model,
        alpha=alpha,
        method="exact McNemar (sign test on per-item scores), one-sided for degradation, Holm across benches",
        waived=waived,
        benches=rows,
        degraded=any(r.verdict == "DEGRADED" for r in rows),
    )


def _pct(x: float) -> str:
    return "   -  " if x != x else f"{100 * x:5.1f}%"


def format_table(cmp: Comparison) -> str:
    lines = [
        f"baseline  {cmp.baseline_model}  ({cmp.baseline})",
        f"candidate {cmp.candidate_model}  ({cmp.candidate})",
    ]
    for field, bval, cval in cmp.waived:
        lines.append(f"⚠ compared despite differing {field}: baseline {bval!r} vs candidate {cval!r} (--allow-differ)")
    header = f"{'bench':<10} {'n':>5} {'base':>7} {'cand':>7} {'Δ pts':>7} {'b/c':>9} {'p two':>8} {'p degr(Holm)':>12} {'trunc base→cand':>17}  verdict"
    lines += [header, "-" * len(header)]
    for r in cmp.benches:
        n = f"{r.n}" if r.n == r.n_baseline else f"{r.n}/{r.n_baseline}"
        lines.append(
            f"{r.bench:<10} {n:>5} {_pct(r.base_acc):>7} {_pct(r.cand_acc):>7} {100 * r.delta:>+7.1f} "
            f"{f'{r.b}/{r.c}':>9} {r.p_two_sided:>8.3g} {r.p_degraded_holm:>12.3g} "
            f"{_pct(r.base_trunc) + '→' + _pct(r.cand_trunc).strip():>17}  {r.verdict}"
        )
    verdict = "DEGRADED" if cmp.degraded else "no degradation detected"
    lines.append(f"verdict: {verdict} at α={cmp.alpha} ({cmp.method})")
    incomplete = [r.bench for r in cmp.benches if r.n < r.n_baseline]
    if incomplete:
        lines.append(f"note: candidate has not covered every baseline item of {', '.join(incomplete)}")
    return "\n".join(lines)


def print_comparison(cmp: Comparison, as_json: bool = False) -> None:
    if as_json:
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(cmp), indent=1).decode() + "\n")
    else:
        print(format_table(cmp))


def baselines_root() -> Path:
    """`baselines/` of the working directory, else the one committed beside the package."""
    here = Path("baselines")
    return here if here.is_dir() else Path(__file__).resolve().parent.parent / "baselines"


def find_baseline(names: list[str], cand: Run) -> Run | None:
    """The committed baseline run under baselines/<name>/ whose contract matches the candidate.

    None when no baseline exists for any of the names; NotComparable (with the closest run's
    differences) when some exist but none matches.
    """
    closest: tuple[int, Run, list] | None = None
    for name in dict.fromkeys(n for n in names if n):
        folder = baselines_root() / name
        if not folder.is_dir():
            continue
        for spec_path in sorted(folder.glob(f"*/{SPEC_FILE}")):
            base = read_run(spec_path.parent)
            diffs = contract_diff(base.spec, cand.spec)
            if not diffs:
                return base
            if closest is None or len(diffs) < closest[0]:
                closest = (len(diffs), base, diffs)
    if closest is None:
        return None
    _, base, diffs = closest
    lines = [f"⚠ NOT COMPARABLE: no baseline under {baselines_root()} matches this run; closest is {base.dir}:"]
    lines += [f"  {field}: baseline {bval!r} vs candidate {cval!r}" for field, bval, cval in diffs]
    raise NotComparable("\n".join(lines))
