"""`python -m engine card BASELINE [--reference DEV_RUN] [--usd-per-hour X] [--html F] [--markdown]`:
the yardstick card of a cached baseline, from the runs on disk.

What the baseline is (model, precision, tier/seed/sampling/concurrency, hardware, engine, weights
size), what it cost (generated tokens, tokens/s, wall time, dollars at --usd-per-hour), how it scores
(accuracy per bench with its mode and a 95% interval, drawn as bars), and, with --reference, the Δ of
a development run against it and a one-line headline made from that grade bench by bench ("within
noise: no drop > 1.2 pts on mmlu_pro"). Judged and agentic exams (trader_traits, godmode) get their
own lines when the baseline holds them.
"""

from __future__ import annotations

import argparse
import html
import sys
from pathlib import Path

import msgspec

from engine import judge, pairing, stats, traits_report
from engine.errors import UserError
from engine.evidence import Graded, grade_pair
from engine.provenance import engine_label
from engine.records import Run, read_run


class BenchLine(msgspec.Struct, kw_only=True):
    bench: str
    mode: str  # "nothink, 1 sample" / "think, maj@4" ...
    n: int
    accuracy: float
    low: float  # 95% Wilson interval (nan where values are not 0/1)
    high: float
    delta: float | None = None  # reference − baseline, accuracy units
    delta_ci: tuple[float, float] | None = None
    drop_bound: float | None = None
    verdict: str = ""


class Card(msgspec.Struct, kw_only=True):
    model: str
    run: str
    precision: str
    tier: str
    seed: int
    sampling: str
    concurrency: int | None
    hardware: str
    engine: str
    weights_bytes: int
    generated_tokens: int
    wall_s: float
    tokens_per_s: float | None
    usd_per_hour: float | None
    cost_usd: float | None
    benches: list[BenchLine]
    exams: list[str]  # godmode / trader_traits lines
    reference: str | None = None
    headline: str = ""


def _mode(run: Run, bench) -> str:
    think = "think" if run.spec.think else "nothink"
    if bench.per_item == "majority":
        return f"{think}, maj@{bench.samples}"
    return f"{think}, avg@{bench.samples}" if bench.samples > 1 else f"{think}, 1 sample"


def _timing(run: Run) -> tuple[int, float, int | None]:
    from engine.runner import read_timings

    timings = read_timings(run.dir)
    return (
        sum(t.generated_tokens for t in timings),
        sum(t.wall_s for t in timings),
        max((t.concurrency for t in timings), default=None),
    )


def headline(base: Run, ref: Run, graded: Graded | None) -> str:
    """One line from the grade of the reference against the baseline, bench by bench, with the bounds."""
    if graded is None:
        return f"{ref.spec.model}: no bench in common with {base.spec.model}"
    moved = [r for r in graded.benches if r.verdict.startswith(("DEGRADED", "IMPROVED", "INCOMPLETE"))]
    bounds = ", ".join(f"{100 * r.drop_bound:.1f} pts on {r.bench}" for r in graded.benches)
    if not moved:
        return f"{base.spec.model} ≈ {ref.spec.model} on every bench — all within noise: no drop > {bounds}"
    said = "; ".join(f"{r.bench} {r.verdict.split(':')[0]} ({100 * r.delta:+.1f} pts)" for r in moved)
    return f"{ref.spec.model} vs {base.spec.model}: {said}; elsewhere within noise"


def _exams(run: Run) -> list[str]:
    lines = []
    for spec in run.spec.benches:
        if spec.name == "godmode":
            values = pairing.per_item_values(spec, run.records.get("godmode", []))
            solved = sum(values.values())
            lines.append(f"godmode: {solved:g}/{len(values)} tasks solved ({_mode(run, spec)})")
    if judge.judged_benches(run.spec):
        for report in traits_report.traits_report(run, None):
            lines.append(
                f"{report.bench}: pass rate {100 * report.overall.cand_rate:.1f}% over {report.overall.scenarios} scenarios; "
                + traits_report.gates_line(report)
            )
    return lines


