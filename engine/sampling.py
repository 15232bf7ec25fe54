"""Sampling presets: the model card's operating point, never greedy unless asked."""

from __future__ import annotations

import math

from engine.errors import UserError
from engine.spec import SamplingConfig

PRESETS: dict[str, SamplingConfig] = {
    # Qwen3 / Qwen3.5 model cards.
    "qwen-think": SamplingConfig(preset="qwen-think", temperature=0.6, top_p=0.95, top_k=20, min_p=0.0),
    "qwen-nothink": SamplingConfig(
        preset="qwen-nothink", temperature=0.7, top_p=0.8, top_k=20, min_p=0.0, presence_penalty=1.5
    ),
    "greedy": SamplingConfig(preset="greedy", temperature=0.0, top_p=1.0, top_k=0),
}

OVERRIDABLE = ("temperature", "top_p", "top_k", "min_p", "presence_penalty", "repetition_penalty")

# What every backend accepts (vLLM's SamplingParams checks the same bounds, but only after the engine
# started): (allowed, as words; test).
RANGES = {
    "temperature": (">= 0", lambda v: v >= 0),
    "top_p": ("(0, 1]", lambda v: 0 < v <= 1),
    "top_k": (">= 0, 0 = off", lambda v: v >= 0),
    "min_p": ("[0, 1]", lambda v: 0 <= v <= 1),
    "presence_penalty": ("[-2, 2]", lambda v: -2 <= v <= 2),
    "repetition_penalty": ("> 0", lambda v: v > 0),
}


def resolve_sampling(preset: str | None, think: bool, **overrides: float | int | None) -> SamplingConfig:
    """The preset (default: follows --think), with any explicitly given value replacing the preset's."""
    name = preset or ("qwen-think" if think else "qwen-nothink")
    if name not in PRESETS:
        raise UserError(f"--sampling {name}: unknown preset (choose from {', '.join(PRESETS)})")
    fields = {k: getattr(PRESETS[name], k) for k in OVERRIDABLE}
    changed = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(changed) - set(OVERRIDABLE)
    if unknown:
        raise UserError(f"unknown sampling field(s): {', '.join(sorted(unknown))}")
    fields.update(changed)
    for field, value in fields.items():
        allowed, ok = RANGES[field]
        if not (math.isfinite(value) and ok(value)):
            source = f"--{field.replace('_', '-')}" if field in changed else f"--sampling {name}: {field}"
            raise UserError(f"{source} {value}: out of range (allowed: {allowed})")
    label = name if not changed else name + "+" + ",".join(f"{k}={v}" for k, v in sorted(changed.items()))
    return SamplingConfig(preset=label, **fields)
