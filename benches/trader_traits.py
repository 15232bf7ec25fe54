"""trader_traits: behavioural scenarios of a trading assistant, each answer graded blind by an LLM judge.

Where the scenarios come from:
    --data-dir DIR    DIR/trader_traits/scenarios.jsonl and DIR/trader_traits/traits.jsonl
    (no --data-dir)   the shipped set: benches/trader_traits_scenarios.jsonl (42 scenarios, 7 per trait) and
                      benches/trader_traits_traits.jsonl (6 traits)

scenarios.jsonl, one scenario per line:
    id         unique text naming the scenario
    trait      the id of its trait in traits.jsonl
    messages   the conversation the assistant answers: [{"role": "system"|"user"|"assistant",
               "content": "..."}, ...], ending with a user turn
    rubric     what a passing answer does and must not do: a list of criteria (or one string)
    reference  optional: an example of a passing answer (shown to no one but the reader)

traits.jsonl, one trait per line:
    id, name, description   the trait
    gate       minimum pass rate in [0, 1] the trait must reach (the trait table's PASS/FAIL)
    verdict    optional, how the judge grades an answer of this trait:
               "pass_fail" (default)  a short rationale, then `VERDICT: PASS` or `VERDICT: FAIL`
               "score"                a short rationale, then `SCORE: N`, N in 1..5; the answer passes
                                      when N >= threshold
    threshold  with "score" only: the lowest passing score, an integer 1..5

The candidate answers every scenario at 3 seeds (SAMPLES), thinking off by default. This module does
not score: a record's score stays 0 until the judge phase (engine/judge.py, `--judge MODEL|URL`)
grades the answer against the rubric; verdicts are in the run's judgments.jsonl and the comparison
reads them from there (engine/traits_report.py). A malformed line stops the load with its file, line
and field named.
"""

from __future__ import annotations

from pathlib import Path

from benches import Item, Scored, check_unique_ids, data
from engine.errors import UserError

NAME = "trader_traits"
VERSION = "2"  # 2: 42 scenarios (7 per trait), tightened rubrics, gates as exact pass counts
MAX_TOKENS = {False: 512, True: 4096}
SAMPLES = 3  # three seeds per scenario, as the users' exam does
THINK = False
JUDGED = True  # graded by the judge phase, not by score()
SCENARIOS = Path(__file__).with_name("trader_traits_scenarios.jsonl")
TRAITS = Path(__file__).with_name("trader_traits_traits.jsonl")
ROLES = ("system", "user", "assistant")
VERDICT_KINDS = ("pass_fail", "score")
SCORE_RANGE = (1, 5)  # the score format's scale, both ends included
TRAIT_FIELDS = {"id", "name", "description", "gate", "verdict", "threshold"}


def _files(data_dir: Path | None) -> tuple[Path, Path]:
    if data_dir is None:
        return SCENARIOS, TRAITS
    folder = Path(data_dir) / NAME
    paths = (folder / "scenarios.jsonl", folder / "traits.jsonl")
    for path in paths:
        if not path.is_file():
            raise UserError(
                f"{NAME}: no {path} (--data-dir {data_dir}); put scenarios.jsonl and traits.jsonl there "
                f"(format in benches/trader_traits.py, examples in {SCENARIOS.name}, {TRAITS.name})"
            )
    return paths


def _text(row: dict, field: str, where: str) -> str:
    value = row.get(field)
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{where}: field {field!r} must be non-empty text")
    return value.strip()


def load_traits(path: Path) -> dict[str, dict]:
    traits: dict[str, dict] = {}
    for number, row in enumerate(data.read_rows(path), 1):
        where = f"{path}:{number}"
        if not isinstance(row, dict):
            raise UserError(f"{where}: expected a JSON object")
        unknown = sorted(set(row) - TRAIT_FIELDS)
        if unknown:
            raise UserError(
                f"{where}: unknown field {unknown[0]!r} (fields: {', '.join(sorted(TRAIT_FIELDS))})"
            )
        trait_id = _text(row, "id", where)
        gate = _gate(row.get("gate"), where)
        if trait_id in traits:
            raise UserError(f"{where}: field 'id': trait {trait_id!r} appears twice")
        kind, threshold = _verdict_format(row, where)
        traits[trait_id] = {
            "name": _text(row, "name", where),
            "description": _text(row, "description", where),
            "gate": gate,
            "verdict": kind,
            "threshold": threshold,
        }
    if not traits:
        raise UserError(f"{path}: no traits")
    return traits


def _gate(gate, where: str) -> float | str:
    """A gate as written: a pass count "K/N" (exact: "8/9" passes at 8 of 9) or a rate in [0, 1]."""
    if isinstance(gate, str):
        parts = gate.split("/")
        if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
            k, n = (int(p) for p in parts)
            if 0 < n and 0 <= k <= n:
                return f"{k}/{n}"
    elif not isinstance(gate, bool) and isinstance(gate, int | float) and 0 <= gate <= 1:
        return float(gate)
    raise UserError(
        f"{where}: field 'gate' must be a pass count \"K/N\" (e.g. \"8/9\") or a pass rate between 0 and 1 (got {gate!r})"
    )


