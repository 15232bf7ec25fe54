"""`--engine-arg KEY=VALUE`: vLLM engine arguments passed through, checked before any engine starts.

The valid keys are vLLM's own (`dataclasses.fields(vllm.engine.arg_utils.EngineArgs)`), so a new vLLM
argument works without a harness release, and a typo is refused with a did-you-mean instead of a
traceback minutes into the engine's start. Each key's role in the contract is in engine/spec.py
(ENGINE_ARG_ROLES).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from typing import Any

from engine.errors import UserError

# Settings the harness owns through its own flags (and records under its own contract names).
OWN_FLAGS = {
    "model": "--model",
    "revision": "--revision",
    "dtype": "--dtype",
    "seed": "--seed",
    "max_model_len": "--max-model-len",
    "tensor_parallel_size": "--tp",
    "data_parallel_size": "--dp",
    "data_parallel_backend": "--dp-backend",
    "enable_chunked_prefill": "--chunked-prefill",
    "enable_prefix_caching": "--prefix-caching",
    "kv_cache_memory_bytes": "--kv-cache-gib",
    "max_num_batched_tokens": "--chunked-prefill (the harness sizes the step budget)",
}


def parse(values: list[str]) -> dict[str, Any]:
    """`KEY=VALUE` strings (VALUE read as JSON where it parses: numbers, true/false, lists), or one JSON
    object. Later keys win over earlier ones only when equal; a key given twice differently is refused."""
    out: dict[str, Any] = {}
    for text in values:
        text = text.strip()
        if text.startswith("{"):
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                raise UserError(f"--engine-arg {text}: not a JSON object ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise UserError(f"--engine-arg {text}: give a JSON object")
            pairs = list(obj.items())
        else:
            key, sep, raw = text.partition("=")
            if not sep or not key.strip():
                raise UserError(f"--engine-arg {text}: give KEY=VALUE (e.g. max_num_seqs=8) or one JSON object")
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                value = raw  # a plain word: fp8, awq, ...
            pairs = [(key.strip().replace("-", "_"), value)]
        for key, value in pairs:
            if key in out and out[key] != value:
                raise UserError(f"--engine-arg {key}: given twice ({out[key]!r} and {value!r})")
            out[key] = value
    return out


def _accepts(annotation: Any, value: Any) -> bool:
    """Whether a JSON value fits a simple annotation (bool, int, float, str, Literal, unions, lists);
    anything else is left to vLLM itself."""
    origin = typing.get_origin(annotation)
    if annotation is Any or isinstance(annotation, str):
        return True
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(arg, value) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin in (list, set, tuple):
        return isinstance(value, list)
    if origin is dict:
        return isinstance(value, dict)
    return True


def validate(args: dict[str, Any]) -> dict[str, Any]:
    """The arguments, each checked against vLLM's EngineArgs (key known, simple types right); sorted."""
    if not args:
        return {}
    try:
        from vllm.engine.arg_utils import EngineArgs
    except ImportError as exc:
        raise UserError(f"--engine-arg: vLLM is not importable here ({exc}); engine arguments are for --backend vllm") from None
    fields = {f.name: f for f in dataclasses.fields(EngineArgs) if not f.name.startswith("_")}
    for key, value in args.items():
        if key in OWN_FLAGS:
            raise UserError(f"--engine-arg {key}: set by the harness; use {OWN_FLAGS[key]} (recorded in the run's contract)")
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(close)}?" if close else " (the names are the fields of vllm.engine.arg_utils.EngineArgs)"
            raise UserError(f"--engine-arg {key}: not a vLLM engine argument{hint}")
        if not _accepts(fields[key].type, value):
            raise UserError(f"--engine-arg {key}={json.dumps(value)}: vLLM expects {_type_name(fields[key].type)}")
    return dict(sorted(args.items()))


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) is typing.Literal:
        return "one of " + ", ".join(map(str, typing.get_args(annotation)))
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
