"""An OpenAI-compatible endpoint as a backend: grade a model served elsewhere (vLLM `serve`, SGLang,
llama.cpp server, ...) through `/v1/chat/completions`.

The request body is written out field by field: a server fills every sampling value left out from
the model's generation config (vLLM's `--generation-config auto`, the default), so an omitted field
silently changes the operating point. The server renders the chat template itself;
`chat_template_kwargs.enable_thinking` carries `--think`.

Time limits: every attempt has one deadline for the whole exchange (connect + first byte + whole
body: `--request-timeout`, OpenAIEngine.timeout_s), so a server that sends part of a body and stalls
costs that deadline, not one read timeout per trickled byte. All attempts of one request together
(waits between them included) stop at RETRY_BUDGET_FACTOR times that deadline, whatever max_retries
says; each retry is announced on stderr with what failed and the budget left.

Failures: connection errors, timeouts, 429 and 5xx are retried with exponential backoff and jitter.
A request that still fails is a `BackendError` (the runner records an error item, never a wrong
answer); a 4xx other than 429 is one at once, with the server's own message. A server that cannot be
reached at all after the retries is `EndpointDown`: every request after that fails at once with the
same error, so a dead server stops the run quickly instead of burning retries per item.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
from typing import Any

import httpx
import msgspec

from engine.backends.protocol import BackendError, EndpointDown, GenRequest, GenResult
from engine.errors import UserError
from engine.spec import OpenAIEngine


class ServerInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What the server says about itself: goes into the run's contract (served model, version, length)."""

    base_url: str
    served_model: str  # the id requests are sent with
    root: str | None  # what the server loaded under that id (vLLM: the checkpoint path or hub name)
    owned_by: str | None  # "vllm", "sglang", ... where the server says so
    max_model_len: int | None  # from /v1/models where offered
    server_version: str | None  # from /version where offered


BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0
CONNECT_TIMEOUT_S = 10.0
# All attempts of one request end within this many per-attempt deadlines: a stalled server costs at
# most 2 x --request-timeout per request (was: the deadline x 6 attempts).
RETRY_BUDGET_FACTOR = 2.0
_MESSAGE_CHARS = 300


def server_root(base_url: str) -> str:
    """`http://host:port` from `http://host:port`, `.../v1` or `.../v1/`: `/version` and `/health`
    live beside `/v1`, not under it."""
    url = base_url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise UserError(
            f"--base-url {base_url}: give a URL such as http://127.0.0.1:8000 (with http:// or https://)"
        )
    return url.removesuffix("/v1")


def api_key_headers(api_key_env: str | None) -> dict[str, str]:
    if api_key_env is None:
        return {}
    key = os.environ.get(api_key_env)
    if not key:
        raise UserError(f"--api-key-env {api_key_env}: that environment variable is not set (or empty)")
    return {"Authorization": f"Bearer {key}"}


def _server_message(response: httpx.Response) -> str:
    """The error text a server put in its body: OpenAI/vLLM {"error": {"message"}}, FastAPI {"detail"}, or raw."""
    try:
        data = msgspec.json.decode(response.content)
    except msgspec.DecodeError:
        data = None
    message = None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict):
            message = error.get("message")
        elif isinstance(error, str):
            message = error
        message = message or data.get("message") or data.get("detail")
    text = str(message) if message else response.text
    text = " ".join(text.split())
    return text[:_MESSAGE_CHARS] + ("…" if len(text) > _MESSAGE_CHARS else "") or "(empty body)"


def backoff_delay(attempt: int, base_s: float, retry_after: float | None = None) -> float:
    """Exponential backoff with jitter: half the step fixed, half random (so a crowd of retries spreads
    out but none comes back too early); a server's Retry-After is honoured as a lower bound."""
    step = min(BACKOFF_CAP_S, base_s * 2**attempt)
    delay = step / 2 + random.uniform(0, step / 2)
    if retry_after is not None:
        delay = max(delay, min(retry_after, 2 * BACKOFF_CAP_S))
    return delay


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers.get("retry-after", ""))
    except ValueError:
        return None  # absent, or an HTTP date: our own backoff serves