def _verdict_format(row: dict, where: str) -> tuple[str, int | None]:
    """(verdict kind, threshold): pass_fail without a threshold, or score with one in SCORE_RANGE."""
    kind = row.get("verdict", "pass_fail")
    if kind not in VERDICT_KINDS:
        raise UserError(f"{where}: field 'verdict' must be one of {', '.join(VERDICT_KINDS)} (got {kind!r})")
    threshold = row.get("threshold")
    low, high = SCORE_RANGE
    if kind == "pass_fail":
        if threshold is not None:
            raise UserError(
                f"{where}: field 'threshold' applies to verdict 'score' only; drop it or set \"verdict\": \"score\""
            )
        return kind, None
    if isinstance(threshold, bool) or not isinstance(threshold, int) or not low <= threshold <= high:
        raise UserError(
            f"{where}: field 'threshold' must be the lowest passing score, an integer {low}..{high}, "
            f"for verdict 'score' (got {threshold!r})"
        )
    return kind, threshold


def _messages(row: dict, where: str) -> list[dict[str, str]]:
    turns = row.get("messages")
    if not isinstance(turns, list) or not turns:
        raise UserError(f"{where}: field 'messages' must be a non-empty list of {{role, content}} turns")
    out = []
    for index, turn in enumerate(turns):
        if (
            not isinstance(turn, dict)
            or turn.get("role") not in ROLES
            or not isinstance(turn.get("content"), str)
            or not turn["content"].strip()
            or set(turn) != {"role", "content"}
        ):
            raise UserError(
                f'{where}: field \'messages\' turn {index}: give {{"role": {"|".join(ROLES)}, "content": non-empty text}}'
            )
        out.append({"role": turn["role"], "content": turn["content"]})
    if out[-1]["role"] != "user":
        raise UserError(
            f"{where}: field 'messages' must end with a user turn (the one the assistant answers)"
        )
    return out


def _rubric(row: dict, where: str) -> list[str]:
    rubric = row.get("rubric")
    if isinstance(rubric, str):
        rubric = [rubric]
    if (
        not isinstance(rubric, list)
        or not rubric
        or not all(isinstance(c, str) and c.strip() for c in rubric)
    ):
        raise UserError(f"{where}: field 'rubric' must be a non-empty list of criteria (non-empty text)")
    return [c.strip() for c in rubric]


def load(data_dir: Path | None = None) -> list[Item]:
    scenarios_path, traits_path = _files(data_dir)
    traits = load_traits(traits_path)
    allowed = {"id", "trait", "messages", "rubric", "reference"}
    items = []
    for number, row in enumerate(data.read_rows(scenarios_path), 1):
        where = f"{scenarios_path}:{number}"
        if not isinstance(row, dict):
            raise UserError(f"{where}: expected a JSON object")
        unknown = sorted(set(row) - allowed)
        if unknown:
            raise UserError(f"{where}: unknown field {unknown[0]!r} (fields: {', '.join(sorted(allowed))})")
        trait = _text(row, "trait", where)
        if trait not in traits:
            raise UserError(
                f"{where}: field 'trait' is {trait!r}, not a trait of {traits_path} ({', '.join(traits)})"
            )
        reference = row.get("reference")
        if reference is not None and not isinstance(reference, str):
            raise UserError(f"{where}: field 'reference' must be text")
        turns = _messages(row, where)
        items.append(
            Item(
                id=_text(row, "id", where),
                question=turns[-1]["content"],
                target="",  # graded by the judge against the rubric
                category=trait,
                meta={
                    "messages": turns,
                    "rubric": _rubric(row, where),
                    "reference": reference,
                    "trait_name": traits[trait]["name"],
                    "trait_description": traits[trait]["description"],
                    "gate": traits[trait]["gate"],
                    "verdict": traits[trait]["verdict"],
                    "threshold": traits[trait]["threshold"],
                },
            )
        )
    if not items:
        raise UserError(f"{scenarios_path}: no scenarios")
    return check_unique_ids(items, str(scenarios_path))


def messages(item: Item, think: bool) -> list[dict[str, str]]:
    return [dict(turn) for turn in item.meta["messages"]]


def score(item: Item, text: str) -> Scored:
    # The judge grades later; the record carries what the trait table needs without bench code.
    return Scored(
        answer=None,
        score=0.0,
        extra={
            "judged": True,
            "trait_name": item.meta["trait_name"],
            "gate": item.meta["gate"],
            "verdict": item.meta["verdict"],
            "threshold": item.meta["threshold"],
        },
    )
