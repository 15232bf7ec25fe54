"""Early stop (`--early-stop`): stop a bench as soon as its degradation is certain, never for "no change".

Design, fixed before the first candidate item runs and written to `early_stop.json` in the run dir:
  * items are taken in an order that depends only on (run seed, bench, item id), never on outcomes,
    and the test looks at the longest prefix of that order that is complete (all samples of each item
    in), so completion order, which follows answer length and hence correctness, cannot bias it;
  * each item whose per-item value differs from the baseline's is a discordant pair (loss or win);
    after every pair the always-valid mixture test (`stats.sequential_log_evalue`) is checked against
    a boundary at alpha_seq = SHARE * alpha / benches; reaching it stops the bench;
  * a bench that never stops is graded at the end by the same design (`stats.sequential_p_value`): the
    final look gets exactly the alpha the early looks left, so the false-positive rate stays at alpha.
alpha_seq carries the Holm step of the strictest bench, so a stopped bench is DEGRADED under Holm over
the run's benches whatever the other benches show.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import msgspec

from engine import stats
from engine.errors import UserError
from engine.pairing import item_value_fn, per_item_values
from engine.records import ItemRecord, Run, atomic_write
from engine.spec import BenchSpec

EARLY_STOP_FILE = "early_stop.json"
SHARE = 0.25  # of each bench's Holm level, spent on the early looks; the end-of-run look gets the rest


class BenchStop(msgspec.Struct, kw_only=True):
    stopped: bool = False
    after_items: int = 0  # complete prefix of the design order when the boundary was reached
    discordant: int = 0
    losses: int = 0


class EarlyStopDesign(msgspec.Struct, kw_only=True):
    alpha: float  # the run's alpha
    family: int  # benches in the run (Holm family)
    share: float
    prior_a: float
    seed: int  # run seed: fixes the item order
    benches: dict[str, BenchStop]

    @property
    def alpha_seq(self) -> float:
        return self.share * self.alpha / self.family


def order_key(seed: int, bench: str, item_id: str) -> bytes:
    """Sort key of the design order: a hash, so the order is fixed by the ids alone (any subset of
    the items comes out in the same relative order in the runner and in compare)."""
    return hashlib.sha256(f"early-stop|{seed}|{bench}|{item_id}".encode()).digest()


def loss_path(ordered_ids: Iterable[str], base: dict[str, float], cand: dict[str, float]) -> tuple[list[int], list[int], int]:
    """Along the complete prefix of the design order: 1 = loss, 0 = win for each discordant pair, the
    prefix length at each of those pairs, and the prefix length.

    Items the baseline lacks are not part of the design; the first item the candidate lacks ends the
    prefix.
    """
    path: list[int] = []
    at: list[int] = []
    prefix = 0
    for item_id in ordered_ids:
        if item_id not in base:
            continue
        if item_id not in cand:
            break
        prefix += 1
        if base[item_id] != cand[item_id]:
            path.append(int(base[item_id] > cand[item_id]))
            at.append(prefix)
    return path, at, prefix


def read_design(run_dir: Path) -> EarlyStopDesign | None:
    path = Path(run_dir) / EARLY_STOP_FILE
    if not path.is_file():
        return None
    try:
        return msgspec.json.decode(path.read_bytes(), type=EarlyStopDesign)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise UserError(f"{path}: invalid early-stop design ({exc}); it is written by --early-stop, do not edit it") from exc


def write_design(run_dir: Path, design: EarlyStopDesign) -> None:
    atomic_write(Path(run_dir) / EARLY_STOP_FILE, msgspec.json.format(msgspec.json.encode(design), indent=1))


class Monitor:
    """Follows one bench's candidate records as they arrive and says when to stop it."""

    def __init__(
        self,
        bench: str,
        seed: int,
        item_ids: list[str],
        base_values: dict[str, float],
        samples: int,
        per_item: Callable[[list[ItemRecord]], float],
        alpha_seq: float,
        prior_a: float,
    ):
        self.bench = bench
        self.seed = seed
        self.order = sorted((i for i in item_ids if i in base_values), key=lambda i: order_key(seed, bench, i))
        self.base_values = base_values
        self.samples = samples
        self.per_item = per_item
        self.boundary = stats.sequential_boundary(max(1, len(self.order)), alpha_seq, prior_a)
        self.pending: dict[str, dict[int, ItemRecord]] = {}
        self.cand_values: dict[str, float] = {}
        self.next = 0  # position in `order` of the first item not yet in the prefix
        self.discordant = 0
        self.losses = 0
        self.stopped = False

    def add(self, record: ItemRecord) -> bool:
        """Take one candidate record; True exactly once, when the bench should stop."""
        if self.stopped or record.item_id not in self.base_values:
            return False
        if record.item_id in self.cand_values:
            return False
        got = self.pending.setdefault(record.item_id, {})
        got[record.sample] = record  # a resumed file may repeat a sample: count it once
        if len(got) < self.samples:
            return False
        self.cand_values[record.item_id] = self.per_item(list(self.pending.pop(record.item_id).values()))
        while self.next < len(self.order) and self.order[self.next] in self.cand_values:
            item_id = self.order[self.next]
            self.next += 1
            base, cand = self.base_values[item_id], self.cand_values[item_id]
            if base == cand:
                continue
            self.discordant += 1
            self.losses += int(base > cand)
            if self.losses >= self.boundary[self.discordant]:
                self.stopped = True
                return True
        return False

    def result(self) -> BenchStop:
        return BenchStop(stopped=self.stopped, after_items=self.next, discordant=self.discordant, losses=self.losses)

    def order_of(self, item_id: str) -> bytes:
        """Design-order key: the runner submits in this order, so the complete prefix (what the test
        may look at) grows steadily."""
        return order_key(self.seed, self.bench, item_id)


