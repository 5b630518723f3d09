"""One keep-alive connection to an upstream: writes requests, parses the answers (framing,
codings, timeouts, back-pressure)."""

from __future__ import annotations

import asyncio
import zlib
from typing import TYPE_CHECKING, Final, cast

from multidict import CIMultiDict, CIMultiDictProxy

from .errors import HTTPClientError, ReadTimeout, ResponseError
from .response import Body, Response

if TYPE_CHECKING:
    from .pool import Origin

_MAX_HEAD: Final = 64 * 1024  # bytes of status line and headers
_NO_BODY: Final = frozenset({204, 304})


class Connection(asyncio.Protocol):
    """One keep-alive connection: writes requests, parses the answers."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buf = bytearray()
        self._loop = asyncio.get_running_loop()
        self._head: asyncio.Future[Response] | None = None  # while the head is due
        self._body: Body | None = None  # while the body is due
        # The body's framing: bytes left of a Content-Length body or chunk; -1: read until
        # the connection closes; for chunked bodies, _chunked and the state below.
        self._left = 0
        self._chunked = False
        self._trailers = False  # a chunked body's last chunk was read: trailers follow
        self._decoder: zlib._Decompress | None = None
        self._deflate = False  # a deflate body whose first bytes say which deflate it is
        self._reusable = True
        self._status = 0
        self._paused = False
        self._read_timeout = 0.0
        self._last_read = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self.idle_since = 0.0

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._last_read = self._loop.time()
        self._buf += data
        try:
            self._parse()
        except ResponseError as err:
            self._fail(err)

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost ends what was due

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.origin.forget(self)
        self._cancel_timer()
        # A reset is the end only of an error answer (the upstream answered early and reset the
        # request it did not read); otherwise it cut the answer short.
        ended = exc is None or self._status >= 400
        if ended and self._body is not None and self._left == -1 and not self._chunked:
            body, self._body = self._body, None
            self._flush_decoder(body)
            body._end()  # a body framed by the connection's end: complete
            return
        why = f"{exc!r}" if exc is not None else "closed by the upstream"
        self._fail(ResponseError(f"connection lost before the answer was whole ({why})"))

    # -- used by Origin, Response and Body
    def send(self, data: bytes, read_timeout: float) -> asyncio.Future[Response]:
        """Write a request; the future gets its answer's head."""
        assert self.transport is not None
        self._head = self._loop.create_future()
        self._read_timeout = read_timeout
        self._last_read = self._loop.time()
        self._timer = self._loop.call_later(read_timeout, self._check_timeout)
        self.transport.write(data)
        return self._head

    def pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None:
            self._paused = False
            self._last_read = self._loop.time()  # the wait was the reader's, not the upstream's
            self.transport.resume_reading()

    def done(self, reuse: bool) -> None:
        """The caller is finished with the answer: pool the connection or close it."""
        if reuse and self._reusable and not self.closed and self._body is None:
            self._cancel_timer()
            self.idle_since = self._loop.time()
            self.origin.park(self)
        else:
            self.close()

    def close(self) -> None:
        self._cancel_timer()
        self._reusable = False
        if not self.closed:
            self.closed = True
            self.origin.forget(self)
            if self.transport is not None:
                self.transport.close()
        err = ResponseError("the answer was closed before its end")
        head, self._head = self._head, None
        if head is not None and not head.done():
            head.set_exception(err)
        body, self._body = self._body, None
        if body is not None:
            body._end(err)

    # -- parsing
    def _parse(self) -> None:
        while True:
            if self._head is not None:
                if not self._parse_head():
                    return
            elif self._body is not None:
                if not self._parse_body():
                    return
            else:
                if self._buf:  # bytes nobody asked for: the connection is out of step
                    raise ResponseError("unexpected bytes from the upstream")
                return

    def _parse_head(self) -> bool:
        buf = self._buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > _MAX_HEAD:
                raise ResponseError("response head too large")
            return False
        lines = bytes(buf[:end]).decode("utf-8", "surrogateescape").split("\r\n")
        del buf[: end + 4]
        version, _, rest = lines[0].partition(" ")
        code, _, reason = rest.partition(" ")
        if version not in ("HTTP/1.1", "HTTP/1.0") or not (code.isdigit() and len(code) == 3):
            raise ResponseError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
        status = int(code)
        headers: CIMultiDict[str] = CIMultiDict()
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon or not name or name != name.strip():
                raise ResponseError(f"malformed header line: {line[:80]!r}")
            headers.add(name, value.strip(" \t"))
        if 100 <= status < 200:
            return True  # an informational answer: the real one follows
        self._frame(version, status, headers)
        response = Response(self, status, reason, CIMultiDictProxy(headers))
        head, self._head = self._head, None
        assert head is not None
        if self._left == 0 and not self._chunked:
            self._finish_body(response.content)
        else:
            self._body = response.content
        if not head.done():
            head.set_result(response)
        return True

    def _frame(self, version: str, status: int, headers: CIMultiDict[str]) -> None:
        """How the body is delimited, whether the connection can be reused, how it is coded."""
        connection = headers.get("Connection", "").lower()
        self._reusable = "close" not in connection and (
            version == "HTTP/1.1" or "keep-alive" in connection
        )
        self._chunked, self._status = False, status
        if status in _NO_BODY:
            self._left = 0
            return
        encoding = headers.get("Transfer-Encoding", "").lower()
        length = headers.get("Content-Length")
        if encoding:
            if encoding.rsplit(",", 1)[-1].strip() != "chunked":
                raise ResponseError(f"unsupported Transfer-Encoding {encoding!r}")
            self._chunked, self._trailers, self._left = True, False, 0
        elif length is not None:
            if not (length.isascii() and length.isdigit()):
                raise ResponseError(f"malformed Content-Length {length!r}")
            self._left = int(length)
        else:
            self._left, self._reusable = -1, False
        coding = headers.get("Content-Encoding", "identity").lower().strip()
        self._decoder, self._deflate = None, False
        if coding == "gzip":
            self._decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif coding == "deflate":
            self._deflate = True
        elif coding not in ("identity", ""):
            raise ResponseError(f"unsupported Content-Encoding {coding!r}")

    def _parse_body(self) -> bool:
        body, buf = self._body, self._buf
        assert body is not None
        if not buf:
            return False
        if not self._chunked:
            if self._left == -1:
                self._deliver(body, bytes(buf))
                buf.clear()
                return False
            take = min(self._left, len(buf))
            self._deliver(body, bytes(buf[:take]))
            del buf[:take]
            self._left -= take
            if self._left == 0:
                self._finish_body(body)
                return True
            return False
        return self._parse_chunk(body)

    def _parse_chunk(self, body: Body) -> bool:
        buf = self._buf
        if self._left > 0:  # inside a chunk's data
            take = min(self._left, len(buf))
            self._deliver(body, bytes(buf[:take]))
            del buf[:take]
            self._left -= take
            if self._left == 0:
                self._left = -2  # its closing CRLF is due
            return bool(buf)
        if self._left == -2:
            if len(buf) < 2:
                return False
            if buf[:2] != b"\r\n":
                raise ResponseError("malformed chunked body")
            del buf[:2]
            self._left = 0
            return True
        end = buf.find(b"\r\n")
        if end < 0:
            if len(buf) > _MAX_HEAD:
                raise ResponseError("malformed chunked body")
            return False
        line = bytes(buf[:end])
        del buf[: end + 2]
        if self._trailers:
            if not line:  # the blank line after the trailers: the body is whole
                self._finish_body(body)
            return True
        size = line.split(b";", 1)[0].strip()
        try:
            self._left = int(size, 16)
        except ValueError:
            raise ResponseError(f"malformed chunk size {size[:20]!r}") from None
        if self._left < 0:
            raise ResponseError("malformed chunk size")
        if self._left == 0:
            self._trailers = True
        return True

    def _deliver(self, body: Body, data: bytes) -> None:
        if self._deflate:
            # "deflate" is meant as zlib's format, but some servers send raw deflate: a zlib
            # stream's first byte names the method (8) in its low bits.
            self._deflate = False
            raw = data[0] & 0x0F != 8
            self._decoder = zlib.decompressobj(-zlib.MAX_WBITS if raw else zlib.MAX_WBITS)
        if self._decoder is not None:
            try:
                data = self._decoder.decompress(data)
            except zlib.error as err:
                raise ResponseError(f"cannot decode the body: {err}") from None
            if not data:
                return
        body._feed(data)

    def _flush_decoder(self, body: Body) -> None:
        if self._decoder is not None:
            rest = self._decoder.flush()
            self._decoder = None
            if rest:
                body._feed(rest)

    def _finish_body(self, body: Body) -> None:
        self._cancel_timer()
        self._flush_decoder(body)
        self._body = None
        body._end()

    # -- failure
    def _check_timeout(self) -> None:
        self._timer = None
        if self._head is None and self._body is None:
            return
        idle = self._loop.time() - self._last_read
        if self._paused or idle < self._read_timeout:
            wait = self._read_timeout - idle if not self._paused else self._read_timeout
            self._timer = self._loop.call_later(wait, self._check_timeout)
            return
        self._fail(ReadTimeout(f"no data from the upstream for {self._read_timeout:g} s"))

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fail(self, err: HTTPClientError) -> None:
        head, self._head = self._head, None
        body, self._body = self._body, None
        if head is not None and not head.done():
            head.set_exception(err)
        if body is not None:
            body._end(err)
        self.close()
