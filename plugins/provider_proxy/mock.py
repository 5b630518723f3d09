"""The ``mock`` provider: deterministic OpenAI-shaped answers for offline demos and benchmarks.

The answer names the model and repeats the last user message, so a wrong cache hit is visible.
It produces the same bytes an OpenAI upstream would (JSON, or SSE chunks with a usage chunk),
and the proxy relays them through the same path as a real upstream's.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from aigw.context import Api
from aigw.sse import DONE, encode

from .config import MockSettings


def last_user_text(payload: dict[str, Any]) -> str:
    """The text of the last user message (or the prompt, or the input)."""
    for msg in reversed(payload.get("messages") or []):
        if isinstance(msg, dict) and msg.get("role") == "user":
            content = msg.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(
                    p.get("text", "") for p in content if isinstance(p, dict) and "text" in p
                )
    prompt = payload.get("prompt")
    return prompt if isinstance(prompt, str) else ""


def _tokens(text: str) -> int:
    return max(1, len(text.split()))


class MockProvider:
    """Answers requests locally; shaped by :class:`MockSettings`."""

    def __init__(self, name: str, cfg: MockSettings) -> None:
        self.name = name
        self.cfg = cfg

    def answer(self, payload: dict[str, Any], model: str) -> str:
        """The deterministic answer text for a request."""
        return f"[mock {model}] You said: {last_user_text(payload)}"

    async def body(self, api: Api, payload: dict[str, Any], model: str) -> bytes:
        """A whole (non-streamed) response body for ``api``."""
        if self.cfg.latency_ms:
            await asyncio.sleep(self.cfg.latency_ms / 1000)
        if api == "embeddings":
            return orjson.dumps(self._embeddings(payload, model))
        text = self.answer(payload, model)
        usage = _usage(payload, text)
        head = _head(model, "chat.completion" if api == "chat.completions" else "text_completion")
        if api == "chat.completions":
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}
        return orjson.dumps({**head, "choices": [choice], "usage": usage})

    async def stream(self, api: Api, payload: dict[str, Any], model: str) -> AsyncIterator[bytes]:
        """SSE bytes as an OpenAI upstream sends them (usage chunk always included)."""
        text = self.answer(payload, model)
        obj = "chat.completion.chunk" if api == "chat.completions" else "text_completion"
        head = _head(model, obj)
        pieces = _split(text, self.cfg.chunks)
        if self.cfg.ttft_ms:
            await asyncio.sleep(self.cfg.ttft_ms / 1000)
        if api == "chat.completions":
            yield encode({**head, "choices": [_delta({"role": "assistant", "content": ""})]})
        for i, piece in enumerate(pieces):
            if i and self.cfg.chunk_delay_ms:
                await asyncio.sleep(self.cfg.chunk_delay_ms / 1000)
            if api == "chat.completions":
                yield encode({**head, "choices": [_delta({"content": piece})]})
            else:
                yield encode(
                    {**head, "choices": [{"index": 0, "text": piece, "finish_reason": None}]}
                )
        finish = (
            _delta({}, "stop")
            if api == "chat.completions"
            else {"index": 0, "text": "", "finish_reason": "stop"}
        )
        yield encode({**head, "choices": [finish]})
        yield encode({**head, "choices": [], "usage": _usage(payload, text)})
        yield DONE

    def _embeddings(self, payload: dict[str, Any], model: str) -> dict[str, Any]:
        raw = payload.get("input")
        texts = raw if isinstance(raw, list) else [raw]
        data = [
            {"object": "embedding", "index": i, "embedding": _vector(str(t))}
            for i, t in enumerate(texts)
        ]
        tokens = sum(_tokens(str(t)) for t in texts)
        return {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }


def _usage(payload: dict[str, Any], text: str) -> dict[str, int]:
    prompt = _tokens(orjson.dumps(payload.get("messages") or payload.get("prompt")).decode())
    completion = _tokens(text)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _head(model: str, obj: str) -> dict[str, Any]:
    prefix = "chatcmpl-" if obj.startswith("chat") else "cmpl-"
    return {
        "id": prefix + os.urandom(12).hex(),
        "object": obj,
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_aigw_mock",
    }


def _delta(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}


def _split(text: str, n: int) -> list[str]:
    size = max(1, -(-len(text) // n))
    return [text[i : i + size] for i in range(0, len(text), size)]


def _vector(text: str, dim: int = 16) -> list[float]:
    """A deterministic unit vector from the text's hash (not semantically meaningful)."""
    digest = hashlib.sha256(text.encode()).digest() * 2
    raw = [v / 2**31 for v in struct.unpack(f"<{dim}i", digest[: dim * 4])]
    norm = sum(v * v for v in raw) ** 0.5 or 1.0
    return [v / norm for v in raw]
