"""Client connections: how long a client may take, how many may be open at once, and what
becomes of a request body the gateway answered without reading.

Without these, a client held a connection (and a file descriptor) for as long as it liked: a
request head sent a byte at a time, or nothing at all, was never timed out, and once the
process ran out of file descriptors new clients got a reset, with nothing logged. Each
:class:`Connection` (aiohttp's connection handler with the gateway's error replies, see
:mod:`aigw.http_errors`) keeps to a :class:`ConnectionPolicy` made from the ``gateway:``
settings:

- ``header_timeout_s``: a request head must be complete within this of the connection
  opening, or of the head's first byte on a kept-alive connection (one pipelined behind
  another request: of its first bytes after that request's body; bytes that came in the same
  read as that body's end are bounded by ``idle_timeout_s`` instead). A client that sent part
  of one gets an OpenAI-style 408; one that sent nothing is closed without a reply (it may be
  a client's spare connection, which a reply would confuse).
- ``idle_timeout_s``: a kept-alive connection whose next request head is not complete this
  long after the last response is closed (aiohttp's ``keepalive_timeout``), and so is one
  whose client reads nothing more of its response for this long (writes held back). It
  should outlast the idle timeout of a load balancer in front (60 s for AWS's), so that the
  balancer, not the gateway, closes idle connections: otherwise it may send a request on a
  connection the gateway is closing.
- ``body_timeout_s`` is the core's (:mod:`aigw.intake`): the body is read there.
- ``max_connections``: beyond this many open client connections in the process, a new one is
  answered 503 (with ``Retry-After``) and closed; a warning says when the limit is reached and
  a line when the gateway is below it again. Unset, it is derived from the file-descriptor
  limit (which :func:`raise_fd_limit` raises to its hard maximum at start-up): each client
  connection may need an upstream one, and the process needs a few of its own.

A reply sent before the request body was read whole (a 413 for a body over the limit, a
plugin's refusal before the body is read) leaves the client still sending. aiohttp would read
the rest through its parser (inflating a compressed body: a 1 MB gzip bomb made it inflate a
gigabyte after its 413) for up to ten seconds. Here the connection stops parsing instead: what
still arrives is dropped unread, the reply is followed by a FIN so that the client stops
sending and closes, and the connection is closed when it does, or after :data:`LINGER_S`.
Closing at once would make the kernel reset the connection over the unread bytes, and a client
that had not read the reply yet (one still sending its body) would lose it. A refused
connection (over the limit) lingers the same way, unless too many already do: a flood of them
is closed at once.

A connection refused or timed out is counted (``gateway.counters``, source ``connections``)
and logged on ``aigw.connections``, rate-limited.

When the process runs out of file descriptors anyway (upstream connections, files), accepting
fails. asyncio's event loop reports it, and :func:`install_accept_error_logging` makes that a
rate-limited warning instead of a traceback per retry; uvloop (libuv) resets the connection
itself and reports nothing, so every new connection's descriptor number is checked instead: the
kernel hands out the lowest free one, and one within :data:`_FD_HEADROOM` of the limit means
accepting is about to fail, which is logged, rate-limited.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import resource
import sys
import termios
from collections.abc import Coroutine
from typing import Any, cast

from aiohttp import StreamReader, web
from aiohttp.http import RawRequestMessage

from aigw import aiohttp_private, http_errors
from aigw.config import GatewaySettings
from aigw.counters import Counters
from aigw.errors import GatewayError
from aigw.ids import new_id
from aigw.ratelimit_log import RateLimitFilter

log = logging.getLogger("aigw.connections")
log.addFilter(RateLimitFilter())
# Running out of descriptors is one condition however many connections meet it: one line per
# period (with a count of those suppressed) says it.
_fd_log = logging.getLogger("aigw.connections.fds")
_fd_log.addFilter(RateLimitFilter(burst=1))

# How long a connection that is being closed after a reply waits for the client to close it
# (nginx's lingering_timeout is 5 s).
LINGER_S = 5.0
# Descriptors a process needs beyond its client and upstream connections (the listening
# socket, logs, the Redis pool, a vector store's files).
_RESERVED_FDS = 64
# A new connection's descriptor this close to the limit: the process is about to run out.
_FD_HEADROOM = 16
# The connection limit's warning is not repeated until the count fell this far below it.
_HYSTERESIS = 0.9
# The ioctl that tells how much of a socket's output the peer has not acknowledged (Linux).
_OUTQ: int | None = getattr(termios, "TIOCOUTQ", None)
# Refused connections that may linger (reading their request, so that the client reads the
# 503) at once; beyond it they are closed at once: half the descriptors kept in reserve.
_MAX_LINGERING_REFUSALS = _RESERVED_FDS // 2


def raise_fd_limit() -> tuple[int, int]:
    """Raise this process's soft limit on open files to its hard limit (as Go's runtime does);
    returns the (soft, hard) limits in force afterwards. A failure leaves the limit as it was."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft, hard


