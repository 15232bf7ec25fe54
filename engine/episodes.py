"""Canaries of multi-turn (agent) benches, read from the records alone: no bench code.

Correctness is graded by McNemar like every bench; these say *how* the candidate's episodes changed,
shown like the truncation canary:
  turns used     assistant turns per episode, paired by item (mean over samples), Wilcoxon signed-rank
                 one-sided "the candidate needs more";
  tool errors    tool turns that failed (non-zero exit, a limit, the wall clock), same test;
  format errors  replies with neither a tool call nor an answer, same test;
  stop reasons   per reason, the items that end that way in one run only; exact McNemar one-sided on
                 those flips for the reasons that mean trouble (turn_limit, format_errors,
                 context_limit, timeout, error).

And whether an exam ran at all (`health`): a run whose episodes mostly end on format errors (calls the
harness could not read), on requests the server rejected for their tools, or on request errors scores
≈ 0 in baseline and candidate alike, and "no change" between two such runs says nothing. `health`
makes that bench INVALID with its cause and remedy.
"""

from __future__ import annotations

import math

import msgspec

from engine.records import ItemRecord
from engine.stats import OnFirstUse

sps = OnFirstUse("scipy.stats")  # loaded when first used (fast --help)

BAD_STOPS = ("turn_limit", "format_errors", "context_limit", "timeout", "error")
COUNTS = ("turns_used", "tool_errors", "format_errors")


def episode_counts(record: ItemRecord) -> dict[str, int]:
    """Turns used, tool errors and format errors of one episode, from its trace."""
    turns = record.turns or []
    return {
        "turns_used": sum(t.role == "assistant" for t in turns),
        "tool_errors": sum(t.role == "tool" and t.exit_code != 0 for t in turns),
        "format_errors": sum(t.role == "assistant" and t.extra.get("kind") == "format_error" for t in turns),
    }


class CountShift(msgspec.Struct, kw_only=True):
    measure: str
    base_mean: float
    cand_mean: float
    up: int  # items where the candidate's count is higher
    down: int
    p_more: float  # Wilcoxon signed-rank, one-sided: the candidate's counts are higher
    flagged: bool


class StopShift(msgspec.Struct, kw_only=True):
    reason: str
    base: int  # episodes ending this way
    cand: int
    to: int  # items that end this way in the candidate only
    away: int  # ... in the baseline only
    p_more: float  # exact McNemar one-sided on to/away
    flagged: bool


class EpisodeCanaries(msgspec.Struct, kw_only=True):
    bench: str
    n: int  # paired items
    counts: list[CountShift]
    stops: list[StopShift]
    flags: list[str]


def _per_item(records: list[ItemRecord]) -> dict[str, list[ItemRecord]]:
    items: dict[str, list[ItemRecord]] = {}
    for r in records:
        if r.error is None and r.turns is not None:
            items.setdefault(r.item_id, []).append(r)
    return items


def _wilcoxon_more(diffs: list[float]) -> float:
    nonzero = [d for d in diffs if d != 0]
    if not nonzero:
        return 1.0
    return float(sps.wilcoxon(nonzero, alternative="greater", zero_method="wilcox").pvalue)


def canaries(bench: str, base: list[ItemRecord], cand: list[ItemRecord], alpha: float = 0.05) -> EpisodeCanaries | None:
    """The canaries of one bench; None when neither run holds multi-turn episodes."""
    b_items, c_items = _per_item(base), _per_item(cand)
    shared = sorted(set(b_items) & set(c_items))
    if not shared:
        return None

    def mean_count(recs: list[ItemRecord], key: str) -> float:
        return sum(episode_counts(r)[key] for r in recs) / len(recs)

    counts = []
    for key in COUNTS:
        b = [mean_count(b_items[i], key) for i in shared]
        c = [mean_count(c_items[i], key) for i in shared]
        diffs = [y - x for x, y in zip(b, c, strict=True)]
        p = _wilcoxon_more(diffs)
        counts.append(
            CountShift(
                measure=key.replace("_", " "), base_mean=sum(b) / len(b), cand_mean=sum(c) / len(c),
                up=sum(d > 0 for d in diffs), down=sum(d < 0 for d in diffs), p_more=p, flagged=p < alpha,
            )  # fmt: skip
        )

    def share(recs: list[ItemRecord], reason: str) -> float:
        return sum(r.stop_reason == reason for r in recs) / len(recs)

    reasons = sorted({r.stop_reason or "?" for i in shared for r in b_items[i] + c_items[i]})
    stops = []
    for reason in reasons:
        to = sum(share(c_items[i], reason) > share(b_items[i], reason) for i in shared)
        away = sum(share(c_items[i], reason) < share(b_items[i], reason) for i in shared)
        p = float(sps.binomtest(to, to + away, 0.5, alternative="greater").pvalue) if to + away else 1.0
        stops.append(
            StopShift(
                reason=reason, base=sum(r.stop_reason == reason for i in shared for r in b_items[i]),
                cand=sum(r.stop_reason == reason for i in shared for r in c_items[i]), to=to, away=away,
                p_more=p, flagged=reason in BAD_STOPS and p < alpha,
            )  # fmt: skip
        )
    flags = [f"{bench}: {c.measure} up in the candidate (Wilcoxon p {c.p_more:.3g})" for c in counts if c.flagged]
    flags += [f"{bench}: more episodes end in {s.reason} (p {s.p_more:.3g})" for s in stops if s.flagged]
    return EpisodeCanaries(bench=bench, n=len(shared), counts=counts, stops=stops, flags=flags)


