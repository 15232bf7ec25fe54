"""Sampling presets: the model card's operating point, never greedy unless asked."""

from __future__ import annotations

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
    if fields["temperature"] < 0 or not 0 < fields["top_p"] <= 1 or fields["top_k"] < 0:
        raise UserError(f"sampling values out of range: {fields}")
    label = name if not changed else name + "+" + ",".join(f"{k}={v}" for k, v in sorted(changed.items()))
    return SamplingConfig(preset=label, **fields)
