"""A fake upstream LLM server speaking OpenAI's HTTP API: the gateway tests' "outside world".

Serve ``FakeLLM().app`` with pytest-aiohttp's ``aiohttp_server``; script failures with
``fail``/``slow``/``drop_stream``/``answer``/``hold``; inspect what arrived in ``calls``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import re
import struct
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from aiohttp import web

Json = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CHAT, COMPLETIONS, EMBEDDINGS, MODELS = "chat", "completions", "embeddings", "models"
GENERATION: frozenset[str] = frozenset({CHAT, COMPLETIONS})
DEFAULT_MODELS: tuple[str, ...] = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small")
FINGERPRINT = "fp_fake"


@dataclass
class RecordedCall:
    """One request received by the fake, recorded on arrival (before auth or scripting)."""

    kind: str  # "chat" | "completions" | "embeddings" | "models" | "unknown"
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names lower-cased
    body: Any  # parsed JSON, or None when empty / not JSON
    aborted: bool = False  # the client went away before the fake finished answering
    # set when the fake's handler has finished (answered, failed, dropped or been cancelled)
    done: asyncio.Event = field(default_factory=asyncio.Event, repr=False, compare=False)

    @property
    def stream(self) -> bool:
        """Whether the request asked for a streamed response."""
        return isinstance(self.body, dict) and self.body.get("stream") is True


@dataclass(frozen=True)
class Behaviour:
    """What the fake does for one request; fields combine (e.g. delay, then fail).

    ``status`` -> OpenAI error body with that status (and ``headers``). ``delay_s`` waits
    before sending headers. ``keepalives`` sends that many SSE comments (``: keep-alive``, as
    DeepSeek or OpenRouter do while a request is queued) before a stream's first event.
    ``drop_after_chunks`` sends that many SSE events, then closes
    the connection without ``[DONE]`` (a non-stream request gets the connection closed with
    no response). ``content``/``tool_calls``/``reasoning_content``/``refusal``/``finish_reason``
    override the answer. ``endpoints``: the request kinds that may consume this behaviour.
    """

    status: int | None = None
    message: str | None = None
    error_type: str | None = None
    code: str | None = None
    param: str | None = None
    headers: Mapping[str, str] | None = None
    delay_s: float = 0.0
    drop_after_chunks: int | None = None
    content: str | list[Json] | None = None
    finish_reason: str | None = None
    tool_calls: Sequence[Json] | None = None
    reasoning_content: str | None = None
    refusal: str | None = None
    chunk_delay_s: float | None = None
    first_token_delay_s: float | None = None
    stall_body_s: float = 0.0
    keepalives: int = 0
    endpoints: frozenset[str] = GENERATION


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> Json:
    """Build OpenAI's error envelope."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _text_of(content: Any) -> str:
    """Text of a message ``content``: a string, or a list of parts (text parts joined)."""
    if isinstance(content, list):
        texts = [p.get("text") for p in content if isinstance(p, dict)]
        return " ".join(t for t in texts if isinstance(t, str))
    return content if isinstance(content, str) else ""


def _pieces(text: str) -> list[str]:
    """Split ``text`` per word, keeping whitespace, so that ``"".join(pieces) == text``."""
    pieces: list[str] = re.findall(r"\s*\S+", text)
    rest = text[len("".join(pieces)) :]
    return [*pieces, rest] if rest else pieces


