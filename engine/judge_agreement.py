"""How far a judge agrees with people: the shipped hand-labelled answers, and a second judge.

benches/trader_traits_labels.jsonl holds answers to the shipped scenarios, each labelled PASS or FAIL
against its rubric by hand (both kinds for every trait, the three once-ambiguous cases included). One
line per answer:

    id        unique text
    scenario  the id of a scenario in the bench's scenarios
    answer    the assistant's reply being graded
    label     "PASS" | "FAIL" (a score trait's answer passes when it deserves the trait's threshold)
    why       the labeller's one-line reason

`label_agreement` grades every labelled answer with the judge exactly as the judge phase would
(engine.judge.grade) and reports raw agreement with a Wilson interval and Cohen's κ with a bootstrap
interval, overall and per trait; given a second judge, the same between the two judges.

    python -m engine.judge_agreement --judge MODEL|URL [--judge-model NAME] [--judge-api-key-env VAR]
                                     [--second-judge MODEL|URL ...] [--labels FILE] [--data-dir DIR]

Unscored gradings (no parsable verdict after the re-asks) are counted and left out of the pairs.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
from pathlib import Path

import msgspec
import numpy as np

import benches as bench_registry
from benches import Item, data
from engine.errors import UserError
from engine.judge import cohen_kappa, grade

LABELS = Path(bench_registry.__file__).with_name("trader_traits_labels.jsonl")
LEVEL = 0.95
RESAMPLES = 2000


class Label(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    scenario: str
    answer: str
    label: str
    why: str = ""


class AgreementStats(msgspec.Struct, kw_only=True):
    group: str  # a trait id, or "all"
    pairs: int
    agreement: float
    agreement_ci: tuple[float, float]  # Wilson, LEVEL
    kappa: float  # nan when one side gives a single verdict
    kappa_ci: tuple[float, float]  # percentile bootstrap, RESAMPLES resamples, fixed seed; nan when undefined


def load_labels(path: Path, items: dict[str, Item]) -> list[Label]:
    labels: list[Label] = []
    seen: set[str] = set()
    for number, row in enumerate(data.read_rows(path), 1):
        where = f"{path}:{number}"
        try:
            label = msgspec.convert(row, Label)
        except msgspec.ValidationError as exc:
            raise UserError(f"{where}: {exc} (fields: id, scenario, answer, label, why)") from None
        if label.label not in ("PASS", "FAIL"):
            raise UserError(f"{where}: field 'label' must be PASS or FAIL (got {label.label!r})")
        if label.scenario not in items:
            raise UserError(f"{where}: field 'scenario' is {label.scenario!r}, not a scenario of the bench")
        if label.id in seen:
            raise UserError(f"{where}: field 'id': {label.id!r} appears twice")
        if not label.answer.strip():
            raise UserError(f"{where}: field 'answer' must be non-empty text")
        seen.add(label.id)
        labels.append(label)
    if not labels:
        raise UserError(f"{path}: no labelled answers")
    return labels


def wilson(successes: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    if n == 0:
        return (math.nan, math.nan)
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + level / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def agreement_stats(
    group: str, a: list[bool], b: list[bool], *, level: float = LEVEL, resamples: int = RESAMPLES, seed: int = 0
) -> AgreementStats:
    """Raw agreement (Wilson interval) and Cohen's κ (percentile bootstrap over pairs) of two raters."""
    n = len(a)
    same = sum(x == y for x, y in zip(a, b, strict=True))
    kappa = cohen_kappa(a, b)
    low = high = math.nan
    if n and not math.isnan(kappa):
        rng = np.random.default_rng(seed)
        x, y = np.array(a), np.array(b)
        draws = []
        for _ in range(resamples):
            pick = rng.integers(0, n, n)
            k = cohen_kappa(x[pick].tolist(), y[pick].tolist())
            if not math.isnan(k):
                draws.append(k)
        if draws:
            low, high = (float(q) for q in np.quantile(draws, [(1 - level) / 2, (1 + level) / 2]))
    return AgreementStats(
        group=group, pairs=n, agreement=same / n if n else math.nan, agreement_ci=wilson(same, n, level),
        kappa=kappa, kappa_ci=(low, high),
    )  # fmt: skip


