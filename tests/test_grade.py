"""The one decision (engine/grade/): the family-wise rate of the whole decision under A/A, the
families and gates, the exit codes, verdict.json, and the audit defects' regression tests."""

from __future__ import annotations

import json
import re
from pathlib import Path

import msgspec
import numpy as np
import pytest

from engine import sweep
from engine.__main__ import main
from engine.errors import MEANING, ExitCode, exit_code_epilog
from engine.grade import Evidence, FamilyInput, GradeOptions, Member, ProbeReading, Verdict, grade
from engine.grade.family import combine
from engine.grade.verdict import VERDICT_FILE
from engine.pairing import majority_value
from engine.records import ItemRecord, Run, read_run, write_manifest
from engine.spec import BenchSpec, RunSpec, SamplingConfig, VllmEngine

ROOT = Path(__file__).resolve().parent.parent


def _spec(model: str, benches: dict[str, int], samples: int = 1, strata: dict[str, dict[str, int]] | None = None) -> RunSpec:
    return RunSpec(
        model=model, model_fingerprint=model, tier="smoke", seed=0, think=False, samples=samples,
        sampling=SamplingConfig(preset="greedy", temperature=0.0),
        benches=tuple(BenchSpec(name=b, version="1", data_fingerprint="d", n_items=n, items_fingerprint="i", max_tokens=128,
                                samples=samples, strata_sizes=(strata or {}).get(b, {})) for b, n in benches.items()),
        engine=VllmEngine(dtype="bfloat16", chunked_prefill=False, bs1=False, prefix_caching=False, max_model_len=256),
    )  # fmt: skip


def _rec(i: str, score: float, *, sample: int = 0, truncated: bool = False, tokens: int = 10, answer: str | None = "1",
         category: str | None = None) -> ItemRecord:  # fmt: skip
    return ItemRecord(
        item_id=i, sample=sample, seed=sample, prompt_hash="h", completion="x", prompt_tokens=5,
        completion_tokens=128 if truncated else tokens, finish_reason="length" if truncated else "stop", truncated=truncated,
        answer=answer, score=score, latency_s=0.1, reasoning_tokens=tokens, category=category, vote_key=answer,
    )  # fmt: skip


def _run(name: str, records: dict[str, list[ItemRecord]], samples: int = 1, strata=None) -> Run:
    n = {b: len({r.item_id for r in recs}) for b, recs in records.items()}
    return Run(dir=Path("/sim") / name, spec=_spec(name, n, samples, strata), records=records)


def _a_a_pair(rng: np.random.Generator, benches=(("arith", 150), ("gsm8k", 150), ("mmlu", 300))) -> tuple[Run, Run]:
    """An unchanged candidate: shared seeds flip ~10% of items at random (both ways alike), and cap hits,
    lengths and blanks are drawn alike for both sides."""
    base, cand = {}, {}
    for bench, n in benches:
        acc = rng.uniform(0.3, 0.8)
        x = (rng.random(n) < acc).astype(float)
        flip = rng.random(n) < 0.1
        y = np.where(flip, (rng.random(n) < acc).astype(float), x)
        recs = []
        for side in (x, y):
            trunc = rng.random(n) < 0.05
            tokens = rng.integers(20, 120, n)
            blank = rng.random(n) < 0.03
            recs.append([_rec(f"q{i}", float(side[i]), truncated=bool(trunc[i]), tokens=int(tokens[i]),
                              answer=None if blank[i] else "1") for i in range(n)])  # fmt: skip
        base[bench], cand[bench] = recs
    return _run("base", base), _run("cand", cand)


# --- the whole decision's family-wise rate under A/A -------------------------------------------------------


def test_a_a_rate_of_the_whole_decision_is_at_most_alpha():
    """Every family counts (accuracy, truncation, length, no-answer): the decision is DEGRADED in at most
    alpha of A/A pairs (seeded; docs/decision.md has the larger run from bench_kernels/decision_sim.py)."""
    rng = np.random.default_rng(2024)
    sims = 300
    fired = sum(grade(*_a_a_pair(rng), GradeOptions(), Evidence()).decision == "DEGRADED" for _ in range(sims))
    assert fired / sims <= 0.05


