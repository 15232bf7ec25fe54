"""Make degraded candidates of a checkpoint: the test subjects that show the harness catches real damage.

    rtn-int8 / rtn-int4 / rtn-int3   round-to-nearest symmetric weight quantization, one scale per group
                                     of 128 input weights, dequantized back so any engine loads it
    prune-N                          zero the N% smallest-magnitude weights of every linear layer
    noise-S                          add Gaussian noise of S x the matrix's weight std

Only the weights of linear layers inside the transformer blocks change; embeddings, norms and the
(often tied) output head stay as they are, like common weight-only quantization recipes.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from engine import models
from engine.errors import UserError

GROUP = 128


def parse_method(method: str) -> tuple[str, float]:
    if m := re.fullmatch(r"rtn-int([2-8])", method):
        return "rtn", float(m.group(1))
    if m := re.fullmatch(r"prune-(\d+(?:\.\d+)?)", method):
        if not 0 < float(m.group(1)) < 100:
            raise UserError(f"--method {method}: prune percentage must be in (0, 100)")
        return "prune", float(m.group(1))
    if m := re.fullmatch(r"noise-(\d*\.?\d+)", method):
        return "noise", float(m.group(1))
    raise UserError(f"--method {method}: unknown (rtn-int8, rtn-int4, rtn-int3, prune-N, noise-S)")


def rtn_quantize(weight, bits: int):
    """Symmetric round-to-nearest per group of GROUP input weights; returns the dequantized tensor."""
    import torch

    rows, cols = weight.shape
    padded_cols = -(-cols // GROUP) * GROUP
    w = torch.zeros((rows, padded_cols), dtype=torch.float32)
    w[:, :cols] = weight.float()
    groups = w.view(rows, -1, GROUP)
    qmax = 2 ** (bits - 1) - 1
    scale = groups.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / qmax
    q = torch.clamp(torch.round(groups / scale), -qmax - 1, qmax)
    return (q * scale).view(rows, padded_cols)[:, :cols].to(weight.dtype)


def magnitude_prune(weight, percent: float):
    import torch

    k = int(weight.numel() * percent / 100)
    if k == 0:
        return weight.clone()
    threshold = weight.float().abs().flatten().kthvalue(k).values
    return torch.where(weight.float().abs() <= threshold, torch.zeros_like(weight), weight)


def add_noise(weight, scale: float, generator):
    import torch

    w = weight.float()
    noise = torch.randn(w.shape, generator=generator) * (scale * w.std())
    return (w + noise).to(weight.dtype)


def degrade(model: str, method: str, out: Path, seed: int = 0) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kind, amount = parse_method(method)
    checkpoint = models.resolve_model(model)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out {out}: exists and is not empty; choose a new directory")
    net = AutoModelForCausalLM.from_pretrained(checkpoint, dtype="auto")
    generator = torch.Generator().manual_seed(seed)
    changed = 0
    with torch.no_grad():
        for name, module in net.named_modules():
            if not isinstance(module, torch.nn.Linear) or "lm_head" in name:
                continue
            w = module.weight.data
            if kind == "rtn":
                module.weight.data = rtn_quantize(w, int(amount))
            elif kind == "prune":
                module.weight.data = magnitude_prune(w, amount)
            else:
                module.weight.data = add_noise(w, amount, generator)
            changed += 1
    if changed == 0:
        raise UserError(f"{checkpoint}: found no linear layers to degrade")
    tmp = out.with_name(out.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    net.save_pretrained(tmp, safe_serialization=True)
    AutoTokenizer.from_pretrained(checkpoint).save_pretrained(tmp)
    (tmp / models.DEGRADE_MANIFEST).write_text(
        json.dumps(
            {
                "base": models.model_label(model),
                "base_fingerprint": models.checkpoint_fingerprint(checkpoint),
                "method": method,
                "seed": seed,
                "linear_layers_changed": changed,
            },
            indent=1,
        )
    )
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return out