def build(base: Run, ref: Run | None = None, usd_per_hour: float | None = None, alpha: float = 0.05) -> Card:
    graded = grade_pair(base, ref, alpha=alpha) if ref is not None else None
    rows = {r.bench: r for r in graded.benches} if graded is not None else {}
    judged = {b.name for b in judge.judged_benches(base.spec)}
    lines = []
    for spec in base.spec.benches:
        if spec.name in judged or spec.name == "godmode":
            continue
        values = list(pairing.per_item_values(spec, base.records.get(spec.name, [])).values())
        acc = stats.mean(values)
        binary = bool(values) and all(v in (0.0, 1.0) for v in values)
        low, high = stats.wilson_interval(sum(values), len(values)) if binary else (float("nan"), float("nan"))
        row = rows.get(spec.name)
        lines.append(
            BenchLine(
                bench=spec.name, mode=_mode(base, spec), n=len(values), accuracy=acc, low=low, high=high,
                delta=row.delta if row else None, delta_ci=tuple(row.delta_ci) if row else None,
                drop_bound=row.drop_bound if row else None, verdict=row.verdict if row else "",
            )  # fmt: skip
        )
    tokens, wall, concurrency = _timing(base)
    s = base.spec.sampling
    return Card(
        model=base.spec.model,
        run=str(base.dir),
        precision=getattr(base.spec.engine, "dtype", "unknown"),
        tier=base.spec.tier,
        seed=base.spec.seed,
        sampling=f"{s.preset} (T={s.temperature:g}, top_p={s.top_p:g}, top_k={s.top_k})",
        concurrency=concurrency,
        hardware=base.spec.hardware or "not recorded (run made before hardware was recorded)",
        engine=engine_label(base),
        weights_bytes=base.spec.weights_bytes,
        generated_tokens=tokens,
        wall_s=wall,
        tokens_per_s=tokens / wall if wall > 0 else None,
        usd_per_hour=usd_per_hour,
        cost_usd=wall / 3600 * usd_per_hour if usd_per_hour is not None and wall > 0 else None,
        benches=lines,
        exams=_exams(base),
        reference=str(ref.dir) if ref is not None else None,
        headline=headline(base, ref, graded) if ref is not None else "",
    )


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n else "not recorded"


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.2f} h"


def _facts(card: Card) -> list[tuple[str, str]]:
    cost = f"${card.cost_usd:.2f} at ${card.usd_per_hour:g}/h" if card.cost_usd is not None else "pass --usd-per-hour X"
    return [
        ("model", f"{card.model} ({card.precision})"),
        ("run", card.run),
        ("tier / seed / sampling", f"{card.tier} / {card.seed} / {card.sampling}"),
        ("concurrency", str(card.concurrency) if card.concurrency is not None else "not recorded"),
        ("hardware", card.hardware),
        ("engine", card.engine),
        ("weights on disk", _size(card.weights_bytes)),
        ("throughput", f"{card.tokens_per_s:.0f} tok/s ({card.generated_tokens} tokens generated)" if card.tokens_per_s else "not recorded"),
        ("wall time (generation)", _duration(card.wall_s) if card.wall_s else "not recorded"),
        ("cost", cost),
    ]


def _delta(line: BenchLine) -> str:
    if line.delta is None:
        return ""
    lo, hi = line.delta_ci
    return f"{100 * line.delta:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] pts; no drop > {100 * line.drop_bound:.1f}"


def _bar(acc: float, width: int = 30) -> str:
    filled = round(acc * width)
    return "█" * filled + "·" * (width - filled)


def format_text(card: Card) -> str:
    out = [f"Yardstick card: {card.model}"]
    out += [f"  {k:<24} {v}" for k, v in _facts(card)]
    out.append("")
    for line in card.benches:
        out.append(f"  {line.bench:<14} {_bar(line.accuracy)} {100 * line.accuracy:5.1f}%  n={line.n}  ({line.mode})  {_delta(line)}")
    out += [f"  {e}" for e in card.exams]
    if card.reference:
        out += ["", f"against {card.reference}:", f"  {card.headline}"]
    return "\n".join(out)