def test_family_combination_is_weighted_holm_with_tarone():
    acc = FamilyInput(name="accuracy", method="", members=[Member(name="a", effect=-0.1, p=0.03, p_min=1e-6)])
    canary = FamilyInput(name="truncation", method="", members=[Member(name="a", effect=0.5, p=1e-6, p_min=1e-7)])
    never = FamilyInput(name="length", method="", members=[Member(name="a", effect=1.0, p=0.2, p_min=0.2)])
    empty = FamilyInput(name="episodes", method="", members=[])
    fams = {f.name: f for f in combine([acc, canary, never, empty], 0.05)}
    # length cannot reach any level: no share; the canary fires at its 20%, accuracy at its 80%.
    assert fams["length"].share == 0 and not fams["length"].members[0].tested
    assert not fams["episodes"].measured and fams["episodes"].note == "not measured"
    assert fams["truncation"].fired and fams["truncation"].share == pytest.approx(0.2)
    assert fams["accuracy"].fired and fams["accuracy"].share == pytest.approx(0.8)
    assert fams["accuracy"].members[0].p_adjusted == pytest.approx(0.03 / 0.8)
    # p 0.045 misses 80% of alpha; once the canary has fired, its share passes on (Holm) and 0.045 < 0.05.
    late = FamilyInput(name="accuracy", method="", members=[Member(name="a", effect=-0.1, p=0.045, p_min=1e-6)])
    fams = {f.name: f for f in combine([late, canary], 0.05)}
    assert fams["accuracy"].fired and fams["accuracy"].share == pytest.approx(1.0)


# --- a new family plugs in -------------------------------------------------------------------------------


def test_a_plugged_in_family_counts_and_is_named():
    rng = np.random.default_rng(1)
    base, cand = _a_a_pair(rng, benches=(("arith", 100),))
    margin = FamilyInput(name="margin", method="paired t on answer margins", members=[
        Member(name="arith", effect=-0.8, p=1e-5, p_min=0.0, line="answer margin on arith fell 0.8 nats")])  # fmt: skip
    v = grade(base, cand, GradeOptions(), Evidence(families=[margin]))
    assert v.decision == "DEGRADED" and v.exit_code == ExitCode.DEGRADED
    assert any(r.startswith("answer margin on arith fell 0.8 nats (p 1e-05") for r in v.reasons)
    assert grade(base, cand, GradeOptions(signals=("accuracy",)), Evidence(families=[margin])).decision != "DEGRADED"


def test_invalid_evidence_makes_the_decision_invalid():
    base, cand = _a_a_pair(np.random.default_rng(3), benches=(("arith", 50),))
    v = grade(base, cand, GradeOptions(), Evidence(invalid=["godmode: no tool call was ever read"]))
    assert v.decision == "INVALID" and v.exit_code == ExitCode.INVALID


# --- the KL tripwire ---------------------------------------------------------------------------------------


def test_kl_tripwire_fires_on_collapse_and_says_when_not_measured():
    base, cand = _a_a_pair(np.random.default_rng(4), benches=(("arith", 50),))
    collapsed = Evidence(probe=ProbeReading(kl_mean=2.99, kl_se=0.07, top1_agree=0.28, n_positions=8192))
    v = grade(base, cand, GradeOptions(), collapsed)
    assert v.decision == "DEGRADED" and "KL tripwire: mean 2.99 > 1" in v.reasons
    assert "KL tripwire: same top-1 28.0% < 50%" in v.reasons
    int4 = Evidence(probe=ProbeReading(kl_mean=0.42, kl_se=0.015, top1_agree=0.75, n_positions=8192))
    assert not any(g.failed for g in grade(base, cand, GradeOptions(), int4).gates)
    assert any(g.failed for g in grade(base, cand, GradeOptions(kl_gate_mean=0.3), int4).gates)
    assert grade(base, cand, GradeOptions(signals=("accuracy",)), collapsed).decision != "DEGRADED"
    none = grade(base, cand, GradeOptions(), Evidence())
    assert not none.probe.measured and any("not measured" in n and "KL probe" in n for n in none.notes)


# --- small runs, margin, exit codes ---------------------------------------------------------------------


