"""godmode: the model answers market-data questions by running bash in a sandbox, up to 30 turns.

Per question the model gets a system prompt (the task, the scenario's description) and the question with
its conventions. The one tool, `bash(command)`, is a native tool call where the model's chat template
instructs a tool-call format vLLM has a parser for, read with that parser (benches/godmode/toolcalls.py):

    Qwen3 (parser hermes)                 Qwen3.5 / Qwen3-Coder (parser qwen3_coder)
    <tool_call>                           <tool_call>
    {"name": "bash", "arguments":         <function=bash>
     {"command": "ls /data"}}             <parameter=command>
    </tool_call>                          ls /data
                                          </parameter>
                                          </function>
                                          </tool_call>

Else the system prompt describes the tool and the model replies with one fenced ```bash block. Against
an endpoint the server parses the calls (it needs `--enable-auto-tool-choice --tool-call-parser NAME`).
The format used (the parser's name, "fenced" or "served") is a contract field (engine/solvers.py
bench_tools; `--tool-parser NAME` overrides the choice); `read_reply` states the reading rules (several
calls in one reply all run in order; nothing written inside unfinished reasoning runs; a final answer
may show code). A command runs in the episode's sandbox (engine/sandbox.py AgentShell: the scenario's
files read-only at /data, a scratch dir kept for the episode, python3 with pandas/pyarrow/numpy, no
network, limits per command); the outputs go back as one user turn of <tool_response> blocks, byte for
byte what Qwen's chat templates render for `tool` messages, and work with any template and endpoint.

Stop reasons: answered, turn_limit (MAX_TURNS replies without an answer), context_limit (the next
prompt would not fit the model's context window: CONTEXT = "model" makes the runner give episodes the
model's whole window), format_errors (FORMAT_ERROR_LIMIT unreadable replies in a row), timeout (the
episode's wall clock or EPISODE_TOKENS generated-token budget ran out), error (the sandbox failed).
An exam whose episodes mostly end on format errors did not run: engine/episodes.py `health` makes the
bench INVALID.

Each question is answered at SAMPLES seeds (avg@k per question, paired by item and seed).

Scenario format: see docs/exams.md ("godmode"); benches/godmode/scenario.py reads it, generator.py writes
the default three scenarios (generated, never downloaded; questions distinct by construction).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import time
from pathlib import Path

import msgspec

from benches import Item, Scored, check_unique_ids, split_reasoning
from benches.godmode import generator, scenario, toolcalls
from benches.godmode.scoring import score_answer
from engine.records import Episode, Turn

NAME = "godmode"
VERSION = "3"  # 3: vLLM's tool parsers (XML and JSON), every call of a reply runs, the model's context, 3 seeds
MAX_TOKENS = {False: 1024, True: 4096}  # per reply
SAMPLES = 3  # seeds per question: avg@3, each seed paired with the same seed of the other run
STOP_REASONS = ("answered", "turn_limit", "context_limit", "format_errors", "timeout", "error")
MAX_TURNS = 30  # model replies per episode
FORMAT_ERROR_LIMIT = 3  # unparsable replies in a row
EPISODE_TOKENS = 60_000  # generated tokens per episode (the token budget; in the contract below)
EPISODE_WALL_S = 1800.0
CONTEXT = "model"  # the runner gives episodes the model's own context window (engine/runner.py)
MIN_CONTEXT = 8192  # where the model's window is unknown, at least this
SCORING_VERSIONS = {"episode_tokens": str(EPISODE_TOKENS), "episode_context": CONTEXT, "max_turns": str(MAX_TURNS)}
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
    "Your reply had no tool call that could be run and no final answer. Call the bash tool (or, where no "
    "tool is offered, write one ```bash block), or give the final line `ANSWER: <your answer>`."
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


# --- reading replies -------------------------------------------------------------------------------

MAX_CALLS_PER_REPLY = 8  # calls of one reply run in order; any beyond these are dropped and counted
_FENCE = re.compile(r"```(?:bash|sh|shell)[ \t]*\n(.*?)(?:```|$)", re.DOTALL)
_ANSWER = re.compile(r"^[ \t*]*ANSWER[ \t*]*:[ \t*]*(.*?)[ \t*]*$", re.MULTILINE | re.IGNORECASE)


class Reply(msgspec.Struct, frozen=True):
    kind: str  # "command" (run `commands`, in order) | "answer" | "format_error"
    commands: list[str] = []
    answer: str = ""
    why: str = ""  # format_error: what was wrong
    dropped: int = 0  # calls beyond MAX_CALLS_PER_REPLY, not run


def _answer_of(text: str) -> str | None:
    answers = _ANSWER.findall(text)
    return answers[-1].strip() if answers and answers[-1].strip() else None


def _last_line_is_answer(text: str) -> bool:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return bool(lines) and _ANSWER.fullmatch(lines[-1]) is not None


def read_reply(text: str, tool_format: str | None, *, think: bool = False, truncated: bool = False) -> Reply:
    """What one reply asks for, under the run's tool format (engine/solvers.py bench_tools).

    Rules, in order:
      - thinking on, and the reply never closed its reasoning: a format error; nothing in it runs (a
        call written while thinking was never committed to);
      - native formats (a vLLM tool parser: hermes, qwen3_coder, ...; "served" = the server parsed
        them): the calls the parser reads run, all of them in order (at most MAX_CALLS_PER_REPLY, the
        rest dropped and counted); a call to another tool or without a non-empty string `command` makes
        the reply a format error (none of its calls run); calls win over an ANSWER line in the same reply
        (the model has not seen their output); without calls, an `ANSWER:` line ends the episode and any
        fenced code in that reply is shown work, never run;
      - fenced format: a reply whose last line is `ANSWER: ...` is final (its code blocks are shown
        work); else the first ```bash block runs; else an ANSWER line anywhere is final.
    """
    if think:
        _, visible = split_reasoning(text, think, truncated)
        if visible is None:
            return Reply(kind="format_error", why="the reply ended inside its reasoning; nothing in it runs")
    else:
        # Thinking off, but the model opened a reasoning block anyway: what follows an unclosed <think>
        # is reasoning too, and a closed block is not part of the reply.
        head, opened, tail = text.rpartition("<think>")
        visible = head if opened and "</think>" not in tail else text.rpartition("</think>")[2]
    if tool_format and tool_format != toolcalls.FENCED:
        parser = toolcalls.HERMES if tool_format == toolcalls.SERVED else tool_format
        reading = toolcalls.read_calls(visible, parser, TOOLS)
        if reading.calls:
            commands = []
            for call in reading.calls:
                args = call.arguments
                if call.name != "bash":
                    return Reply(kind="format_error", why=f"a call to {call.name or 'no tool'!r}; the only tool is bash")
                if not isinstance(args, dict) or not isinstance(args.get("command"), str) or not args["command"].strip():
                    return Reply(kind="format_error", why="a bash call without a non-empty string `command`")
                commands.append(args["command"])
            kept = commands[:MAX_CALLS_PER_REPLY]
            return Reply(kind="command", commands=kept, dropped=len(commands) - len(kept))
        if reading.unreadable:
            return Reply(kind="format_error", why=f"a tool call the {parser} parser cannot read")
        answer = _answer_of(visible)
        if answer is not None:
            return Reply(kind="answer", answer=answer)
        return Reply(kind="format_error", why="no tool call and no ANSWER line")
    answer = _answer_of(visible)
    if answer is not None and _last_line_is_answer(visible):
        return Reply(kind="answer", answer=answer)
    fence = _FENCE.search(visible)
    if fence and fence.group(1).strip():
        return Reply(kind="command", commands=[fence.group(1).strip()])
    if answer is not None:
        return Reply(kind="answer", answer=answer)
    return Reply(kind="format_error", why="no bash block and no ANSWER line")


# --- the episode -----------------------------------------------------------------------------------


def _tool_message(output: str, exit_code: int | None) -> str:
    status = "killed (wall clock)" if exit_code is None else f"exit status {exit_code}"
    return f"<tool_response>\n[{status}]\n{output}\n</tool_response>"


def episode_context(session) -> int:
    """The context an episode may fill: the backend's (the model's own window, engine/runner.py sizes
    it so for a bench with CONTEXT = "model"), 0 when unknown (an endpoint that does not say)."""
    return getattr(session.backend, "max_model_len", None) or 0


async def solve(item: Item, session) -> Episode:
    from engine import sandbox

    tool_format = getattr(session, "tool_format", None)
    history = messages(item, session.think, getattr(session, "tools", None))
    turns: list[Turn] = []
    prompt_tokens = completion_tokens = 0
    in_a_row = 0
    stop, final, finish = "turn_limit", "", "stop"
    deadline = time.monotonic() + EPISODE_WALL_S
    context = episode_context(session)
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
            history.append({"role": "assistant", "content": reply})
            read = read_reply(reply, tool_format, think=session.think, truncated=finish == "length")
            visible = reply.rpartition("</think>")[2] if session.think else reply
            extra = {"kind": read.kind, "finish": finish}
            if read.kind == "command":
                extra |= {"calls": len(read.commands)} | ({"dropped_calls": read.dropped} if read.dropped else {})
            elif read.kind == "format_error":
                extra["why"] = read.why
            turns.append(Turn(role="assistant", tokens=result.completion_tokens, text=visible[:TRACE_HEAD], extra=extra))
            if read.kind == "answer":
                stop, final = "answered", visible
                break
            if context and result.prompt_tokens + result.completion_tokens >= context - 16:
                stop = "context_limit"  # the reply was cut by the context: nothing more fits
                break
            if read.kind == "format_error":
                in_a_row += 1
                if in_a_row >= FORMAT_ERROR_LIMIT:
                    stop = "format_errors"
                    break
                history.append({"role": "user", "content": FORMAT_HINT + f" ({read.why})"})
                continue
            in_a_row = 0
            responses = []
            for command in read.commands:
                try:
                    ran = await asyncio.to_thread(shell.run, command)
                except sandbox.SandboxError as exc:
                    turns.append(Turn(role="tool", text=command[:TRACE_HEAD], extra={"sandbox_error": str(exc)[:300]}))
                    stop = "error"
                    break
                turns.append(
                    Turn(role="tool", tokens=ran.output_bytes, text=command[:TRACE_HEAD], exit_code=ran.exit_code,
                         extra={"status": ran.status, "wall_s": ran.wall_s, "output_sha": hashlib.sha256(ran.output.encode()).hexdigest()[:12]})
                )  # fmt: skip
                responses.append(_tool_message(ran.output, ran.exit_code))
            if stop == "error":
                break
            if read.dropped:
                responses.append(f"[{read.dropped} more tool call(s) in that reply were not run: at most {MAX_CALLS_PER_REPLY} per reply]")
            # Consecutive tool results are one user turn of <tool_response> blocks, as Qwen's templates render them.
            shown = "\n".join(responses)
            history.append({"role": "user", "content": shown})
            if context and result.prompt_tokens + result.completion_tokens + len(shown) // 3 + 64 >= context:
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
