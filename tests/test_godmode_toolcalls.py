"""godmode's tool calls as Qwen models write them, through the real chat templates (tests/fixtures/chat_templates).

The scripted perfect policy writes each call exactly as the model's own chat template renders an
assistant tool call (the text the model was trained to produce): JSON for Qwen3, XML for Qwen3.5 and
Qwen3-Coder. Read with vLLM's parser the template names, the same policy scores 6/6 in every format.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from test_godmode import Policy, _printed, _references, _run

from benches import Item, godmode
from benches.godmode import generator, toolcalls
from engine import sandbox
from engine.backends import load_tokenizer, render_chat
from engine.solvers import bench_messages, bench_tools

pytestmark = pytest.mark.skipif(
    sandbox.shutil.which("bwrap") is None and not os.environ.get("CI"), reason="bubblewrap not installed"
)

TEMPLATES = Path(__file__).parent / "fixtures" / "chat_templates"
FORMATS = {"qwen3.jinja": "hermes", "qwen3.5-4b.jinja": "qwen3_coder", "qwen3-coder.jinja": "qwen3_coder"}


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("godmode-data")
    generator.generate(root / "godmode")
    return root


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return load_tokenizer(tiny_model)


def _with_template(tokenizer, name: str):
    tokenizer.chat_template = (TEMPLATES / name).read_text()
    return tokenizer


def template_reply(tokenizer, content: str, commands: list[str]) -> str:
    """What the template renders for an assistant turn with these bash calls: the model's own format."""
    user = [{"role": "user", "content": "q"}]
    calls = [{"type": "function", "function": {"name": "bash", "arguments": {"command": c}}} for c in commands]
    turn = {"role": "assistant", "content": content, "tool_calls": calls}
    kwargs = {"tokenize": False, "enable_thinking": False, "tools": godmode.TOOLS}
    prompt = tokenizer.apply_chat_template(user, add_generation_prompt=True, **kwargs)
    full = tokenizer.apply_chat_template(user + [turn], add_generation_prompt=False, **kwargs)
    assert full.startswith(prompt), (prompt[-80:], full[len(prompt) - 80 :])
    return full[len(prompt) :].removesuffix("\n").removesuffix("<|im_end|>")


def template_oracle(tokenizer, references: dict[str, str]):
    def decide(messages):
        question = messages[1]["content"]
        if not messages[-1]["content"].startswith("<tool_response>"):
            return template_reply(tokenizer, "Let me compute it.", [references[question]])
        return f"The output says it.\nANSWER: {_printed(messages)}"

    return decide


def _six(scenarios):
    items = godmode.load(scenarios)
    return [i for c in ("daily_ohlcv", "tick_day", "portfolio") for i in [x for x in items if x.category == c][:2]]


@pytest.mark.parametrize("template", sorted(FORMATS))
def test_a_perfect_policy_scores_6_of_6_in_each_qwen_format(template, tokenizer, scenarios, tmp_path):
    tok = _with_template(tokenizer, template)
    tools, tool_format = bench_tools(godmode, tok)
    assert (tools, tool_format) == (godmode.TOOLS, FORMATS[template])
    items = _six(scenarios)
    # The template primes the format the parser reads.
    prompt = tok.decode(render_chat(tok, bench_messages(godmode, items[0], False, tools), False, tools))
    xml = "<function=example_function_name>" in prompt
    assert xml == (tool_format == "qwen3_coder") and "```bash" not in prompt
    reply = template_reply(tok, "x", ["ls /data"])
    assert ("<parameter=command>" in reply) == xml and ('"arguments"' in reply) == (not xml)

    records = _run(items, scenarios, Policy(template_oracle(tok, _references(items))), tmp_path / "run",
                   tool_format=tool_format)  # fmt: skip
    assert sorted(r.score for r in records) == [1.0] * 6, [(r.item_id, r.turns[0].extra) for r in records]
    assert {r.stop_reason for r in records} == {"answered"}


def test_the_xml_format_read_as_json_is_all_format_errors(tokenizer, scenarios, tmp_path):
    """The failure the parser choice exists for: Qwen3.5's XML read by the JSON parser never runs a command."""
    tok = _with_template(tokenizer, "qwen3.5-4b.jinja")
    items = _six(scenarios)[:2]
    records = _run(items, scenarios, Policy(template_oracle(tok, _references(items))), tmp_path / "run",
                   tool_format="hermes")  # fmt: skip
    assert [r.stop_reason for r in records] == ["format_errors"] * 2 and all(r.score == 0 for r in records)


def test_xml_values_keep_quotes_newlines_and_closing_tags(tokenizer):
    tok = _with_template(tokenizer, "qwen3.5-4b.jinja")
    command = "python3 - <<'EOF'\nprint(\"a</b>\", '</parameter')\nEOF"
    read = godmode.read_reply(template_reply(tok, "", [command]), "qwen3_coder")
    assert read.commands == [command]