def per_group(
    keys: list[str], trait_of: dict[str, str], a: dict[str, str | None], b: dict[str, str | None]
) -> list[AgreementStats]:
    """Agreement per trait and overall over the keys both raters scored."""
    groups: dict[str, tuple[list[bool], list[bool]]] = {}
    for key in keys:
        if a.get(key) is None or b.get(key) is None:
            continue
        for group in (trait_of[key], "all"):
            x, y = groups.setdefault(group, ([], []))
            x.append(a[key] == "PASS")
            y.append(b[key] == "PASS")
    order = sorted(g for g in groups if g != "all") + (["all"] if "all" in groups else [])
    return [agreement_stats(g, *groups[g]) for g in order]


async def judge_labels(backend, labels: list[Label], items: dict[str, Item], concurrency: int = 8) -> dict[str, str | None]:
    """label id -> the judge's verdict (None: unscored) for every labelled answer."""
    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(label: Label) -> tuple[str, str | None]:
        verdict, _, _ = await grade(backend, items[label.scenario], label.answer, gate=gate)
        return label.id, verdict

    return dict(await asyncio.gather(*(one(label) for label in labels)))


def format_stats(title: str, rows: list[AgreementStats], unscored: int) -> list[str]:
    def ci(pair: tuple[float, float], pct: bool) -> str:
        if any(math.isnan(v) for v in pair):
            return "[-]"
        return f"[{100 * pair[0]:.0f}%, {100 * pair[1]:.0f}%]" if pct else f"[{pair[0]:.2f}, {pair[1]:.2f}]"

    lines = [f"{title} ({unscored} unscored, left out)"]
    for r in rows:
        kappa = "-" if math.isnan(r.kappa) else f"{r.kappa:.2f}"
        lines.append(
            f"  {r.group:<4} n={r.pairs:<3} agreement {100 * r.agreement:.0f}% {ci(r.agreement_ci, True)}  "
            f"κ {kappa} {ci(r.kappa_ci, False)}"
        )
    return lines


async def _main(args) -> int:
    from engine import judge as judge_mod
    from engine.backends import open_backend

    module = bench_registry.get_bench("trader_traits")
    items = {item.id: item for item in module.load(args.data_dir)}
    labels = load_labels(args.labels, items)
    trait_of = {label.id: items[label.scenario].category or "" for label in labels}
    human = {label.id: label.label for label in labels}
    keys = [label.id for label in labels]
    judged: list[tuple[str, dict[str, str | None]]] = []
    for name in [args.judge, *args.second_judge]:
        target = await judge_mod.resolve_judge(
            name, args.judge_dtype, args.judge_api_key_env, model=args.judge_model if name == args.judge else None
        )
        backend = await open_backend(target.engine, checkpoint=target.checkpoint, seed=judge_mod.JUDGE_SEED, concurrency=8)
        try:
            found = await judge_labels(backend, labels, items)
        finally:
            await backend.close()
        judged.append((name, found))
        unscored = sum(v is None for v in found.values())
        print("\n".join(format_stats(f"{name} vs the hand labels ({args.labels.name})", per_group(keys, trait_of, found, human), unscored)))
    if len(judged) > 1:
        (first, a), (second, b) = judged[0], judged[1]
        unscored = sum(a[k] is None or b[k] is None for k in keys)
        print("\n".join(format_stats(f"{first} vs {second}", per_group(keys, trait_of, a, b), unscored)))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine.judge_agreement", description=__doc__.split("\n\n")[0])
    p.add_argument("--judge", required=True, metavar="MODEL|URL")
    p.add_argument("--judge-model", default=None, metavar="NAME")
    p.add_argument("--judge-api-key-env", default=None)
    p.add_argument("--judge-dtype", default="bfloat16")
    p.add_argument("--second-judge", action="append", default=[], metavar="MODEL|URL")
    p.add_argument("--labels", type=Path, default=LABELS)
    p.add_argument("--data-dir", type=Path, default=None)
    args = p.parse_args(argv)
    try:
        return asyncio.run(_main(args))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
