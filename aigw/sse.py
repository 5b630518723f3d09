"""Server-sent events: an incremental parser and OpenAI's framing.

The parser follows the HTML SSE rules that trip up simpler gateways: LF, CR and CRLF line ends;
comment lines (``: keep-alive``); ``event:``/``id:``/``retry:`` fields; multi-line ``data``;
and UTF-8 characters or lines split across network reads (it works on bytes and only decodes
whole lines). A comment between events comes out as an event of its own (:data:`COMMENT`), so
a proxy can pass on the keep-alives a server sends while a request waits in its queue.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import orjson

DONE: Final = b"data: [DONE]\n\n"
#: The ``event`` of a comment line (``: keep-alive``) seen between events; its ``data`` is the
#: whole line. A field name cannot start with a colon, so no server's event is named so.
COMMENT: Final = ":"


@dataclass(slots=True)
class Event:
    """One dispatched event: its ``data`` (lines joined by ``\\n``) and ``event`` name."""

    data: bytes
    event: str = "message"


class SSEParser:
    """Feed raw bytes, get complete events; partial lines are kept for the next feed."""

    __slots__ = ("_buf", "_data", "_event", "_pending_cr")

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[bytes] = []
        self._event = "message"
        self._pending_cr = False

    def feed(self, chunk: bytes) -> list[Event]:
        """Parse ``chunk`` and return the events it completes."""
        if not chunk:
            return []
        if self._pending_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]  # the LF of a CRLF split across reads
        self._pending_cr = chunk.endswith(b"\r")
        buf = self._buf + chunk
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *lines, self._buf = buf.split(b"\n")
        events: list[Event] = []
        for line in lines:
            if not line:
                if self._data:
                    events.append(Event(b"\n".join(self._data), self._event))
                self._data, self._event = [], "message"
            elif line[0] != 0x3A:  # ':' starts a comment
                self._field(line)
            elif not self._data:  # inside an event, a comment stays part of it (dropped)
                events.append(Event(line, COMMENT))
        return events

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
