"""The evidence commands (show, card, export), registered in engine/__main__.py; each imports its module
only when called, so the command line starts as fast as before."""

from __future__ import annotations


def cmd_show(argv: list[str]) -> int:
    from engine import show

    return show.cmd_show(argv)


def cmd_card(argv: list[str]) -> int:
    from engine import card

    return card.cmd_card(argv)


def cmd_export(argv: list[str]) -> int:
    from engine import export

    return export.cmd_export(argv)


SUBCOMMANDS = {"show": cmd_show, "card": cmd_card, "export": cmd_export}
HELP = {
    "show": "the items that flipped between a baseline and a run, side by side (question, gold, both answers)",
    "card": "the yardstick card of a baseline run (hardware, throughput, cost, accuracy per bench, Δ vs a reference)",
    "export": "one row per item and side (scores, answers, lengths, flags) as csv, parquet or jsonl",
}


def write_markdown(cand, base, path, grading: dict) -> int:
    """`report --markdown FILE`: the grade as a PR comment; returns the grade's exit code."""
    from engine import evidence, judge, markdown, provenance, traits_report

    graded = evidence.grade_pair(base, cand, **grading) if base is not None else None
    traits = traits_report.traits_report(cand, base, grading["alpha"]) if judge.judged_benches(cand.spec) else []
    text = markdown.render(graded, base, cand, traits, provenance.collect(cand, base))
    markdown.write_markdown(path, text)
    return graded.exit_code if graded is not None else 0