def _identical(n: int, bench: str = "arith") -> tuple[Run, Run]:
    recs = [_rec(f"q{i}", float(i % 2)) for i in range(n)]
    return _run("base", {bench: recs}), _run("cand", {bench: list(recs)})


def test_a_small_run_is_inconclusive_and_says_how_many_items_would_do():
    v = grade(*_identical(20), GradeOptions(), Evidence())
    assert v.decision == "INCONCLUSIVE" and v.exit_code == ExitCode.PASS
    assert re.search(r"too small to rule out drops below [\d.]+ pts on arith .*5.0-pt default margin.*~\d+ items of arith would", v.headline)
    with_margin = grade(*_identical(20), GradeOptions(margin=0.05), Evidence())
    assert with_margin.decision == "INCONCLUSIVE" and with_margin.exit_code == ExitCode.NOT_SHOWN
    big = grade(*_identical(2000), GradeOptions(margin=0.05), Evidence())
    assert big.decision == "EQUIVALENT" and big.exit_code == ExitCode.PASS
    assert grade(*_identical(2000), GradeOptions(), Evidence()).decision == "PASS"
    # With the baseline's noise floor the count comes from the planner's margin at this n.
    planned = grade(*_identical(40), GradeOptions(), Evidence(planned_discordance={"arith": 0.05}))
    need = 40 * (planned.benches[0].planned.margin / 0.05) ** 2
    assert f"~{int(np.ceil(need / 10) * 10)} items of arith would" in planned.headline


def test_epilog_and_enum_agree(capsys):
    text = exit_code_epilog()
    assert set(MEANING) == set(ExitCode)
    for code in ExitCode:
        assert re.search(rf"^\s+{int(code)}\s+{re.escape(MEANING[code])}$", text, re.M)
    for argv in (["-h"], ["compare", "-h"], ["report", "-h"], ["sweep", "-h"]):
        with pytest.raises(SystemExit):
            main(argv)
        assert text in capsys.readouterr().out


def test_verdict_schema_doc_lists_every_field():
    import engine.grade.family as family
    import engine.grade.verdict as verdict

    doc = (ROOT / "docs" / "verdict-schema.md").read_text()
    for struct in (verdict.Verdict, verdict.Gate, verdict.ProbeReport, verdict.Difference, verdict.TraitTable, family.Family, family.Member):
        for field in struct.__struct_fields__:
            assert f"`{field}`" in doc, f"docs/verdict-schema.md lacks {struct.__name__}.{field}"


# --- verdict.json: the same bytes from compare, report and sweep --------------------------------------------


def _write(run: Run, where: Path) -> Path:
    from engine.records import SPEC_FILE, RecordWriter, encode_spec, records_path

    where.mkdir(parents=True)
    (where / SPEC_FILE).write_bytes(encode_spec(run.spec))
    for bench, recs in run.records.items():
        writer = RecordWriter(records_path(where, bench))
        for r in recs:
            writer.append(r)
        writer.close()
    return where


def _decision_bytes(run_dir: Path) -> bytes:
    """verdict.json without its provenance (date, command line: what differs between gradings by design)."""
    verdict = json.loads((run_dir / VERDICT_FILE).read_bytes())
    assert verdict.pop("provenance")["git_commit"]
    return json.dumps(verdict).encode()


def test_compare_report_and_sweep_write_the_same_verdict(tmp_path, capsys):
    base, cand = _a_a_pair(np.random.default_rng(7), benches=(("arith", 60), ("gsm8k", 60)))
    base_dir, cand_dir = _write(base, tmp_path / "base"), _write(cand, tmp_path / "cand")
    for run_dir in (base_dir, cand_dir):  # finished runs (the sweep grades only those)
        write_manifest(run_dir, ["arith", "gsm8k"])
    code = main(["compare", str(base_dir), str(cand_dir), "--json"])
    printed = capsys.readouterr().out.encode()
    saved = _decision_bytes(cand_dir)
    assert printed == (cand_dir / VERDICT_FILE).read_bytes() and json.loads(saved)["exit_code"] == code
    (cand_dir / VERDICT_FILE).unlink()
    assert main(["report", str(cand_dir), "--baseline", str(base_dir), "--html", str(tmp_path / "r.html")]) == code
    assert _decision_bytes(cand_dir) == saved
    (cand_dir / VERDICT_FILE).unlink()
    outcome = sweep.Outcome(name="cand", model="cand", run_dir=str(cand_dir), exit_code=0, status="finished before")
    sweep.grade(outcome, read_run(base_dir), GradeOptions())
    assert _decision_bytes(cand_dir) == saved
    assert outcome.exit_code == code