class Transport:
    """One HTTP client for one server, with the retry rules above (shared by generation, the server
    description and the endpoint KL probe)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key_env: str | None,
        timeout_s: float,
        max_retries: int,
        concurrency: int,
        backoff_base_s: float = BACKOFF_BASE_S,
    ):
        self.root = server_root(base_url)
        if not timeout_s > 0:
            raise UserError(f"--request-timeout {timeout_s:g}: must be a positive number of seconds")
        self.timeout_s = timeout_s
        self.budget_s = RETRY_BUDGET_FACTOR * timeout_s
        self.max_retries = max(0, max_retries)
        self.backoff_base_s = backoff_base_s
        self._down: EndpointDown | None = None
        # The whole request is bounded by asyncio.timeout(timeout_s) in `request`; httpx bounds the
        # connect step (a dead host should not take the full generation timeout) and never waits for
        # a pooled connection (the caller's semaphore keeps requests <= connections).
        self._client = httpx.AsyncClient(
            base_url=self.root,
            headers={"Content-Type": "application/json", **api_key_headers(api_key_env)},
            timeout=httpx.Timeout(timeout_s, connect=min(CONNECT_TIMEOUT_S, timeout_s), pool=None),
            limits=httpx.Limits(
                max_connections=max(1, concurrency), max_keepalive_connections=max(1, concurrency)
            ),
        )

    async def request(self, method: str, path: str, body: dict | None = None, label: str = "") -> Any:
        """The decoded JSON answer; BackendError / EndpointDown after the retries (see module docstring)."""
        content = None if body is None else msgspec.json.encode(body)
        unreachable = False
        last = ""
        started = time.monotonic()
        tries = 0
        for attempt in range(self.max_retries + 1):
            if self._down is not None:
                raise self._down
            left = self.budget_s - (time.monotonic() - started)
            if left <= 0:
                break
            deadline = min(self.timeout_s, left)
            retry_after = None
            tries += 1
            try:
                async with asyncio.timeout(deadline):
                    response = await self._client.request(method, path, content=content)
            except (TimeoutError, httpx.ReadTimeout, httpx.WriteTimeout):
                unreachable, last = False, f"no complete answer within {deadline:.2g}s"
            except httpx.TransportError as exc:
                # Refused, reset, closed mid-answer, DNS, connect timeout: the server is not there (now).
                unreachable, last = True, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            else:
                status = response.status_code
                if status == 429 or status >= 500:
                    unreachable, last = False, f"HTTP {status}: {_server_message(response)}"
                    retry_after = _retry_after(response)
                elif status >= 400:
                    raise BackendError(
                        f"{method} {path}: HTTP {status} from the server: {_server_message(response)}"
                    )
                else:
                    try:
                        return msgspec.json.decode(response.content)
                    except msgspec.DecodeError:
                        snippet = " ".join(response.text.split())[:200]
                        raise BackendError(
                            f"{method} {path}: HTTP {status} but the body is not JSON ({len(response.content)} bytes: {snippet!r})"
                        ) from None
            if attempt < self.max_retries:
                left = self.budget_s - (time.monotonic() - started)
                delay = min(backoff_delay(attempt, self.backoff_base_s, retry_after), max(left, 0.0))
                if left - delay <= 0:
                    break
                print(
                    f"retrying {label or method + ' ' + path} in {delay:.1f}s (try {attempt + 1} of "
                    f"{self.max_retries + 1} failed: {last}); {left:.0f}s of its {self.budget_s:g}s budget left",
                    file=sys.stderr,
                )
                await asyncio.sleep(delay)
        if unreachable:
            if self._down is None:
                self._down = EndpointDown(f"the endpoint {self.root} is unreachable ({tries} tries): {last}")
            raise self._down
        spent = time.monotonic() - started
        raise BackendError(f"{method} {path}: failed after {tries} tries: {last} ({spent:.1f}s in all)")

    async def close(self) -> None:
        await self._client.aclose()


def _off_means(top_k: int) -> int:
    # Our 0 = off. vLLM takes 0 or -1 ("quietly accept -1 as disabled"), SGLang only -1, llama.cpp any
    # value <= 0: -1 is the one spelling every server reads as "off".
    return top_k if top_k > 0 else -1


def chat_body(request: GenRequest, served_model: str, max_model_len: int | None) -> dict[str, Any]:
    """The `/v1/chat/completions` body: every value that changes the output, explicitly."""
    s = request.sampling
    # vLLM refuses max_tokens > max_model_len and clamps anything below to what fits after the prompt,
    # which is exactly what the in-process backend does itself.
    max_tokens = request.max_tokens if max_model_len is None else min(request.max_tokens, max_model_len)
    body: dict[str, Any] = {
        "model": served_model,
        "messages": request.messages,
        "n": 1,
        "stream": False,
        "max_tokens": max_tokens,
        "max_completion_tokens": max_tokens,  # the newer name; servers that know both use this one
        "temperature": s.temperature,
        "top_p": s.top_p,
        "top_k": _off_means(s.top_k),
        "min_p": s.min_p,
        "presence_penalty": s.presence_penalty,
        "frequency_penalty": 0.0,  # not a harness knob, but a generation config could set it
        "repetition_penalty": s.repetition_penalty,
        "seed": request.seed,
        "chat_template_kwargs": {"enable_thinking": request.think},
        # vLLM's SamplingParams defaults, which the in-process backend decodes with: sent so that a
        # server with other defaults produces the same bytes.
        "skip_special_tokens": True,
        "spaces_between_special_tokens": True,
        "include_stop_str_in_output": False,
        "add_generation_prompt": True,
        "return_token_ids": True,  # vLLM: the completion's token ids (others ignore it)
        "logprobs": request.logprobs,
    }
    if request.logprobs:
        body["top_logprobs"] = 0  # only the sampled token's own log-prob
    if request.tools:
        body["tools"] = request.tools  # the server's chat template renders them (native tool calls)
    return body


_FINISH = {"stop": "stop", "eos": "stop", "length": "length", "abort": "abort", "tool_calls": "stop"}


def parse_chat_response(data: Any, want_logprobs: bool = False) -> GenResult:
    """A chat completion answer -> GenResult; anything malformed is a BackendError naming what is missing."""
    try:
        choice = data["choices"][0]
        message = choice["message"]
        usage = data["usage"]
        prompt_tokens = int(usage["prompt_tokens"])
        completion_tokens = int(usage["completion_tokens"])
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise BackendError(
            f"malformed chat completion (needs choices[0].message and usage): missing {exc}"
        ) from None
    raw_finish = choice.get("finish_reason")
    if raw_finish not in _FINISH:
        raise BackendError(f"the server ended the completion with finish_reason {raw_finish!r}")
    finish = _FINISH[raw_finish]
    content = message.get("content")
    reasoning = message.get("reasoning")
    if reasoning is None:
        reasoning = message.get("reasoning_content")  # older vLLM, SGLang, DeepSeek
    if reasoning:
        # vLLM's parser returns content None both when </think> never came and when nothing followed
        # it; only a completion cut at the length cap is taken as cut inside its reasoning.
        text = reasoning if content is None and finish == "length" else f"{reasoning}</think>{content or ''}"
    else:
        text = content or ""
    # A server with a tool-call parser returns the calls apart from the content: give them back in the
    # text as the model wrote them (Qwen's <tool_call> format), so one parser reads every backend.
    for call in message.get("tool_calls") or ():
        function = (call.get("function") or {}) if isinstance(call, dict) else {}
        arguments = function.get("arguments")
        try:
            arguments = json.loads(arguments) if isinstance(arguments, str) else arguments
        except json.JSONDecodeError:
            pass  # left as the string the model wrote: the bench's parser reports it
        text += "\n<tool_call>\n" + json.dumps({"name": function.get("name"), "arguments": arguments}) + "\n</tool_call>"
    logprobs = None
    if want_logprobs:
        try:
            logprobs = [float(t["logprob"]) for t in (choice.get("logprobs") or {})["content"]]
        except (KeyError, TypeError) as exc:
            raise BackendError(f"log-probs were asked for but the answer has none usable ({exc})") from None
    details = usage.get("completion_tokens_details") or {}
    reasoning_tokens = details.get("reasoning_tokens") if isinstance(details, dict) else None
    return GenResult(
        text=text,
        token_ids=[int(t) for t in choice.get("token_ids") or []],
        finish_reason=finish,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        logprobs=logprobs,
        reasoning_tokens=None if reasoning_tokens is None else int(reasoning_tokens),
    )


def check_not_capped(result: GenResult, max_tokens: int, max_model_len: int | None) -> None:
    """A completion cut at the length limit before the tokens asked for: the server lowered max_tokens
    on its own (vLLM does, to `max_new_tokens` of `--generation-config DIR` or
    `--override-generation-config`). Recording it would grade a truncation the harness never asked for."""
    if result.finish_reason != "length":
        return
    room = max_tokens if max_model_len is None else min(max_tokens, max_model_len - result.prompt_tokens)
    if result.completion_tokens < room:
        raise BackendError(
            f"the server stopped at {result.completion_tokens} tokens (finish_reason length) of the {room} asked for: "
            f"it caps max_tokens (vLLM: max_new_tokens in --generation-config / --override-generation-config); "
            f"restart it without the cap"
        )


async def describe_server(
    base_url: str, api_key_env: str | None, served_model: str | None, *, transport: Transport | None = None
) -> ServerInfo:
    """The served model's id, its `root`, `max_model_len` (from /v1/models) and `/version`, where offered."""
    own = transport is None
    if transport is None:
        transport = Transport(base_url, api_key_env=api_key_env, timeout_s=30.0, max_retries=2, concurrency=1)
    try:
        try:
            listing = await transport.request("GET", "/v1/models")
        except BackendError as exc:
            raise UserError(
                f"--base-url {base_url}: /v1/models failed, is this an OpenAI-compatible server? ({exc})"
            ) from None
        models = listing.get("data") if isinstance(listing, dict) else None
        if not isinstance(models, list) or not all(isinstance(m, dict) and "id" in m for m in models):
            raise UserError(f"--base-url {base_url}: /v1/models answered without a list of models with ids")
        ids = [str(m["id"]) for m in models]
        if served_model is None:
            if len(ids) != 1:
                raise UserError(
                    f"--base-url {base_url} serves {len(ids)} models ({', '.join(ids) or 'none'}): pick one with --served-model"
                )
            served_model = ids[0]
        if served_model not in ids:
            raise UserError(
                f"--served-model {served_model}: not served at {base_url} (it serves: {', '.join(ids) or 'nothing'})"
            )
        entry = models[ids.index(served_model)]
        try:
            version_data = await transport.request("GET", "/version")
            version = version_data.get("version") if isinstance(version_data, dict) else None
        except BackendError:
            version = None  # not every server has /version (llama.cpp does not)
        max_len = entry.get("max_model_len")
        return ServerInfo(
            base_url=transport.root,
            served_model=served_model,
            root=entry.get("root"),
            owned_by=entry.get("owned_by"),
            max_model_len=int(max_len) if isinstance(max_len, int) and max_len > 0 else None,
            server_version=None if version is None else str(version),
        )
    finally:
        if own:
            await transport.close()


