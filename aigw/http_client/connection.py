"""One keep-alive connection to an upstream: writes requests; llhttp (through ``httptools``, the
parser uvicorn uses) parses the answers; this module adds the framing rules llhttp leaves to
its user, the codings, the limits, timeouts and back-pressure."""

from __future__ import annotations

import asyncio
import zlib
from typing import TYPE_CHECKING, Final, cast

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from .errors import HTTPClientError, ReadTimeout, ResponseError, StaleConnection
from .response import Body, Response

if TYPE_CHECKING:
    from .pool import Origin

# Bytes that may arrive with no body byte and no answer's end among them: a head, trailers
# (llhttp keeps neither bounded: httptools gathers a header's value until its line ends).
_MAX_HEAD: Final = 64 * 1024
_PIECE: Final = 64 * 1024  # the most one call of a decompressor may produce
# The most decoded in one event-loop turn: the rest waits for the next turn, so a small body
# that decodes to megabytes does not hold every other request up.
_BURST: Final = 1024 * 1024
_GZIP: Final = 16 + zlib.MAX_WBITS
_NO_BODY: Final = frozenset({204, 304})


class Connection(asyncio.Protocol):
    """One keep-alive connection: writes requests, parses the answers.

    Strict (the rules are listed in :mod:`aigw.http_client`): an answer that breaks one fails
    with :class:`ResponseError` and the connection is closed, never reused.
    """

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpResponseParser(self)
        self._max_body = origin.max_body_bytes
        self._max_decoded = origin.max_decoded_bytes
        self._due = False  # from a request until its answer's end: bytes are expected
        self._answers = 0  # answers read whole: a reused connection has had one or more
        self._heard = False  # a byte came since the last request was sent
        self._head: asyncio.Future[Response] | None = None  # while the head is due
        self._body: Body | None = None  # while the body is due (or being decoded)
        self._headers: CIMultiDict[str] | None = None  # while a head is parsed
        self._reason = ""
        self._status = 0
        self._until_close = False  # the body ends with the connection
        self._reusable = True
        self._coding = ""  # "gzip", "deflate" or "" (identity)
        self._decoder: zlib._Decompress | None = None
        # Coded bytes not decoded yet (the reader has enough unread): a bytearray while reading
        # is paused, as the rest of the data being parsed is added to it piece by piece.
        self._tail: bytes | bytearray = b""
        self._decoded = 0
        self._ended = False  # the answer ended; its coded tail is decoded as it is read
        self._error: ResponseError | None = None  # raised in a parser callback
        self._progress = False  # a body byte or an answer's end came in this data
        self._stalled = 0  # bytes since the last that made progress
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
        self._heard = True
        self._progress = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as err:
            self._fail(self._error or ResponseError(f"malformed answer from the upstream: {err}"))
            return
        if self._progress:
            self._stalled = 0
            return
        self._stalled += len(data)
        if self._stalled > _MAX_HEAD:
            self._fail(ResponseError("the answer's head or trailers exceed 64 KiB"))

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost ends what was due

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.origin.forget(self)
        if self._ended:
            # The answer is whole; its coded tail is decoded as the reader reads. (Over TLS
            # the close can come while reading is paused: asyncio's TLS layer reads on.)
            return
        self._cancel_timer()
        # A reset is the end only of an error answer (the upstream answered early and reset the
        # request it did not read); otherwise it cut the answer short.
        if self._body is not None and self._until_close and (exc is None or self._status >= 400):
            try:
                self._complete()  # a body framed by the connection's end: whole
            except ResponseError as err:
                self._fail(err)
            return
        why = f"{exc!r}" if exc is not None else "closed by the upstream"
        if self._due and self._answers and not self._heard:
            self._fail(StaleConnection(f"a kept-alive connection was closed ({why})"))
            return
        self._fail(ResponseError(f"connection lost before the answer was whole ({why})"))

    # -- httptools' callbacks (a ResponseError raised in one goes through _abort)
    def on_message_begin(self) -> None:
        if not self._due:  # never handed on: the next request would read it as its answer
            raise self._abort("bytes from the upstream while no answer was due")
        self._headers, self._reason = CIMultiDict(), ""

    def on_status(self, status: bytes) -> None:
        self._reason = status.decode("utf-8", "surrogateescape")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._headers is not None:  # else a chunked body's trailers: not kept
            # llhttp checked the name's characters and dropped the value's leading blanks.
            value_text = value.decode("utf-8", "surrogateescape").rstrip(" \t")
            self._headers.add(name.decode("latin-1"), value_text)

    def on_headers_complete(self) -> None:
        headers, self._headers = self._headers, None
        assert headers is not None
        parser = self._parser
        status = parser.get_status_code()
        if status == 101:  # llhttp would stop at the other protocol's first byte
            raise self._abort("the upstream switched protocols (101)")
        if parser.get_http_version() not in ("1.1", "1.0"):
            raise self._abort(f"not an HTTP/1.x answer (HTTP/{parser.get_http_version()})")
        encoding = headers.getall("Transfer-Encoding", None)
        has_length = "Content-Length" in headers
        if status < 200:
            if encoding or has_length:
                raise self._abort(f"an informational answer ({status}) with a body")
            return  # the real answer follows
        # llhttp reads a body after a Transfer-Encoding other than a last "chunked" until the
        # connection closes, and lets a second line say "chunked" again: neither is sent by
        # the upstreams this serves, and both let a proxy on the way frame the answer otherwise.
        if encoding is not None and (
            len(encoding) > 1 or encoding[0].lower() != "chunked" or has_length
        ):
            raise self._abort(f"unsupported Transfer-Encoding {', '.join(encoding)!r}")
        self._status, self._decoded = status, 0
        self._until_close = encoding is None and not has_length and status not in _NO_BODY
        self._reusable = parser.should_keep_alive()
        coding = headers.get("Content-Encoding", "").strip().lower()
        if coding not in ("", "identity", "gzip", "deflate"):
            raise self._abort(f"unsupported Content-Encoding {coding!r}")
        self._coding = "" if coding == "identity" else coding
        response = Response(self, status, self._reason, CIMultiDictProxy(headers))
        self._body = response.content
        head, self._head = self._head, None
        if head is not None and not head.done():
            head.set_result(response)

    def on_body(self, data: bytes) -> None:
        self._progress = True
        if not self._coding:
            self._deliver(data)
            return
        self._tail += data
        if not self._paused:
            self._decode()

    def on_message_complete(self) -> None:
        if self._body is not None:  # else an informational answer ended
            self._progress = True
            self._complete()

    # -- used by Origin, Response and Body
    def send(self, data: bytes, read_timeout: float) -> asyncio.Future[Response]:
        """Write a request; the future gets its answer's head."""
        assert self.transport is not None
        self._due, self._heard = True, False
        self._head = self._loop.create_future()
        self._read_timeout = read_timeout
        self._last_read = self._loop.time()
        self._timer = self._loop.call_later(read_timeout, self._check_timeout)
        self.transport.write(data)
        return self._head

    def pause(self) -> None:
        """The reader has enough unread: stop reading from the socket and decoding."""
        if not self._paused:
            self._paused = True
            if not self.closed and self.transport is not None:
                self.transport.pause_reading()

    def resume(self) -> None:
        """The reader wants more: decode what is held, then read from the socket again."""
        if not self._paused:
            return
        self._paused = False
        self._last_read = self._loop.time()  # the wait was the reader's, not the upstream's
        if self._coding and self._body is not None:
            try:
                self._decode()
            except ResponseError as err:
                self._fail(err)
                return
        if not self._paused and not self.closed and self.transport is not None:
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
        """Close the connection; an answer not read to its end fails."""
        self._cancel_timer()
        self._reusable = self._ended = False
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

    # -- the body
    def _deliver(self, data: bytes) -> None:
        body = self._body
        assert body is not None
        # Unread bytes: a streaming reader keeps them near 64 KiB (reading pauses above);
        # a whole read holds the body so far.
        if body._size + len(data) > self._max_body:
            raise self._abort(f"the answer's body exceeds {self._max_body} bytes")
        body._feed(data)

    def _decode(self) -> None:
        """Decode the coded bytes held, at most ``_PIECE`` bytes out of each call, until they
        are all decoded or the reader has enough unread (they are kept for :meth:`resume`)."""
        data: bytes | bytearray = self._tail
        decoder = self._decoder
        burst = 0
        while not self._paused:
            if decoder is None or decoder.eof:
                if not data:
                    break
                decoder = self._decoder = self._new_decoder(data)
            try:
                out = decoder.decompress(data, _PIECE)
            except zlib.error as err:
                raise self._abort(f"cannot decode the body: {err}") from None
            # A gzip member ended: what follows is the next member (as aiohttp and urllib3).
            data = decoder.unused_data if decoder.eof else decoder.unconsumed_tail
            if out:
                self._decoded += len(out)
                if self._decoded > self._max_decoded:
                    raise self._abort(f"the decoded body exceeds {self._max_decoded} bytes")
                self._deliver(out)
                burst += len(out)
            if not data and len(out) < _PIECE:
                break  # all taken in, nothing held back: a full piece may have more behind it
            if burst >= _BURST:  # the loop's turn is up: go on in the next one
                self.pause()
                self._loop.call_soon(self.resume)
        self._tail = bytearray(data) if self._paused else data
        if self._ended and not self._paused:
            self._finish()

    def _new_decoder(self, data: bytes | bytearray) -> zlib._Decompress:
        if self._decoder is not None and self._coding == "deflate":
            raise self._abort("bytes after the end of the deflate stream")
        if self._coding == "gzip":
            return zlib.decompressobj(_GZIP)
        # "deflate" is meant as zlib's format, but some servers send raw deflate: a zlib
        # stream's first byte names the method (8) in its low bits.
        raw = data[0] & 0x0F != 8
        return zlib.decompressobj(-zlib.MAX_WBITS if raw else zlib.MAX_WBITS)

    def _complete(self) -> None:
        """The answer's last byte arrived: end its body, or once its coded tail is decoded."""
        self._due = False
        self._answers += 1
        if self._paused:
            # Reading is paused: bytes the upstream sent past this answer may wait unread in
            # the socket, where no check sees them, and would be read as the next request's
            # answer. Such a connection is not reused.
            self._reusable = False
        if self._paused and self._coding:
            self._ended = True
        else:
            self._finish()

    def _finish(self) -> None:
        if self._decoder is not None and not self._decoder.eof:
            raise self._abort("the compressed body was cut short")
        self._cancel_timer()
        self._ended, self._decoder = False, None
        body, self._body = self._body, None
        assert body is not None
        body._end()

    # -- failure
    def _abort(self, why: str) -> ResponseError:
        """The error to raise in a parser callback: httptools raises its own in its place."""
        self._error = ResponseError(why)
        return self._error

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
