"""Terminal rendering of a Verdict (engine/report.py renders the same Verdict as HTML)."""

from __future__ import annotations

from engine.grade.bench import POWER, BenchComparison
from engine.grade.verdict import Verdict


def _pct(x: float) -> str:
    return "-" if x != x else f"{100 * x:.1f}%"


def _pts(x: float) -> str:
    return "-" if x != x else f"{100 * x:+.1f}"


def _p(x: float) -> str:
    return "-" if x != x else f"{x:.3g}"


def _level(level: float) -> str:
    return f"{100 * level:.4g}%"


def delta_cell(r: BenchComparison) -> str:
    """Δ and its interval as the table prints it; "identical" when no item differs."""
    if r.n and r.b == r.c == 0 and not r.verdict.startswith("INCOMPLETE"):
        return "bit-identical" if r.identical else "no item differs"
    mark = "ʷ" if r.full_split is not None else ""
    return f"{_pts(r.delta)} [{_pts(r.delta_ci[0])}, {_pts(r.delta_ci[1])}]{mark}"


def format_verdict(v: Verdict) -> str:
    lines = [
        f"baseline  {v.baseline_model}  ({v.baseline})",
        f"candidate {v.candidate_model}  ({v.candidate})",
    ]
    if v.decision == "NOT_COMPARABLE":
        lines.append(f"⚠ {v.headline}")
        lines += [f"  {d.field}: baseline {d.baseline!r} vs candidate {d.candidate!r} ({d.remedy})" for d in v.differences]
        lines += v.notes
        return "\n".join(lines)
    for d in v.waived:
        lines.append(f"⚠ compared despite differing {d.field}: baseline {d.baseline!r} vs candidate {d.candidate!r} (--allow-differ)")
    lines += v.notes
    if v.benches:
        lines += format_table(v.benches)
        for r in v.benches:
            lines += bench_details(r)
    lines += family_lines(v)
    lines.append(f"verdict: {v.headline} at α={v.alpha}")
    lines.append(f"method: {v.method}")
    return "\n".join(lines)


def family_lines(v: Verdict) -> list[str]:
    """One line per signal family (share of α, fired members) and per gate; "not measured" said."""
    lines = ["", f"signals counted: {', '.join(v.signals)}"]
    for f in v.families:
        if not f.measured:
            lines.append(f"  {f.name:<15} not measured")
            continue
        fired = [m for m in f.members if m.fired]
        tested = sum(m.tested for m in f.members)
        state = "FIRED: " + "; ".join(m.line for m in fired) if fired else "nothing fired"
        share = f"{100 * f.share:.0f}% of α" if f.share else "no share (no member can reach its level)"
        lines.append(f"  {f.name:<15} {share}, {tested} of {len(f.members)} member(s) tested; {state}")
    if v.probe is not None:
        if v.probe.measured:
            lines.append(f"  {'KL probe':<15} mean KL {v.probe.kl_mean:.4g} ± {v.probe.kl_se:.2g}, same top-1 {_pct(v.probe.top1_agree or 0.0)} "
                         f"({v.probe.n_positions} positions)")  # fmt: skip
        else:
            lines.append(f"  {'KL probe':<15} {v.probe.note}")
    for g in v.gates:
        lines.append(f"  gate {g.name}: {'FAILED: ' + g.line if g.failed else 'passed'} (threshold {g.threshold:g})")
    return lines


