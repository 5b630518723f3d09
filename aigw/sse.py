"""Server-sent events: an incremental parser and OpenAI's framing.

The parser follows the HTML SSE rules that trip up simpler gateways: LF, CR and CRLF line ends (a
CRLF may be split across two reads); comment lines (``: keep-alive``); ``event:``/``id:``/``retry:``
fields; multi-line ``data``; and UTF-8 characters or lines split across network reads (it works on
bytes and only decodes whole lines); a byte order mark opening the stream (ignored, as the rules
say). A comment between events comes out as an event of its own (:data:`COMMENT`), so a proxy can
pass on the keep-alives a server sends while a request waits in its queue.

Its work is linear in the bytes received: each read is scanned once, and only the unfinished
last line is kept (in a ``bytearray``) until a later read ends it. Its memory is bounded: an event
larger than ``max_event_size`` raises :class:`SSEEventTooLarge` as soon as the read that makes it
too large arrives.

Why not a library: ``httpx-sse`` (the maintained client-side parser) exposes its decoder only
through ``httpx.Response`` (the line and event decoders are private), works on decoded text
rather than bytes, drops comments (the keep-alives a proxy must pass on), buffers a line of any
length, and its decoders took twice this parser's CPU time on a chat completion stream in 1-4 KiB
reads. ``sse-starlette`` and ``aiohttp-sse`` only send events.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import orjson

DONE: Final = b"data: [DONE]\n\n"
#: The ``event`` of a comment line (``: keep-alive``) seen between events; its ``data`` is the
#: whole line. A field name cannot start with a colon, so no server's event is named so.
COMMENT: Final = ":"
#: The default bound on one event: far above any chat completion chunk (a few hundred bytes) or
#: a whole non-streamed answer, far below what would hurt a gateway relaying many streams.
MAX_EVENT_SIZE: Final = 8 * 1024 * 1024
_BOM: Final = b"\xef\xbb\xbf"


class SSEEventTooLarge(ValueError):
    """An event (or a line still being received) is larger than the parser's bound.

    ``limit`` is that bound in bytes. The stream cannot be resynchronised after it: the parser
    that raised it must not be fed again.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(f"SSE event larger than {limit} bytes")
        self.limit = limit


@dataclass(slots=True)
class Event:
    """One dispatched event: its ``data`` (lines joined by ``\\n``) and ``event`` name."""

    data: bytes
    event: str = "message"


class SSEParser:
    """Feed raw bytes, get complete events; an unfinished line is kept for the next feed.

    ``max_event_size`` bounds an event: the bytes of its lines since the previous blank line,
    counting each line end as one byte, including a line still being received; a comment
    line between events is an event of its own, bounded alone. Going over it
    raises :class:`SSEEventTooLarge` (the events completed earlier in the same read are lost
    with it: the stream is broken anyway). A value below 1 is a :class:`ValueError`.
    """

    __slots__ = ("_data", "_event", "_fresh", "_held", "_limit", "_pending_cr", "_size", "_tail")

    def __init__(self, *, max_event_size: int = MAX_EVENT_SIZE) -> None:
        if max_event_size < 1:
            raise ValueError(f"max_event_size must be at least 1, not {max_event_size}")
        self._limit = max_event_size
        self._tail = bytearray()  # the unfinished last line: never holds a line end
        self._data: list[bytes] = []
        self._event = "message"
        self._size = 0  # bytes of the finished lines of the event being received
        self._pending_cr = False
        self._fresh = True  # the stream's first bytes may be a byte order mark
        self._held = b""  # a first read shorter than one: maybe its start

    def feed(self, chunk: bytes) -> list[Event]:
        """Parse ``chunk`` and return the events it completes.

        Raises :class:`SSEEventTooLarge` when the event being received grows past the bound.
        """
        if self._fresh:
            chunk = self._held + chunk
            if len(chunk) < len(_BOM) and _BOM.startswith(chunk):
                self._held = chunk
                return []
            self._fresh, self._held = False, b""
            if chunk.startswith(_BOM):
                chunk = chunk[len(_BOM) :]
        if not chunk:
            return []
        if self._pending_cr and chunk[0] == 0x0A:
            chunk = chunk[1:]  # the LF of a CRLF split across reads
        self._pending_cr = chunk.endswith(b"\r")
        if b"\r" in chunk:
            # Only this read is rewritten: the tail holds no line end, so none can span it.
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = chunk.split(b"\n")
        tail = self._tail
        if len(lines) == 1:  # no line end: the last line goes on
            tail += chunk
            self._check(tail, self._size, self._data)
            return []
        if tail:
            tail += lines[0]
            lines[0] = bytes(tail)
            tail.clear()
        last = lines.pop()
        events: list[Event] = []
        data, size, limit = self._data, self._size, self._limit
        for line in lines:
            if not line:
                if data:
                    events.append(Event(b"\n".join(data), self._event))
                    data.clear()
                self._event = "message"
                size = 0
                continue
            if line[0] == 0x3A and not data:  # ':' starts a comment; between events, its own
                if len(line) >= limit:
                    raise SSEEventTooLarge(limit)
                events.append(Event(line, COMMENT))
                continue
            size += len(line) + 1
            if size > limit:
                raise SSEEventTooLarge(limit)
            if line.startswith(b"data: "):  # nearly every line: spared the general path
                data.append(line[6:])
            elif line[0] != 0x3A:
                self._field(line)
            # else a comment inside an event: it stays part of it (dropped)
        self._size = size
        if last:
            tail += last
            self._check(tail, size, data)
        return events

    def _check(self, tail: bytearray, size: int, data: list[bytes]) -> None:
        """Raise if the unfinished line makes its event too large (a comment between events
        counts alone: it is passed on as one)."""
        if not tail:
            return  # nothing new (a read that was the LF of a split CRLF)
        pending = len(tail) if tail[0] == 0x3A and not data else size + len(tail)
        if pending > self._limit:
            raise SSEEventTooLarge(self._limit)

    def _field(self, line: bytes) -> None:
        name, sep, value = line.partition(b":")
        if sep and value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace") or "message"


def encode(obj: Any) -> bytes:
    """One SSE event carrying ``obj`` as JSON, in OpenAI's framing."""
    return b"data: " + orjson.dumps(obj) + b"\n\n"
