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


def write_markdown(cand, base, path, verdict, alpha: float) -> None:
    """`report --markdown FILE`: the Verdict (None: a run on its own) as a pull-request comment."""
    from engine import judge, markdown, provenance, traits_report

    if verdict is not None:
        traits = [_trait(t.report) for t in verdict.traits]
    else:
        traits = traits_report.traits_report(cand, None, alpha) if judge.judged_benches(cand.spec) else []
    prov = verdict.provenance if verdict is not None and verdict.provenance else provenance.collect(cand, base)
    markdown.write_markdown(path, markdown.render(verdict, base, cand, traits, prov))


def _trait(report):
    import msgspec

    from engine import traits_report

    return msgspec.convert(report, traits_report.TraitsReport)