class OpenAIBackend:
    def __init__(self, transport: Transport, info: ServerInfo, concurrency: int):
        self._transport = transport
        self.info = info
        self.served_model = info.served_model
        self.max_model_len: int | None = info.max_model_len  # None: the server does not say
        self._gate = asyncio.Semaphore(max(1, concurrency))

    @classmethod
    async def start(
        cls, spec: OpenAIEngine, *, concurrency: int, backoff_base_s: float = BACKOFF_BASE_S
    ) -> OpenAIBackend:
        transport = Transport(
            spec.base_url,
            api_key_env=spec.api_key_env,
            timeout_s=spec.timeout_s,
            max_retries=spec.max_retries,
            concurrency=concurrency,
            backoff_base_s=backoff_base_s,
        )
        try:
            info = await describe_server(
                spec.base_url, spec.api_key_env, spec.served_model or None, transport=transport
            )
        except BaseException:
            await transport.close()
            raise
        return cls(transport, info, concurrency)

    async def generate(self, request: GenRequest) -> GenResult:
        body = chat_body(request, self.served_model, self.max_model_len)
        async with self._gate:
            try:
                data = await self._transport.request("POST", "/v1/chat/completions", body, label=request.request_id)
            except BackendError as exc:
                if request.tools and "HTTP 400" in str(exc) and "tool" in str(exc).lower():
                    # Every request of an agent bench would fail the same way: stop the run in one line.
                    raise UserError(
                        f"{self._transport.root} rejects requests with tools ({exc}): restart it with "
                        "--enable-auto-tool-choice --tool-call-parser NAME (hermes for Qwen3's JSON calls, "
                        "qwen3_coder for Qwen3.5's and Qwen3-Coder's XML)"
                    ) from None
                raise
        try:
            result = parse_chat_response(data, want_logprobs=request.logprobs)
            if result.completion_tokens > body["max_tokens"]:
                raise BackendError(
                    f"malformed chat completion: usage.completion_tokens {result.completion_tokens} is above the "
                    f"max_tokens {body['max_tokens']} asked for"
                )
            check_not_capped(result, body["max_tokens"], self.max_model_len)
        except BackendError as exc:
            raise BackendError(f"{request.request_id}: {exc}") from None
        return result

    async def close(self) -> None:
        await self._transport.close()
