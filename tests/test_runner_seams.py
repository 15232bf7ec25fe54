"""The runner's seams with an injected backend (no engine): the solver seam, error items, a server that
goes away, a scorer that crashes, several benches through one queue, and the per-item rule in the spec."""

from __future__ import annotations

import asyncio
import types

import pytest

from benches import Item, Scored
from engine import runner
from engine.backends import BackendError, EndpointDown, GenResult
from engine.errors import EngineFailed, RunIncomplete
from engine.pairing import per_item_values
from engine.records import Turn, read_notes, read_records, read_run, records_path
from engine.solvers import Episode, Session
from engine.spec import BenchSpec, RunSpec, SamplingConfig, VllmEngine


class ScriptedBackend:
    """Replies "<last user message>!" (or what `reply` says); fails the requests `fail` names."""

    max_model_len = 512

    def __init__(self, fail=None, reply=None):
        self.requests = []
        self.events = []
        self.fail = fail or (lambda request: None)
        self.reply = reply or (lambda request: request.messages[-1]["content"] + "!")

    async def generate(self, request):
        self.requests.append(request)
        self.events.append(("start", request.request_id))
        await asyncio.sleep(0.01)
        self.events.append(("end", request.request_id))
        error = self.fail(request)
        if error is not None:
            raise error
        return GenResult(text=self.reply(request), token_ids=[], finish_reason="stop", prompt_tokens=3, completion_tokens=2)

    async def close(self):
        pass


def _module(name: str, **extra) -> types.ModuleType:
    module = types.ModuleType(name)
    module.NAME, module.VERSION = name, "1"
    module.messages = lambda item, think: [{"role": "user", "content": item.question}]
    module.score = lambda item, text: Scored(answer=text, score=float(text == item.target))
    for key, value in extra.items():
        setattr(module, key, value)
    return module


def _plan(modules: dict[str, types.ModuleType], n: int = 4, samples: int = 1) -> runner.RunPlan:
    benches, specs = {}, []
    for name, module in modules.items():
        items = [Item(id=f"{name}{i}", question=f"q{i}", target=f"q{i}!") for i in range(n)]
        benches[name] = runner.BenchPlan(module=module, items=items, prompts={}, max_tokens=16, samples=samples)
        specs.append(
            BenchSpec(
                name=name, version="1", data_fingerprint="d", n_items=n, items_fingerprint="i", max_tokens=16,
                samples=samples, per_item=runner.per_item_rule(module),
            )
        )  # fmt: skip
    spec = RunSpec(
        model="m", model_fingerprint="f", tier="smoke", seed=0, think=False, samples=samples,
        sampling=SamplingConfig(preset="greedy", temperature=0.0), benches=tuple(specs),
        engine=VllmEngine(dtype="float32", chunked_prefill=False, bs1=False, prefix_caching=False, max_model_len=512),
    )  # fmt: skip
    return runner.RunPlan(spec=spec, checkpoint=None, benches=benches)


def _run(plan, run_dir, backend):
    runner.prepare_run_dir(run_dir, plan.spec)
    asyncio.run(runner.execute(plan, run_dir, backend, concurrency=3))
    return read_run(run_dir)


def test_one_shot_default_and_benches_share_one_queue(tmp_path):
    plan = _plan({"a": _module("a"), "b": _module("b")})
    backend = ScriptedBackend()
    run = _run(plan, tmp_path / "run", backend)
    assert {b: len(r) for b, r in run.records.items()} == {"a": 4, "b": 4}
    assert all(r.score == 1.0 and r.turns is None for recs in run.records.values() for r in recs)
    # One queue: with 3 in flight, b's first request starts before a's last one has finished.
    assert backend.events.index(("start", "b-b0-0-t0")) < backend.events.index(("end", "a-a3-0-t0"))


def test_solver_seam_records_turns_and_stop_reason(tmp_path):
    async def solve(item, session: Session) -> Episode:
        history = [{"role": "user", "content": item.question}]
        turns = []
        for _ in range(3):
            result = await session.generate(history, temperature=0.5)
            history.append({"role": "assistant", "content": result.text})
            turns.append(Turn(role="assistant", tokens=result.completion_tokens, text=result.text))
        return Episode(
            text=history[1]["content"], finish_reason="stop", prompt_tokens=9, completion_tokens=6,
            prompt_hash=session.first_prompt_hash, turns=turns, stop_reason="turn_limit",
        )  # fmt: skip

    plan = _plan({"agent": _module("agent", solve=solve)}, n=2)
    backend = ScriptedBackend(reply=lambda r: f"turn{len(r.messages)}")
    run = _run(plan, tmp_path / "run", backend)
    records = run.records["agent"]
    assert [len(r.turns) for r in records] == [3, 3] and {r.stop_reason for r in records} == {"turn_limit"}
    # Per-turn seeds: turn 0 keeps the item's own seed, later turns differ; overrides reach the request.
    seeds = {r.request_id: r.seed for r in backend.requests}
    first = [r for r in records if r.item_id == "agent0"][0]
    assert seeds["agent-agent0-0-t0"] == first.seed != seeds["agent-agent0-0-t1"]
    assert {r.sampling.temperature for r in backend.requests} == {0.5}


