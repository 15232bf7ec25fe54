"""Which baseline a candidate is graded against, and whether it may be.

One resolution function (`resolve_baseline`) serves the run command, compare, report and the probe,
so a baseline found for a run is the one its report finds too.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from engine import spec as specs
from engine.errors import NotComparable, UserError
from engine.records import SPEC_FILE, Run, answered, being_written, read_run


def baselines_root() -> Path:
    """`baselines/` of the working directory, else the one committed beside the package."""
    here = Path("baselines")
    return here if here.is_dir() else Path(__file__).resolve().parent.parent / "baselines"


def shared_benches(base: Run, cand: Run) -> list[str]:
    """The candidate's benches that the baseline ran too, in the candidate's order."""
    have = {b.name for b in base.spec.benches}
    return [b.name for b in cand.spec.benches if b.name in have]


def ungraded_benches(base: Run, cand: Run) -> list[str]:
    have = {b.name for b in base.spec.benches}
    return [b.name for b in cand.spec.benches if b.name not in have]


# What each flag-backed contract field is set with, for the remedy line.
_RUN_FLAGS = {
    "tier": "--tier", "seed": "--seed", "item_seed": "--item-seed", "samples": "--samples",
    "sampling.temperature": "--temperature", "sampling.top_p": "--top-p", "sampling.top_k": "--top-k",
    "sampling.min_p": "--min-p", "sampling.presence_penalty": "--presence-penalty",
    "sampling.repetition_penalty": "--repetition-penalty",
    "engine.dtype": "--dtype", "engine.tensor_parallel": "--tp", "engine.data_parallel": "--dp",
}  # fmt: skip
_SWITCHES = {"think": "--think", "engine.chunked_prefill": "--chunked-prefill", "engine.bs1": "--bs1",
             "engine.prefix_caching": "--prefix-caching"}  # fmt: skip
# What waiving a field accepts, said where the remedy offers --allow-differ.
_WAIVER_MEANS = {
    "seed": "the pair no longer shares per-request seeds, so sampling noise is not cancelled between them "
    "(flips include it; harmless for greedy runs)",
    "engine": "other batch shapes or kernels, so some flips may come from the engine rather than the model",
}
_BASELINE_REMAKE = "rebuild the baseline with this harness and data: `python -m engine baseline --model BASE --tier T`"


def remedy(field: str, base_value: object, cand_value: object) -> str:
    """One line: how to make `field` match (or when it may knowingly be waived, and what that accepts).

    `field` is a contract field as `spec.diff` names it; the values are the baseline's and the candidate's.
    """
    waiver = ""
    if field in specs.WAIVABLE or field.startswith("engine.args."):
        short = field.removeprefix("engine.") if field.startswith("engine.") and not field.startswith("engine.args.") else field
        means = _WAIVER_MEANS["seed" if field == "seed" else "engine"]
        waiver = f", or accept it with --allow-differ {short} ({means})"
    if specs.UNKNOWN in (base_value, cand_value):
        known = cand_value if base_value == specs.UNKNOWN else base_value
        return (f"the server does not reveal it (the in-process run has {known!r}): start the server with that "
                f"setting, then grade with --allow-differ engine; or grade against a baseline served the same way")
    if field == "engine.backend":
        return ("an endpoint and an in-process engine: grade the endpoint against a baseline served the same way, or confirm "
                "the server's settings match the baseline's and pass --allow-differ engine"
                if "openai" in (base_value, cand_value) else f"rerun with --backend {base_value}{waiver}")
    if field.startswith("engine.args."):
        key = field.removeprefix("engine.args.")
        how = f"without --engine-arg {key}" if base_value == specs.ABSENT_ENGINE_ARG else f"with --engine-arg {key}={base_value}"
        return f"rerun the candidate {how}{waiver}"
    if field in _RUN_FLAGS:
        return f"rerun the candidate with {_RUN_FLAGS[field]} {base_value}{waiver}"
    if field in _SWITCHES:
        flag = _SWITCHES[field]
        on = flag if base_value else ("--no-think" if flag == "--think" else f"no {flag}")
        return f"rerun the candidate with {on}{waiver}"
    if field == "source":
        return "an imported lm-eval run is graded only against another imported run; import (or run) both sides the same way"
    if field.startswith("lm_eval."):
        return f"run lm-eval for both sides with the same settings{waiver}"
    if field == "scoring_version":
        return f"the scoring code changed since the baseline was made: {_BASELINE_REMAKE}"
    bench, _, what = field.partition(".")
    if base_value == "<not in baseline>":
        return f"the baseline did not run {bench}: drop it from --benches, or rebuild the baseline with it"
    if what in ("n_items", "items_fingerprint"):
        return f"other {bench} items: rerun with the baseline's --tier, --limit and --item-seed (it ran {bench} at its own)"
    if what == "max_tokens":
        return f"rerun the candidate with --max-tokens {base_value} (or rebuild the baseline with the candidate's cap)"
    if what == "samples":
        return f"rerun the candidate with --samples {base_value}"
    if what == "data_fingerprint":
        return f"other {bench} data: give both runs the same --data-dir (or the same pinned files), or {_BASELINE_REMAKE}"
    if what in ("version", "scoring_versions", "per_item", "source_fields"):
        return f"the {bench} bench changed since the baseline was made: {_BASELINE_REMAKE}"
    return f"make it match the baseline ({base_value!r}){waiver}"


def _not_comparable(base: Run, cand: Run, diffs: list[specs.Difference], head: str | None = None) -> NotComparable:
    lines = [head or f"⚠ NOT COMPARABLE: {cand.dir} cannot be graded against {base.dir}"]
    hidden = [d.field.removeprefix("engine.") for d in diffs if d.candidate == specs.UNKNOWN or d.baseline == specs.UNKNOWN]
    if hidden:
        lines.append(f"  an endpoint hides its engine settings ({', '.join(hidden)}): unknown, not known to differ; "
                     f"confirm the server runs the baseline's, then --allow-differ engine")  # fmt: skip
    lines += [f"  {d.field}: baseline {d.baseline!r} vs candidate {d.candidate!r} -> {remedy(d.field, d.baseline, d.candidate)}" for d in diffs]
    return NotComparable("\n".join(lines))


def check_gradable(run: Run, side: str) -> None:
    """A run still being written, or one without a single record (a failed start), is no verdict."""
    if being_written(run.dir):
        raise UserError(f"{run.dir}: the {side} is being written by a running process right now; compare it once it has finished")
    if not any(answered(records) for records in run.records.values()):
        raise UserError(
            f"{run.dir}: the {side} has no records (the run failed before its first item, or never started): "
            f"nothing to grade; rerun its command"
        )


def check_comparable(base: Run, cand: Run, waive: tuple[str, ...] = (), *, planned: bool = False) -> list[specs.Difference]:
    """Raise NotComparable listing every differing contract field of the shared benches; return the
    waived differences. Benches only the candidate ran are left ungraded, not blocking. A run in
    progress or without records is refused first (UserError), except a `planned` candidate."""
    specs.expand_waivers(list(waive))  # an unknown name is bad input, not a difference
    check_gradable(base, "baseline")
    if not planned:  # a run about to start (early stop's check) has no records yet
        check_gradable(cand, "candidate")
    if base.spec.source != cand.spec.source:  # said alone: every other field differs as a consequence
        raise _not_comparable(base, cand, [specs.Difference("source", base.spec.source, cand.spec.source)])
    shared = set(shared_benches(base, cand))
    if not shared:
        raise NotComparable(
            f"⚠ NOT COMPARABLE: {cand.dir} and {base.dir} have no bench in common "
            f"(baseline: {', '.join(b.name for b in base.spec.benches)}; candidate: {', '.join(b.name for b in cand.spec.benches)})"
        )
    diffs = specs.diff(base.spec, cand.spec, only_benches=shared)
    blocking = [d for d in diffs if not specs.waived(d.field, waive)]
    if blocking:
        error = _not_comparable(base, cand, blocking)
        if base.spec.source == cand.spec.source == "lm-eval":
            from engine.importers.lm_eval import differing_documents

            error = NotComparable("\n".join([str(error), *differing_documents(base, cand)]))
        raise error
    return [d for d in diffs if specs.waived(d.field, waive)]


class Resolved(msgspec.Struct, kw_only=True):
    run: Run | None
    message: str = ""  # why there is none, for the user


def _is_run_dir(path: str | Path | None) -> bool:
    return path is not None and (Path(path) / SPEC_FILE).is_file()


def resolve_baseline(arg: str | None, cand: Run, model_names: list[str], waive: tuple[str, ...] = ()) -> Resolved:
    """The baseline for `cand`:
      --baseline none       no comparison;
      --baseline RUN_DIR    that run (its comparability is checked by compare);
      --baseline NAME       a run under baselines/NAME/ that matches on the shared benches;
      nothing given         the same search over the model's names (`model_names`): no folder, or no
                            matching run there, means this run has no baseline yet (not an error).
    """
    if arg == "none":
        return Resolved(run=None, message="--baseline none: no comparison")
    if _is_run_dir(arg):
        return Resolved(run=read_run(arg))
    names = [n for n in dict.fromkeys([arg, *model_names]) if n]
    folders = [baselines_root() / n for n in names if (baselines_root() / n).is_dir()]
    if arg and not (baselines_root() / arg).is_dir():
        raise UserError(f"--baseline {arg}: neither a run directory nor a folder under {baselines_root()}")
    best: tuple[int, Run] | None = None
    closest: tuple[int, Run, list[specs.Difference]] | None = None
    for folder in folders:
        for spec_path in sorted(folder.glob(f"*/{SPEC_FILE}")):
            base = read_run(spec_path.parent)
            if base.dir.resolve() == Path(cand.dir).resolve():
                continue
            shared = shared_benches(base, cand)
            diffs = specs.diff(base.spec, cand.spec, only_benches=set(shared)) if shared else []
            blocking = [d for d in diffs if not specs.waived(d.field, waive)]
            if shared and not blocking:
                if best is None or len(shared) > best[0]:
                    best = (len(shared), base)
            elif closest is None or (len(blocking) or 99) < closest[0]:
                closest = (len(blocking) or 99, base, blocking)
    if best is not None:
        return Resolved(run=best[1])
    if Path(cand.dir).resolve().is_relative_to(baselines_root().resolve()):
        return Resolved(run=None, message=f"{cand.dir} is itself a baseline under {baselines_root()}")
    serve_hint = f"no baseline for this spec under {baselines_root()}; " + (
        f"this run can serve as one (copy {cand.dir} to {baselines_root() / (names[-1] if names else 'MODEL')}/<name>/ and commit it)"
        if cand.manifest.startswith("verified")
        # Interrupted, or requests failed: never a baseline until finished (a planned run has no manifest yet).
        else f"{cand.dir} is INCOMPLETE (no manifest: interrupted or requests failed); rerun its command to finish it "
        f"before it can serve as one"
        if cand.manifest
        else "the finished run can serve as one"
    ) + (
        f"; a baseline with its KL reference and noise floor: `python -m engine baseline --model BASE --tier {cand.spec.tier}`"
    )
    if closest is None:
        return Resolved(run=None, message=serve_hint)
    _, base, diffs = closest
    if arg:
        head = f"⚠ NOT COMPARABLE: no baseline under {baselines_root() / arg} matches this run; closest is {base.dir}:"
        if not diffs:
            diffs = [specs.Difference("benches", [b.name for b in base.spec.benches], [b.name for b in cand.spec.benches])]
        raise _not_comparable(base, cand, diffs, head)
    detail = "; ".join(f"{d.field}: {d.baseline!r} vs {d.candidate!r}" for d in diffs[:3]) or "no bench in common"
    return Resolved(run=None, message=f"{serve_hint}; closest there is {base.dir} ({detail})")
