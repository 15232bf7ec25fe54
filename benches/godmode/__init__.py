"""godmode: the model answers market-data questions by running bash in a sandbox, up to 30 turns.

Per question the model gets a system prompt (the task, the scenario's description) and the question with
its conventions. The one tool, `bash(command)`, is a native tool call where the model's chat template
renders `tools=` (Qwen's does: the template describes the tool and the model replies

    <tool_call>
    {"name": "bash", "arguments": {"command": "ls /data"}}
    </tool_call>

), else the system prompt describes it and the model replies with one fenced ```bash block; which one is
the run's tool format, a contract field (engine/solvers.py bench_tools). The parser reads both, and a
reply that ends with a line `ANSWER: ...` ends the episode. A command runs in the episode's sandbox
(engine/sandbox.py AgentShell: the scenario's files read-only at /data, a scratch dir kept for the
episode, python3 with pandas/pyarrow/numpy, no network, limits per command); its output goes back as a
user turn wrapped in <tool_response> tags, which is byte for byte what Qwen's chat template renders for
a `tool` message, and works with any template and any endpoint.

Stop reasons: answered, turn_limit (MAX_TURNS replies without an answer), context_limit (the next
prompt would not fit the model's context), format_errors (FORMAT_ERROR_LIMIT unparsable replies in a
row), timeout (the episode's wall clock or token budget ran out), error (the sandbox failed).

Scenario format: see README ("godmode"); benches/godmode/scenario.py reads it, generator.py writes the
default three scenarios (generated, never downloaded).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import time
from pathlib import Path

from benches import Item, Scored, check_unique_ids
from benches.godmode import generator, scenario
from benches.godmode.scoring import score_answer
from engine.records import Episode, Turn

NAME = "godmode"
VERSION = "2"  # 2: native tool calls where the chat template renders tools, else a fenced block
MAX_TOKENS = {False: 1024, True: 4096}  # per reply
STOP_REASONS = ("answered", "turn_limit", "context_limit", "format_errors", "timeout", "error")
MAX_TURNS = 30  # model replies per episode
FORMAT_ERROR_LIMIT = 3  # unparsable replies in a row
EPISODE_TOKENS = 60_000  # generated tokens per episode (the token budget)
EPISODE_WALL_S = 1800.0
MIN_CONTEXT = 8192  # the runner sizes max_model_len to at least this (or the model's own limit)
SHELL_LIMITS = None  # engine.sandbox.ShellLimits() unless set (tests shorten the wall clock)
TRACE_HEAD = 400  # characters of each command / reply kept in the record's trace

# The one tool, in the OpenAI schema: passed as `tools=` to the chat template (or the endpoint) where it
# renders tools; the format used is recorded in the contract (engine/solvers.py bench_tools).
TOOL = {
    "type": "function",
    "function": {
        "name": "bash",
        "description": "Run a bash command in the sandbox and return its exit status and output.",
        "parameters": {
            "type": "object",
            "properties": {"command": {"type": "string", "description": "The bash command to run."}},
            "required": ["command"],
        },
    },
}
TOOLS = [TOOL]

SYSTEM = """You are a quantitative data analyst working in a Linux shell. Answer the user's question about the \
market data described below by running commands. python3 with pandas, pyarrow and numpy is installed; the \
data is read-only under /data; your working directory /scratch is writable and kept between commands. \
There is no network. Each command is limited to {wall_s:g} seconds and its output is truncated when long.

Work step by step: run one command per reply and look at its output. When you know the answer, reply \
with a final line of the form
ANSWER: <your answer>
following the conventions stated in the question exactly.

## Data
{description}"""

# Tool format "fenced" (a chat template that does not render tools): the tool is described here.
FENCED_TOOL = """

