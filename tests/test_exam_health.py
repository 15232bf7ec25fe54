"""An exam that did not run is not a result: episodes.health, and a server that rejects tools stops the run."""

from __future__ import annotations

import asyncio
import os

import pytest

from benches import godmode
from engine import sandbox
from engine.backends.openai_backend import OpenAIBackend
from engine.episodes import INVALID_SHARE, health
from engine.errors import UserError
from engine.records import ItemRecord, Turn

REJECTED = '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'


def _record(i: int, stop: str | None = "answered", error: str | None = None, score: float = 1.0) -> ItemRecord:
    turns = None if error else [Turn(role="assistant", tokens=3, text="x", extra={"kind": "answer"})]
    return ItemRecord(
        item_id=f"q{i}", sample=0, seed=i, prompt_hash="h", completion="", prompt_tokens=1, completion_tokens=1,
        finish_reason="error" if error else "stop", truncated=False, answer=None, score=score, latency_s=0.1,
        turns=turns, stop_reason=None if error else stop, error=error,
    )  # fmt: skip


def test_a_baseline_whose_episodes_all_end_on_format_errors_is_invalid_with_the_cause_named():
    records = [_record(i, "format_errors", score=0.0) for i in range(90)]
    verdict = health(records, tool_format="hermes")
    assert verdict.invalid and verdict.format_errors == 90
    assert verdict.cause.startswith("90 of 90 episodes ended on format errors")
    assert "--tool-parser" in verdict.remedy and "qwen3_coder" in verdict.remedy and "hermes" in verdict.remedy
    served = health(records, tool_format="served")
    assert "restart it with --tool-call-parser" in served.remedy


def test_mostly_is_more_than_half_and_a_healthy_run_is_valid():
    n = 20
    at_limit = int(INVALID_SHARE * n)
    ok = health([_record(i, "format_errors") for i in range(at_limit)] + [_record(i) for i in range(at_limit, n)])
    assert not ok.invalid and ok.cause == "" and ok.format_errors == at_limit
    bad = health([_record(i, "format_errors") for i in range(at_limit + 1)] + [_record(i) for i in range(at_limit + 1, n)])
    assert bad.invalid
    # Turn limits and wrong answers are the model's doing, not an exam that did not run.
    assert not health([_record(i, "turn_limit", score=0.0) for i in range(n)]).invalid


def test_rejected_tools_and_request_errors_name_their_remedy():
    rejected = [_record(i, error=f"POST /v1/chat/completions: HTTP 400 from the server: {REJECTED}") for i in range(6)]
    verdict = health(rejected + [_record(9)])
    assert verdict.invalid and verdict.tools_rejected == 6
    assert "--enable-auto-tool-choice --tool-call-parser" in verdict.remedy
    down = health([_record(i, error="failed after 3 tries: HTTP 503") for i in range(3)])
    assert down.invalid and down.request_errors == 3 and "rerun" in down.remedy


def test_a_one_shot_bench_has_nothing_to_say():
    one_shot = _record(0)
    one_shot = ItemRecord(**{**{f: getattr(one_shot, f) for f in one_shot.__struct_fields__}, "turns": None, "stop_reason": None})
    assert health([one_shot]) is None and health([]) is None


@pytest.mark.skipif(sandbox.shutil.which("bwrap") is None and not os.environ.get("CI"), reason="bubblewrap not installed")
def test_a_server_that_rejects_tools_stops_the_run_in_one_line_naming_the_flags(tmp_path):
    from test_godmode import _plan
    from test_openai_backend import Scripted, spec

    from benches.godmode import generator
    from engine import runner

    generator.generate(tmp_path / "data" / "godmode")
    items = godmode.load(tmp_path / "data")[:4]
    server = Scripted([(400, {"error": {"message": REJECTED, "code": 400}}, 0)] * 8)

    async def main():
        async with server as url:
            backend = await OpenAIBackend.start(spec(url), concurrency=2, backoff_base_s=0.01)
            plan = _plan(items, tmp_path, "served")
            runner.prepare_run_dir(tmp_path / "run", plan.spec)
            try:
                await runner.execute(plan, tmp_path / "run", backend, concurrency=2)
            finally:
                await backend.close()

    with pytest.raises(UserError) as caught:
        asyncio.run(main())
    message = str(caught.value)
    assert "\n" not in message and "--enable-auto-tool-choice --tool-call-parser NAME" in message
    assert server.bodies[0]["tools"] == godmode.TOOLS
    assert len(server.bodies) <= 2  # stopped at once, not one failure per episode
