"""`python -m engine report RUN [--baseline BASE] --html FILE`: one self-contained HTML page.

Everything is inline (CSS, and the plots as base64 PNGs drawn with matplotlib's Agg backend), so the
page opens offline and can be attached to a ticket as one file. With a baseline it shows the
comparison (table, per-bench delta and interval, flip matrices, per-category bars, truncation and
length canaries); without one, the run's own accuracy, categories, truncation and lengths. A judged
bench (trader_traits) is graded from its judgments instead: its trait table (engine/traits_report.py,
the same rows and texts as the terminal), gate verdicts and the judge's noise floor.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import msgspec
import numpy as np

from engine import judge, kl_panel, pairing, provenance, show, stats, traits_report
from engine.grade.bench import BenchComparison
from engine.grade.text import _level, _p, _pct, _pts, bench_details, delta_cell, family_lines
from engine.grade.verdict import Verdict
from engine.pairing import PairedItems
from engine.records import Run, incomplete_reason
from engine.traits_report import TraitsReport

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.5em} h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right} th{background:#f4f4f4}
td.l,th.l{text-align:left}
.bad{color:#b00020;font-weight:600} .good{color:#1b5e20;font-weight:600} .muted{color:#666;font-size:.85em}
.flag{background:#fff3cd;border:1px solid #e0c36c;padding:.4em .8em;margin:.3em 0}
img{max-width:100%}
.flips td{min-width:5em}
.prov{font-size:.8em;color:#444;background:#fafafa;border:1px solid #eee;padding:.3em .8em}
.prov td,.prov th{border:none;padding:1px 6px;text-align:left;vertical-align:top}
.flip{border-top:1px solid #eee;margin-top:.6em} .flip pre{white-space:pre-wrap;max-height:30em;overflow:auto}
table.sides{width:100%} table.sides td{width:50%;vertical-align:top}
"""


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _esc(x: object) -> str:
    return html.escape(str(x))


# ---------------------------------------------------------------------------------------------------
# Comparison


def _summary_table(cmp: Verdict) -> str:
    head = (
        "<tr><th class=l>bench</th><th>n</th><th>baseline</th><th>candidate</th>"
        "<th>Δ pts [interval]</th><th>level</th><th>b / c</th><th>p</th><th>p Holm</th><th>mid-p</th>"
        "<th>no drop &gt; (pts)</th><th>trunc base→cand</th><th class=l>verdict</th></tr>"
    )
    rows = []
    for r in cmp.benches:
        css = "bad" if r.verdict.startswith(("DEGRADED", "INCOMPLETE", "NOT SHOWN")) else "good" if r.verdict.startswith(("IMPROVED", "EQUIVALENT")) else ""
        n = f"{r.n}" if r.n == r.n_baseline else f"{r.n}/{r.n_baseline}"
        rows.append(
            f"<tr><td class=l>{_esc(r.bench)}</td><td>{n}</td><td>{_pct(r.base_acc)}</td><td>{_pct(r.cand_acc)}</td>"
            f"<td>{_esc(delta_cell(r))}</td><td>{_level(r.ci_level)}</td><td>{r.b} / {r.c}</td>"
            f"<td>{_p(r.p_two_sided)}</td><td>{_p(r.p_holm) if r.in_family else 'out'}</td><td>{_p(r.p_two_sided_midp)}</td>"
            f"<td>{100 * r.drop_bound:.1f}</td>"
            f"<td>{_pct(r.base_trunc)} → {_pct(r.cand_trunc)}{' ⚠' if r.truncation.flagged else ''}</td>"
            f"<td class='l {css}'>{_esc(r.verdict)}</td></tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def _forest_plot(cmp: Verdict) -> str:
    plt = _plt()
    rows = [r for r in cmp.benches if r.n]
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(rows) + 1.2))
    for y, r in enumerate(rows):
        delta = r.delta
        lo, hi = r.delta_ci
        colour = "#b00020" if r.verdict.startswith("DEGRADED") else "#1b5e20" if r.verdict == "IMPROVED" else "#455a64"
        ax.errorbar(100 * delta, y, xerr=[[100 * (delta - lo)], [100 * (hi - delta)]], fmt="o", color=colour, capsize=4)
        if cmp.margin is not None:
            ax.plot([-100 * cmp.margin], [y], marker="|", markersize=14, color="#999")
    ax.axvline(0, color="#222", linewidth=0.8)
    ax.set_yticks(range(len(rows)), [f"{r.bench} ({_level(r.ci_level)})" for r in rows])
    ax.invert_yaxis()
    label = "Δ accuracy, candidate − baseline (pts); interval: the deciding test inverted at its Holm step"
    ax.set_xlabel(label + ("; grey tick: −margin" if cmp.margin is not None else ""))
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def _flip_matrix(r: BenchComparison) -> str:
    if r.binary:
        return (
            f"<table class=flips><tr><th></th><th>candidate right</th><th>candidate wrong</th></tr>"
            f"<tr><th>baseline right</th><td>{r.both_right}</td><td class=bad>{r.b}</td></tr>"
            f"<tr><th>baseline wrong</th><td class=good>{r.c}</td><td>{r.both_wrong}</td></tr></table>"
        )
    return (
        f"<table class=flips><tr><th>baseline better</th><th>equal</th><th>candidate better</th></tr>"
        f"<tr><td class=bad>{r.b}</td><td>{r.both_right}</td><td class=good>{r.c}</td></tr></table>"
    )


