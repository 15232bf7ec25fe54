"""The sensitivity ladder (`make ladder`; a benchmark, not a test): which signal sees which damage.

One baseline run of the tiny model, then candidates of growing damage, each graded against it:
  aa-same   the baseline's model again, same sampling seed   (must fire nothing)
  aa-other  the baseline's model, another sampling seed, same items (flips may move; margin and KL not)
  rtn-int8, rtn-int6, rtn-int4, rtn-int3   round-to-nearest weight quantization (engine degrade)
per candidate and signal — flips (compare's exact McNemar), answer margin (engine/margin_stats.py),
KL probe (teacher-forced, against the baseline's reference), truncation and length canaries — the
effect, its interval and whether it fires; and the margin pass's cost against generation.

Every step is a `python -m engine ...` subprocess; a step whose output exists is not redone (rerun to
resume). Run it alone on the machine: `flock /tmp/dh-heavy.lock make ladder` on a shared one.

    python bench_kernels/ladder.py [--limit 40] [--benches arith,gsm8k,mmlu_pro] [--out runs/ladder]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.margin import paired_margins, read_margins  # noqa: E402
from engine.margin_stats import margin_tests  # noqa: E402
from engine.models import cache_dir  # noqa: E402

RUNGS = ("aa-same", "aa-other", "rtn-int8", "rtn-int6", "rtn-int4", "rtn-int3")  # table order
ENV = {**os.environ, "VLLM_HOST_IP": "127.0.0.1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def engine(*args: str, ok=(0,)) -> subprocess.CompletedProcess:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "engine", *args], cwd=ROOT, env=ENV, capture_output=True, text=True)
    print(f"  [{time.monotonic() - started:6.0f}s] engine {' '.join(args[:3])} … rc {proc.returncode}", file=sys.stderr)
    if proc.returncode not in ok:
        sys.exit(f"ladder: `python -m engine {' '.join(args)}` failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def last_json(stdout: str) -> dict:
    """The command's JSON answer (its last line that is one, should anything else reach stdout)."""
    try:
        return json.loads(stdout)
    except json.JSONDecodeError:
        return json.loads(next(line for line in reversed(stdout.splitlines()) if line.startswith("{")))


def candidate_model(rung: str) -> str:
    if rung.startswith("aa-"):
        return "smollm2-135m"
    path = cache_dir() / "candidates" / f"smollm2-135m-{rung}"
    if not (path / "config.json").is_file():
        engine("degrade", "--model", "smollm2-135m", "--method", rung, "--out", str(path))
    return str(path)


def make_run(out: Path, model: str, seed: int, args) -> None:
    if not (out / "manifest.json").is_file():
        engine(
            "--model", model, "--tier", "smoke", "--benches", args.benches, "--data-dir", str(args.data_dir),
            "--limit", str(args.limit), "--seed", str(seed), "--item-seed", "0", "--baseline", "none", "--out", str(out),
            "-c", str(args.concurrency), ok=(0, 1),
        )  # fmt: skip
    if not (out / "margins").is_dir():
        engine("margin", str(out), "--model", model, "--data-dir", str(args.data_dir))


def generation_seconds(run: Path) -> float:
    path = run / "timing.jsonl"
    return sum(json.loads(line)["wall_s"] for line in path.read_text().splitlines() if line.strip()) if path.is_file() else math.nan


def margin_seconds(run: Path, benches: list[str]) -> float:
    return sum(m.seconds for b in benches if (m := read_margins(run, b)) is not None)