def test_not_comparable_and_incomplete_print_a_verdict(tmp_path, capsys):
    base, cand = _identical(30)
    base_dir = _write(base, tmp_path / "base")
    other = _write(Run(dir=tmp_path / "x", spec=msgspec.structs.replace(cand.spec, seed=3), records=cand.records), tmp_path / "other")
    assert main(["compare", str(base_dir), str(other), "--json"]) == ExitCode.NOT_COMPARABLE
    v = json.loads(capsys.readouterr().out)
    assert v["decision"] == "NOT_COMPARABLE" and v["differences"][0]["field"] == "seed" and v["differences"][0]["remedy"]
    assert json.loads((other / VERDICT_FILE).read_bytes()) == v
    (other / VERDICT_FILE).unlink()
    assert main(["report", str(other), "--baseline", str(base_dir), "--html", str(tmp_path / "nc.html")]) == ExitCode.NOT_COMPARABLE
    assert {**json.loads((other / VERDICT_FILE).read_bytes()), "provenance": v["provenance"]} == v and "rerun the candidate with --seed 0" in (tmp_path / "nc.html").read_text()
    capsys.readouterr()
    short = _write(Run(dir=tmp_path / "y", spec=cand.spec, records={"arith": cand.records["arith"][:20]}), tmp_path / "short")
    assert main(["compare", str(base_dir), str(short), "--json"]) == ExitCode.INCOMPLETE
    v = json.loads(capsys.readouterr().out)
    assert v["decision"] == "INCOMPLETE" and v["schema"] == 1 and v["missing"]


# --- the audit defects -------------------------------------------------------------------------------------


def test_defect1_one_multi_sample_item_is_never_graded():
    rng = np.random.default_rng(11)
    graded = 0
    for _ in range(200):
        scores = rng.random((2, 4)) < 0.5
        base = _run("base", {"arith": [_rec("q0", float(s), sample=k) for k, s in enumerate(scores[0])]}, samples=4)
        cand = _run("cand", {"arith": [_rec("q0", float(s), sample=k) for k, s in enumerate(scores[1])]}, samples=4)
        v = grade(base, cand, GradeOptions(signals=("accuracy",)), Evidence())
        graded += v.benches[0].verdict in ("DEGRADED", "IMPROVED")
    assert graded == 0


def test_defect2_a_stratified_subset_with_no_differing_item_has_a_real_bound():
    recs = [_rec(f"q{i}", float(i % 2), category="big" if i < 6 else "small") for i in range(8)]
    strata = {"arith": {"big": 900, "small": 100}}
    base, cand = _run("base", {"arith": recs}, strata=strata), _run("cand", {"arith": list(recs)}, strata=strata)
    v = grade(base, cand, GradeOptions(margin=0.05), Evidence())
    assert v.benches[0].drop_bound > 0.2 and v.decision != "EQUIVALENT"


def test_defect3_equivalence_needs_both_sides():
    # The candidate gains 5 pts: the drop side is fine, the rise side is not within a 5-pt margin.
    n = 400
    x = [1.0] * 200 + [0.0] * 200
    y = [1.0] * 200 + [1.0] * 20 + [0.0] * 180
    base = _run("base", {"arith": [_rec(f"q{i}", v) for i, v in enumerate(x)]})
    cand = _run("cand", {"arith": [_rec(f"q{i}", v) for i, v in enumerate(y)]})
    v = grade(base, cand, GradeOptions(margin=0.05, signals=("accuracy",)), Evidence())
    assert v.benches[0].drop_bound < 0.05 and v.decision != "EQUIVALENT"
    assert n == len(x)


