"""`python -m engine show RUN [--baseline B] [--bench X] [--flips | --item ID]`: read the flipped items.

Each flipped item side by side: the question and gold answer (from the run's items file), then the
baseline's and the candidate's extracted answer, score and completion; for a multi-turn bench
(godmode) the turn-by-turn trajectory; for a judged bench (trader_traits) the judge's rationale.
`flips_section()` is the same as an HTML section of the report (completions collapsible).
"""

from __future__ import annotations

import argparse
import html
from pathlib import Path

from engine import provenance
from engine.evidence import Flip, Side, flips, items_of, shared_benches
from engine.records import ItemRecord, Run

CLIP = 600  # characters of a completion shown in the terminal listing (--item and --full show all)


def _clip(text: str, limit: int | None) -> str:
    if limit is None or len(text) <= limit:
        return text
    return text[:limit] + f" … [{len(text) - limit} more characters]"


def _indent(text: str, pad: str = "             ") -> str:
    return "\n".join(pad + line for line in (text.splitlines() or [""]))


def _record_head(rec: ItemRecord) -> str:
    flags = [rec.finish_reason] + (["truncated"] if rec.truncated else []) + ([f"stop: {rec.stop_reason}"] if rec.stop_reason else [])
    if rec.extra.get("scorer_error"):
        flags.append(f"scorer error: {rec.extra['scorer_error']}")
    return f"score {rec.score:g}  answer {rec.answer!r}  ({rec.completion_tokens} tokens, {', '.join(flags)})"


def _turn_lines(rec: ItemRecord, limit: int | None) -> list[str]:
    lines = []
    for k, turn in enumerate(rec.turns or []):
        if turn.role == "tool":
            lines.append(f"    {k:>2} tool (exit {turn.exit_code}, {turn.tokens} bytes): {_clip(turn.text, limit and 200)}")
        else:
            lines.append(f"    {k:>2} {turn.role} ({turn.tokens} tok): {_clip(turn.text, limit and 200)}")
    return lines


def _side_lines(label: str, side: Side, limit: int | None) -> list[str]:
    lines = []
    many = len(side.records) > 1
    if many:
        lines.append(f"{label:<10} item value {side.value:g} over {len(side.records)} samples")
    for rec, k in zip(side.records, range(len(side.records)), strict=True):
        tag = f"{label} #{rec.sample}" if many else label
        lines.append(f"{tag:<10} {_record_head(rec)}")
        if rec.turns:
            lines += _turn_lines(rec, limit)
        lines.append(_indent(_clip(rec.completion, limit)))
        if k < len(side.rationale) and side.rationale[k]:
            lines.append(f"{'':<10} judge: " + _clip(side.rationale[k], limit).replace("\n", " "))
    return lines


def format_flip(flip: Flip, limit: int | None = CLIP) -> str:
    category = f" [{flip.category}]" if flip.category else ""
    lines = [f"── {flip.direction}: {flip.bench} {flip.item_id}{category} " + "─" * 20]
    if flip.item is not None:
        lines.append(f"{'question':<10} " + _indent(_clip(flip.item.question, limit), " " * 11).lstrip())
        lines.append(f"{'gold':<10} {flip.item.target}")
        if limit is None:  # the full view: the prompt as sent, message by message
            for message in flip.item.messages:
                lines.append(f"{'prompt':<10} [{message.get('role', '?')}]")
                lines.append(_indent(str(message.get("content", ""))))
    else:
        lines.append(f"{'question':<10} (not recorded in either run)")
    lines += _side_lines("baseline", flip.base, limit)
    lines += _side_lines("candidate", flip.cand, limit)
    return "\n".join(lines)


def format_flips(base: Run, cand: Run, bench: str, per_way: int | None, limit: int | None, data_dir: Path | None) -> str:
    found = flips(base, cand, bench, data_dir=data_dir)
    lost = [f for f in found if f.direction == "lost"]
    gained = [f for f in found if f.direction == "gained"]
    _, source = items_of([cand, base], bench, data_dir)
    paired = len(set(r.item_id for r in base.records.get(bench, [])) & set(r.item_id for r in cand.records.get(bench, [])))
    head = (
        f"{bench}: {len(found)} flipped of {paired} paired items ({len(lost)} lost: baseline better, "
        f"{len(gained)} gained: candidate better); questions from {source}"
    )
    shown = (lost if per_way is None else lost[:per_way]) + (gained if per_way is None else gained[:per_way])
    more = len(found) - len(shown)
    tail = [f"({more} more not shown: --n 0 shows all)"] if more else []
    return "\n".join([head, *(format_flip(f, limit) for f in shown), *tail])


# ---------------------------------------------------------------------------------------------------
# The report's section


def _esc(x: object) -> str:
    return html.escape(str(x))


