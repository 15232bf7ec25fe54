"""Trajectory determinism (`python -m engine determinism --benches godmode`): the comparison on scripted
trajectories, then one real run of the tiny model (slow: two engines, a few short episodes)."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

from engine.trajectories import (
    ConfigTrajectories,
    Trajectory,
    across_repeats,
    compare_trajectories,
    first_trajectory_divergence,
    trajectory_findings,
    vs_reference,
)


def _t(question: str, replies: list[list[int]], repeat: int = 0) -> Trajectory:
    return Trajectory(question_id=question, repeat=repeat, stop_reason="answered", replies=replies, texts=[""] * len(replies))


def test_first_trajectory_divergence_names_the_turn_and_token():
    a = [[1, 2, 3], [4, 5], [6]]
    assert first_trajectory_divergence(a, [list(r) for r in a]) is None
    assert first_trajectory_divergence(a, [[1, 2, 3], [4, 9], [6]]) == (1, 1, "tokens")
    assert first_trajectory_divergence(a, [[1, 2], [4, 5], [6]]) == (0, 2, "tokens")  # one reply stopped early
    assert first_trajectory_divergence(a, a[:2]) == (2, 0, "length")  # same replies, one episode went on
    assert first_trajectory_divergence([], [[1]]) == (0, 0, "length")


def test_agreement_against_the_reference_and_across_repeats():
    reference = [_t("q1", [[1, 2], [3]]), _t("q2", [[5], [6, 7]]), _t("q1", [[1, 2], [3]], repeat=1)]
    batched = [
        _t("q1", [[1, 2], [3]]),
        _t("q2", [[5], [6, 8]]),  # turn 1, token 1
        _t("q1", [[1, 2], [3]], repeat=1),
        _t("q2", [[5, 0]], repeat=1),  # turn 0, token 1
    ]
    ref = vs_reference(reference, batched)
    assert (ref.trajectories, ref.identical) == (4, 2)
    assert [(d.question_id, d.repeat, d.turn, d.token) for d in ref.divergences] == [("q2", 0, 1, 1), ("q2", 1, 0, 1)]
    again = across_repeats(batched)
    assert (again.trajectories, again.identical) == (2, 1)
    assert again.divergences[0].question_id == "q2" and (again.divergences[0].turn, again.divergences[0].token) == (0, 1)
    assert compare_trajectories([]).trajectories == 0

    configs = [
        ConfigTrajectories(name="bs1", setting="ref", available=True, across_repeats=across_repeats(reference)),
        ConfigTrajectories(name="batched", setting="all in flight", available=True, across_repeats=again, vs_reference=ref),
        ConfigTrajectories(name="chunked", setting="c", available=False, reason="no"),
    ]
    lines = trajectory_findings(configs)
    assert "batched (all in flight): trajectories that differ from bs1: 2/4, earliest at turn 0 token 1 (q2)" in lines
    assert "batched (all in flight): trajectories that repeats differ: 1/2, earliest at turn 0 token 1 (q2)" in lines
    assert "chunked: not run (no)" in lines
    assert lines[-1] == "bit-identical trajectories (every reply's token ids, 100%): bs1"


def test_agent_benches_take_no_other_benches(capsys):
    from engine.__main__ import main

    code = main(["determinism", "--model", "smollm2-135m", "--benches", "godmode,arith"])
    assert code != 0 and "give it alone" in capsys.readouterr().err


@pytest.mark.heavy
@pytest.mark.slow  # two engine starts and 8 short episodes of the tiny model: 173 s on 2 shared cores
def test_tiny_model_trajectories_bs1_vs_batched_fp32(tiny_model, tmp_path):
    out = tmp_path / "det"
    proc = run_cli(
        "determinism", "--model", "smollm2-135m", "--benches", "godmode", "--n", "2", "--repeats", "2",
        "--configs", "bs1,batched", "--dtype", "float32", "--max-tokens", "48", "--max-turns", "3",
        "--out", str(out), "--json", env={"VLLM_HOST_IP": "127.0.0.1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["bench"] == "godmode" and report["questions"] == 2 and report["max_turns"] == 3
    bs1, batched = report["configs"]
    assert bs1["name"] == "bs1" and bs1["episodes"] == 4
    # fp32 one sequence at a time: the same trajectory every repeat.
    assert bs1["across_repeats"] == {"trajectories": 2, "identical": 2, "divergences": []}
    assert batched["vs_reference"]["trajectories"] == 4
    lines = [json.loads(line) for line in (out / "bs1" / "trajectories.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and all(1 <= len(t["replies"]) <= 3 and all(t["replies"]) for t in lines)
    assert report["findings"]
