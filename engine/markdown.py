"""`report --markdown FILE`: the grade as a pull-request comment (GitHub-flavoured markdown).

The verdict line with its reasons, the bench table, the canaries, the KL probe's summary, the trait
gates of judged benches, and the provenance folded away at the end.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine import kl_panel, traits_report
from engine.evidence import Graded
from engine.grade.text import _p, delta_cell
from engine.provenance import footer_lines
from engine.records import Run
from engine.traits_report import TraitsReport


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _bench_table(graded: Graded) -> list[str]:
    lines = [
        "| bench | n | baseline | candidate | Δ pts [interval] | b / c | p (Holm) | no drop > | verdict |",
        "|---|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in graded.benches:
        holm = _p(r.p_holm) if r.in_family else "out"
        lines.append(
            f"| {_cell(r.bench)} | {r.n} | {_pct(r.base_acc)} | {_pct(r.cand_acc)} | {_cell(delta_cell(r))} | "
            f"{r.b} / {r.c} | {_p(r.p_two_sided)} ({holm}) | {100 * r.drop_bound:.1f} pts | {_cell(r.verdict)} |"
        )
    return lines


def _canary_table(graded: Graded) -> list[str]:
    lines = [
        "| bench | truncation | length (median) | no answer / scorer failure | flagged |",
        "|---|--:|--:|--:|---|",
    ]
    for r in graded.benches:
        flagged = [name for name, c in (("truncation", r.truncation), ("length", r.length), ("no answer", r.unparsed)) if c.flagged]
        sh = r.length.shift
        lines.append(
            f"| {_cell(r.bench)} | {_pct(r.base_trunc)} → {_pct(r.cand_trunc)} | {sh.base_median:.0f} → {sh.cand_median:.0f} "
            f"{_cell(r.length.measure)} | {_pct(r.unparsed.base_rate)} → {_pct(r.unparsed.cand_rate)} | "
            f"{', '.join(flagged) if flagged else '–'} |"
        )
    return lines


def render(
    graded: Graded | None, base: Run | None, cand: Run, traits: list[TraitsReport], provenance: dict[str, Any]
) -> str:
    base_model = base.spec.model if base is not None else "(no baseline)"
    lines = [f"## Degradation report: `{cand.spec.model}` vs `{base_model}`", ""]
    if graded is not None:
        mark = "❌" if graded.decision == "DEGRADED" else "⚠️" if graded.exit_code else "✅"
        lines += [f"**{mark} {graded.headline}** (α = {graded.alpha:g}, exit code {graded.exit_code})", ""]
        lines += [f"- {_cell(reason)}" for reason in graded.reasons]
        lines += [f"- note: {_cell(note)}" for note in graded.notes]
        if graded.reasons or graded.notes:
            lines.append("")
        lines += _bench_table(graded) + [""]
        lines += ["**Canaries** (baseline → candidate)", ""] + _canary_table(graded) + [""]
    elif base is None:
        lines += ["No baseline: nothing graded.", ""]
    for report in traits:
        lines += [f"**{report.bench}** trait gates: {_cell(traits_report.gates_line(report))}", ""]
    probe = kl_panel.read_probe(cand.dir)
    lines += ["**KL probe**: " + (kl_panel.one_line(probe, kl_panel.find_ladder(base)) if probe is not None else "not run for this candidate"), ""]
    lines += ["<details><summary>Provenance</summary>", "", "```"]
    lines += footer_lines(provenance)
    lines += ["```", "", "</details>", ""]
    return "\n".join(lines)


def write_markdown(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
