"""Endpoint overhead: the same gsm8k prompts through the OpenAI endpoint backend against `vllm serve`
vs the in-process vLLM backend (AsyncLLM), same engine settings, greedy.

Both engines are configured alike (dtype, max_model_len 2048, eager, no chunked prefill, no prefix
caching, 1 GiB KV cache, max_num_seqs = requests in flight); they run one after the other, each
alone. Reported: engine start-up, the generation phase (engine up; all requests sent with N in
flight) and their ratio, and how many completions are byte-identical between the two.

    python bench_kernels/endpoint_overhead.py [--model smollm2-135m] [--n 200] [--max-tokens 256] [-c 64]
                                              [--dtype bfloat16] [--data-dir ../shared/data]

`start_vllm_serve` / `stop_vllm_serve` are also what the tests use to run a real server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_vllm_serve(
    checkpoint: Path,
    workdir: Path,
    *,
    served_name: str = "served",
    dtype: str = "float32",
    max_num_seqs: int = 64,
    extra: tuple[str, ...] = (),
    startup_timeout_s: float = 600.0,
) -> tuple[subprocess.Popen, str]:
    """`vllm serve` (the OpenAI API server of the installed vLLM) on 127.0.0.1 and a free port, in its
    own process group, configured as VllmBackend configures its engine, so a comparison isolates the
    HTTP path. Returns (process, base URL) once /health answers; its log is workdir/serve.log."""
    import httpx

    port = _free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "VLLM_HOST_IP": "127.0.0.1",  # its internal queues on loopback too
        "HF_HUB_OFFLINE": "1",
        "VLLM_CACHE_ROOT": str(workdir / "cache"),
        "TMPDIR": str(workdir),  # its IPC socket files
        "VLLM_LOGGING_LEVEL": "WARNING",
        "TOKENIZERS_PARALLELISM": "false",
    }
    cpu_kv = ["--kv-cache-memory-bytes", str(1 << 30)] if _is_cpu_build() else []
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(checkpoint),
        "--served-model-name", served_name, "--host", "127.0.0.1", "--port", str(port), "--dtype", dtype,
        "--max-model-len", "2048", "--seed", "0", "--no-enable-chunked-prefill", "--max-num-batched-tokens", "8192",
        "--no-enable-prefix-caching", "--max-num-seqs", str(max_num_seqs), "--disable-uvicorn-access-log",
        *(["--enforce-eager"] if _is_cpu_build() else []), *cpu_kv, *extra,
    ]  # fmt: skip
    log = open(workdir / "serve.log", "wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + startup_timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vllm serve exited with {proc.returncode}:\n{_tail(workdir / 'serve.log')}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    stop_vllm_serve(proc)
    raise RuntimeError(
        f"vllm serve not healthy after {startup_timeout_s:g} s:\n{_tail(workdir / 'serve.log')}"
    )


def stop_vllm_serve(proc: subprocess.Popen) -> None:
    """Stop the server's whole process group (API server, engine core, workers)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


def _is_cpu_build() -> bool:
    from engine.backends.vllm_backend import is_cpu_build

    return is_cpu_build()


async def _inprocess(checkpoint: Path, prompts: list[list[dict]], args) -> dict:
    from engine.backends import GenRequest, load_tokenizer, render_chat
    from engine.backends.vllm_backend import VllmBackend
    from engine.sampling import PRESETS
    from engine.spec import VllmEngine

    tokenizer = load_tokenizer(checkpoint)
    ids = [render_chat(tokenizer, m, False) for m in prompts]
    t0 = time.monotonic()
    spec = VllmEngine(
        dtype=args.dtype,
        chunked_prefill=False,
        bs1=False,
        prefix_caching=False,
        max_model_len=2048,
        engine_core=args.engine_core,
    )
    backend = await VllmBackend.start(
        checkpoint, spec, seed=0, concurrency=args.concurrency, kv_cache_gib=1.0
    )
    ready = time.monotonic()
    gate = asyncio.Semaphore(args.concurrency)

    async def one(i: int):
        async with gate:  # as the runner sends them: N in flight
            return await backend.generate(
                GenRequest(
                    request_id=str(i),
                    prompt_token_ids=ids[i],
                    sampling=PRESETS["greedy"],
                    max_tokens=args.max_tokens,
                    seed=i,
                )
            )

    try:
        out = await asyncio.gather(*(one(i) for i in range(len(ids))))
        done = time.monotonic()
    finally:
        await backend.close()
    return {"startup_s": ready - t0, "generate_s": done - ready, "texts": [r.text for r in out],
            "completion_tokens": sum(r.completion_tokens for r in out)}  # fmt: skip


async def _endpoint(url: str, prompts: list[list[dict]], args) -> dict:
    from engine.backends import GenRequest
    from engine.backends.openai_backend import OpenAIBackend
    from engine.sampling import PRESETS
    from engine.spec import OpenAIEngine

    backend = await OpenAIBackend.start(OpenAIEngine(base_url=url, served_model=""), concurrency=args.concurrency)
    started = time.monotonic()
    try:
        out = await asyncio.gather(*(
            backend.generate(GenRequest(request_id=str(i), messages=m, think=False, sampling=PRESETS["greedy"],
                                        max_tokens=args.max_tokens, seed=i))
            for i, m in enumerate(prompts)
        ))  # fmt: skip
        done = time.monotonic()
    finally:
        await backend.close()
    return {
        "generate_s": done - started,
        "texts": [r.text for r in out],
        "completion_tokens": sum(r.completion_tokens for r in out),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("-c", "--concurrency", type=int, default=64)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--engine-core", default="auto", choices=["auto", "process", "inline"],
                        help="the in-process side's engine core (auto: inline on CPU)")
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    args = parser.parse_args()

    os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
    from benches import gsm8k
    from engine import models

    checkpoint = models.resolve_model(args.model)
    items = gsm8k.load(args.data_dir)[: args.n]
    prompts = [gsm8k.messages(item, False) for item in items]

    inproc = asyncio.run(_inprocess(checkpoint, prompts, args))
    print(
        f"in-process: start {inproc['startup_s']:.1f}s, generate {inproc['generate_s']:.1f}s", file=sys.stderr
    )
    with tempfile.TemporaryDirectory(prefix="dh-serve-") as tmp:
        t0 = time.monotonic()
        proc, url = start_vllm_serve(checkpoint, Path(tmp), dtype=args.dtype, max_num_seqs=args.concurrency)
        serve_startup = time.monotonic() - t0
        try:
            endpoint = asyncio.run(_endpoint(url, prompts, args))
        finally:
            stop_vllm_serve(proc)
    same = sum(a == b for a, b in zip(inproc["texts"], endpoint["texts"], strict=True))
    result = {
        "n": len(prompts),
        "max_tokens": args.max_tokens,
        "concurrency": args.concurrency,
        "dtype": args.dtype,
        "inprocess_startup_s": round(inproc["startup_s"], 1),
        "inprocess_generate_s": round(inproc["generate_s"], 1),
        "serve_startup_s": round(serve_startup, 1),
        "endpoint_generate_s": round(endpoint["generate_s"], 1),
        "generate_ratio": round(endpoint["generate_s"] / inproc["generate_s"], 3),
        "completion_tokens": [inproc["completion_tokens"], endpoint["completion_tokens"]],
        "identical_completions": same,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