def format_canaries(c: EpisodeCanaries) -> list[str]:
    def fmt_p(p: float) -> str:
        return "—" if math.isnan(p) else f"{p:.3g}"

    lines = [f"{c.bench} episodes ({c.n} paired items):"]
    for s in c.counts:
        lines.append(
            f"  {s.measure}: mean {s.base_mean:.2f} → {s.cand_mean:.2f} ({s.up} items up, {s.down} down, "
            f"Wilcoxon p more {fmt_p(s.p_more)})" + ("  ⚠ FLAG" if s.flagged else "")
        )
    stops = ", ".join(f"{s.reason} {s.base}→{s.cand}" + (" ⚠" if s.flagged else "") for s in c.stops)
    worst = min((s for s in c.stops if s.reason in BAD_STOPS), key=lambda s: s.p_more, default=None)
    tail = f" (most shifted: {worst.reason}, {worst.to} items to / {worst.away} away, p {fmt_p(worst.p_more)})" if worst else ""
    lines.append(f"  stop reasons: {stops}{tail}")
    return lines


# --- did the exam run? ------------------------------------------------------------------------------

INVALID_SHARE = 0.5  # more than this share of a run's episodes failed to run: the bench is INVALID
PARSER_HINT = "hermes for Qwen3's JSON calls, qwen3_coder for Qwen3.5's and Qwen3-Coder's XML"


class ExamHealth(msgspec.Struct, frozen=True, kw_only=True):
    invalid: bool  # more than INVALID_SHARE of the episodes did not run: the bench's result is no result
    cause: str  # one line: how many episodes ended how ("" when healthy)
    remedy: str  # one line: what to change before running again ("" when healthy)
    episodes: int  # records looked at (every item x sample)
    format_errors: int  # episodes stopped on FORMAT_ERROR_LIMIT unreadable replies in a row
    tools_rejected: int  # requests the server refused because of their `tools` (HTTP 400)
    request_errors: int  # other requests that failed for good (records with an error)


def _rejects_tools(error: str) -> bool:
    low = error.lower()
    return "http 400" in low and "tool" in low


def health(records: list[ItemRecord], *, tool_format: str | None = None) -> ExamHealth | None:
    """Whether one run's episodes of one bench ran: INVALID when more than INVALID_SHARE of them
    ended on format errors, tool-call rejections or request errors. None for a one-shot bench
    (no episode traces and no failed requests): nothing to say. `tool_format` (the bench's contract
    field scoring_versions["tool_format"]) sharpens the remedy."""
    if not records or not any(r.turns is not None or r.error is not None for r in records):
        return None
    n = len(records)
    formats = sum(r.error is None and r.stop_reason == "format_errors" for r in records)
    rejected = sum(r.error is not None and _rejects_tools(r.error) for r in records)
    errors = sum(r.error is not None for r in records) - rejected
    failed = formats + rejected + errors
    if failed * 1.0 <= INVALID_SHARE * n:
        return ExamHealth(invalid=False, cause="", remedy="", episodes=n, format_errors=formats,
                          tools_rejected=rejected, request_errors=errors)  # fmt: skip
    worst = max((formats, "format"), (rejected, "rejected"), (errors, "errors"))[1]
    if worst == "format":
        cause = f"{formats} of {n} episodes ended on format errors (replies with no readable tool call or answer)"
        if tool_format == "served":
            remedy = f"the server's --tool-call-parser may not match what the model writes: restart it with --tool-call-parser NAME ({PARSER_HINT})"
        else:
            remedy = (
                f"the model's tool calls were read as {tool_format or 'the run chose'}: check what its chat template "
                f"instructs and rerun with --tool-parser NAME ({PARSER_HINT}), or read the replies in the records"
            )
    elif worst == "rejected":
        cause = f"{rejected} of {n} episodes failed because the server rejected requests with tools (HTTP 400)"
        remedy = f"restart the server with --enable-auto-tool-choice --tool-call-parser NAME ({PARSER_HINT}) and rerun"
    else:
        cause = f"{errors} of {n} episodes failed on request errors (see the records' error field)"
        remedy = "fix the engine or endpoint and rerun the same command: failed requests are retried"
    return ExamHealth(invalid=True, cause=cause, remedy=remedy, episodes=n, format_errors=formats,
                      tools_rejected=rejected, request_errors=errors)  # fmt: skip