def test_failed_requests_are_error_items_and_a_rerun_retries_them(tmp_path):
    plan = _plan({"a": _module("a")})
    flaky = ScriptedBackend(fail=lambda r: BackendError("HTTP 400: bad request") if "a1" in r.request_id else None)
    runner.prepare_run_dir(tmp_path / "run", plan.spec)
    with pytest.raises(RunIncomplete, match=r"incomplete: 1 request\(s\) failed for good \(a 1\); 3 of 4 done"):
        asyncio.run(runner.execute(plan, tmp_path / "run", flaky, concurrency=3))
    run = read_run(tmp_path / "run")
    assert run.manifest == "absent"  # a run with failed requests never looks finished
    errors = [r for r in read_records(records_path(tmp_path / "run", "a")) if r.error]
    assert [r.item_id for r in errors] == ["a1"] and errors[0].score == 0.0
    assert per_item_values(plan.spec.benches[0], run.records["a"]).keys() == {"a0", "a2", "a3"}  # never a wrong answer
    assert any(n.kind == "errors" for n in read_notes(tmp_path / "run"))
    healthy = ScriptedBackend()
    run = _run(plan, tmp_path / "run", healthy)
    assert [r.request_id for r in healthy.requests] == ["a-a1-0-t0"]  # only the failed item is sent again
    assert sorted(r.item_id for r in run.records["a"]) == ["a0", "a1", "a2", "a3"]
    assert all(r.error is None for r in run.records["a"])
    assert run.manifest.startswith("verified")


def test_server_gone_stops_the_run_with_records_intact(tmp_path):
    plan = _plan({"a": _module("a")}, n=6)
    down = ScriptedBackend(fail=lambda r: EndpointDown("http://127.0.0.1:9: connection refused") if "a4" in r.request_id else None)
    runner.prepare_run_dir(tmp_path / "run", plan.spec)
    with pytest.raises(EngineFailed, match=r"connection refused: \d of 6 done; restart the server"):
        asyncio.run(runner.execute(plan, tmp_path / "run", down, concurrency=1))
    kept = read_records(records_path(tmp_path / "run", "a"))
    assert [r.item_id for r in kept] == ["a0", "a1", "a2", "a3"]
    resumed = ScriptedBackend()
    run = _run(plan, tmp_path / "run", resumed)
    assert len(resumed.requests) == 2 and len(run.records["a"]) == 6


def test_a_crashing_scorer_is_a_recorded_error_not_a_crash(tmp_path):
    def score(item, text):
        if item.id == "a2":
            raise OverflowError("int too large to convert to float")
        return Scored(answer=text, score=1.0)

    plan = _plan({"a": _module("a", score=score)})
    run = _run(plan, tmp_path / "run", ScriptedBackend())
    bad = next(r for r in run.records["a"] if r.item_id == "a2")
    assert bad.score == 0.0 and "OverflowError" in bad.extra["scorer_error"]


def test_majority_rule_comes_from_the_spec_not_the_bench(tmp_path):
    module = _module("vote", PER_ITEM="majority", score=lambda item, text: Scored(answer=text, score=1.0, vote_key="k"))
    plan = _plan({"vote": module}, n=2, samples=3)
    assert plan.spec.benches[0].per_item == "majority"
    run = _run(plan, tmp_path / "run", ScriptedBackend())
    assert {r.vote_key for r in run.records["vote"]} == {"k"}
    assert per_item_values(run.spec.benches[0], run.records["vote"]) == {"vote0": 1.0, "vote1": 1.0}


def test_dry_run_estimates_from_the_baselines_own_records_and_timing(tmp_path):
    plan = _plan({"a": _module("a")}, n=4)
    base = _run(plan, tmp_path / "base", ScriptedBackend())
    timings = runner.read_timings(tmp_path / "base")
    assert len(timings) == 1 and timings[0].requests == 4 and timings[0].generated_tokens == 8
    text = runner.dry_run(plan, base)
    assert "baseline mean 2 tok/request" in text and "tok/s" in text
    assert "cap (upper bound)" in runner.dry_run(plan, None) and "--calibrate" in runner.dry_run(plan, None)
    rate = asyncio.run(runner.calibrate(plan, ScriptedBackend(), concurrency=2))
    assert rate > 0
    assert "calibration on this machine" in runner.dry_run(plan, None, rate)


def test_benches_with_different_caps_share_the_queue_with_their_own_caps(tmp_path):
    plan = _plan({"a": _module("a"), "b": _module("b")})
    plan.benches["b"].max_tokens = 48
    backend = ScriptedBackend()
    run = _run(plan, tmp_path / "run", backend)
    caps = {r.request_id.split("-")[0]: r.max_tokens for r in backend.requests}
    assert caps == {"a": 16, "b": 48}
    assert {b: sorted(r.item_id for r in recs) for b, recs in run.records.items()} == {
        "a": ["a0", "a1", "a2", "a3"], "b": ["b0", "b1", "b2", "b3"],
    }