def _strata_plot(r: BenchComparison) -> str:
    plt = _plt()
    rows = r.strata.rows
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.2))
    y = np.arange(len(rows))
    ax.barh(y - 0.2, [100 * s.base_acc for s in rows], height=0.4, label="baseline", color="#90a4ae")
    ax.barh(y + 0.2, [100 * s.cand_acc for s in rows], height=0.4, label="candidate", color="#ef6c00")
    for yi, s in zip(y, rows, strict=True):
        ax.text(max(100 * s.base_acc, 100 * s.cand_acc) + 1, yi, f"{100 * s.delta:+.1f}", va="center", fontsize=8)
    ax.set_yticks(y, [s.stratum for s in rows])
    ax.invert_yaxis()
    ax.set_xlim(0, 110)
    ax.set_xlabel("accuracy (%) per category; label: Δ pts")
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def _strata_table(r: BenchComparison) -> str:
    st = r.strata
    rows = "".join(
        f"<tr><td class=l>{_esc(s.stratum)}{' ◀' if s.stratum == st.moved_most else ''}</td><td>{s.n}</td>"
        f"<td>{s.population or '–'}</td><td>{_pct(s.base_acc)}</td><td>{_pct(s.cand_acc)}</td><td>{_pts(s.delta)}</td>"
        f"<td>{s.b} / {s.c}</td><td>{_p(s.p_two_sided)}</td><td>{_p(s.p_holm)}</td></tr>"
        for s in st.rows
    )
    return (
        f"<p>{_esc(st.test_method)}: χ² = {st.test.statistic:.2f}, p two-sided {_p(st.test.p_two_sided)}; "
        + (f"moved most: <b>{_esc(st.moved_most)}</b>" if st.moved_most else "no category moved beyond chance (Holm over every category)")
        + "</p>"
        "<table><tr><th class=l>category</th><th>n</th><th>full split</th><th>baseline</th><th>candidate</th>"
        f"<th>Δ pts</th><th>b / c</th><th>p (exact)</th><th>p Holm</th></tr>{rows}</table>"
    )