def format_table(rows: list[BenchComparison]) -> list[str]:
    header = (
        f"{'bench':<10} {'n':>9} {'base':>6} {'cand':>6} {'Δ pts [interval]':>22} {'level':>7} {'b/c':>9} {'p':>8} "
        f"{'p adj':>8} {'mid-p':>8} {'trunc base→cand':>16}  verdict"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        n = f"{r.n}" if r.n == r.n_baseline else f"{r.n}/{r.n_baseline}"
        trunc = f"{_pct(r.base_trunc)}→{_pct(r.cand_trunc)}{'⚠' if r.truncation.flagged else ''}" if r.canaries_measured else "n/a"
        holm = _p(r.p_holm) if r.in_family else "out"
        lines.append(
            f"{r.bench:<10} {n:>9} {_pct(r.base_acc):>6} {_pct(r.cand_acc):>6} {delta_cell(r):>22} {_level(r.ci_level):>7} "
            f"{f'{r.b}/{r.c}':>9} {_p(r.p_two_sided):>8} {holm:>8} {_p(r.p_two_sided_midp):>8} {trunc:>16}  {r.verdict}"
        )
    if any(r.full_split is not None for r in rows):
        lines.append("ʷ reweighted to the full split from the tier's stratified subset; the test uses the same weights")
    lines.append(
        "p: two-sided; p adj: Holm in the accuracy family, scaled to the whole decision's α; b/c: items the baseline / "
        "the candidate did better on; interval: the deciding test inverted at `level`, so it excludes 0 exactly when the "
        "verdict is DEGRADED or IMPROVED"
    )
    return lines


def bench_details(r: BenchComparison) -> list[str]:
    lines = [f"\n{r.bench}: {r.test}; per item: {r.per_item}; Δ interval: {r.ci_method}"]
    if r.missing is not None and r.missing.any:
        state = f"graded anyway ({r.missing.excused})" if r.missing.excused else "not graded"
        lines.append(f"  missing: {r.missing.describe()}; {state}")
    if r.avg_at_k is not None:
        lines.append(f"  avg@{r.samples} (mean over samples): base {_pct(r.avg_at_k[0])} cand {_pct(r.avg_at_k[1])}")
    if r.maj_at_k is not None:
        lines.append(f"  maj@{r.samples}: base {_pct(r.maj_at_k[0])} cand {_pct(r.maj_at_k[1])}")
    if r.within_item_var is not None:
        vb, vc = r.within_item_var
        noise = (vb + vc) / r.samples / r.n if r.n else float("nan")
        lines.append(
            f"  within-item variance of the {r.samples} sample scores: base {vb:.3f} cand {vc:.3f} "
            f"(sampling noise alone gives Δ a standard error of {100 * noise**0.5:.1f} pts)"
        )
    if r.binary:
        lines.append(
            f"  flips: both right {r.both_right}, baseline only {r.b}, candidate only {r.c}, both wrong {r.both_wrong} "
            f"(discordance {_pct(r.discordance)}); p one-sided degraded {_p(r.p_degraded)}, mid-p two-sided {_p(r.p_two_sided_midp)}"
        )
    else:
        lines.append(
            f"  per-item differences: baseline better {r.b}, candidate better {r.c}, equal {r.both_right}; "
            f"p one-sided degraded {_p(r.p_degraded)}"
        )
    if not r.in_family:
        lines.append(f"  left out of the Holm family: with {r.b + r.c} discordant items its smallest possible p is {_p(r.p_min)}")
    if r.n:
        lines.append(
            f"  non-inferiority: no drop larger than {100 * r.drop_bound:.1f} pts (one-sided bound at {_level(1 - (1 - r.ci_level) / 2)})"
        )
    if r.planned is not None:
        pl = r.planned
        lines.append(
            f"  planned from discordance {_pct(pl.discordance)} (churn {pl.churn:g}): finds a drop of {100 * pl.mde:.1f} pts with "
            f"{100 * POWER:.0f}% power; an unchanged candidate shows 'no drop > {100 * pl.margin:.1f} pts' with {100 * POWER:.0f}% power"
        )
    if r.full_split is not None:
        fs = r.full_split
        lines.append(
            f"  full split: base {_pct(fs.base_acc)} cand {_pct(fs.cand_acc)} Δ {_pts(fs.delta)} ± {100 * fs.delta_se:.1f} (SE), "
            f"strata cover {_pct(fs.covered)} of the split"
        )
    if r.early_stop is not None:
        es = r.early_stop
        state = f"stopped after {es.after_items} items" if es.stopped else f"ran to the end ({es.after_items} items in order)"
        lines.append(
            f"  early stop: {state}, {es.losses} losses of {es.discordant} discordant pairs, design p {_p(es.p_design)}"
            + (" (Δ and its interval are fixed-n figures, biased away from 0 by stopping)" if es.stopped else "")
        )
    if r.strata is not None:
        st = r.strata
        moved = f"moved most: {st.moved_most}" if st.moved_most else "no category moved beyond chance (Holm over every category)"
        lines.append(
            f"  per category ({st.test_method}: χ²={st.test.statistic:.2f}, p two-sided {_p(st.test.p_two_sided)}); {moved}"
        )
        lines.append(f"    {'category':<22} {'n':>5} {'base':>6} {'cand':>6} {'Δ pts':>7} {'b/c':>7} {'p':>8} {'p Holm':>8}")
        for s in st.rows:
            mark = " ◀" if s.stratum == st.moved_most else ""
            lines.append(
                f"    {s.stratum[:22]:<22} {s.n:>5} {_pct(s.base_acc):>6} {_pct(s.cand_acc):>6} {_pts(s.delta):>7} "
                f"{f'{s.b}/{s.c}':>7} {_p(s.p_two_sided):>8} {_p(s.p_holm):>8}{mark}"
            )
    t, ln, un = r.truncation, r.length, r.unparsed
    if not r.canaries_measured:
        lines.append("  truncation, length: n/a (the records carry no finish reasons or token counts)")
    lines.append(
        f"  truncation: {_pct(t.base_rate)} → {_pct(t.cand_rate)} ({t.up} items up, {t.down} down, p {_p(t.p_more)}, Holm {_p(t.p_holm)})"
        + ("  ⚠ FLAG" if t.flagged else "")
    )
    if not r.canaries_measured:
        lines.pop(-1)  # the truncation line above: n/a, said once
    sh = ln.shift
    lines.append(
        f"  {ln.measure}: median {sh.base_median:.0f} → {sh.cand_median:.0f}, mean {sh.base_mean:.0f} → {sh.cand_mean:.0f}, "
        f"median per-item ratio ×{sh.median_ratio:.2f}, "
        f"Wilcoxon p longer {_p(sh.p_longer)}, Holm {_p(ln.p_holm)}" + ("  ⚠ FLAG" if ln.flagged else "")
    )
    if not r.canaries_measured:
        lines.pop(-1)
    lines.append(
        f"  no answer / scorer failure: {_pct(un.base_rate)} → {_pct(un.cand_rate)} of samples ({un.up} items up, {un.down} down, "
        f"p {_p(un.p_more)}, Holm {_p(un.p_holm)})" + ("  ⚠ FLAG" if un.flagged else "")
    )
    return lines