@pytest.mark.parametrize("template", sorted(FORMATS))
def test_several_calls_in_one_reply_all_run_in_order(template, tokenizer, scenarios, tmp_path):
    tok = _with_template(tokenizer, template)
    _, tool_format = bench_tools(godmode, tok)
    reply = template_reply(tok, "Three steps.", ["echo one > n", "echo two >> n", "cat n"])
    assert godmode.read_reply(reply, tool_format).commands == ["echo one > n", "echo two >> n", "cat n"]

    items = _six(scenarios)[:1]

    def decide(messages):
        if len(messages) == 2:
            return reply
        return "ANSWER: " + " ".join(messages[-1]["content"].split("</tool_response>")[-2].split()[-2:])

    (record,) = _run(items, scenarios, Policy(decide), tmp_path / "run", tool_format=tool_format)
    tools = [t for t in record.turns if t.role == "tool"]
    assert [t.text for t in tools] == ["echo one > n", "echo two >> n", "cat n"]
    assert record.turns[0].extra["calls"] == 3 and record.answer == "one two"


def test_more_calls_than_the_cap_are_dropped_and_counted(tokenizer):
    tok = _with_template(tokenizer, "qwen3.jinja")
    commands = [f"echo {i}" for i in range(godmode.MAX_CALLS_PER_REPLY + 2)]
    read = godmode.read_reply(template_reply(tok, "", commands), "hermes")
    assert read.commands == commands[: godmode.MAX_CALLS_PER_REPLY] and read.dropped == 2


def test_a_call_inside_unfinished_reasoning_never_runs(tokenizer):
    tok = _with_template(tokenizer, "qwen3.5-4b.jinja")
    call = template_reply(tok, "", ["rm -rf /scratch/*"])
    cut = "Maybe I should clean up first.\n" + call + "\nHmm, wait"  # no </think>: the reasoning never closed
    for truncated in (True, False):
        read = godmode.read_reply("<think>\n" + cut, "qwen3_coder", think=True, truncated=truncated)
        assert read.kind == "format_error" and "reasoning" in read.why
    read = godmode.read_reply(cut, "qwen3_coder", think=True, truncated=True)  # the template opened <think>
    assert read.kind == "format_error"
    # Thinking off, yet the model opened a reasoning block and never closed it: nothing in it runs.
    assert godmode.read_reply("<think>\n" + cut, "qwen3_coder").kind == "format_error"
    assert godmode.read_reply("<think>\n" + cut + "</think>\nANSWER: 3", "qwen3_coder").answer == "3"
    # After </think> the same call runs; one written inside a closed reasoning block does not.
    done = godmode.read_reply(cut + "\n</think>\n\n" + template_reply(tok, "", ["ls"]), "qwen3_coder", think=True)
    assert done.commands == ["ls"]


def test_a_final_answer_may_contain_a_fenced_code_block(tokenizer):
    answer = "I computed it with\n```bash\npython3 -c 'print(1+1)'\n```\nANSWER: 2"
    for fmt in ("hermes", "qwen3_coder", "served", "fenced"):
        read = godmode.read_reply(answer, fmt)
        assert (read.kind, read.answer) == ("answer", "2"), fmt
    item = Item(id="x", question="q", target="2", category="daily_ohlcv", meta={"kind": "number", "tolerance": 0, "unit": ""})
    assert godmode.score(item, answer).score == 1.0


def test_template_rules_pick_the_parser():
    assert toolcalls.parser_for_template((TEMPLATES / "qwen3.jinja").read_text()) == "hermes"
    assert toolcalls.parser_for_template((TEMPLATES / "qwen3.5-4b.jinja").read_text()) == "qwen3_coder"
    assert toolcalls.parser_for_template((TEMPLATES / "qwen3-coder.jinja").read_text()) == "qwen3_coder"
    assert toolcalls.parser_for_template("{{ messages }}") is None


def test_generated_questions_are_distinct_by_construction(scenarios):
    items = godmode.load(scenarios)
    texts = [(i.question, i.meta["convention"]) for i in items]
    assert len(items) == 90 and len(set(texts)) == 90
    assert len({i.question for i in items}) == 90


def test_identical_commands_print_identical_output(scenarios):
    """Hash seed and time zone fixed in every shell: a set prints in one order, in every episode."""
    folder = scenarios / "godmode" / "daily_ohlcv"
    commands = [
        "python3 -c \"print(set(['alpha', 'beta', 'gamma', 'delta', 'eps']))\"",
        "python3 -c \"import pandas as pd; print(set(pd.read_parquet('/data/prices.parquet').ticker))\"",
        "date -d @0 && echo $TZ",
        "ls -l --time-style=full-iso /data",  # (-a would show "..": the sandbox root, made at each command)
    ]
    outputs = []
    for _ in range(2):
        time.sleep(1.1)
        with sandbox.AgentShell(folder) as shell:
            outputs.append([shell.run(c).output for c in commands])
    assert outputs[0] == outputs[1]
    assert "2000-01-01" in outputs[0][-1]


@pytest.mark.skipif(not os.environ.get("CI"), reason="only CI must have bubblewrap")
def test_ci_has_bubblewrap():
    assert sandbox.shutil.which("bwrap"), "CI must install bubblewrap: the sandbox tests would not run"
