"""Serving a cache record in the shape the request asks for, whatever shape filled the cache.

JSON for ``stream: false``: a ``chat.completion`` with the original model, ``created`` and
usage. For ``stream: true``: OpenAI's exact SSE framing: a role chunk, the content split over
several chunks, tool-call deltas (id, type and name first, then the arguments in pieces), the
finish chunk, a usage chunk when ``stream_options.include_usage`` is set, then ``[DONE]``.
Every replay gets a fresh ``chatcmpl-`` id, since ids name responses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson

from aigw.context import SSE_CT, Reply
from aigw.ids import new_id
from aigw.sse import DONE, encode

from .record import CacheRecord


def _new_id() -> str:
    return "chatcmpl-" + new_id()


_ID_SLOT = "chatcmpl-@@aigw-id@@"


def completion_body(record: CacheRecord) -> bytes:
    """The non-streamed ``chat.completion`` body, with a fresh id.

    The body is rendered once per record (the memory store keeps records once hit, so a hot entry is
    serialised once) and each reply only splices its own id in.
    """
    if not record.rendered:
        head, _, tail = _render(record).partition(_ID_SLOT.encode())
        record.rendered[:] = [head, tail]
    head, tail = record.rendered
    return head + _new_id().encode() + tail


def _render(record: CacheRecord) -> bytes:
    r = record.response
    choices = [
        {**c, "message": {**c["message"], "role": "assistant"}, "logprobs": None}
        for c in r["choices"]
    ]
    body = {
        "id": _ID_SLOT,  # first key, so the first occurrence is the id
        "object": "chat.completion",
        "created": r.get("created"),
        "model": r.get("model"),
        "system_fingerprint": r.get("system_fingerprint"),
        "choices": choices,
    }
    if "usage" in r:
        body["usage"] = r["usage"]
    return orjson.dumps(body)


def stream_chunks(record: CacheRecord, include_usage: bool, piece_chars: int) -> Iterator[bytes]:
    """The SSE events of a streamed replay."""
    r = record.response
    head = {
        "id": _new_id(),
        "object": "chat.completion.chunk",
        "created": r.get("created"),
        "model": r.get("model"),
        "system_fingerprint": r.get("system_fingerprint"),
    }
    if include_usage:
        head["usage"] = None  # OpenAI sends usage: null on every chunk but the last

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return encode({**head, "choices": [choice]})

    for choice in r["choices"]:
        i, message = choice["index"], choice["message"]
        # As OpenAI: "" when text follows, null for an answer of tool calls or a refusal.
        yield chunk(
            i, {"role": "assistant", "content": None if message.get("content") is None else ""}
        )
        for field in ("reasoning_content", "content", "refusal"):
            for piece in _pieces(message.get(field), piece_chars):
                yield chunk(i, {field: piece})
        for n, call in enumerate(message.get("tool_calls") or ()):
            fn = call.get("function") or {}
            first = {
                "index": n,
                "id": call.get("id"),
                "type": call.get("type", "function"),
                "function": {"name": fn.get("name", ""), "arguments": ""},
            }
            yield chunk(i, {"tool_calls": [first]})
            for piece in _pieces(fn.get("arguments"), piece_chars):
                yield chunk(i, {"tool_calls": [{"index": n, "function": {"arguments": piece}}]})
        yield chunk(i, {}, choice.get("finish_reason"))
    if include_usage:
        yield encode({**head, "choices": [], "usage": r.get("usage")})
    yield DONE


def _pieces(text: Any, size: int) -> list[str]:
    if not isinstance(text, str) or not text:
        return []
    return [text[i : i + size] for i in range(0, len(text), size)]


async def _iterate(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for c in chunks:
        yield c


def replay(
    record: CacheRecord,
    stream: bool,
    include_usage: bool,
    headers: dict[str, str],
    piece_chars: int = 16,
) -> Reply:
    """A :class:`Reply` serving ``record`` as JSON or as an SSE stream."""
    if not stream:
        return Reply(body=completion_body(record), headers=headers)
    # Every event is encoded now, before anything is sent: a record that cannot be (a value
    # from Redis that decode() let through) is then a miss, not a stream cut short.
    chunks = list(stream_chunks(record, include_usage, piece_chars))
    return Reply(stream=_iterate(chunks), content_type=SSE_CT, headers=headers)