def default_max_connections() -> int:
    """The client connections this process can hold: half the descriptors it may open, less
    a reserve (each client connection may need an upstream one)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(1, (soft - _RESERVED_FDS) // 2)


class ConnectionPolicy:
    """The limits of one server's client connections, and their count.

    Made from the ``gateway:`` settings (``header_timeout_s``, ``idle_timeout_s``,
    ``max_connections``); counts go to ``counters`` under ``connections``. Its :attr:`open`
    count is the connections of the servers it was installed on (:func:`install`), in this
    process; :attr:`lingering`, those closing after a reply without reading any more.
    """

    def __init__(self, settings: GatewaySettings, counters: Counters) -> None:
        self.header_timeout = settings.header_timeout_s
        self.idle_timeout = settings.idle_timeout_s
        self.max_connections = settings.max_connections or default_max_connections()
        self.fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.counters = counters
        self.open = 0
        self.lingering = 0  # connections waiting for their client to close after a reply
        self._full = False  # the limit's warning was logged and not yet followed by recovery

    def opened(self) -> bool:
        """Count a new connection; whether it may be served (``False``: over the limit)."""
        self.open += 1
        if self.open <= self.max_connections:
            return True
        self.counters.inc("connections", "refused")
        if not self._full:
            self._full = True
            log.warning(
                "connection limit reached (max_connections %d): new connections are answered "
                "503 until some close",
                self.max_connections,
            )
        return False

    def closed(self) -> None:
        """Count a connection gone; say so once the count is well below the limit again."""
        self.open -= 1
        if self._full and self.open <= self.max_connections * _HYSTERESIS:
            self._full = False
            log.info(
                "connections below the limit again: %d open (max_connections %d)",
                self.open,
                self.max_connections,
            )

    def handler_kwargs(self) -> dict[str, Any]:
        """What aiohttp's connection handlers are made with, :class:`Connection`'s own
        included."""
        return {"policy": self, "keepalive_timeout": self.idle_timeout, "lingering_time": LINGER_S}


def _raw_reply(err: GatewayError, extra: str = "") -> bytes:
    """``err`` as a whole HTTP/1.1 response that closes the connection, for the replies sent
    outside any request (no request was read, or none may be)."""
    body = err.body()
    head = (
        f"HTTP/1.1 {err.status} {http_errors.phrase(err.status)}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"Connection: close\r\nx-request-id: {new_id()}\r\n{extra}\r\n"
    )
    return head.encode("ascii") + body


_OVER_LIMIT = _raw_reply(
    GatewayError(
        "The gateway has too many open connections; retry shortly",
        status=503,
        type="server_error",
        code="too_many_connections",
    ),
    "Retry-After: 1\r\n",
)


class Connection(http_errors.ErrorReplies):
    """One client connection: aiohttp's handler with the gateway's error replies, kept to a
    :class:`ConnectionPolicy` (given as the ``policy`` keyword).

    Its state between requests: whether the next bytes are a request head
    (``_gw_awaiting_head``: from a response's end, unless the next request is queued already,
    until the parser queues a head), when that head must be complete (``_gw_head_deadline``,
    0 while none of it came), and whether what arrives is dropped unread (``_gw_discarded``,
    the bytes dropped so far; -1 while requests are parsed). A timer per connection checks the
    deadline: it is re-armed rather than made per request, so a request costs no timer.
    """

    def __init__(
        self,
        manager: web.Server,
        *,
        loop: asyncio.AbstractEventLoop,
        policy: ConnectionPolicy,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, loop=loop, **kwargs)
        self._gw_policy = policy
        self._gw_counted = False
        self._gw_awaiting_head = True
        self._gw_head_begun = False
        self._gw_head_deadline = 0.0
        self._gw_discarded = -1
        self._gw_body: StreamReader | None = None  # the last head's: the one being fed
        self._gw_timer: asyncio.TimerHandle | None = None
        self._gw_linger: asyncio.TimerHandle | None = None
        self._gw_stalled: asyncio.TimerHandle | None = None
        self._gw_unsent = 0  # bytes waiting to be sent when writing was last seen held back
        self._gw_loop = loop
        self._gw_messages = aiohttp_private.message_queue(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        policy = self._gw_policy
        self._gw_counted = True
        _check_fd(transport, policy.fd_limit)
        if not policy.opened():
            if policy.lingering < _MAX_LINGERING_REFUSALS:
                self._end_with(_OVER_LIMIT)
            else:
                # A flood of refused connections, held by their clients, must not take the
                # descriptors the limit keeps for upstream connections: closed at once. The
                # reply is sent before the close; a request arriving afterwards gets a reset,
                # but (on Linux) the reply waits in the client's receive queue, read first.
                self._gw_discarded = 0
                cast(asyncio.Transport, transport).write(_OVER_LIMIT)
                transport.close()
            return
        loop = self._gw_loop
        # The first head counts from the connection's opening (a client that opens and sends
        # nothing is a client that sends its head slowly).
        self._gw_head_deadline = loop.time() + policy.header_timeout
        self._gw_timer = loop.call_at(self._gw_head_deadline, self._check_head)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._gw_counted:
            self._gw_counted = False
            self._gw_policy.closed()
        if self._gw_linger is not None:
            self._gw_linger.cancel()
            self._gw_policy.lingering -= 1
        for timer in (self._gw_timer, self._gw_stalled):
            if timer is not None:
                timer.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._gw_discarded >= 0:
            # Dropped, however much: it holds no memory, and the linger bounds it in time.
            self._gw_discarded += len(data)
            return
        if not data:
            pass  # aiohttp re-parsing what it holds (after a pause): no bytes came
        elif not self._gw_awaiting_head:
            body = self._gw_body
            if body is not None and body.is_eof() and not self._gw_head_deadline:
                # Past the request's body: the next request's head, pipelined.
                self._gw_head_begun = True
                self._gw_head_deadline = self._gw_loop.time() + self._gw_policy.header_timeout
        elif not self._gw_head_begun:
            self._gw_head_begun = True
            if not self._gw_head_deadline:
                # aiohttp's idle timer still runs (a head must also be complete within
                # idle_timeout_s of the last response): cancelling it here would make aiohttp
                # arm a new one after every request, 5% of a cache hit's CPU.
                self._gw_head_deadline = self._gw_loop.time() + self._gw_policy.header_timeout
        messages = self._gw_messages
        before = len(messages)
        super().data_received(data)
        if len(messages) > before:  # a head parsed (or the parser failed)
            self._parsed(messages[-1])

    def pause_writing(self) -> None:
        super().pause_writing()
        # The client is not keeping up with what it asked for: it may read slowly, but it may
        # not stop reading and hold the connection (and the response's buffers) for ever.
        self._gw_unsent = self._unsent()
        self._gw_stalled = self._gw_loop.call_later(
            self._gw_policy.idle_timeout, self._write_stalled
        )

    def resume_writing(self) -> None:
        if self._gw_stalled is not None:
            self._gw_stalled.cancel()
            self._gw_stalled = None
        super().resume_writing()

    def _unsent(self) -> int:
        """The bytes of the response not yet taken by the client: in the transport's buffer,
        and in the kernel's send queue (sent but not acknowledged, or not sent: Linux's
        ``SIOCOUTQ``), which drains as the client reads while the transport's buffer may not
        move for a while (the kernel wakes writers only once a third of its buffer is free)."""
        transport = self.transport
        if transport is None:
            return 0
        unsent = transport.get_write_buffer_size()
        sock = transport.get_extra_info("socket")
        if sock is not None and _OUTQ is not None:
            with contextlib.suppress(OSError, ValueError):
                queued = fcntl.ioctl(sock.fileno(), _OUTQ, b"\0\0\0\0")
                unsent += int.from_bytes(queued, sys.byteorder)
        return unsent

    def _write_stalled(self) -> None:
        self._gw_stalled = None
        unsent = self._unsent()
        policy = self._gw_policy
        if unsent < self._gw_unsent:
            # The client read some (the kernel took more of what waits): it is slow, not gone.
            # (Writing resumes only once nearly all of it is sent, which a slow reader of a
            # large answer takes longer than this to reach.)
            self._gw_unsent = unsent
            self._gw_stalled = self._gw_loop.call_later(policy.idle_timeout, self._write_stalled)
            return
        policy.counters.inc("connections", "send_timeout")
        peer = self.transport.get_extra_info("peername") if self.transport else None
        log.info(
            "connection from %s closed: it read nothing more of its response for %gs",
            _host(peer),
            policy.idle_timeout,
        )
        if self.transport is not None:
            self.transport.abort()  # close() would wait for the client to read what is queued
        self.force_close()

    def _parsed(self, last: tuple[Any, StreamReader]) -> None:
        """The parser queued ``last`` (a message and its body's stream): a head is complete,
        and no other is due before this one's response is done. If the parser failed inside
        the body it was feeding (a malformed chunk size), fail that body, so that its handler
        answers 400 at once (aigw.aiohttp_private says why aiohttp does not)."""
        self._gw_awaiting_head = self._gw_head_begun = False
        self._gw_head_deadline = 0.0
        message, body = last
        if isinstance(message, RawRequestMessage):
            self._gw_body = body  # the parser feeds the last head's body
            return
        exc = aiohttp_private.parse_error(message)
        if exc is not None and self._gw_body is not None and not self._gw_body.is_eof():
            err = web.RequestPayloadError(str(exc))
            err.__cause__ = exc
            self._gw_body.set_exception(err)

    def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: Any
    ) -> Coroutine[Any, Any, tuple[web.StreamResponse, bool]]:
        # A head is due next unless the next request is queued already (pipelined).
        self._gw_awaiting_head = not self._gw_messages
        resp = http_errors.routed(request, resp)
        if request.content.is_eof():
            # ErrorReplies.finish_response (the routing above) skipped: a call less per request.
            return web.RequestHandler.finish_response(self, request, resp, start_time)
        return self._finish_early(request, resp, start_time)

    async def _finish_early(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: Any
    ) -> tuple[web.StreamResponse, bool]:
        """Send a reply to a request whose body was not read whole, then stop reading it."""
        if not resp.prepared:
            resp.force_close()
        result = await web.RequestHandler.finish_response(self, request, resp, start_time)
        self._discard_rest()
        return result

    def _discard_rest(self) -> None:
        """Drop whatever still arrives unread, and half-close: aiohttp's lingering wait for
        the body's end (which no longer comes) ends when the client closes, or after
        :data:`LINGER_S`."""
        self._gw_discarded = 0
        transport = self.transport
        if transport is None:
            return
        # aiohttp may have stopped reading to hold back a body nobody read: what arrives now
        # is dropped, so read on.
        with contextlib.suppress(NotImplementedError, RuntimeError):
            transport.resume_reading()
        if transport.can_write_eof():
            transport.write_eof()

    def _end_with(self, reply: bytes) -> None:
        """Send ``reply`` and close the connection without reading any more of it."""
        transport = self.transport
        if transport is None:
            return
        transport.write(reply)
        self._discard_rest()
        self._gw_policy.lingering += 1
        self._gw_linger = self._gw_loop.call_later(LINGER_S, self.force_close)

    def _check_head(self) -> None:
        self._gw_timer = None
        if self.transport is None:
            return
        loop = self._gw_loop
        now = loop.time()
        deadline = self._gw_head_deadline
        if not (self._gw_awaiting_head and deadline) or self._gw_stalled is not None:
            # In a request, idle between two (aiohttp's idle timer's part), or a response still
            # being written (a 408 now would land inside it): look again later.
            self._gw_timer = loop.call_at(now + self._gw_policy.header_timeout, self._check_head)
        elif now < deadline:
            self._gw_timer = loop.call_at(deadline, self._check_head)
        else:
            self._head_timed_out()

    def _head_timed_out(self) -> None:
        policy = self._gw_policy
        policy.counters.inc("connections", "header_timeout")
        peer = self.transport.get_extra_info("peername") if self.transport else None
        if not self._gw_head_begun:
            log.info(
                "connection from %s closed: no request within %gs",
                _host(peer),
                policy.header_timeout,
            )
            self.force_close()
            return
        log.info(
            "connection from %s closed: request head not complete within %gs: answered 408",
            _host(peer),
            policy.header_timeout,
        )
        self._end_with(_header_timeout_reply(policy.header_timeout))


def _header_timeout_reply(seconds: float) -> bytes:
    return _raw_reply(
        GatewayError(
            f"The request head did not arrive within {seconds:g}s",
            status=408,
            type="invalid_request_error",
            code="request_timeout",
        )
    )


def _host(peer: Any) -> str:
    return str(peer[0]) if isinstance(peer, tuple) and peer else "an unknown address"


def _check_fd(transport: asyncio.BaseTransport, soft: int) -> None:
    """Warn when a new connection's descriptor shows the process about to run out of the
    ``soft`` limit."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    fd = sock.fileno()
    if fd >= soft - _FD_HEADROOM:
        _fd_log.warning(
            "file descriptors nearly exhausted: a new connection got descriptor %d of a limit "
            "of %d; new connections will be reset (raise `ulimit -n`, or lower "
            "max_connections)",
            fd,
            soft,
        )


def install_accept_error_logging(loop: asyncio.AbstractEventLoop) -> None:
    """Have ``loop`` log a failed accept (out of file descriptors) as one rate-limited
    warning rather than an error with a traceback per retry; everything else the loop
    reports goes to its handler as before."""
    previous = loop.get_exception_handler()

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if str(context.get("message", "")).startswith("socket.accept() out of system resource"):
            _fd_log.warning(
                "accepting a connection failed: %s; new connections wait or are refused "
                "(raise `ulimit -n`, or lower max_connections)",
                context.get("exception"),
            )
        elif previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handle)


def install(app: web.Application, policy: ConnectionPolicy) -> None:
    """Have the servers aiohttp makes for ``app`` keep their connections to ``policy`` (and
    answer their own errors in OpenAI's shape: :func:`aigw.http_errors.install`)."""
    http_errors.install(app, Connection, policy.handler_kwargs())