def test_defect6_allow_incomplete_counts_missing_losses_in_the_bound():
    x = [1.0] * 200
    y = [1.0] * 180 + [0.0] * 20
    base = _run("base", {"arith": [_rec(f"q{i}", v) for i, v in enumerate(x)]})
    cand = _run("cand", {"arith": [_rec(f"q{i}", v) for i, v in enumerate(y[:180])]})
    cand = msgspec.structs.replace(cand, spec=base.spec)
    v = grade(base, cand, GradeOptions(allow_incomplete=True, signals=("accuracy",)), Evidence())
    assert v.benches[0].drop_bound >= 0.1 - 1e-9  # the 20 missing losses are in it
    assert v.decision == "INCONCLUSIVE"


def test_defect8_blank_samples_vote():
    one_and_blanks = [_rec("q", 1.0, sample=0)] + [_rec("q", 0.0, sample=k, answer=None) for k in (1, 2, 3)]
    assert majority_value(one_and_blanks) == 0.0


def test_defect9_episode_canaries_are_one_family():
    from engine.records import Turn

    rng = np.random.default_rng(9)
    fired = 0
    sims = 100
    for _ in range(sims):
        recs = []
        for _side in range(2):
            side = []
            for i in range(60):
                turns = [Turn(role="assistant", text="x") for _ in range(int(rng.integers(1, 6)))]
                r = _rec(f"q{i}", float(rng.random() < 0.5))
                side.append(msgspec.structs.replace(r, turns=turns, stop_reason=str(rng.choice(["answer", "turn_limit", "error"]))))
            recs.append(side)
        v = grade(_run("base", {"godmode": recs[0]}), _run("cand", {"godmode": recs[1]}), GradeOptions(signals=("episodes",)), Evidence())
        fired += v.decision == "DEGRADED"
    assert fired / sims <= 0.05


def test_defect7_small_traits_are_said_to_be_untestable():
    from engine.grade.traits import TraitEvidence, TraitLine

    rows = [TraitLine(trait=f"T{k}", name="t", scenarios=4, cand_rate=0.0, base_rate=1.0, delta=-1.0, p_degraded=0.0625) for k in range(6)]
    base, cand = _identical(40)
    v = grade(base, cand, GradeOptions(), Evidence(traits=[TraitEvidence(bench="trader_traits", rows=rows, report={})]))
    assert any("traits too small to be flagged" in n for n in v.notes)


def test_verdict_roundtrips_as_builtins():
    v = grade(*_identical(40), GradeOptions(), Evidence())
    assert isinstance(msgspec.convert(json.loads(msgspec.json.encode(v)), dict), dict) and isinstance(v, Verdict)


def test_defect4_early_stop_decision_and_interval_agree(tmp_path):
    from engine import sequential, stats

    design = sequential.EarlyStopDesign(alpha=0.05, family=1, share=sequential.SHARE, prior_a=stats.SEQUENTIAL_PRIOR_A, seed=0,
                                        benches={"arith": sequential.BenchStop()})  # fmt: skip
    disagreements = 0
    n = 200
    order = sorted((f"q{i}" for i in range(n)), key=lambda i: sequential.order_key(0, "arith", i))
    for losses_first in (6, 14, 18, 20, 22):  # the losses come first in the design order, the wins at the end
        for wins in (0, 8, 16, 24):
            x = {i: 1.0 if k < 100 else 0.0 for k, i in enumerate(order)}
            y = dict(x)
            for i in order[:losses_first]:
                y[i] = 0.0
            for i in order[-wins:] if wins else []:
                y[i] = 1.0
            base = _run("base", {"arith": [_rec(i, x[i]) for i in order]})
            cand = _run("cand", {"arith": [_rec(i, y[i]) for i in order]})
            row = grade(base, cand, GradeOptions(signals=("accuracy",)), Evidence(design=design)).benches[0]
            fixed = stats.exact_mcnemar_test(row.b, row.c, n)
            decided = row.verdict.startswith(("DEGRADED", "IMPROVED"))
            disagreements += (fixed.p_two < 1 - row.ci_level) != decided
            lo, hi = row.delta_ci
            assert (lo <= 0 <= hi) != decided, (row.verdict, row.delta_ci)
    assert disagreements > 0  # the fixed-n test and the design do disagree at times: the interval follows the design
