"""Turning an upstream answer into the client's reply, and recording what it was.

Streams are relayed event by event as they arrive (the first token is not held back; the
server's keep-alive comments too), parsed on the way so the gateway knows the usage and can
rebuild the whole answer for the caches. The
usage-only chunk the proxy asked for is dropped unless the client asked for it too. A stream
that ends before ``[DONE]`` or breaks is an :class:`~aigw.errors.UpstreamError`: the client
sees an error event and the answer is never marked complete.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import orjson

from aigw.completion import StreamAssembler
from aigw.context import RequestContext
from aigw.errors import UpstreamError, UpstreamTimeout, error_body
from aigw.http_client import HTTPClientError
from aigw.sse import COMMENT, DONE, MAX_EVENT_SIZE, SSEEventTooLarge, SSEParser
from aigw.transport import UpstreamResponse

from .upstream import failure


async def relay_stream(
    ctx: RequestContext,
    source: AsyncIterator[bytes],
    provider: str,
    max_event_size: int = MAX_EVENT_SIZE,
) -> AsyncGenerator[bytes, None]:
    """Yield one SSE event at a time from ``source``; set ``ctx.usage``/``ctx.completion``.

    An event larger than ``max_event_size`` bytes ends the stream with an ``UpstreamError``.
    """
    parser = SSEParser(max_event_size=max_event_size)
    assembler = StreamAssembler() if ctx.api == "chat.completions" else None
    try:
        async for raw in source:
            for event in parser.feed(raw):
                data = event.data
                if event.event == COMMENT:
                    # A keep-alive: passed on, so that idle timeouts between the client and
                    # the gateway see the same activity as a direct connection would.
                    yield data + b"\n\n"
                    continue
                if data == b"[DONE]":
                    if assembler is not None and assembler.finished:
                        ctx.completion = assembler.result()
                    yield DONE
                    return
                chunk = _parse(data)
                if event.event == "error":  # some servers name the event instead
                    raise UpstreamError(f"upstream {provider} failed mid-stream: {data[:200]!r}")
                if chunk is None:
                    yield _event(data)
                    continue
                if "error" in chunk:
                    raise UpstreamError(f"upstream {provider} failed mid-stream: {chunk['error']}")
                usage = chunk.get("usage")
                if usage:
                    ctx.usage = usage
                if assembler is not None:
                    assembler.feed(chunk)
                if usage and not chunk.get("choices") and not ctx.include_usage:
                    continue
                yield _event(data)
    except TimeoutError as err:
        raise UpstreamTimeout(f"upstream {provider} stalled mid-stream") from err
    except SSEEventTooLarge as err:
        raise UpstreamError(
            f"upstream {provider} sent an SSE event larger than {err.limit} bytes"
        ) from err
    except HTTPClientError as err:
        raise failure(provider, "broke the stream", err, request_id=ctx.request_id) from err
    raise UpstreamError(f"upstream {provider} ended the stream before [DONE]")


def _event(data: bytes) -> bytes:
    """``data`` as one SSE event again. The parser joined a multi-line event's ``data:`` lines
    with newlines; each line needs its own ``data:`` field, or clients see broken JSON."""
    if b"\n" not in data:
        return b"data: " + data + b"\n\n"
    return b"".join(b"data: " + line + b"\n" for line in data.split(b"\n")) + b"\n"


def _parse(data: bytes) -> dict[str, Any] | None:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


class Relay:
    """The client's stream: :func:`relay_stream` over an upstream response.

    Whatever ends it (the last event, an upstream error, the client going away, or being
    closed before it ever started) frees the upstream connection at once: back to the pool
    when it was read to the end, otherwise closed, which tells the upstream to stop generating
    (and billing). Relying on the generator's own cleanup would leave that to the garbage
    collector whenever an exception holds a reference to it.
    """

    def __init__(self, events: AsyncGenerator[bytes, None], resp: UpstreamResponse) -> None:
        self._events = events
        self._resp: UpstreamResponse | None = resp

    def __aiter__(self) -> Relay:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self._events.__anext__()
        except BaseException:
            self._free()
            raise

    async def aclose(self) -> None:
        """Stop relaying and free the upstream connection."""
        try:
            await self._events.aclose()
        finally:
            self._free()

    def _free(self) -> None:
        resp, self._resp = self._resp, None
        if resp is not None:
            if resp.content.at_eof():
                resp.release()
            else:
                resp.close()


def record_body(ctx: RequestContext, status: int, body: bytes) -> bytes:
    """Note usage and the completion of a whole body; make error bodies OpenAI-shaped."""
    obj = _parse(body)
    if status != 200:
        if obj is not None and isinstance(obj.get("error"), dict):
            return body
        text = body.decode("utf-8", "replace").strip()[:500] or f"upstream status {status}"
        return error_body(text, "upstream_error", f"upstream_{status}")
    if obj is not None:
        ctx.usage = obj.get("usage") or None
        if obj.get("object") == "chat.completion":
            ctx.completion = obj
    return body