def format_markdown(card: Card) -> str:
    out = [f"### Yardstick card: `{card.model}`", "", "| | |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in _facts(card)]
    out += ["", "| bench | mode | n | accuracy | 95% interval | Δ vs reference |", "|---|---|--:|--:|--:|---|"]
    for line in card.benches:
        interval = f"{100 * line.low:.1f}–{100 * line.high:.1f}%" if line.low == line.low else "–"
        out.append(f"| {line.bench} | {line.mode} | {line.n} | {100 * line.accuracy:.1f}% | {interval} | {_delta(line)} |")
    out += [""] + [f"- {e}" for e in card.exams]
    if card.reference:
        out += ["", f"**{card.headline}** (reference: `{card.reference}`)"]
    return "\n".join(out) + "\n"


def _bars_png(card: Card) -> str:
    from engine.figures import png, pyplot

    plt = pyplot()
    lines = card.benches
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(lines) + 1.2))
    ys = range(len(lines))
    ax.barh(list(ys), [100 * x.accuracy for x in lines], color="#90a4ae")
    for y, x in zip(ys, lines, strict=True):
        if x.low == x.low:
            ax.plot([100 * x.low, 100 * x.high], [y, y], color="#263238", linewidth=1.5)
        right = max(x.accuracy, x.high if x.high == x.high else 0.0)
        ax.text(100 * right + 1.5, y, f"{100 * x.accuracy:.1f}%  ({x.mode})", va="center", fontsize=8)
    ax.set_yticks(list(ys), [x.bench for x in lines])
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("accuracy (%), line: 95% Wilson interval")
    return png(fig, "accuracy per bench")


def format_html(card: Card) -> str:
    def esc(x: object) -> str:
        return html.escape(str(x))

    facts = "".join(f"<tr><th>{esc(k)}</th><td class=l>{esc(v)}</td></tr>" for k, v in _facts(card))
    rows = "".join(
        f"<tr><td class=l>{esc(x.bench)}</td><td class=l>{esc(x.mode)}</td><td>{x.n}</td><td>{100 * x.accuracy:.1f}%</td>"
        f"<td>{esc(_delta(x))}</td><td class=l>{esc(x.verdict)}</td></tr>"
        for x in card.benches
    )
    exams = "".join(f"<li>{esc(e)}</li>" for e in card.exams)
    ref = f"<p class=headline><b>{esc(card.headline)}</b><br><span class=muted>reference: {esc(card.reference)}</span></p>" if card.reference else ""
    css = (
        "body{font-family:system-ui,sans-serif;max-width:900px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:.6em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "th{background:#f4f4f4;text-align:left}.l{text-align:left}.muted{color:#666;font-size:.85em}img{max-width:100%}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>yardstick card: {esc(card.model)}</title><style>{css}</style></head><body>"
        f"<h1>Yardstick card: {esc(card.model)}</h1>{ref}<table class=facts>{facts}</table>"
        f"<h2>Accuracy per bench</h2>{_bars_png(card)}"
        f"<table class=benches><tr><th>bench</th><th>mode</th><th>n</th><th>accuracy</th><th>Δ vs reference</th><th>verdict</th></tr>{rows}</table>"
        + (f"<h2>Exams</h2><ul class=exams>{exams}</ul>" if exams else "")
        + "</body></html>"
    )


def _resolve(arg: str) -> Run:
    from engine.baselines import baselines_root

    if (Path(arg) / "spec.json").is_file():
        return read_run(arg)
    folder = baselines_root() / arg
    runs = sorted(p.parent for p in folder.glob("*/spec.json")) if folder.is_dir() else []
    if len(runs) == 1:
        return read_run(runs[0])
    if runs:
        raise UserError(f"{arg}: {len(runs)} baselines under {folder}; name one: {', '.join(str(r) for r in runs)}")
    raise UserError(f"{arg}: neither a run directory nor a folder of baselines under {baselines_root()}")


def cmd_card(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m engine card", description="The yardstick card of a baseline run.")
    p.add_argument("baseline", help="baseline run directory, or a model's folder under baselines/ holding one run")
    p.add_argument("--reference", type=Path, default=None, help="a development run graded against the baseline (the Δ column and headline)")
    p.add_argument("--usd-per-hour", type=float, default=None, help="machine price: the card shows the generation's cost")
    p.add_argument("--html", type=Path, default=None, help="write the card as a self-contained HTML page")
    p.add_argument("--markdown", action="store_true", help="print markdown instead of text")
    p.add_argument("--json", action="store_true", help="print the card as JSON")
    args = p.parse_args(argv)
    if args.usd_per_hour is not None and not args.usd_per_hour >= 0:
        raise UserError(f"--usd-per-hour {args.usd_per_hour}: give a price of zero or more")
    base = _resolve(args.baseline)
    ref = read_run(args.reference) if args.reference is not None else None
    card = build(base, ref, args.usd_per_hour)
    if args.html is not None:
        args.html.parent.mkdir(parents=True, exist_ok=True)
        args.html.write_text(format_html(card), encoding="utf-8")
        print(f"card: {args.html}", file=sys.stderr)
    if args.json:
        print(msgspec.json.encode(card).decode())
    else:
        print(format_markdown(card) if args.markdown else format_text(card))
    return 0