def start(
    run_dir: Path,
    benches: dict[str, tuple[BenchSpec, list[str]]],
    seed: int,
    baseline: Run,
    alpha: float,
    existing: dict[str, list[ItemRecord]],
) -> dict[str, Monitor]:
    """Fix (or, on resume, reread) the design for `benches` (name -> its spec and item ids) and return
    one monitor per bench, fed the records already on disk."""
    design = read_design(run_dir)
    if design is None:
        if any(existing.values()):
            raise UserError(
                f"{run_dir}: --early-stop must be on from a run's first item (this run already has records "
                f"without it); choose another --out"
            )
        design = EarlyStopDesign(
            alpha=alpha,
            family=len(benches),
            share=SHARE,
            prior_a=stats.SEQUENTIAL_PRIOR_A,
            seed=seed,
            benches={name: BenchStop() for name in benches},
        )
        write_design(run_dir, design)
    monitors: dict[str, Monitor] = {}
    for name, (bench, item_ids) in benches.items():
        if name not in design.benches:
            continue
        base_bench = next((b for b in baseline.spec.benches if b.name == name), bench)
        monitor = Monitor(
            name,
            design.seed,
            item_ids,
            per_item_values(base_bench, baseline.records.get(name, [])),
            bench.samples,
            item_value_fn(bench.per_item),
            design.alpha_seq,
            design.prior_a,
        )
        for record in existing.get(name, []):
            monitor.add(record)
        monitors[name] = monitor
    return monitors


def note_stop(run_dir: Path, bench: str, monitor: Monitor) -> None:
    design = read_design(run_dir)
    if design is not None:
        design.benches[bench] = monitor.result()
        write_design(run_dir, design)
    print(
        f"{bench}: degradation certain after {monitor.next} items ({monitor.losses} losses of {monitor.discordant} "
        f"discordant pairs): no more items of this bench are submitted (--early-stop)",
        file=sys.stderr,
    )