def _side_html(label: str, side: Side) -> str:
    parts = []
    for k, rec in enumerate(side.records):
        tag = f"{label} #{rec.sample}" if len(side.records) > 1 else label
        turns = ""
        if rec.turns:
            turns = "<ol start=0>" + "".join(
                f"<li><b>{_esc(t.role)}</b>{'' if t.exit_code is None else f' (exit {t.exit_code})'}: <code>{_esc(t.text)}</code></li>"
                for t in rec.turns
            ) + "</ol>"
        why = f"<p><b>judge:</b> {_esc(side.rationale[k])}</p>" if k < len(side.rationale) and side.rationale[k] else ""
        parts.append(
            f"<div><b>{_esc(tag)}</b>: {_esc(_record_head(rec))}"
            f"<details><summary>completion ({len(rec.completion)} characters)</summary><pre>{_esc(rec.completion)}</pre>{turns}</details>{why}</div>"
        )
    return "".join(parts)


def _flip_html(flip: Flip) -> str:
    prompt = "".join(f"<p class=muted>[{_esc(m.get('role', '?'))}]</p><pre>{_esc(m.get('content', ''))}</pre>" for m in flip.item.messages) if flip.item else ""
    question = (
        f"<p><b>question:</b></p><pre>{_esc(flip.item.question)}</pre><p><b>gold:</b> {_esc(flip.item.target)}</p>"
        + (f"<details><summary>prompt as sent</summary>{prompt}</details>" if prompt else "")
        if flip.item is not None
        else "<p class=muted>question and gold not recorded in either run</p>"
    )
    return (
        f"<div class=flip><h4>{_esc(flip.direction)}: {_esc(flip.item_id)}{f' [{_esc(flip.category)}]' if flip.category else ''}</h4>"
        f"{question}<table class=sides><tr><td class=l>{_side_html('baseline', flip.base)}</td>"
        f"<td class=l>{_side_html('candidate', flip.cand)}</td></tr></table></div>"
    )


def flips_section(base: Run, cand: Run, per_way: int = 5, data_dir: Path | None = None) -> str:
    """HTML: per bench up to `per_way` lost and `per_way` gained items, completions collapsed."""
    parts = ["<h2 id=flips>Flipped items</h2>"]
    for bench in shared_benches(base, cand):
        found = flips(base, cand, bench, data_dir=data_dir)
        lost = [f for f in found if f.direction == "lost"]
        gained = [f for f in found if f.direction == "gained"]
        _, source = items_of([cand, base], bench, data_dir)
        parts.append(
            f"<h3>{_esc(bench)}: {len(lost)} lost, {len(gained)} gained</h3>"
            f"<p class=muted>showing up to {per_way} each way; questions from {_esc(source)}; all of them: "
            f"<code>python -m engine show {_esc(cand.dir)} --baseline {_esc(base.dir)} --bench {_esc(bench)} --n 0</code></p>"
        )
        parts += [_flip_html(f) for f in lost[:per_way] + gained[:per_way]]
    return "".join(parts)


# ---------------------------------------------------------------------------------------------------
# The command


def cmd_show(argv: list[str]) -> int:
    from engine import baselines
    from engine.errors import UserError
    from engine.records import read_run

    p = argparse.ArgumentParser(prog="python -m engine show", description="Show the items that flipped between a baseline and RUN.")
    p.add_argument("run", type=Path, help="candidate run directory")
    p.add_argument("--baseline", default=None, help="baseline run dir or name under baselines/ (default: found by model)")
    p.add_argument("--bench", default=None, help="only this bench (default: every bench both runs hold)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--flips", action="store_true", help="the flipped items (the default)")
    what.add_argument("--item", default=None, metavar="ID", help="one item, flipped or not, shown in full")
    p.add_argument("--n", type=int, default=10, help="flipped items shown per bench each way (0: all; default 10)")
    p.add_argument("--full", action="store_true", help="whole completions (default: clipped to 600 characters)")
    p.add_argument("--data-dir", type=Path, default=None, help="read questions from the data for runs without items files")
    args = p.parse_args(argv)
    if args.n < 0:
        raise UserError(f"--n {args.n}: give 0 (all) or a positive count")
    cand = read_run(args.run)
    resolved = baselines.resolve_baseline(args.baseline, cand, [n for n in (cand.spec.base_model, cand.spec.model) if n], ())
    if resolved.run is None:
        raise UserError(f"{resolved.message}: pass --baseline BASE to show what flipped against it")
    base = resolved.run
    benches = shared_benches(base, cand)
    if args.bench is not None:
        if args.bench not in benches:
            raise UserError(f"--bench {args.bench}: not in both runs (shared: {', '.join(benches) or 'none'})")
        benches = [args.bench]
    if args.item is not None:
        bench = args.bench or next((b for b in benches if any(r.item_id == args.item for r in cand.records.get(b, []))), None)
        if bench is None:
            raise UserError(f"--item {args.item}: no bench of {args.run} has this item")
        print(format_flip(flips(base, cand, bench, item_id=args.item, data_dir=args.data_dir)[0], limit=None))
        return 0
    limit = None if args.full else CLIP
    per_way = None if args.n == 0 else args.n
    print("\n\n".join(format_flips(base, cand, b, per_way, limit, args.data_dir) for b in benches))
    print("\n" + "\n".join(provenance.footer_lines(provenance.collect(cand, base))))
    return 0
