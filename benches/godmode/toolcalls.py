"""Reading a model's tool calls the way vLLM's server does: with vLLM's own tool parsers.

A Qwen model writes its calls in the format its chat template instructs:

    Qwen3 (hermes, JSON)        <tool_call>
                                {"name": "bash", "arguments": {"command": "ls /data"}}
                                </tool_call>
    Qwen3.5, Qwen3-Coder        <tool_call>
    (qwen3_coder, XML)          <function=bash>
                                <parameter=command>
                                ls /data
                                </parameter>
                                </function>
                                </tool_call>

`parser_for_template` names the vLLM parser (the `--tool-call-parser` a server would need) from what
the template instructs; `read_calls` runs that parser (vllm.tool_parsers.ToolParserManager, the same
class `vllm serve --tool-call-parser NAME` uses) over a reply's text. Any registered vLLM parser name
can be chosen instead (`--tool-parser NAME`). Against an endpoint the server has already parsed the
calls (its own `--tool-call-parser`): the backend gives them back as JSON `<tool_call>` blocks, read
here with `hermes` (tool format "served").
"""

from __future__ import annotations

import functools
import json
import logging
import re
from typing import Any

import msgspec

from engine.errors import UserError

HERMES, QWEN3_XML = "hermes", "qwen3_coder"
FENCED = "fenced"  # no native tool calls: the tool is described in the prompt, one ```bash block per reply
SERVED = "served"  # an endpoint parsed the calls itself (its --tool-call-parser); the backend re-renders them as JSON

# What a template instructs -> the vLLM parser that reads it. Checked in order: Qwen3.5 / Qwen3-Coder
# templates also mention <tool_call>, so the XML rule comes first.
_TEMPLATE_RULES = (
    (re.compile(r"<function=[^\n]*\n?<parameter="), QWEN3_XML),
    (re.compile(r"<tool_call>"), HERMES),
)


def template_text(tokenizer) -> str:
    template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(template, dict):  # several named templates: the default one renders chats
        template = template.get("default", "") or next(iter(template.values()), "")
    return template


def parser_for_template(template: str) -> str | None:
    """The vLLM tool parser for the format a chat template instructs; None for a template that does
    not instruct one we know (the bench then describes its tool in the prompt: the fenced format)."""
    for pattern, name in _TEMPLATE_RULES:
        if pattern.search(template):
            return name
    return None


def check_parser(name: str) -> str:
    """A `--tool-parser` value: fenced, or a tool parser registered in vLLM."""
    if name == FENCED:
        return name
    from vllm.tool_parsers import ToolParserManager

    known = sorted(set(ToolParserManager.list_registered()))
    if name not in known:
        raise UserError(f"--tool-parser {name}: not a vLLM tool parser (known: {FENCED}, {', '.join(known)})")
    return name


class Call(msgspec.Struct, frozen=True):
    name: str
    arguments: dict[str, Any] | None  # None: not a JSON object
    raw_arguments: str


class Reading(msgspec.Struct, frozen=True):
    calls: list[Call]  # in the order written
    content: str  # the text around the calls (vLLM's `content`: the text before the first call)
    unreadable: bool  # the text opens a call the parser could not read


class _NoVocab:
    """What a parser needs of a tokenizer when it reads text (not token ids): a vocabulary to look
    special tokens up in. An empty one makes every marker a text match, as in detokenized output."""

    def get_vocab(self) -> dict[str, int]:
        return {}


@functools.cache
def _request(tools_json: str):
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    return ChatCompletionRequest(model="godmode", messages=[{"role": "user", "content": "-"}], tools=json.loads(tools_json))


def _parser(name: str):
    from vllm.tool_parsers import ToolParserManager

    cls = ToolParserManager.get_tool_parser(name)
    # A parser that cannot read a call logs the exception with its traceback; the reply is counted as
    # a format error here instead, so keep that out of the run's output.
    logging.getLogger(cls.__module__).setLevel(logging.CRITICAL)
    # A fresh parser per reply: parsers keep streaming state between calls.
    return cls(_NoVocab(), None)


_MARKERS = ("<tool_call>", "<function=")


def read_calls(text: str, parser: str, tools: list[dict[str, Any]]) -> Reading:
    """The calls in `text` (a reply with its reasoning already removed) as vLLM's `parser` reads them."""
    tools_json = json.dumps(tools, sort_keys=True)
    info = _parser(parser).extract_tool_calls(text, _request(tools_json))
    calls = []
    for call in info.tool_calls if info.tools_called else ():
        raw = call.function.arguments or ""
        try:
            arguments = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            arguments = None
        calls.append(Call(name=call.function.name or "", arguments=arguments if isinstance(arguments, dict) else None, raw_arguments=raw))
    unreadable = not calls and any(marker in text for marker in _MARKERS)
    return Reading(calls=calls, content=info.content or "", unreadable=unreadable)
