"""The KL probe as evidence: a table per source, a plot, and the committed ladder beside it.

A mean KL of 2.99 nats says little on its own. The ladder (`kl_ladder.json`, beside a baseline's
kl_reference) holds the probe's panel for known rungs of the same model against the same reference:
the A/A floor (the baseline scored against its own reference) and round-to-nearest int8/int4/int3
copies. The HTML draws them as reference lines, so a reader sees where a candidate falls.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from engine.errors import UserError
from engine.records import Run

LADDER_FILE = "kl_ladder.json"
QUANTILES = (("median", "kl_median"), ("p90", "kl_p90"), ("p99", "kl_p99"), ("p99.9", "kl_p999"), ("max", "kl_max"))


class Rung(msgspec.Struct, kw_only=True):
    name: str  # "A/A", "rtn-int8", ...
    model: str  # what was scored against the reference
    summary: dict[str, object]  # the probe's Summary as JSON (probes.metrics.Summary)


class Ladder(msgspec.Struct, kw_only=True):
    reference: str  # the reference file the rungs were scored against (beside this file)
    measured: str  # how and when (command, date)
    rungs: list[Rung]


def read_probe(run_dir: Path):
    """The run's tier-0 probe summary (probe.json), or None when it had no probe."""
    from probes.metrics import PROBE_FILE, Summary

    path = Path(run_dir) / PROBE_FILE
    if not path.is_file():
        return None
    try:
        return msgspec.json.decode(path.read_bytes(), type=Summary)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise UserError(f"{path}: unreadable probe summary ({exc}); rerun the probe to rewrite it") from exc


def find_ladder(base: Run | None) -> Ladder | None:
    if base is None:
        return None
    path = Path(base.dir) / LADDER_FILE
    if not path.is_file():
        return None
    try:
        return msgspec.json.decode(path.read_bytes(), type=Ladder)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise UserError(f"{path}: invalid KL ladder ({exc}); remeasure it (docs/evidence.md)") from exc


def _nearest(kl_mean: float, ladder: Ladder | None) -> str:
    """Where a mean KL falls on the ladder: "between rtn-int8 (0.003) and rtn-int4 (0.42)"."""
    if ladder is None or not ladder.rungs:
        return ""
    rungs = sorted((float(r.summary["kl_mean"]), r.name) for r in ladder.rungs)
    below = [r for r in rungs if r[0] <= kl_mean]
    above = [r for r in rungs if r[0] > kl_mean]
    if below and above:
        return f"between {below[-1][1]} ({below[-1][0]:.3g}) and {above[0][1]} ({above[0][0]:.3g})"
    if below:
        return f"above {below[-1][1]} ({below[-1][0]:.3g})"
    return f"below {above[0][1]} ({above[0][0]:.3g})"


def one_line(summary, ladder: Ladder | None) -> str:
    where = _nearest(summary.kl_mean, ladder)
    return (
        f"mean KL(base‖cand) {summary.kl_mean:.4g} ± {summary.kl_se:.2g} nats over {summary.n_positions} positions, "
        f"same top-1 {100 * summary.top1_agree:.1f}%, PPL ratio {summary.ppl_ratio:.4f}"
        + (f"; on the ladder: {where}" if where else "")
    )


def _plot(summary, ladder: Ladder | None) -> str:
    from engine.figures import png, pyplot

    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [3, 2]})
    xs = range(len(QUANTILES))
    rungs = ladder.rungs if ladder is not None else []
    greys = ["#bdbdbd", "#9e9e9e", "#757575", "#424242", "#212121"]
    floor = 1e-12
    for k, rung in enumerate(rungs):
        ys = [max(float(rung.summary[field]), floor) for _, field in QUANTILES]
        left.plot(xs, ys, color=greys[k % len(greys)], linestyle="--", marker=".", label=f"{rung.name} (mean {float(rung.summary['kl_mean']):.3g})")
    ys = [max(getattr(summary, field), floor) for _, field in QUANTILES]
    left.plot(xs, ys, color="#ef6c00", marker="o", linewidth=2, label=f"candidate (mean {summary.kl_mean:.3g})")
    for rung in rungs:
        left.axhline(max(float(rung.summary["kl_mean"]), floor), color="#e0e0e0", linewidth=0.6)
    left.set_yscale("log")
    left.set_xticks(list(xs), [q for q, _ in QUANTILES])
    left.set_ylabel("per-position KL (nats)")
    left.set_title("per-position KL: quantiles", fontsize=9)
    left.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.14), ncol=2)
    names = [r.name for r in rungs] + ["candidate"]
    agree = [100 * float(r.summary["top1_agree"]) for r in rungs] + [100 * summary.top1_agree]
    right.barh(range(len(names)), agree, color=["#90a4ae"] * len(rungs) + ["#ef6c00"])
    right.set_yticks(range(len(names)), names)
    right.invert_yaxis()
    right.set_xlim(min(agree + [90.0]) - 5, 100)
    right.set_xlabel("same top-1 token (%)")
    right.set_title("top-1 agreement", fontsize=9)
    return png(fig, "KL quantiles and top-1 agreement against the ladder")