def grade(base: Path, cand: Path, rung: str, reference: Path, model: str, benches: list[str]) -> list[dict]:
    rows = []
    waive = ["--allow-differ", "seed"] if rung == "aa-other" else []
    compared = last_json(engine("compare", str(base), str(cand), *waive, "--json", ok=(0, 1, 5, 7)).stdout)
    for b in compared["benches"]:
        lo, hi = b["delta_ci"]
        rows.append(dict(rung=rung, bench=b["bench"], signal="flips", effect=100 * b["delta"], lo=100 * lo, hi=100 * hi,
                         fires=not lo <= 0 <= hi, unit="pts", note=f"{b['b']} lost / {b['c']} won"))  # fmt: skip
        t = b["truncation"]
        rows.append(dict(rung=rung, bench=b["bench"], signal="truncation", effect=100 * (t["cand_rate"] - t["base_rate"]),
                         lo=math.nan, hi=math.nan, fires=t["flagged"], unit="pts", note=f"p {t['p_holm']:.2g}"))  # fmt: skip
        length = b["length"]
        rows.append(dict(rung=rung, bench=b["bench"], signal="length", effect=length["shift"]["median_ratio"], lo=math.nan,
                         hi=math.nan, fires=length["flagged"], unit="×", note=f"p {length['p_holm']:.2g}"))  # fmt: skip
    base_m, cand_m = paired_margins(base, cand)
    for t in margin_tests(base_m, cand_m):
        rows.append(dict(rung=rung, bench=t.bench, signal="answer margin", effect=t.effect, lo=t.interval[0], hi=t.interval[1],
                         fires=t.fired, unit="nats", note="identical" if t.identical else f"p {t.p:.2g}"))  # fmt: skip
    probe = last_json(engine("probe", "--model", model, "--reference", str(reference), "--dtype", "bfloat16", "--json").stdout)
    kl, se = probe["kl_mean"], probe["kl_se"]
    floor = (probe.get("storage_floor") or {}).get("kl_mean", 0.0)
    # Fires when the one-sided 95% lower bound of the mean KL is above the reference's own storage floor.
    rows.append(dict(rung=rung, bench="(probe)", signal="KL", effect=kl, lo=kl - 1.96 * se, hi=kl + 1.96 * se,
                     fires=kl - 1.645 * se > floor, unit="nats/token", note=f"floor {floor:.1e}"))  # fmt: skip
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["| candidate | bench | signal | effect | 95% interval | fires | note |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        interval = "" if math.isnan(r["lo"]) else f"[{r['lo']:+.3g}, {r['hi']:+.3g}]"
        effect = f"{r['effect']:.3g}× median length" if r["unit"] == "×" else f"{r['effect']:+.3g} {r['unit']}"
        lines.append(f"| {r['rung']} | {r['bench']} | {r['signal']} | {effect} | {interval} | "
                     f"{'**yes**' if r['fires'] else 'no'} | {r['note']} |")  # fmt: skip
    return "\n".join(lines)


def smallest_step(rows: list[dict]) -> str:
    out = []
    for signal in ("flips", "answer margin", "KL", "truncation", "length"):
        fired = [r["rung"] for r in rows if r["signal"] == signal and r["fires"]]
        first = next((rung for rung in RUNGS if rung in fired), None)
        out.append(f"- {signal}: {'never fires' if first is None else f'first fires at {first}'}"
                   + (f" (also fires on an A/A rung: {', '.join(sorted({f for f in fired if f.startswith('aa')}))})" if any(f.startswith("aa") for f in fired) else ""))  # fmt: skip
    return "\n".join(out)


def write_noise_floor(out: Path) -> None:
    """The A/A rungs are the baseline's two noise-floor reruns: store their discordance beside it, so
    `python -m engine plan --baseline OUT/base` plans from it."""
    import msgspec

    from engine.noise_floor import discordance
    from engine.records import NOISE_FLOOR_FILE, BenchNoise, NoiseFloor, read_run

    runs = {rung: out / rung for rung in ("aa-same", "aa-other")}
    if not all((run / "manifest.json").is_file() for run in runs.values()):
        return
    base = read_run(out / "base")
    same, other = read_run(runs["aa-same"]), read_run(runs["aa-other"])
    table = {}
    for bench in base.spec.benches:
        n, s = discordance(base, same, bench.name)
        table[bench.name] = BenchNoise(n=n, same_seed=s, other_seed=discordance(base, other, bench.name)[1])
    floor = NoiseFloor(same_seed_run=str(runs["aa-same"]), other_seed_run=str(runs["aa-other"]), benches=table)
    (out / "base" / NOISE_FLOOR_FILE).write_bytes(msgspec.json.format(msgspec.json.encode(floor), indent=1))


def report(state: dict, limit: int, benches: list[str]) -> str:
    order = {rung: k for k, rung in enumerate(RUNGS)}
    rows = sorted(state["rows"], key=lambda r: order.get(r["rung"], 99))
    cost = [state["cost"][rung] for rung in RUNGS if rung in state["cost"]]
    machine = f"{platform.node()}: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, Python {platform.python_version()}"
    return "\n\n".join([
        f"Ladder: tiny model (smollm2-135m, bfloat16), smoke tier, first {limit} items of {', '.join(benches)}; {machine}",
        format_table(rows),
        "Smallest ladder step each signal detects:\n" + smallest_step(rows),
        "Margin pass cost against generation (same items, engine load excluded):\n\n| candidate | generation | margin pass | fraction |\n|---|---|---|---|\n"
        + "\n".join(f"| {c['rung']} | {c['generation_s']:.0f} s | {c['margin_s']:.1f} s | {c['margin_s'] / c['generation_s']:.1%} |" for c in cost),
    ])  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--limit", type=int, default=40, help="items per bench (first N of the smoke selection)")
    p.add_argument("--benches", default="arith,gsm8k,mmlu_pro")
    p.add_argument("--rungs", default=",".join(RUNGS), help="which candidates, in the order they are run")
    p.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "ladder")
    p.add_argument("-c", "--concurrency", type=int, default=64)
    p.add_argument("--report-only", action="store_true", help="print the table of what OUT/ladder.json holds so far")
    args = p.parse_args()
    benches = [b for b in args.benches.split(",") if b]
    args.out.mkdir(parents=True, exist_ok=True)
    state_path = args.out / "ladder.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {"rows": [], "cost": {}}
    if not args.report_only:
        base = args.out / "base"
        make_run(base, "smollm2-135m", 0, args)
        reference = base / "kl_reference.dhref"
        if not reference.is_file():
            engine("probe", "--model", "smollm2-135m", "--build-reference", "--from-run", str(base), "--data-dir",
                   str(args.data_dir), "--dtype", "bfloat16")  # fmt: skip
        for rung in [r for r in args.rungs.split(",") if r]:
            if rung in state["cost"]:
                continue  # graded by an earlier, interrupted ladder
            model = candidate_model(rung)
            cand = args.out / rung
            make_run(cand, model, 1 if rung == "aa-other" else 0, args)
            state["rows"] = [r for r in state["rows"] if r["rung"] != rung] + grade(base, cand, rung, reference, model, benches)
            state["cost"][rung] = dict(rung=rung, generation_s=generation_seconds(cand), margin_s=margin_seconds(cand, benches))
            state_path.write_text(json.dumps(state, indent=1))
    write_noise_floor(args.out)
    text = report(state, args.limit, benches)
    (args.out / "ladder.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