## Tool
To run a bash command, reply with exactly one fenced block, for example
```bash
ls -l /data
```
Its exit status and output come back in the next message."""

USER = "{question}\n\nConventions: {convention}"

FORMAT_HINT = (
    "Your reply had no tool call and no final answer. Call the bash tool with a <tool_call> block (or one "
    "```bash block), or give the final line `ANSWER: <your answer>`."
)


def default_dir() -> Path:
    """Where the default scenarios are generated (once per generator version and seed)."""
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "degradation-harness"
    return root / f"godmode-{generator.GENERATOR_VERSION}-{generator.DEFAULT_SEED}"


def ensure_default() -> Path:
    folder = default_dir()
    if not (folder / "GENERATED").is_file():
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        generator.generate(tmp)
        try:
            tmp.rename(folder)
        except OSError:  # another process generated it first
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load(data_dir: Path | None = None) -> list[Item]:
    from engine import sandbox

    sandbox.require_agent()  # fail before any engine starts when the shells cannot run here
    root = Path(data_dir) / NAME if data_dir is not None else ensure_default()
    items = scenario.load_items(root)
    return check_unique_ids(items, str(root))


def messages(item: Item, think: bool, tools: list | None = None) -> list[dict[str, str]]:
    """The first turn. With `tools` (native tool calls) the chat template describes the tool; without,
    the system prompt does (the fenced format)."""
    from engine import sandbox

    system = SYSTEM.format(wall_s=sandbox.ShellLimits().wall_s, description=item.meta["description"].strip())
    if not tools:
        system += FENCED_TOOL
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": USER.format(question=item.question, convention=item.meta["convention"])},
    ]


# --- parsing replies -------------------------------------------------------------------------------

_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
_FENCE = re.compile(r"```(?:bash|sh|shell)[ \t]*\n(.*?)(?:```|$)", re.DOTALL)
_ANSWER = re.compile(r"^[ \t*]*ANSWER[ \t*]*:[ \t*]*(.*?)[ \t*]*$", re.MULTILINE | re.IGNORECASE)


def parse_reply(text: str) -> tuple[str, str]:
    """("command", cmd) | ("answer", answer) | ("format_error", why) for one reply (reasoning removed).

    A tool call wins over an answer in the same reply (the model has not seen the output yet); the
    first call is run when a reply holds several.
    """
    for match in _TOOL_CALL.finditer(text):
        try:
            call = json.loads(match.group(1))
        except json.JSONDecodeError as exc:
            return "format_error", f"<tool_call> is not JSON ({exc.msg})"
        if not isinstance(call, dict) or call.get("name") != "bash":
            return "format_error", "<tool_call> must name the bash tool"
        args = call.get("arguments")
        if isinstance(args, str):  # some models send the arguments JSON-encoded
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                args = None
        if not isinstance(args, dict) or not isinstance(args.get("command"), str) or not args["command"].strip():
            return "format_error", "<tool_call> arguments need a non-empty string `command`"
        return "command", args["command"]
    fence = _FENCE.search(text)
    if fence and fence.group(1).strip():
        return "command", fence.group(1).strip()
    answers = _ANSWER.findall(text)
    if answers and answers[-1].strip():
        return "answer", answers[-1].strip()
    return "format_error", "no tool call, bash block or ANSWER line"


# --- the episode -----------------------------------------------------------------------------------


def _tool_message(output: str, exit_code: int | None) -> str:
    status = "killed (wall clock)" if exit_code is None else f"exit status {exit_code}"
    return f"<tool_response>\n[{status}]\n{output}\n</tool_response>"


async def solve(item: Item, session) -> Episode:
    from engine import sandbox

    history = messages(item, session.think, getattr(session, "tools", None))
    turns: list[Turn] = []
    prompt_tokens = completion_tokens = 0
    format_errors = in_a_row = tool_errors = 0
    stop, final, finish = "turn_limit", "", "stop"
    deadline = time.monotonic() + EPISODE_WALL_S
    context = getattr(session.backend, "max_model_len", None) or 0
    shell = await asyncio.to_thread(
        sandbox.AgentShell, scenario.FOLDERS[item.category], limits=SHELL_LIMITS or sandbox.ShellLimits()
    )
    try:
        # A determinism check may cap the turns lower (engine/trajectories.py); a graded run never does.
        for _ in range(getattr(session, "max_turns", MAX_TURNS)):
            if time.monotonic() > deadline or completion_tokens >= EPISODE_TOKENS:
                stop = "timeout"
                break
            cap = min(session.max_tokens, EPISODE_TOKENS - completion_tokens)
            result = await session.generate(history, max_tokens=cap)
            prompt_tokens += result.prompt_tokens
            completion_tokens += result.completion_tokens
            finish = result.finish_reason
            reply = result.text
            visible = reply.split("</think>")[-1] if session.think else reply
            history.append({"role": "assistant", "content": reply})
            kind, value = parse_reply(visible)
            turns.append(
                Turn(role="assistant", tokens=result.completion_tokens, text=visible[:TRACE_HEAD], extra={"kind": kind, "finish": finish})
            )
            if kind == "answer":
                stop, final = "answered", visible
                break
            if context and result.prompt_tokens + result.completion_tokens >= context - 16:
                stop = "context_limit"  # the reply was cut by the context: nothing more fits
                break
            if kind == "format_error":
                format_errors += 1
                in_a_row += 1
                if in_a_row >= FORMAT_ERROR_LIMIT:
                    stop = "format_errors"
                    break
                history.append({"role": "user", "content": FORMAT_HINT + f" ({value})"})
                continue
            in_a_row = 0
            try:
                ran = await asyncio.to_thread(shell.run, value)
            except sandbox.SandboxError as exc:
                turns.append(Turn(role="tool", text=value[:TRACE_HEAD], extra={"sandbox_error": str(exc)[:300]}))
                stop = "error"
                break
            tool_errors += ran.status != "ok"
            turns.append(
                Turn(role="tool", tokens=ran.output_bytes, text=value[:TRACE_HEAD], exit_code=ran.exit_code,
                     extra={"status": ran.status, "wall_s": ran.wall_s, "output_sha": hashlib.sha256(ran.output.encode()).hexdigest()[:12]})
            )  # fmt: skip
            history.append({"role": "user", "content": _tool_message(ran.output, ran.exit_code)})
            if context and result.prompt_tokens + result.completion_tokens + len(ran.output) // 3 + 64 >= context:
                # The next prompt (this one, the reply, the output at >= 3 characters a token) would not
                # leave room for a reply.
                stop = "context_limit"
                break
    finally:
        await asyncio.to_thread(shell.close)
    # Turns used, tool errors and format errors are read back from the trace (engine/episodes.py).
    text = final if stop == "answered" else ""
    return Episode(
        text=text,
        finish_reason=finish,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        prompt_hash=session.first_prompt_hash or "",
        turns=turns,
        stop_reason=stop,
    )


def score(item: Item, text: str) -> Scored:
    answers = _ANSWER.findall(text)
    answer = answers[-1].strip() if answers else None
    if answer is None:
        return Scored(answer=None, score=0.0, extra={"scenario": item.category})
    correct, matched = score_answer(answer, item.target, item.meta)
    extra = {"scenario": item.category} | ({"matched": matched} if matched else {})
    return Scored(answer=answer, score=float(correct), extra=extra)
