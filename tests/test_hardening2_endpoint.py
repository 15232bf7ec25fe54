"""Issue 29, item 4: endpoint time limits. A stalled server (no first byte, part of a body then
silence, a body trickled byte by byte) is given up within the request's budget, with a progress line
per retry; a completion that reports more tokens than max_tokens is malformed."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from engine.backends import BackendError, GenRequest
from engine.backends.openai_backend import RETRY_BUDGET_FACTOR, OpenAIBackend, ServerInfo, Transport
from engine.errors import UserError
from engine.sampling import PRESETS

OK_BODY = json.dumps(
    {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "5"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2},
    }
).encode()


async def _read_request(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")), 0)
    await reader.readexactly(length)


def _headers(length: int) -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n".encode()


async def no_first_byte(reader, writer):
    await _read_request(reader)
    await asyncio.sleep(3600)


async def part_then_stall(reader, writer):
    await _read_request(reader)
    writer.write(_headers(len(OK_BODY)) + OK_BODY[:20])
    await writer.drain()
    await asyncio.sleep(3600)


async def trickle(reader, writer):
    """A byte every 50 ms: never idle long enough for a per-read timeout, never done within the deadline."""
    await _read_request(reader)
    writer.write(_headers(len(OK_BODY) * 100))
    for _ in range(100_000):
        writer.write(b" ")
        await writer.drain()
        await asyncio.sleep(0.05)


STALLS = {"no first byte": no_first_byte, "part of the body, then silence": part_then_stall, "body trickled": trickle}


@pytest.mark.parametrize("stall", STALLS)
def test_a_stalled_server_is_given_up_within_the_budget(stall, capsys):
    deadline, retries = 0.4, 5  # six tries would take 2.4 s without the budget

    async def main():
        server = await asyncio.start_server(STALLS[stall], "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport = Transport(f"http://127.0.0.1:{port}", api_key_env=None, timeout_s=deadline, max_retries=retries,
                              concurrency=1, backoff_base_s=0.01)  # fmt: skip
        t0 = time.monotonic()
        try:
            with pytest.raises(BackendError, match=r"failed after \d tries: no complete answer within"):
                await transport.request("POST", "/v1/chat/completions", {"x": 1}, label="bench-item-0")
        finally:
            elapsed = time.monotonic() - t0
            await transport.close()
            server.close()
        return elapsed

    elapsed = asyncio.run(main())
    assert deadline <= elapsed <= RETRY_BUDGET_FACTOR * deadline + 0.3
    progress = capsys.readouterr().err
    assert "retrying bench-item-0 in" in progress and "budget left" in progress


def test_request_timeout_flag_is_validated():
    with pytest.raises(UserError, match=r"--request-timeout 0: must be a positive"):
        Transport("http://127.0.0.1:9", api_key_env=None, timeout_s=0, max_retries=1, concurrency=1)


@pytest.mark.parametrize("reported", [65, 100, 10_000])
def test_completion_tokens_above_max_tokens_is_malformed(reported):
    body = json.loads(OK_BODY)
    body["usage"]["completion_tokens"] = reported

    async def answer(reader, writer):
        await _read_request(reader)
        raw = json.dumps(body).encode()
        writer.write(_headers(len(raw)) + raw)
        await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport = Transport(f"http://127.0.0.1:{port}", api_key_env=None, timeout_s=5, max_retries=0, concurrency=1)
        info = ServerInfo(base_url="", served_model="m", root=None, owned_by=None, max_model_len=None, server_version=None)
        backend = OpenAIBackend(transport, info, concurrency=1)
        request = GenRequest(request_id="r0", messages=[{"role": "user", "content": "2+3?"}], think=False,
                             sampling=PRESETS["qwen-nothink"], max_tokens=64, seed=7)  # fmt: skip
        try:
            with pytest.raises(BackendError, match=rf"r0: malformed chat completion: usage.completion_tokens {reported} is above the max_tokens 64"):
                await backend.generate(request)
            body["usage"]["completion_tokens"] = 64  # at the cap: accepted
            assert (await backend.generate(request)).completion_tokens == 64
        finally:
            await backend.close()
            server.close()

    asyncio.run(main())