def _esc(x: object) -> str:
    import html

    return html.escape(str(x))


def html_section(cand: Run, base: Run | None, gates: list[tuple[str, bool]] | None = None) -> str:
    """The probe's panel: overall and per-source tables, the plot with the ladder, and the tripwire's
    gates as the grade applied them ((line, failed) each; None: the grade is not at hand)."""
    try:
        summary = read_probe(cand.dir)
    except UserError as exc:  # the page still shows everything else
        return f"<h2 id=kl>KL probe (tier 0)</h2><p class=flag>{_esc(exc)}</p>"
    if summary is None:
        return ""
    ladder = find_ladder(base)
    head = "".join(f"<th>{q}</th>" for q, _ in QUANTILES)
    cells = "".join(f"<td>{getattr(summary, f):.4g}</td>" for _, f in QUANTILES)
    rows = [
        f"<tr><td class=l>candidate</td><td>{summary.kl_mean:.4g} ± {summary.kl_se:.2g}</td>{cells}"
        f"<td>{100 * summary.top1_agree:.2f}%</td><td>{summary.ppl_ratio:.4f}</td></tr>"
    ]
    for rung in ladder.rungs if ladder is not None else []:
        s = rung.summary
        rows.append(
            f"<tr class=muted><td class=l>ladder: {_esc(rung.name)}</td><td>{float(s['kl_mean']):.4g}</td>"
            + "".join(f"<td>{float(s[f]):.4g}</td>" for _, f in QUANTILES)
            + f"<td>{100 * float(s['top1_agree']):.2f}%</td><td>{float(s['ppl_ratio']):.4f}</td></tr>"
        )
    overall = (
        f"<table class=kl><tr><th class=l></th><th>KL mean</th>{head}<th>same top-1</th><th>PPL ratio</th></tr>{''.join(rows)}</table>"
    )
    per_source = (
        "<table class=kl-sources><tr><th class=l>source</th><th>positions</th><th>KL mean</th><th>KL p99</th><th>same top-1</th><th>PPL ratio</th></tr>"
        + "".join(
            f"<tr><td class=l>{_esc(name)}</td><td>{int(r['positions'])}</td><td>{r['kl_mean']:.4g}</td><td>{r['kl_p99']:.4g}</td>"
            f"<td>{100 * r['top1_agree']:.2f}%</td><td>{r['ppl_ratio']:.4f}</td></tr>"
            for name, r in summary.per_source.items()
        )
        + "</table>"
    )
    where = _nearest(summary.kl_mean, ladder)
    gate_line = (
        "".join(f"<span class={'bad' if failed else 'good'}>tripwire: {_esc(line)}</span><br>" for line, failed in gates)
        if gates
        else "tripwire: <code>--probe-gate KL</code> stops a run before its benches when the mean KL exceeds KL (no gate applied to this run)"
    )
    ladder_note = (
        f"ladder: {_esc(ladder.measured)}; the candidate falls {_esc(where)}"
        if ladder is not None
        else "no KL ladder beside the baseline: nothing to read the number against (docs/evidence.md says how to measure one)"
    )
    return (
        "<h2 id=kl>KL probe (tier 0)</h2>"
        f"<p>{_esc(one_line(summary, None))}</p><p class=muted>{ladder_note}</p><p>{gate_line}</p>"
        f"{overall}<h3>Per source</h3>{per_source}{_plot(summary, ladder)}"
    )
