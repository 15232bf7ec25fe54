"""Benches: one short module each, with the same plain functions.

    NAME, VERSION             bench id and prompt/extraction/scoring version (part of the contract)
    MAX_TOKENS[think]         default generation cap per mode
    load(data_dir) -> list[Item]
    messages(item, think) -> chat messages
    score(item, answer_text) -> Scored       (called from worker threads: must be thread-safe)

Optional:
    SAMPLES                   samples per item this bench always takes (e.g. 4 for maj@4); default --samples
    PER_ITEM                  "mean" (default: avg@k) or "majority" (maj@k over Scored.vote_key); stored in
                              the run's spec, so comparing runs never needs bench code (engine/pairing.py)
    SCORING_VERSIONS          versions of shared scoring code the bench calls ({"math_answer": "2"})
    async solve(item, session) -> Episode
                              multi-turn or tool-using benches (engine/solvers.py); default: one reply
    HUB, LOCAL_FILES          its pinned hub file and the names it reads under --data-dir DIR/<name>/
                              (benches.data; `python -m engine data fetch` downloads HUB)

The runner strips reasoning before `score` sees the text: in think mode only what follows `</think>`
is scored, and a completion cut off inside its reasoning is wrong and truncated, never parsed.
"""

from __future__ import annotations

import hashlib
import importlib
import random
from types import ModuleType
from typing import Any

import msgspec

from engine.errors import UserError


class Item(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    question: str
    target: str
    category: str | None = None
    meta: dict[str, Any] = {}  # bench-specific fields (options, tests, instruction kwargs, ...)


class Scored(msgspec.Struct, kw_only=True):
    answer: str | None  # what was extracted (None: nothing found)
    score: float
    extra: dict[str, Any] = {}
    scores: dict[str, float] = {}  # secondary scores by name
    # What maj@k groups samples by (PER_ITEM = "majority"); default: the extracted answer.
    vote_key: str | None = None


BENCHES = (
    "arith", "gsm8k", "mmlu_pro", "gpqa", "tradequiz", "ifeval", "humaneval", "aime_2026", "hmmt_feb_2026", "godmode",
    "trader_traits",
)  # fmt: skip
OFFLINE_BENCHES = ("arith",)  # need no data files at all
TIERS = ("smoke", "standard", "full")
SMOKE_N = 150
# Benches the standard tier runs as a stratified slice (items); every other bench runs whole there.
# mmlu_pro: about 30% of 12,032, reweighted back to the full split with BenchSpec.strata_sizes.
STANDARD_SLICE = {"mmlu_pro": 3600}


def get_bench(name: str) -> ModuleType:
    if name not in BENCHES:
        raise UserError(f"unknown bench {name!r} (available: {', '.join(BENCHES)})")
    return importlib.import_module(f"benches.{name}")


def data_fingerprint(items: list[Item]) -> str:
    """Content hash of a loaded split: the same rows give the same hash wherever they came from."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(msgspec.json.encode(item))
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def check_unique_ids(items: list[Item], source: str) -> list[Item]:
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise UserError(f"{source}: duplicated item id {item.id!r}; ids must be unique")
        seen.add(item.id)
    return items


def select_items(items: list[Item], tier: str, bench: str, seed: int) -> list[Item]:
    """Items a tier runs: a pure function of (tier, bench, data fingerprint, seed).

    smoke: SMOKE_N items; standard: the STANDARD_SLICE size for the benches listed there, else the
    whole split; full: the whole split. A subset is a stratified random sample by category (see
    `allocate`), its strata interleaved in proportion, each in split order.
    """
    if tier not in TIERS:
        raise UserError(f"--tier {tier}: unknown tier ({', '.join(TIERS)})")
    size = {"smoke": SMOKE_N, "standard": STANDARD_SLICE.get(bench), "full": None}[tier]
    if size is None or len(items) <= size:
        return list(items)
    key = f"{tier}|{bench}|{data_fingerprint(items)}|{seed}".encode()
    rng = random.Random(int.from_bytes(hashlib.sha256(key).digest()[:8], "big"))
    strata: dict[str | None, list[int]] = {}
    for index, item in enumerate(items):
        strata.setdefault(item.category, []).append(index)
    counts = allocate({cat: len(idx) for cat, idx in strata.items()}, size)
    order: list[tuple[float, str, int]] = []
    for cat in sorted(strata, key=str):
        picked = sorted(rng.sample(strata[cat], counts[cat]))
        # Spread every stratum evenly over the order: splits are often sorted by category, and a
        # prefix of the selection (--limit) should still keep each stratum's share.
        order += [((rank + 0.5) / len(picked), str(cat), index) for rank, index in enumerate(picked)]
    return [items[index] for _, _, index in sorted(order)]


def allocate(sizes: dict[str | None, int], n: int) -> dict[str | None, int]:
    """Items per stratum for a sample of n: proportional to the stratum sizes (largest remainder).

    A stratum that would get fewer than min(2, its size) is raised to that, when n allows, taking
    from the strata most above their proportional share: every stratum is then observed, has a
    variance, and can be reweighted back to its share of the split.
    """
    total = sum(sizes.values())
    quotas = {cat: n * size / total for cat, size in sizes.items()}
    counts = {cat: int(q) for cat, q in quotas.items()}
    by_remainder = sorted(sizes, key=lambda c: (-(quotas[c] - counts[c]), str(c)))
    for cat in by_remainder[: n - sum(counts.values())]:
        counts[cat] += 1
    floor = {cat: min(2, size) for cat, size in sizes.items()}
    if sum(floor.values()) <= n:
        for cat in sorted(sizes, key=str):
            while counts[cat] < floor[cat]:
                donor = max(
                    (c for c in sizes if counts[c] > floor[c]), key=lambda c: (counts[c] - quotas[c], str(c))
                )
                counts[donor] -= 1
                counts[cat] += 1
    return counts


def items_fingerprint(items: list[Item]) -> str:
    return hashlib.sha256("\n".join(i.id for i in items).encode()).hexdigest()[:16]


def split_reasoning(text: str, think: bool, truncated: bool) -> tuple[str, str | None]:
    """(reasoning, answer text). Answer text is None when the reasoning never closed."""
    if not think:
        return "", text
    head, sep, tail = text.partition("</think>")
    if sep:
        return head, tail
    # Some templates put <think> in the prompt and the model may skip reasoning entirely: only a
    # completion that ended cleanly without ever opening a think block counts as a plain answer.
    if not truncated and "<think>" not in text:
        return "", text
    return text, None
