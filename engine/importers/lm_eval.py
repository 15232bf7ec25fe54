"""Import an lm-evaluation-harness run (`lm_eval ... --log_samples --output_path DIR`) as a run of ours.

What lm-eval writes per invocation, into DIR/<model>/: `results_<date>.json` (aggregates, task configs,
versions, n-shot, n-samples, task_hashes, model and chat-template fields) and one
`samples_<task>_<date>.jsonl` per task, one line per (document, filter) with doc_id, doc, target,
arguments, resps, filtered_resps, filter, the metric names and their values as top-level keys, and
sha256 hashes of the document (json.dumps(doc, indent=2)), of the first prompt, and of the target.

What we write: an ordinary run directory (spec.json + records/<bench>.jsonl) that `compare` grades
like a native run:
- one bench per (top-level task, filter): `task` for filter "none", else `task:filter`; a group is one
  bench whose subtasks are its categories (item id `subtask:doc_id` there, `doc_id` otherwise);
- one record per document, or per repeat when the task has `repeats` > 1;
- the score is the task's primary metric (the first of its metric_list) or `--metric NAME`; every
  per-document number lm-eval logged, and for log-likelihood multiple choice the margin of the correct
  choice (`ll_margin`: its log-likelihood minus the best wrong one's), go into the record's scores;
- lm-eval records no token counts or finish reasons: records say so (`no_token_counts`,
  `no_finish_reason`) so that those canaries read n/a rather than 0.

The contract of an imported run comes from lm-eval's own fields (see `build_spec`): documents and
targets (per doc_id, by hash) are never waivable; prompts, chat template, generation settings are.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from engine import stats
from engine.errors import UserError
from engine.records import (
    SPEC_FILE,
    ItemRecord,
    RecordWriter,
    Run,
    RunLock,
    atomic_write,
    encode_spec,
    read_spec,
    records_path,
    refuse_edited_finished_run,
    write_manifest,
)
from engine.spec import BenchSpec, ImportedEngine, RunSpec, SamplingConfig

SOURCE = "lm-eval"
MARGIN = "ll_margin"  # derived per-document score of log-likelihood multiple choice
SAMPLE_FIELDS = ("doc_id", "doc", "target", "arguments", "resps", "filtered_resps", "filter", "metrics", "doc_hash", "prompt_hash", "target_hash")


def _sha16(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def _doc_hash(doc: Any) -> str:
    """lm-eval's doc_hash: sha256 of json.dumps(doc, indent=2, ensure_ascii=False)."""
    return hashlib.sha256(json.dumps(doc, indent=2, ensure_ascii=False, default=str).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------- reading


class ResultsFile(msgspec.Struct):
    path: Path
    data: dict

    @property
    def date_id(self) -> str:
        return self.path.stem.removeprefix("results_")

    def samples_path(self, task: str) -> Path:
        return self.path.parent / f"samples_{task}_{self.date_id}.jsonl"


def find_results(path: Path) -> list[ResultsFile]:
    """The results_*.json at PATH (a file, or every one under a folder), parsed."""
    path = Path(path)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(path.rglob("results_*.json"))
    else:
        raise UserError(f"{path}: no such file or folder")
    if not files:
        raise UserError(f"{path}: no results_*.json in it (lm-eval writes them with --output_path DIR --log_samples)")
    out = []
    for f in files:
        if not f.name.startswith("results_") or f.suffix != ".json":
            raise UserError(f"{f}: expected an lm-eval results_<date>.json (or the folder holding it)")
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{f}: not valid JSON ({exc}); is the file complete?") from exc
        for key in ("configs", "config"):
            if not isinstance(data.get(key), dict):
                raise UserError(f"{f}: field {key!r} missing; not an lm-eval results file (or one older than 0.4)")
        out.append(ResultsFile(path=f, data=data))
    return out


def read_samples(path: Path, task: str) -> list[dict]:
    """The lines of one samples_<task>_<date>.jsonl; a cut-off or malformed line is a one-line error."""
    if not path.is_file():
        raise UserError(f"{path}: missing; lm-eval writes samples_<task>_<date>.jsonl only with --log_samples")
    raw = path.read_bytes()
    if raw and not raw.endswith(b"\n"):
        raise UserError(f"{path}: the last line is cut off (no newline at the end): the file is truncated; copy it again or rerun lm-eval")
    samples = []
    for lineno, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            sample = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{lineno}: not a JSON line ({exc}); the file is truncated or was edited") from exc
        missing = [k for k in SAMPLE_FIELDS if k not in sample] if isinstance(sample, dict) else ["(not an object)"]
        if missing:
            raise UserError(f"{path}:{lineno}: field {missing[0]!r} missing; not an lm-eval --log_samples line")
        samples.append(sample)
    if not samples:
        raise UserError(f"{path}: empty; task {task} logged no samples")
    return samples


def _top_level_tasks(results: dict) -> dict[str, list[str]]:
    """Top-level task or group -> its leaf tasks (the tasks that have samples files)."""
    configs = results["configs"]
    children = {g: list(kids) for g, kids in (results.get("group_subtasks") or {}).items() if kids}
    nested = {kid for kids in children.values() for kid in kids}

    def leaves(name: str, trail: tuple[str, ...]) -> list[str]:
        if name in trail:
            raise UserError(f"group_subtasks: {name} contains itself")
        if name not in children:
            return [name]
        return [leaf for kid in children[name] for leaf in leaves(kid, (*trail, name))]

    units = {g: leaves(g, ()) for g in children if g not in nested}
    units.update({t: [t] for t in configs if t not in nested and t not in children})
    for unit, leafs in units.items():
        for leaf in leafs:
            if leaf not in configs:
                raise UserError(f"{unit}: subtask {leaf} has no entry in the results' configs")
    return units


# ------------------------------------------------------------------------------------------ per document


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def _choices(sample: dict) -> list[str]:
    args = sample["arguments"]
    if isinstance(args, dict):  # lm-eval's saved form: {"gen_args_0": {"arg_0": context, "arg_1": continuation}}
        return [str(args[f"gen_args_{i}"].get("arg_1", "")) for i in range(len(args))]
    return [str(a[1]) if isinstance(a, list) and len(a) > 1 else "" for a in args]


def _loglikelihoods(sample: dict) -> list[float] | None:
    """Per-choice log-likelihoods of a multiple-choice line (filtered_resps: [[ll, is_greedy], ...])."""
    try:
        return [float(r[0]) for r in sample["filtered_resps"]]
    except (TypeError, ValueError, IndexError):
        return None


def ll_margin(sample: dict) -> float | None:
    """Log-likelihood of the correct choice minus the best wrong one (None: not single-gold MC)."""
    lls = _loglikelihoods(sample)
    choices = _choices(sample)
    if lls is None or len(lls) < 2 or len(lls) != len(choices):
        return None
    target = str(sample["target"]).strip()
    if target.lstrip("-").isdigit():
        gold = int(target)
    else:
        stripped = [c.strip() for c in choices]
        gold = stripped.index(target) if target in stripped else -1
    if not 0 <= gold < len(lls):
        return None
    return lls[gold] - max(ll for i, ll in enumerate(lls) if i != gold)


def _scores(sample: dict, output_type: str) -> dict[str, float]:
    scores = {}
    for name in sample["metrics"]:
        value = _number(sample.get(name))
        if value is not None:
            scores[name] = value
    if output_type == "multiple_choice":
        margin = ll_margin(sample)
        if margin is not None:
            scores[MARGIN] = margin
    return scores


def primary_metric(config: dict, sample: dict) -> str:
    metric_list = config.get("metric_list") or []
    if metric_list and isinstance(metric_list[0], dict) and metric_list[0].get("metric") in sample["metrics"]:
        return str(metric_list[0]["metric"])
    return str(sample["metrics"][0]) if sample["metrics"] else ""


def _records_of(sample: dict, *, leaf: str, in_group: bool, config: dict, metric: str, seed: int, path: Path) -> list[ItemRecord]:
    output_type = str(config.get("output_type", ""))
    scores = _scores(sample, output_type)
    if metric not in scores:
        raise UserError(
            f"{path}: doc_id {sample['doc_id']}: no per-document number for metric {metric!r} "
            f"(per-document here: {', '.join(sorted(scores)) or 'none'}); choose one with --metric"
        )
    if not 0.0 <= scores[metric] <= 1.0:
        raise UserError(
            f"--metric {metric}: per-document values outside [0, 1] (doc_id {sample['doc_id']}: {scores[metric]:.4g}) "
            f"cannot be the primary score; they stay in every record's scores, and compare tests the margin beside it"
        )
    doc_hash_ok = _doc_hash(sample["doc"]) == sample["doc_hash"]
    extra: dict[str, Any] = {
        "task": leaf,
        "filter": sample["filter"],
        "doc_id": sample["doc_id"],
        "doc_hash": sample["doc_hash"],
        "target_hash": sample["target_hash"],
        "metric": metric,
        "no_token_counts": True,
        "no_finish_reason": True,
    }
    if not doc_hash_ok:
        extra["doc_hash_mismatch"] = True  # the logged doc does not hash to the logged doc_hash
    item_id = f"{leaf}:{sample['doc_id']}" if in_group else str(sample["doc_id"])
    resps, filtered = sample["resps"], sample["filtered_resps"]
    if output_type == "multiple_choice":
        lls = _loglikelihoods(sample) or []
        pred = int(np.argmax(lls)) if lls else -1
        choices = _choices(sample)
        outputs = [(choices[pred] if 0 <= pred < len(choices) else "", str(pred))]
    else:
        # generate_until: one request per document; its resps hold one text per repeat.
        texts = resps[0] if resps and isinstance(resps[0], list) else resps
        answers = filtered[0] if filtered else ""
        repeats = max(1, int(config.get("repeats", 1) or 1))
        texts = [str(t) for t in texts][:repeats] or [""]
        per_repeat = isinstance(answers, list) and len(answers) == len(texts)
        outputs = [(t, str(answers[i] if per_repeat else answers)) for i, t in enumerate(texts)]
    values = sample.get(metric)
    per_repeat_scores = isinstance(values, list) and len(values) == len(outputs) and all(_number(v) is not None for v in values)
    if len(outputs) > 1 and not per_repeat_scores:
        # lm-eval scores a document once over its repeats (e.g. take_first, majority vote): each
        # repeat's record carries that document-level value.
        extra["doc_level_score"] = True
    records = []
    for i, (completion, answer) in enumerate(outputs):
        score = _number(values[i]) if per_repeat_scores else scores[metric]
        fields: dict[str, Any] = {"scores": scores}
        records.append(
            ItemRecord(
                item_id=item_id,
                sample=i,
                seed=seed,
                prompt_hash=str(sample["prompt_hash"]),
                completion=completion,
                prompt_tokens=0,
                completion_tokens=0,
                finish_reason="unknown",
                truncated=False,
                answer=answer,
                score=float(score),
                latency_s=0.0,
                category=leaf if in_group else None,
                extra=dict(extra),
                **fields,
            )
        )
    return records


# ------------------------------------------------------------------------------------------------ import


class Imported(msgspec.Struct):
    spec: RunSpec
    records: dict[str, list[ItemRecord]]  # bench -> records
    warnings: list[str]


def bench_name(unit: str, filter_name: str) -> str:
    # ":" joins task and filter; "." would split the contract's "<bench>.<field>" keys, "/" the path.
    name = unit if filter_name == "none" else f"{unit}:{filter_name}"
    return name.replace("/", "_").replace(".", "_").replace(os.sep, "_")


def _one_value(files: list[ResultsFile], what: str, get) -> Any:
    values = {json.dumps(get(f.data), sort_keys=True, default=str) for f in files}
    if len(values) > 1:
        raise UserError(
            f"{', '.join(str(f.path) for f in files)}: the results files disagree on {what} ({' vs '.join(sorted(values))}); "
            f"import each one on its own"
        )
    return get(files[0].data)


def _gen_kwargs(config: dict, cli: Any) -> dict:
    kwargs = dict(config.get("generation_kwargs") or {})
    if isinstance(cli, dict):
        kwargs.update(cli)  # lm-eval's --gen_kwargs override the task's
    elif cli:
        kwargs["--gen_kwargs"] = cli
    return kwargs


def load(path: Path, metric: str | None = None) -> Imported:
    """Read an lm-eval output (folder or results file) into our spec and records, checking it whole."""
    files = find_results(path)
    model = _one_value(files, "model_name", lambda d: d.get("model_name") or (d["config"].get("model_args") or {}).get("pretrained"))
    seed = _one_value(files, "random_seed", lambda d: d["config"].get("random_seed"))
    seed = int(seed) if isinstance(seed, int) else 0
    model_args = _one_value(files, "model_args", lambda d: d["config"].get("model_args"))
    model_sha = _one_value(files, "model_sha", lambda d: d["config"].get("model_sha") or "")
    dtype = _one_value(files, "model_dtype", lambda d: d["config"].get("model_dtype") or "")
    model_type = _one_value(files, "model type", lambda d: d["config"].get("model"))

    benches: list[BenchSpec] = []
    records: dict[str, list[ItemRecord]] = {}
    contract: dict[str, dict] = {"gen_kwargs": {}, "chat_template": {}, "limit": {}}
    prompt_keys: list[tuple[str, str, str]] = []
    versions: dict[str, str] = {}
    warnings: list[str] = []
    seen_leaf: dict[str, Path] = {}
    for rf in files:
        data = rf.data
        for unit, leaves in _top_level_tasks(data).items():
            in_group = leaves != [unit]
            by_filter: dict[str, list[ItemRecord]] = {}
            leaf_meta: dict[str, list[dict]] = {}
            hashes: dict[str, list[tuple]] = {}
            for leaf in leaves:
                if leaf in seen_leaf:
                    raise UserError(f"task {leaf} is in both {seen_leaf[leaf]} and {rf.path}: import them separately")
                seen_leaf[leaf] = rf.path
                config = data["configs"][leaf]
                spath = rf.samples_path(leaf)
                samples = read_samples(spath, leaf)
                effective = ((data.get("n-samples") or {}).get(leaf) or {}).get("effective")
                seen_keys: set[tuple] = set()
                per_filter_count: dict[str, int] = {}
                for s in samples:
                    key = (s["doc_id"], s["filter"])
                    if key in seen_keys:
                        raise UserError(f"{spath}: doc_id {s['doc_id']} appears twice for filter {s['filter']!r}")
                    seen_keys.add(key)
                    per_filter_count[s["filter"]] = per_filter_count.get(s["filter"], 0) + 1
                if isinstance(effective, int):
                    for flt, count in per_filter_count.items():
                        if count != effective:
                            raise UserError(
                                f"{spath}: {count} documents for filter {flt!r}, but {rf.path.name} says {effective} were "
                                f"evaluated: the samples file is truncated or from another run"
                            )
                chosen = metric or primary_metric(config, samples[0])
                gen = _gen_kwargs(config, data["config"].get("gen_kwargs"))
                template = {
                    "chat_template_sha": data.get("chat_template_sha"),
                    "system_instruction_sha": data.get("system_instruction_sha"),
                    "fewshot_as_multiturn": data.get("fewshot_as_multiturn"),
                }
                mismatched = 0
                for s in samples:
                    flt = s["filter"]
                    recs = _records_of(s, leaf=leaf, in_group=in_group, config=config, metric=chosen, seed=seed, path=spath)
                    mismatched += bool(recs[0].extra.get("doc_hash_mismatch"))
                    by_filter.setdefault(flt, []).extend(recs)
                    hashes.setdefault(flt, []).append((leaf, s["doc_id"], s["doc_hash"], s["target_hash"]))
                    prompt_keys.append((leaf, str(s["doc_id"]), str(s["prompt_hash"])))
                    leaf_meta.setdefault(flt, []).append(
                        {
                            "task": leaf,
                            "version": (data.get("versions") or {}).get(leaf),
                            "output_type": config.get("output_type"),
                            "num_fewshot": (data.get("n-shot") or {}).get(leaf, config.get("num_fewshot")),
                            "repeats": config.get("repeats", 1),
                            "metric": chosen,
                            "dataset": [config.get("dataset_path"), config.get("dataset_name"), config.get("test_split")],
                            "split_size": ((data.get("n-samples") or {}).get(leaf) or {}).get("original"),
                            "gen": gen,
                            "template": template,
                            "limit": data["config"].get("limit"),
                        }
                    )
                if mismatched:
                    warnings.append(
                        f"{spath}: {mismatched} document(s) do not hash to their logged doc_hash (edited file?); "
                        f"pairing trusts the logged doc_hash"
                    )
                task_hash = (data.get("task_hashes") or {}).get(leaf)
                if task_hash:
                    versions[f"task_hash:{leaf}"] = str(task_hash)
            for flt, recs in by_filter.items():
                name = bench_name(unit, flt)
                if name in records:
                    raise UserError(f"{rf.path}: two tasks import as bench {name}; import the results files separately")
                meta = leaf_meta[flt]
                first = {m["task"]: m for m in meta}  # one entry per leaf (lines repeat it per document)
                leaf_entries = list(first.values())
                gens = {m["task"]: m["gen"] for m in leaf_entries if m["output_type"] == "generate_until"}
                max_tokens = max((int(g.get("max_gen_toks", 256)) for g in gens.values()), default=0)
                samples_per_item = max(int(m["repeats"] or 1) for m in leaf_entries)
                benches.append(
                    BenchSpec(
                        name=name,
                        version="lm-eval:" + _sha16([(m["task"], m["version"], m["output_type"], m["num_fewshot"], m["repeats"], m["metric"], flt) for m in leaf_entries]),
                        data_fingerprint="lm-eval:" + _sha16([(m["task"], m["dataset"], m["split_size"]) for m in leaf_entries]),
                        n_items=len({r.item_id for r in recs}),
                        items_fingerprint="lm-eval:" + _sha16(sorted(hashes[flt], key=lambda h: (h[0], str(h[1])))),
                        max_tokens=max_tokens,
                        samples=samples_per_item,
                    )
                )
                records[name] = recs
                contract["gen_kwargs"][name] = gens
                contract["chat_template"][name] = {m["task"]: m["template"] for m in leaf_entries}
                contract["limit"][name] = {m["task"]: m["limit"] for m in leaf_entries}
    versions.update(
        {k: str(v) for k, v in (("lm_eval", files[0].data.get("lm_eval_version")), ("transformers", files[0].data.get("transformers_version"))) if v}
    )
    spec = RunSpec(
        model=str(model or "unknown"),
        model_fingerprint=str(model_sha) if model_sha else "lm-eval:" + _sha16(model_args),
        tier="lm-eval",
        seed=seed,
        think=False,
        samples=max((b.samples for b in benches), default=1),
        # Generation settings are per task in lm-eval: they live in the source contract
        # (lm_eval.gen_kwargs); the run-level sampling block is a neutral placeholder.
        sampling=SamplingConfig(preset="lm-eval", temperature=0.0),
        benches=tuple(benches),
        engine=ImportedEngine(dtype=str(dtype), model_args=_sha16(model_args)),
        harness_version=f"lm-eval {files[0].data.get('lm_eval_version') or '?'}",
        versions=versions,
        source=SOURCE,
        source_fields=source_contract(contract, prompt_keys, model_type),
    )
    return Imported(spec=spec, records=records, warnings=warnings)


def source_contract(contract: dict[str, dict], prompt_keys: list[tuple[str, str, str]], model_type: Any) -> dict[str, str]:
    """Contract fields only an imported run has (waivable: prompts, chat_template, gen_kwargs, model_type)."""
    return {
        "lm_eval.prompts": _sha16(sorted(prompt_keys)),
        "lm_eval.chat_template": json.dumps(contract["chat_template"], sort_keys=True),
        "lm_eval.gen_kwargs": json.dumps(contract["gen_kwargs"], sort_keys=True),
        "lm_eval.limit": json.dumps(contract["limit"], sort_keys=True),
        "lm_eval.model_type": str(model_type),
    }


def import_run(path: Path, out: Path, metric: str | None = None) -> Imported:
    """Write PATH's lm-eval run as the run directory OUT (an existing OUT must hold this very import)."""
    imported = load(path, metric)
    out = Path(out)
    lock = RunLock(out)
    try:
        refuse_edited_finished_run(out)  # a re-import never overwrites the evidence of an edit
        spec_path = out / SPEC_FILE
        if spec_path.is_file():
            if read_spec(out) != imported.spec:
                raise UserError(f"{out} already holds another run; choose another --out")
        else:
            atomic_write(spec_path, encode_spec(imported.spec))
        for bench, recs in imported.records.items():
            writer = RecordWriter(records_path(out, bench))
            try:
                for rec in recs:
                    writer.append(rec)  # skips (item, sample) already there: re-importing is a no-op
            finally:
                writer.close()
        # An import holds every document lm-eval logged: a finished run, with its manifest like any other.
        write_manifest(out, list(imported.records))
    finally:
        lock.release()
    return imported


# ---------------------------------------------------------------------------------- comparing two imports


def _doc_hashes(records: list[ItemRecord]) -> dict[str, tuple[str, str]]:
    return {r.item_id: (str(r.extra.get("doc_hash")), str(r.extra.get("target_hash"))) for r in records if r.sample == 0}


def _ids(ids: list[str], limit: int) -> str:
    shown = ", ".join(ids[:limit])
    return shown + (f" (+{len(ids) - limit} more)" if len(ids) > limit else "")


def differing_documents(base: Run, cand: Run, limit: int = 10) -> list[str]:
    """Lines naming, per bench both imported runs have, the documents whose doc_hash or target_hash differ.

    For the NOT COMPARABLE message when items_fingerprint differs: which documents are not the same.
    """
    lines = []
    for bench in [b.name for b in cand.spec.benches if b.name in base.records]:
        bh, ch = _doc_hashes(base.records[bench]), _doc_hashes(cand.records.get(bench, []))
        both = [i for i in bh if i in ch]
        for k, what in ((0, "doc_hash"), (1, "target_hash")):
            ids = [i for i in both if bh[i][k] != ch[i][k]]
            if ids:
                lines.append(f"  {bench}: {what} differs for doc_id {_ids(ids, limit)}")
        only_base = [i for i in bh if i not in ch]
        only_cand = [i for i in ch if i not in bh]
        if only_base:
            lines.append(f"  {bench}: doc_id only in the baseline: {_ids(only_base, limit)}")
        if only_cand:
            lines.append(f"  {bench}: doc_id only in the candidate: {_ids(only_cand, limit)}")
    return lines


class MarginTest(msgspec.Struct, kw_only=True):
    """Paired test on the log-likelihood margin of the correct choice (continuous, per document)."""

    bench: str
    n: int
    base_mean: float
    cand_mean: float
    delta: float  # mean per-document candidate - baseline margin (nats)
    delta_ci: tuple[float, float]
    p_degraded: float  # one-sided: the candidate's margins are lower
    p_two_sided: float
    method: str


def _margins(records: list[ItemRecord]) -> dict[str, float]:
    per_item: dict[str, list[float]] = {}
    for r in records:
        scores = r.scores
        if MARGIN in scores:
            per_item.setdefault(r.item_id, []).append(float(scores[MARGIN]))
    return {k: float(np.mean(v)) for k, v in per_item.items()}


def margin_tests(base: Run, cand: Run, alpha: float = 0.05) -> list[MarginTest]:
    """A sign-flip permutation test on the per-document margin, for every bench where both runs logged it."""
    out = []
    for spec in cand.spec.benches:
        bm, cm = _margins(base.records.get(spec.name, [])), _margins(cand.records.get(spec.name, []))
        ids = [i for i in bm if i in cm]
        if not ids:
            continue
        x = np.array([bm[i] for i in ids])
        y = np.array([cm[i] for i in ids])
        diffs = y - x
        flip = stats.sign_flip_test(diffs)
        out.append(
            MarginTest(
                bench=spec.name,
                n=len(ids),
                base_mean=float(x.mean()),
                cand_mean=float(y.mean()),
                delta=float(diffs.mean()),
                delta_ci=stats.paired_bootstrap_ci(diffs, 1 - alpha),
                p_degraded=flip.p_degraded,
                p_two_sided=flip.p_two_sided,
                method=f"sign-flip permutation ({'exact' if flip.exact else f'{flip.n_resamples} draws'}) on the per-document margin",
            )
        )
    return out


def format_margin_tests(tests: list[MarginTest]) -> list[str]:
    lines = []
    for t in tests:
        lines.append(
            f"{t.bench}: log-likelihood margin of the correct choice (nats): base {t.base_mean:.3f} cand {t.cand_mean:.3f} "
            f"Δ {t.delta:+.3f} [{t.delta_ci[0]:+.3f}, {t.delta_ci[1]:+.3f}], n {t.n}, p one-sided {t.p_degraded:.3g}, "
            f"two-sided {t.p_two_sided:.3g} ({t.method})"
        )
    return lines


def print_summary(imported: Imported, out: Path) -> None:
    for line in imported.warnings:
        print(f"warning: {line}", file=sys.stderr)
    for spec in imported.spec.benches:
        recs = imported.records[spec.name]
        metric = recs[0].extra.get("metric", "") if recs else ""
        mean = float(np.mean([r.score for r in recs])) if recs else float("nan")
        print(f"{spec.name}: {spec.n_items} documents, {metric} {mean:.4g}")
    print(f"run dir: {out} (model {imported.spec.model}); grade it with: python -m engine compare BASE_DIR {out}")