def _sse(payload: Json | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def _client_gone(request: web.Request) -> bool:
    return request.transport is None or request.transport.is_closing()


class FakeLLM:
    """An in-process fake of OpenAI's API (plus Azure and DashScope path styles)."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        require_auth: bool = True,
        models: Sequence[str] = DEFAULT_MODELS,
        embedding_dim: int = 8,
        chunk_delay_s: float = 0.0,
        first_token_delay_s: float = 0.0,
    ) -> None:
        """``api_key``: the only accepted bearer / Azure ``api-key`` (None: any non-empty
        key). ``require_auth=False`` also accepts requests carrying no key at all."""
        self.api_key = api_key
        self.require_auth = require_auth
        self.models = list(models)
        self.embedding_dim = embedding_dim
        self.chunk_delay_s = chunk_delay_s
        self.first_token_delay_s = first_token_delay_s
        self.calls: list[RecordedCall] = []
        self._queue: deque[Behaviour] = deque()
        self._gate = asyncio.Event()
        self._gate.set()
        self._arrived = asyncio.Condition()
        self.app = web.Application()
        r = self.app.router
        for prefix in ("/v1", "/compatible-mode/v1", "/openai/deployments/{deployment}"):
            r.add_post(f"{prefix}/chat/completions", self._route(CHAT))
            r.add_post(f"{prefix}/completions", self._route(COMPLETIONS))
            r.add_post(f"{prefix}/embeddings", self._route(EMBEDDINGS))
        r.add_get("/v1/models", self._route(MODELS))
        r.add_get("/v1/models/{model}", self._route(MODELS))
        r.add_route("*", "/{tail:.*}", self._route("unknown"))

    # ------------------------------------------------------------------ scripting
    def script(self, behaviour: Behaviour, times: int = 1) -> None:
        """Queue ``behaviour`` for the next ``times`` requests whose kind it covers (FIFO)."""
        self._queue.extend([behaviour] * times)

    def fail(
        self,
        status: int,
        message: str | None = None,
        *,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        times: int = 1,
        headers: Mapping[str, str] | None = None,
        endpoints: frozenset[str] = GENERATION,
    ) -> None:
        """Answer the next ``times`` requests with ``status`` and an OpenAI error body.

        ``type`` defaults to "requests" (429), "server_error" (5xx), else
        "invalid_request_error"; ``code`` defaults to "rate_limit_exceeded" for 429.
        """
        beh = Behaviour(status=status, message=message, error_type=type, code=code, param=param)
        self.script(replace(beh, headers=headers, endpoints=endpoints), times)

    def slow(self, delay_s: float, times: int = 1) -> None:
        """Wait ``delay_s`` before sending response headers, then answer normally."""
        self.script(Behaviour(delay_s=delay_s), times)

    def stall_body(self, seconds: float, times: int = 1) -> None:
        """Send the headers and half of a non-streamed body, then go quiet for ``seconds``."""
        self.script(Behaviour(stall_body_s=seconds), times)

    def drop_stream(self, after_chunks: int, times: int = 1) -> None:
        """Send ``after_chunks`` SSE events, then close the connection without ``[DONE]``."""
        self.script(Behaviour(drop_after_chunks=after_chunks), times)

    def answer(
        self,
        content: str | list[Json] | None = None,
        finish_reason: str | None = None,
        tool_calls: Sequence[Json] | None = None,
        reasoning_content: str | None = None,
        refusal: str | None = None,
        times: int = 1,
        *,
        chunk_delay_s: float | None = None,
        first_token_delay_s: float | None = None,
    ) -> None:
        """Override the answer; ``finish_reason`` defaults to "tool_calls" or "stop"."""
        beh = Behaviour(
            content=content,
            finish_reason=finish_reason,
            tool_calls=tool_calls,
            reasoning_content=reasoning_content,
            refusal=refusal,
            chunk_delay_s=chunk_delay_s,
            first_token_delay_s=first_token_delay_s,
        )
        self.script(beh, times)

    def hold(self) -> None:
        """Keep model requests waiting upstream (after being recorded) until ``release``."""
        self._gate.clear()

    def release(self) -> None:
        """Let held and future requests proceed."""
        self._gate.set()

    async def wait_for_calls(self, n: int, kind: str | None = None, timeout_s: float = 5.0) -> None:
        """Wait until at least ``n`` calls (of ``kind``, if given) have arrived."""
        async with asyncio.timeout(timeout_s), self._arrived:
            await self._arrived.wait_for(lambda: len(self.calls_of(kind)) >= n)

    def reset(self) -> None:
        """Forget recorded calls and scripted behaviours; open the gate."""
        self.calls.clear()
        self._queue.clear()
        self._gate.set()

    # ------------------------------------------------------------------ inspection
    def calls_of(self, kind: str | None = None) -> list[RecordedCall]:
        """Recorded calls of one kind ("chat", "completions", "embeddings", "models")."""
        return [c for c in self.calls if kind is None or c.kind == kind]

    @property
    def chat_calls(self) -> int:
        """Number of chat completion requests received."""
        return len(self.calls_of(CHAT))

    @property
    def last_call(self) -> RecordedCall:
        """The most recent recorded call."""
        return self.calls[-1]

    @property
    def pending(self) -> int:
        """Number of scripted behaviours not consumed yet."""
        return len(self._queue)

    @staticmethod
    def count_tokens(text: str) -> int:
        """The fake's tokenizer: whitespace-separated words."""
        return len(text.split())

    @staticmethod
    def embedding_for(text: str, dim: int = 8) -> list[float]:
        """Deterministic unit vector for ``text``; values are exact float32 values."""
        raw = b"".join(hashlib.sha256(f"{i}:{text}".encode()).digest() for i in range(dim // 8 + 1))
        vals = [x / 2**31 - 1.0 for x in struct.unpack(f"<{dim}I", raw[: 4 * dim])]
        norm = math.sqrt(sum(v * v for v in vals)) or 1.0
        return list(struct.unpack(f"<{dim}f", struct.pack(f"<{dim}f", *(v / norm for v in vals))))

    # ------------------------------------------------------------------ plumbing
    def _route(self, kind: str) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            raw = await request.read()
            try:
                body: Any = json.loads(raw) if raw else None
            except ValueError:
                body = None
            headers = {k.lower(): v for k, v in request.headers.items()}
            call = RecordedCall(
                kind, request.method, request.path, dict(request.query), headers, body
            )
            self.calls.append(call)
            async with self._arrived:
                self._arrived.notify_all()
            try:
                return await self._handle(request, call)
            except asyncio.CancelledError:  # aiohttp cancels handlers of vanished clients
                call.aborted = True
                raise
            finally:
                call.done.set()

        return handler

    @staticmethod
    def _json(
        data: Json, status: int = 200, headers: Mapping[str, str] | None = None
    ) -> web.Response:
        hdrs = {"x-request-id": f"req_{uuid.uuid4().hex[:16]}", **(headers or {})}
        return web.json_response(data, status=status, headers=hdrs)

    def _auth_error(self, request: web.Request) -> web.Response | None:
        auth = request.headers.get("Authorization", "")
        key = auth[7:].strip() if auth[:7].lower() == "bearer " else request.headers.get("api-key")
        if not self.require_auth or (key and self.api_key in (None, key)):
            return None
        msg = (
            f"Incorrect API key provided: {key[:3]}***{key[-4:]}."
            if key
            else "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
        )
        return self._json(error_body(msg, "invalid_request_error", None, "invalid_api_key"), 401)

    def _next_behaviour(self, kind: str) -> Behaviour:
        for i, beh in enumerate(self._queue):
            if kind in beh.endpoints:
                del self._queue[i]
                return beh
        return Behaviour()

    async def _handle(self, request: web.Request, call: RecordedCall) -> web.StreamResponse:
        if call.kind == "unknown":
            msg = f"Invalid URL ({request.method} {request.path})"
            return self._json(error_body(msg, "invalid_request_error"), 404)
        if (err := self._auth_error(request)) is not None:
            return err
        if call.kind == MODELS:
            return self._models(request.match_info.get("model"))
        beh = self._next_behaviour(call.kind)
        await self._gate.wait()
        if beh.delay_s:
            await asyncio.sleep(beh.delay_s)
        call.aborted = _client_gone(request)
        if (status := beh.status) is not None:
            etype = "requests" if status == 429 else "invalid_request_error"
            etype = beh.error_type or ("server_error" if status >= 500 else etype)
            code = "rate_limit_exceeded" if beh.code is None and status == 429 else beh.code
            message = beh.message or f"fake upstream error {status}"
            return self._json(error_body(message, etype, beh.param, code), status, beh.headers)
        body = call.body
        if not isinstance(body, dict):
            msg = "We could not parse the JSON body of your request."
            return self._json(error_body(msg, "invalid_request_error"), 400)
        model = request.match_info.get("deployment") or body.get("model")
        if not isinstance(model, str) or not model:
            msg = "you must provide a model parameter"
            return self._json(error_body(msg, "invalid_request_error", "model"), 400)
        if beh.drop_after_chunks is not None and not call.stream:
            if request.transport is not None:
                request.transport.close()
            return web.Response()
        if call.kind == EMBEDDINGS:
            return self._embeddings(body, model)
        return await self._generate(request, call, body, model, beh)

    def _models(self, model: str | None) -> web.Response:
        entries = [
            {"id": m, "object": "model", "created": 1686935002, "owned_by": "fake"}
            for m in self.models
        ]
        if model is None:
            return self._json({"object": "list", "data": entries})
        for entry in entries:
            if entry["id"] == model:
                return self._json(entry)
        msg = f"The model '{model}' does not exist"
        return self._json(error_body(msg, "invalid_request_error", "model", "model_not_found"), 404)

    def _embeddings(self, body: Json, model: str) -> web.Response:
        inp = body.get("input")
        texts = [inp] if isinstance(inp, str) else [str(x) for x in inp or []]
        dim = int(body.get("dimensions") or self.embedding_dim)
        data: list[Json] = []
        for i, text in enumerate(texts):
            emb: Any = self.embedding_for(text, dim)
            if body.get("encoding_format") == "base64":
                emb = base64.b64encode(struct.pack(f"<{dim}f", *emb)).decode()
            data.append({"object": "embedding", "index": i, "embedding": emb})
        tokens = sum(self.count_tokens(t) for t in texts)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return self._json({"object": "list", "data": data, "model": model, "usage": usage})

    async def _generate(
        self, request: web.Request, call: RecordedCall, body: Json, model: str, beh: Behaviour
    ) -> web.StreamResponse:
        chat = call.kind == CHAT
        tool_calls: list[Json] = []
        for i, tc in enumerate((beh.tool_calls or []) if chat else []):
            fn = {"arguments": "", **tc.get("function", {})}
            tool_calls.append({"id": f"call_{i}", "type": "function", **tc, "function": fn})
        if chat:
            messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
            prompts = [_text_of(m.get("content")) for m in messages]
            users = [p for m, p in zip(messages, prompts, strict=True) if m.get("role") == "user"]
            echo = f"echo[{model}]: {users[-1] if users else ''}"
            answered = beh.content is not None or tool_calls or beh.refusal
            content = beh.content if answered else echo
            # Some OpenAI-compatible servers answer with a list of content parts.
            outs = [_text_of(content) if isinstance(content, list) else content or ""]
        else:
            prompt = body.get("prompt", "")
            prompts = [prompt] if isinstance(prompt, str) else [str(p) for p in prompt]
            echoes = [f"echo[{model}]: {p}" for p in prompts] or [f"echo[{model}]: "]
            outs = [beh.content] if beh.content is not None else echoes
        finish = beh.finish_reason or ("tool_calls" if tool_calls else "stop")
        reasoning = beh.reasoning_content
        p_tok = sum(self.count_tokens(p) for p in prompts)
        c_tok = sum(self.count_tokens(t) for t in [*outs, reasoning or ""])
        c_tok += sum(self.count_tokens(tc["function"]["arguments"]) for tc in tool_calls)
        usage = {"prompt_tokens": p_tok, "completion_tokens": c_tok, "total_tokens": p_tok + c_tok}
        base: Json = {"id": ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]}
        base |= {"object": "chat.completion" if chat else "text_completion"}
        base |= {"created": int(time.time()), "model": model, "system_fingerprint": FINGERPRINT}

        if not call.stream:
            if chat:
                msg: Json = {"role": "assistant", "content": content, "refusal": beh.refusal}
                if reasoning is not None:
                    msg["reasoning_content"] = reasoning
                if tool_calls:
                    msg["tool_calls"] = tool_calls
                choices = [{"index": 0, "message": msg, "logprobs": None, "finish_reason": finish}]
            else:
                choices = [
                    {"text": t, "index": i, "logprobs": None, "finish_reason": finish}
                    for i, t in enumerate(outs)
                ]
            answer = {**base, "choices": choices, "usage": usage}
            if beh.stall_body_s:
                return await self._stalled(request, json.dumps(answer).encode(), beh.stall_body_s)
            return self._json(answer, headers=beh.headers)

        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        base["object"] = "chat.completion.chunk" if chat else "text_completion"
        events: list[bytes] = []

        def emit(choice: Json, finish_reason: str | None = None) -> None:
            choice = {**choice, "logprobs": None, "finish_reason": finish_reason}
            events.append(
                _sse({**base, "choices": [choice]} | ({"usage": None} if include_usage else {}))
            )

        # Azure OpenAI opens a chat stream with its prompt filter results, id and model unset.
        azure = chat and request.path.startswith("/openai/deployments/")
        if azure:
            filters = {"hate": {"filtered": False, "severity": "safe"}}
            results = [{"prompt_index": 0, "content_filter_results": filters}]
            head = {"choices": [], "created": 0, "id": "", "model": "", "object": ""}
            events.append(_sse({**head, "prompt_filter_results": results}))
        if chat:
            emit(
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": None if content is None else ""},
                }
            )
            texts = (
                ("reasoning_content", reasoning),
                ("content", outs[0]),
                ("refusal", beh.refusal),
            )
            for key, text in ((k, t or "") for k, t in texts):
                for piece in _pieces(text):
                    emit({"index": 0, "delta": {key: piece}})
            for i, tc in enumerate(tool_calls):
                fn, args = tc["function"], tc["function"]["arguments"]
                head = {"index": i, "id": tc["id"], "type": tc["type"]}
                head["function"] = {"name": fn["name"], "arguments": ""}
                emit({"index": 0, "delta": {"tool_calls": [head]}})
                step = max(1, math.ceil(len(args) / 3))
                for j in range(0, len(args), step):
                    part = {"index": i, "function": {"arguments": args[j : j + step]}}
                    emit({"index": 0, "delta": {"tool_calls": [part]}})
            emit({"index": 0, "delta": {}}, finish)
        else:
            for i, text in enumerate(outs):
                for piece in _pieces(text):
                    emit({"text": piece, "index": i})
                emit({"text": "", "index": i}, finish)
        if include_usage:
            events.append(_sse({**base, "choices": [], "usage": usage}))
        events.append(_sse("[DONE]"))
        first_content = (2 if azure else 1) if chat else 0
        return await self._stream(request, call, beh, events, first_content)

    async def _stalled(
        self, request: web.Request, body: bytes, seconds: float
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = len(body)
        await resp.prepare(request)
        await resp.write(body[: len(body) // 2])
        await asyncio.sleep(seconds)
        await resp.write(body[len(body) // 2 :])
        await resp.write_eof()
        return resp

    async def _stream(
        self,
        request: web.Request,
        call: RecordedCall,
        beh: Behaviour,
        events: list[bytes],
        first_content: int,
    ) -> web.StreamResponse:
        headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        headers |= {"x-request-id": f"req_{uuid.uuid4().hex[:16]}", **(beh.headers or {})}
        resp = web.StreamResponse(headers=headers)
        first_delay = beh.first_token_delay_s
        first_delay = self.first_token_delay_s if first_delay is None else first_delay
        chunk_delay = self.chunk_delay_s if beh.chunk_delay_s is None else beh.chunk_delay_s
        try:
            await resp.prepare(request)
            for _ in range(beh.keepalives):
                await resp.write(b": keep-alive\n\n")
            for i, event in enumerate(events):
                if beh.drop_after_chunks is not None and i >= beh.drop_after_chunks:
                    resp.force_close()
                    if request.transport is not None:
                        request.transport.close()
                    return resp
                delay = first_delay if i == first_content else chunk_delay
                if delay and i >= first_content:
                    await asyncio.sleep(delay)
                await resp.write(event)
            await resp.write_eof()
        except ConnectionError:
            call.aborted = True
        return resp