def _truncation_plot(cmp: Verdict) -> str:
    plt = _plt()
    rows = cmp.benches
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(rows) + 1.2))
    y = np.arange(len(rows))
    ax.barh(y - 0.2, [100 * r.base_trunc for r in rows], height=0.4, label="baseline", color="#90a4ae")
    ax.barh(y + 0.2, [100 * r.cand_trunc for r in rows], height=0.4, label="candidate", color="#ef6c00")
    ax.set_yticks(y, [r.bench + (" ⚠" if r.truncation.flagged else "") for r in rows])
    ax.invert_yaxis()
    # A fixed floor for the axis: 0.7% against 0.7% must not fill the plot like 70% against 70%.
    top = max([5.0] + [100 * r.cand_trunc for r in rows if r.n] + [100 * r.base_trunc for r in rows if r.n])
    ax.set_xlim(0, min(100.0, 1.15 * top))
    ax.set_xlabel("completions that hit the generation cap (%)")
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def _length_plot(items: PairedItems, cap: int) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    worse, better = items.base > items.cand, items.cand > items.base
    same = ~(worse | better)
    for mask, colour, label in ((same, "#9e9e9e", "same score"), (worse, "#b00020", "baseline better"), (better, "#1b5e20", "candidate better")):
        if mask.any():
            ax.scatter(items.base_len[mask] + 1, items.cand_len[mask] + 1, s=10, alpha=0.6, color=colour, label=label)
    top = max(float(np.max(items.base_len, initial=1)), float(np.max(items.cand_len, initial=1)), cap) + 1
    ax.plot([1, top], [1, top], color="#222", linewidth=0.8)
    ax.axhline(cap + 1, color="#ef6c00", linestyle="--", linewidth=0.8, label=f"cap {cap}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"baseline {items.length_measure} + 1")
    ax.set_ylabel(f"candidate {items.length_measure} + 1")
    ax.legend(fontsize=8)
    return _png(fig)


def _comparison_page(cmp: Verdict, base: Run, cand: Run) -> str:
    parts = [f"<div class=flag>compared despite differing {_esc(d.field)}: {_esc(d.baseline)} vs {_esc(d.candidate)}</div>" for d in cmp.waived]
    parts += [_summary_table(cmp), f"<p class=muted>method: {_esc(cmp.method)}</p>"]
    parts += ["<h2>Δ per bench</h2>", _forest_plot(cmp)]
    parts += ["<h2>Truncation</h2>", _truncation_plot(cmp)]
    caps = {b.name: b.max_tokens for b in cand.spec.benches}
    for r in cmp.benches:
        parts.append(f"<h2>{_esc(r.bench)}</h2>")
        parts.append(f"<p>{_esc(r.test)}; per item: {_esc(r.per_item)}; Δ interval: {_esc(r.ci_method)}. <b>{_esc(r.verdict)}</b></p>")
        parts += [f"<p>{_esc(line.strip())}</p>" for line in bench_details(r)[1:] if line.strip().startswith(("missing", "non-inferiority", "planned", "within-item", "maj@", "avg@", "left out"))]
        if r.early_stop is not None:
            es = r.early_stop
            parts.append(
                f"<p>early stop: {'stopped after' if es.stopped else 'ran to the end,'} {es.after_items} items; "
                f"{es.losses} losses of {es.discordant} discordant pairs; design p {_p(es.p_design)}</p>"
            )
        parts += ["<h3>Flip matrix</h3>", _flip_matrix(r)]
        if r.strata is not None:
            parts += ["<h3>Per category</h3>", _strata_plot(r), _strata_table(r)]
        items = pairing.pair_items(base, cand, r.bench)
        sh = r.length.shift
        parts += [
            f"<h3>Generation length ({_esc(r.length.measure)})</h3>",
            f"<p>median {sh.base_median:.0f} → {sh.cand_median:.0f}; mean {sh.base_mean:.0f} → {sh.cand_mean:.0f}; median per-item ratio ×{sh.median_ratio:.2f}; "
            f"Wilcoxon p (candidate longer) {_p(sh.p_longer)}{' ⚠' if r.length.flagged else ''}; "
            f"truncation {r.truncation.up} items up / {r.truncation.down} down, p {_p(r.truncation.p_more)} (Holm {_p(r.truncation.p_holm)}); "
            f"no answer / scorer failure {_pct(r.unparsed.base_rate)} → {_pct(r.unparsed.cand_rate)}, "
            f"{r.unparsed.up} items up / {r.unparsed.down} down, Holm p {_p(r.unparsed.p_holm)}{' ⚠' if r.unparsed.flagged else ''}</p>",
        ]
        if r.n:
            parts.append(_length_plot(items, caps.get(r.bench, 0)))
    return "".join(parts)


# ---------------------------------------------------------------------------------------------------
# A run on its own


def _single_page(run: Run) -> str:
    plt = _plt()
    parts = [f"<h1>Run report: {_esc(run.spec.model)}</h1>", f"<p class=muted>{_esc(run.dir)} (no baseline given or found)</p>"]
    if (incomplete := incomplete_reason(run)) is not None:
        parts[0] = f"<h1>Run report: {_esc(run.spec.model)} (INCOMPLETE)</h1><p class=flag>{_esc(incomplete)}</p>"
    rows = []
    for spec in run.spec.benches:
        records = run.records.get(spec.name, [])
        values = pairing.per_item_values(spec, records)
        n = len(values)
        acc = stats.mean(list(values.values()))
        binary = all(v in (0.0, 1.0) for v in values.values())
        lo, hi = stats.wilson_interval(sum(values.values()), n) if n and binary else (float("nan"),) * 2
        trunc = stats.mean([float(r.truncated) for r in records])
        rows.append((spec, records, values, acc, lo, hi, trunc))
    parts.append(
        "<table><tr><th class=l>bench</th><th>n</th><th>accuracy [95% Wilson]</th><th>truncated</th></tr>"
        + "".join(
            f"<tr><td class=l>{_esc(s.name)}</td><td>{len(v)}</td><td>{_pct(a)} [{_pct(lo)}, {_pct(hi)}]</td><td>{_pct(t)}</td></tr>"
            for s, _, v, a, lo, hi, t in rows
        )
        + "</table>"
    )
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(rows) + 1.2))
    for y, (_, _, _, acc, lo, hi, _) in enumerate(rows):
        ax.errorbar(100 * acc, y, xerr=[[100 * (acc - lo)], [100 * (hi - acc)]] if lo == lo else None, fmt="o", capsize=4)
    ax.set_yticks(range(len(rows)), [r[0].name for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("accuracy (%)")
    parts += ["<h2>Accuracy</h2>", _png(fig)]
    for spec, records, values, _, _, _, _ in rows:
        parts.append(f"<h2>{_esc(spec.name)}</h2>")
        category = {r.item_id: r.category or "" for r in records}
        names = sorted(set(category.values()))
        if len(names) > 1:
            accs = [stats.mean([v for i, v in values.items() if category[i] == c]) for c in names]
            fig, ax = plt.subplots(figsize=(8, 0.45 * len(names) + 1.2))
            ax.barh(range(len(names)), [100 * a for a in accs], color="#90a4ae")
            ax.set_yticks(range(len(names)), names)
            ax.invert_yaxis()
            ax.set_xlabel("accuracy (%) per category")
            parts.append(_png(fig))
        measure = "reasoning_tokens" if run.spec.think else "completion_tokens"
        lengths = [getattr(r, measure) for r in records]
        if lengths:
            fig, ax = plt.subplots(figsize=(6, 3))
            ax.hist(lengths, bins=40, color="#90a4ae")
            ax.axvline(spec.max_tokens, color="#ef6c00", linestyle="--", label=f"cap {spec.max_tokens}")
            ax.set_xlabel(measure.replace("_", " "))
            ax.legend(fontsize=8)
            parts.append(_png(fig))
    return "".join(parts)


# ---------------------------------------------------------------------------------------------------
# Judged benches: the trait tables


def _traits_panel(reports: list[TraitsReport]) -> str:
    parts = []
    for report in reports:
        with_base = report.overall.base_rate is not None
        columns = list(traits_report.row_cells(report.overall, with_base))
        head = "".join(
            f"<th{' class=l' if c in ('trait', 'name', 'grading', 'verdict') else ''}>{_esc(traits_report.column_header(c))}</th>"
            for c in columns
        )
        rows = []
        for row in [*report.rows, report.overall]:
            cells = traits_report.row_cells(row, with_base)
            css = {True: "good", False: "bad", None: ""}[row.gate_pass]
            rows.append(
                "<tr>"
                + "".join(
                    f"<td class='l {css if c == 'verdict' else ''}'>{_esc(t)}</td>"
                    if c in ("trait", "name", "grading", "verdict")
                    else f"<td>{_esc(t)}</td>"
                    for c, t in cells.items()
                )
                + "</tr>"
            )
        parts += [
            f"<h2>{_esc(report.bench)}: trait table</h2>",
            f"<p class=muted>{_esc(traits_report.title_line(report))}</p>",
            f"<table class=traits>{'<tr>' + head + '</tr>'}{''.join(rows)}</table>",
            f"<p class={'good' if report.gates_passed else 'bad'}>{_esc(traits_report.gates_line(report))}</p>",
            f"<p>{_esc(traits_report.unscored_line(report))}</p>",
        ]
        if report.agreement:
            cells = [traits_report.agreement_cells(a) for a in report.agreement]
            parts += [
                "<h3>Judge noise floor (self-agreement)</h3>",
                "<table class=agreement><tr>"
                + "".join(f"<th{' class=l' if c == 'trait' else ''}>{_esc(c)}</th>" for c in cells[0])
                + "</tr>"
                + "".join(
                    "<tr>"
                    + "".join(
                        f"<td{' class=l' if c == 'trait' else ''}>{_esc(t)}</td>" for c, t in row.items()
                    )
                    + "</tr>"
                    for row in cells
                )
                + "</table>",
                "<p class=muted>re-judgments with other judge seeds and the rubric shuffled, against the verdict; "
                "κ: Cohen's kappa on PASS/FAIL; same score: score traits, exact 1-5 score. A baseline/candidate "
                "difference below this disagreement is judge noise.</p>",
            ]
        parts.append(f"<p class=muted>method: {_esc(report.method)}</p>")
    return "".join(parts)


def _without(run: Run, names: set[str]) -> Run:
    """The run with the benches in `names` left out (judged benches: graded by their trait table)."""
    keep = tuple(b for b in run.spec.benches if b.name not in names)
    return msgspec.structs.replace(run, spec=msgspec.structs.replace(run.spec, benches=keep))


FLIPS_SHOWN = 5  # flipped items per bench and direction in the report (`show` lists them all)


def _verdict_panel(v: Verdict) -> str:
    """The decision as `compare` prints it: headline, reasons, every family and gate, notes."""
    css = "good" if v.decision in ("PASS", "EQUIVALENT") else "bad"
    parts = [f"<p class={css}>verdict: {_esc(v.headline)} at α={v.alpha}</p>"]
    parts += [f"<div class=flag>⚠ {_esc(r)}</div>" for r in v.reasons]
    parts += [f"<div class=flag>{_esc(d.field)}: baseline {_esc(d.baseline)} vs candidate {_esc(d.candidate)} ({_esc(d.remedy)})</div>"
              for d in v.differences]  # fmt: skip
    if v.decision != "NOT_COMPARABLE":
        parts.append("<pre>" + _esc("\n".join(family_lines(v)).strip()) + "</pre>")
    parts += [f"<p class=muted>{_esc(n)}</p>" for n in v.notes]
    return "".join(parts)


def write_report(cand: Run, base: Run | None, out: Path, verdict: Verdict | None = None) -> None:
    """Write the page: the verdict `grade` returned (this page decides nothing), its bench tables and
    plots, the trait tables, the probe panel; a run on its own without a verdict."""
    judged = {b.name for b in judge.judged_benches(cand.spec)}
    cand_rest = _without(cand, judged)
    if verdict is not None and base is not None:
        body = (
            f"<h1>Degradation report: {_esc(verdict.candidate_model)} vs {_esc(verdict.baseline_model)}</h1>"
            f"<p class=muted>baseline {_esc(verdict.baseline)}<br>candidate {_esc(verdict.candidate)}</p>"
        )
        body += _verdict_panel(verdict)
        if verdict.benches:
            body += _comparison_page(verdict, _without(base, judged), cand_rest)
        traits = [msgspec.convert(t.report, TraitsReport) for t in verdict.traits]
    else:
        traits = traits_report.traits_report(cand, None) if judged else []
        if cand_rest.spec.benches:
            body = _single_page(cand_rest)
        else:
            body = f"<h1>Run report: {_esc(cand.spec.model)}</h1><p class=muted>{_esc(cand.dir)} (no baseline given or found)</p>"
    body += _traits_panel(traits)
    gates = [(g.line, g.failed) for g in verdict.gates if g.name.startswith("kl")] if verdict is not None else []
    body += kl_panel.html_section(cand, base, gates=gates)
    if base is not None:
        body += show.flips_section(base, cand, per_way=FLIPS_SHOWN)
    body = body.replace("</h1>", "</h1>" + provenance.html_header(verdict.provenance if verdict is not None and verdict.provenance else provenance.collect(cand, base)), 1)
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>degradation report</title>"
        f"<style>{_CSS}</style></head><body>{body}</body></html>"
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
