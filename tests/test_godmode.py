"""godmode through the real runner, sandbox, parser and scorer, with scripted policies instead of a model.

The oracle replies with the generator's reference command as a Qwen tool call, then `ANSWER: <what it
printed>`: 90/90 proves the generator, the sandbox, the tool-call parsing and the scorer agree.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path

import pytest

import benches
from benches import godmode
from benches.godmode import generator, scenario
from benches.godmode.scoring import score_answer
from engine import runner, sandbox
from engine.backends import GenResult
from engine.errors import UserError
from engine.records import read_run
from engine.spec import BenchSpec, RunSpec, SamplingConfig, VllmEngine

# Without bubblewrap these tests skip on a developer machine, but fail loudly in CI (which installs it).
pytestmark = pytest.mark.skipif(
    sandbox.shutil.which("bwrap") is None and not os.environ.get("CI"), reason="bubblewrap not installed"
)


@pytest.fixture(scope="session")
def scenarios(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("godmode-data")
    generator.generate(root / "godmode")
    return root


class Killed(Exception):
    """The run dies mid-way (as a kill would, but inside the test process)."""


class Policy:
    """A backend whose replies come from `decide(item_question, history)`; raises `kill` at request n."""

    max_model_len = 32768

    def __init__(self, decide, kill_at: int | None = None):
        self.decide, self.kill_at, self.requests = decide, kill_at, []

    async def generate(self, request):
        self.requests.append(request)
        if self.kill_at is not None and len(self.requests) == self.kill_at:
            raise Killed("killed mid-run")
        await asyncio.sleep(0)
        text = self.decide(request.messages)
        return GenResult(text=text, token_ids=[], finish_reason="stop", prompt_tokens=100, completion_tokens=len(text) // 4)

    async def close(self):
        pass


def _tool_call(command: str) -> str:
    call = json.dumps({"name": "bash", "arguments": {"command": command}})
    return f"<tool_call>\n{call}\n</tool_call>"


def _printed(messages) -> str:
    body = messages[-1]["content"].removeprefix("<tool_response>\n").removesuffix("\n</tool_response>")
    return body.split("\n", 1)[1].strip()


def oracle(references: dict[str, str], transform=lambda answer, question: answer):
    def decide(messages):
        question = messages[1]["content"]
        if len(messages) == 2:
            return "Let me compute it.\n" + _tool_call(references[question])
        return f"The output says it.\nANSWER: {transform(_printed(messages), question)}"

    return decide


def _plan(items, data_dir, tool_format="hermes", samples=1) -> runner.RunPlan:
    spec = RunSpec(
        model="policy", model_fingerprint="p", tier="full", seed=0, think=False, samples=1,
        sampling=SamplingConfig(preset="greedy", temperature=0.0),
        benches=(BenchSpec(name="godmode", version=godmode.VERSION, data_fingerprint=benches.data_fingerprint(items),
                           n_items=len(items), items_fingerprint=benches.items_fingerprint(items), max_tokens=512),),
        engine=VllmEngine(dtype="float32", chunked_prefill=False, bs1=False, prefix_caching=False, max_model_len=32768),
    )  # fmt: skip
    bench = runner.BenchPlan(
        module=godmode, items=items, prompts={}, max_tokens=512, samples=samples,
        tools=None if tool_format == "fenced" else godmode.TOOLS, tool_format=tool_format,
    )  # fmt: skip
    return runner.RunPlan(spec=spec, checkpoint=None, benches={"godmode": bench})


def _run(items, data_dir, backend, run_dir, concurrency=8, tool_format="hermes", samples=1):
    plan = _plan(items, data_dir, tool_format, samples)
    runner.prepare_run_dir(run_dir, plan.spec)
    asyncio.run(runner.execute(plan, run_dir, backend, concurrency=concurrency))
    return read_run(run_dir).records["godmode"]


def _references(items):
    return {godmode.USER.format(question=i.question, convention=i.meta["convention"]): i.meta["reference"] for i in items}


def test_oracle_scores_90_of_90_through_sandbox_parser_and_scorer(scenarios, tmp_path):
    items = godmode.load(scenarios)
    assert len(items) == 90 and {i.category for i in items} == {"daily_ohlcv", "tick_day", "portfolio"}
    records = _run(items, scenarios, Policy(oracle(_references(items))), tmp_path / "run")
    assert len(records) == 90
    wrong = [(r.item_id, r.answer, r.turns[-2].extra if len(r.turns) > 1 else None) for r in records if r.score != 1.0]
    assert not wrong, wrong[:5]
    assert {r.stop_reason for r in records} == {"answered"}
    r = records[0]
    assert [t.role for t in r.turns] == ["assistant", "tool", "assistant"] and r.turns[1].exit_code == 0
    assert all(r.extra["matched"] == "stated" for r in records if "matched" in r.extra)


def test_wrong_convention_is_scored_wrong_and_says_which(scenarios, tmp_path):
    items = [i for i in godmode.load(scenarios) if i.meta["unit"] == "percent"][:4]
    assert len(items) == 4

    def as_ratio(answer, question):  # forgot the percent: 12.34 -> 0.1234
        return f"{float(answer) / 100:.6f}"

    records = _run(items, scenarios, Policy(oracle(_references(items), as_ratio)), tmp_path / "run")
    assert [r.score for r in records] == [0.0] * 4
    assert {r.extra["matched"] for r in records} == {"ratio"}


def test_scoring_rules():
    number = {"kind": "number", "tolerance": 0.01, "unit": "percent"}
    assert score_answer("12.34%", "12.34", number) == (True, "stated")
    assert score_answer("$1,234.567", "1234.57", number | {"unit": ""}) == (True, "stated")
    assert score_answer("0.1234", "12.34", number) == (False, "ratio")
    assert score_answer("12.4", "12.34", number) == (False, None)
    ratio = {"kind": "number", "tolerance": 0.0001, "unit": "ratio"}
    assert score_answer("12.34", "0.1234", ratio) == (False, "percent")
    lists = {"kind": "list", "tolerance": 0}
    assert score_answer("bbb, AAA", "AAA, BBB", lists) == (True, None)
    assert score_answer("AAA, BBB, BBB", "AAA, BBB", lists) == (False, None)
    assert score_answer("BBB, AAA", "AAA, BBB", lists | {"ordered": True}) == (False, None)
    assert score_answer(" **`acc3`.** ", "ACC3", {"kind": "text", "tolerance": 0}) == (True, None)


def test_read_reply_formats():
    def read(text, fmt="hermes", **kw):
        r = godmode.read_reply(text, fmt, **kw)
        return (r.kind, r.commands or r.answer or r.why)

    assert read(_tool_call("ls /data")) == ("command", ["ls /data"])
    args_as_string = '<tool_call>{"name": "bash", "arguments": "{\\"command\\": \\"pwd\\"}"}</tool_call>'
    assert read(args_as_string)[0] == "format_error"  # vLLM's hermes parser: arguments must be an object
    assert read("Run:\n```bash\nhead /data/x\n```\n", "fenced") == ("command", ["head /data/x"])
    assert read("so\nANSWER: 42.1\n") == ("answer", "42.1")
    assert read('<tool_call>{"name": "python", "arguments": {"code": "1"}}</tool_call>')[0] == "format_error"
    assert read("<tool_call>{oops</tool_call>") == ("format_error", "a tool call the hermes parser cannot read")
    assert read("I think it is about 4.")[0] == "format_error"
    # Native formats never run a fenced block: it is shown work beside a final answer.
    assert read("Computed with\n```bash\nwc -l /data/x\n```\nANSWER: 17") == ("answer", "17")
    assert read("```bash\nls\n```")[0] == "format_error"
    # Fenced format: a final ANSWER line wins over the code shown above it; a block alone runs.
    assert read("I ran\n```bash\nwc -l x\n```\nANSWER: 17", "fenced") == ("answer", "17")
    assert read("ANSWER: maybe 3, checking\n```bash\nwc -l x\n```", "fenced") == ("command", ["wc -l x"])
    # An endpoint's calls come back as JSON <tool_call> blocks (the server parsed them).
    assert read(_tool_call("ls"), "served") == ("command", ["ls"])


ESCAPES = [
    ("network", "python3 -c 'import socket; socket.create_connection((\"1.1.1.1\", 80), timeout=2)'", "unreachable"),
    ("write data", "touch /data/prices.parquet.new && echo WROTE", "Read-only"),
    ("read outside", "ls /root /work /home 2>&1; cat /etc/shadow", "No such file"),
    ("fork bomb", "bomb() { bomb | bomb & }; bomb; sleep 2; echo survived", ""),
    ("endless output", "yes godmode", "omitted"),
    ("sleep", "sleep 600", "wall clock"),
]


def test_escapes_inside_an_episode_are_contained(scenarios, tmp_path, monkeypatch):
    items = [i for i in godmode.load(scenarios) if i.category == "portfolio"][:1]
    commands = [c for _, c, _ in ESCAPES] + ["ls /data && echo STILL-HERE > note && cat note"]
    monkeypatch.setattr(godmode, "SHELL_LIMITS", sandbox.ShellLimits(wall_s=4.0))

    def decide(messages):
        step = sum(m["role"] == "assistant" for m in messages)
        return _tool_call(commands[step]) if step < len(commands) else "ANSWER: 0"

    records = _run(items, scenarios, Policy(decide), tmp_path / "run")
    (r,) = records
    tools = [t for t in r.turns if t.role == "tool"]
    assert len(tools) == len(commands) and r.stop_reason == "answered"
    assert tools[-1].exit_code == 0  # the episode went on, its scratch intact
    by_name = dict(zip([n for n, _, _ in ESCAPES], tools, strict=False))
    assert by_name["write data"].exit_code != 0 and by_name["network"].exit_code != 0
    assert by_name["sleep"].exit_code is None and by_name["sleep"].extra["status"] == "timeout"
    assert by_name["endless output"].tokens >= 1 << 20  # megabytes written, a few KB shown
    assert r.turns[-1].role == "assistant"


def test_resume_after_a_kill_has_no_duplicates_or_losses(scenarios, tmp_path):
    items = godmode.load(scenarios)[:12]
    refs = _references(items)
    with pytest.raises(Killed):
        _run(items, scenarios, Policy(oracle(refs), kill_at=9), tmp_path / "run", concurrency=2)
    partial = read_run(tmp_path / "run").records["godmode"]
    assert 0 < len(partial) < 12
    again = Policy(oracle(refs))
    records = _run(items, scenarios, again, tmp_path / "run", concurrency=2)
    ids = [r.item_id for r in records]
    assert sorted(ids) == sorted(i.id for i in items) and len(set(ids)) == 12
    lines = (tmp_path / "run" / "records" / "godmode.jsonl").read_text().splitlines()
    assert len(lines) == 12  # nothing written twice
    assert len(again.requests) == 2 * (12 - len(partial))
    assert all(r.score == 1.0 for r in records)


def test_malformed_scenarios_are_one_line_errors(scenarios, tmp_path):
    good = scenarios / "godmode" / "portfolio"
    bad = tmp_path / "godmode" / "broken"
    bad.mkdir(parents=True)
    (bad / "description.md").write_text((good / "description.md").read_text())
    cases = [
        ('{"id": "a", "question": "q", "answer": "1", "kind": "number", "tolerance": 0}', "field 'convention' missing"),
        ('{"id": "a", "question": "q", "answer": 1, "kind": "number", "tolerance": 0, "convention": ""}', "field 'answer' must be a str"),
        ('{"id": "a", "question": "q", "answer": "1", "kind": "float", "tolerance": 0, "convention": ""}', "choose number, text, list"),
        ("not json", "not valid JSON"),
    ]
    for line, message in cases:
        (bad / "questions.jsonl").write_text(line + "\n")
        with pytest.raises(UserError, match=re.escape(message)) as info:
            scenario.load_items(tmp_path / "godmode")
        assert "questions.jsonl:1" in str(info.value) and "\n" not in str(info.value)


def test_episode_canaries_flag_more_turns_tool_errors_and_turn_limits():
    from engine.episodes import canaries, format_canaries
    from engine.records import ItemRecord, Turn

    def rec(i, turns, tool_fail, stop):
        trace = []
        for k in range(turns):
            trace.append(Turn(role="assistant", tokens=5, extra={"kind": "command"}))
            trace.append(Turn(role="tool", exit_code=1 if k < tool_fail else 0))
        return ItemRecord(
            item_id=f"q{i}", sample=0, seed=0, prompt_hash="", completion="", prompt_tokens=1, completion_tokens=1,
            finish_reason="stop", truncated=False, answer=None, score=0.0, latency_s=0.0, turns=trace, stop_reason=stop,
        )  # fmt: skip

    base = [rec(i, 2, 0, "answered") for i in range(20)]
    cand = [rec(i, 2 + i % 5 + 1, 1, "turn_limit" if i < 12 else "answered") for i in range(20)]
    c = canaries("godmode", base, cand)
    by = {s.measure: s for s in c.counts}
    assert by["turns used"].flagged and by["tool errors"].flagged and not by["format errors"].flagged
    assert next(s for s in c.stops if s.reason == "turn_limit").flagged
    text = "\n".join(format_canaries(c))
    assert "turns used: mean 2.00 → 5.00" in text and "turn_limit 0→12 ⚠" in text
    assert canaries("godmode", base, base).flags == [] and canaries("x", [], []) is None


# The run command in a child process with godmode's turn cap lowered (a test-only knob: a graded run
# always allows MAX_TURNS), so an episode of the tiny model costs a few replies, not 30.
CAPPED_RUN = """
import sys
import benches.godmode
benches.godmode.MAX_TURNS = int(sys.argv[1])
from engine.__main__ import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.heavy
@pytest.mark.slow  # two engine starts and 4 episodes of <= 4 replies of the tiny model: 207 s on 2 shared cores
def test_tiny_model_end_to_end_twice_gives_identical_trajectories(tiny_model, tmp_path):
    import os
    import subprocess
    import sys

    from conftest import ROOT

    trajectories = []
    for name in ("a", "b"):
        out = tmp_path / name
        proc = subprocess.run(
            [sys.executable, "-c", CAPPED_RUN, "4", "--model", "smollm2-135m", "--benches", "godmode", "--tier", "full",
             "--limit", "2", "--dtype", "float32", "--bs1", "--max-tokens", "48", "--out", str(out), "--baseline", "none"],
            capture_output=True, text=True, timeout=1200, cwd=ROOT, env={**os.environ, "VLLM_HOST_IP": "127.0.0.1"},
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        records = sorted(read_run(out).records["godmode"], key=lambda r: (r.item_id, r.sample))
        spec = read_run(out).spec
        assert spec.benches[0].scoring_versions["tool_format"] == "fenced"  # ChatML: no tools
        assert spec.engine.max_model_len == 8192  # the model's own window, not one sized from the first prompt
        assert len(records) == 2 * godmode.SAMPLES and len({r.item_id for r in records}) == 2
        assert all(r.stop_reason in godmode.STOP_REASONS for r in records)
        assert all(r.turns and r.turns[0].role == "assistant" for r in records)
        assert all(sum(t.role == "assistant" for t in r.turns) <= 4 for r in records)
        trajectories.append([(r.item_id, r.sample, r.stop_reason, r.completion, [msgspec_turn(t) for t in r.turns]) for r in records])
    assert trajectories[0] == trajectories[1]


def msgspec_turn(turn):
    extra = {k: v for k, v in turn.extra.items() if k != "wall_s"}  # the sandbox's own timing varies
    return (turn.role, turn.tokens, turn.text, turn.exit_code, extra)


def test_site_packages_are_staged_once_into_a_readable_cache(tmp_path, monkeypatch):
    """A venv under a private folder: its pandas/pyarrow/numpy (and their run-time dependencies) are
    staged into a world-readable cache, by content, once; a cache the sandbox uid cannot reach is a
    one-line error naming the fix."""
    import os
    import tempfile

    site = sandbox._site_packages.__wrapped__()
    public = Path(tempfile.mkdtemp(dir="/tmp", prefix="dh-test-agent-cache-"))
    try:
        os.chmod(public, 0o755)
        monkeypatch.setenv("DH_AGENT_CACHE", str(public / "cache"))
        staged = Path(sandbox._staged_site_packages(site))
        assert staged.parent == public / "cache" and sandbox._others_can(str(staged), 0o005)
        assert {"pandas", "pyarrow", "numpy", "dateutil"} <= {p.name for p in staged.iterdir()}
        assert sandbox._staged_site_packages(site) == str(staged)  # reused, not rebuilt
        assert [p.name for p in staged.parent.iterdir() if p.name != ".lock"] == [staged.name]  # no leftovers
        # The harness's own interpreter (the ABI those packages were built for), staged the same way.
        ours, prefix = sandbox.os.path.realpath(sandbox.sys._base_executable), sandbox.os.path.realpath(sandbox.sys.base_prefix)
        if ours.startswith(prefix + "/"):
            python = Path(sandbox._staged_interpreter.__wrapped__(ours, prefix))
            stdlib = python / "lib" / f"python{sandbox.sys.version_info.major}.{sandbox.sys.version_info.minor}"
            assert (python / Path(ours).relative_to(prefix)).is_file() and (stdlib / "os.py").is_file()
            assert not (stdlib / "site-packages").exists() and sandbox._others_can(str(stdlib), 0o005)
    finally:
        sandbox.shutil.rmtree(public)
    if os.geteuid() == 0:  # only the root-run sandbox uid is a stranger to our private folders
        os.chmod(tmp_path, 0o700)
        monkeypatch.setenv("DH_AGENT_CACHE", str(tmp_path / "cache"))
        with pytest.raises(UserError, match="set DH_AGENT_CACHE"):
            sandbox._staged_site_packages(site)


# A tools-aware template in the shape of Qwen's: the tools go into the system turn as JSON.
TOOLS_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n{{ messages[0]['content'] }}\n# Tools\n<tools>\n"
    "{%- for tool in tools %}{{ tool | tojson }}\n{%- endfor %}</tools>\n"
    "For each function call, return a json object within <tool_call></tool_call> XML tags<|im_end|>\n"
    "{%- for message in messages[1:] %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{%- endfor %}"
    "{%- else %}{%- for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{%- endfor %}{%- endif %}{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)


def test_tool_format_is_native_where_the_template_renders_tools_else_fenced(tiny_model, scenarios):
    from engine.backends import load_tokenizer, render_chat, template_renders_tools
    from engine.backends.openai_backend import chat_body, parse_chat_response
    from engine.solvers import Session, bench_messages, bench_tools

    item = scenario.load_items(scenarios / "godmode")[0]
    chatml = load_tokenizer(tiny_model)
    assert not template_renders_tools(chatml)  # SmolLM2's ChatML template ignores tools=
    tools, tool_format = bench_tools(godmode, chatml)
    assert (tools, tool_format) == (None, "fenced")
    fenced = chatml.decode(render_chat(chatml, bench_messages(godmode, item, False, tools), False, tools))
    assert "```bash" in fenced and "<tools>" not in fenced

    qwen_like = chatml  # the same tokenizer, given a template that renders tools
    chatml_template, qwen_like.chat_template = chatml.chat_template, TOOLS_TEMPLATE
    tools, tool_format = bench_tools(godmode, qwen_like)
    assert tool_format == "hermes" and tools == godmode.TOOLS  # it instructs JSON in <tool_call>
    native = qwen_like.decode(render_chat(qwen_like, bench_messages(godmode, item, False, tools), False, tools))
    assert '"name": "bash"' in native and "<tool_call>" in native and "```bash" not in native
    assert item.question in native

    # An endpoint: the server's template renders the tools and its --tool-call-parser reads the calls.
    assert bench_tools(godmode, None, served=True) == (godmode.TOOLS, "served")
    assert bench_tools(godmode, qwen_like, parser="fenced") == (None, "fenced")  # --tool-parser overrides
    with pytest.raises(UserError, match="not a vLLM tool parser"):
        bench_tools(godmode, qwen_like, parser="nonesuch")
    # A template that renders tools in a format no parser here is chosen for: the fenced format.
    qwen_like.chat_template = TOOLS_TEMPLATE.replace("<tool_call></tool_call> XML tags", "a JSON object")
    assert bench_tools(godmode, qwen_like) == (None, "fenced")
    from benches import arith

    assert bench_tools(arith, qwen_like) == (None, None)  # a bench without tools: unchanged
    qwen_like.chat_template = chatml_template

    # Every request of the episode carries the tools; the endpoint gets them as `tools=`.
    session = Session(None, request_id="r", sampling=SamplingConfig(preset="greedy", temperature=0.0), think=False,
                      max_tokens=8, seed=1, tools=tools)  # fmt: skip
    captured = []

    class Capture:
        async def generate(self, request):
            captured.append(request)
            return GenResult(text="", token_ids=[], finish_reason="stop", prompt_tokens=1, completion_tokens=0)

    session.backend = Capture()
    asyncio.run(session.generate([{"role": "user", "content": "hi"}]))
    body = chat_body(captured[0], "served", None)
    assert body["tools"] == godmode.TOOLS
    # A server with a tool-call parser returns the call apart from the content: read back as a <tool_call>.
    answer = {
        "choices": [{"finish_reason": "tool_calls", "message": {"content": "Let me look.", "tool_calls": [
            {"type": "function", "function": {"name": "bash", "arguments": '{"command": "ls /data"}'}}]}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7},
    }  # fmt: skip
    assert godmode.read_reply(parse_chat_response(answer).text, "served").commands == ["ls /data"]
