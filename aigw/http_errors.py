"""OpenAI-style answers for the errors aiohttp's server answers on its own.

aiohttp replies by itself, in ``text/plain`` (or HTML), when a request cannot be parsed (a
malformed request line or header, a header too long, a ``Content-Encoding`` it cannot decode:
400) and when a handler raises (500; 504 on a timeout). Those replies passed no gateway code,
so they broke two promises every other response keeps: errors in OpenAI's shape, and an
``x-request-id``. :func:`install` makes aiohttp build them here instead, by overriding
``RequestHandler.handle_error``; having aiohttp's server use that handler takes private names,
guarded in :mod:`aigw.aiohttp_private`. aiohttp still closes the connection after them.

They are logged here, on the ``aigw.http_errors`` logger, rate-limited per kind
(:class:`aigw.ratelimit_log.RateLimitFilter`): a request the client got wrong is one INFO line
(the gateway did nothing wrong and there is nothing for an operator to fix; aiohttp logged an
ERROR with a traceback for each, and a scanner's burst filled the logs), a handler that raised
is an ERROR with its traceback. aiohttp's own ``aiohttp.server`` logger is rate-limited too.
"""

from __future__ import annotations

import logging
from collections.abc import Coroutine, Mapping
from http import HTTPStatus
from typing import Any

from aiohttp import web

from aigw import aiohttp_private
from aigw.errors import BadRequest, GatewayError, NotFound
from aigw.ids import request_id
from aigw.ratelimit_log import RateLimitFilter

log = logging.getLogger("aigw.http_errors")
log.addFilter(RateLimitFilter())
# For aiohttp's own logger: what reaches handle_error is logged here instead; what it still
# logs (an exception in its own code) is rare, but bounded all the same.
_AIOHTTP_LIMIT = RateLimitFilter()
_MAX_DETAIL = 300

# Where the core leaves a request's id when its handler raises, so that aiohttp's 500 carries
# the id the gateway logged. aiohttp 3.14 wants a RequestKey there (it warns about a string);
# earlier versions have none.
_ID_KEY: Any = (
    web.RequestKey("aigw.request_id", str) if hasattr(web, "RequestKey") else "aigw.request_id"
)


def error_response(err: GatewayError) -> web.Response:
    """``err`` as an OpenAI-style JSON response, with its status and headers."""
    return web.Response(
        status=err.status, body=err.body(), content_type="application/json", headers=err.headers
    )


def keep_id(request: web.Request, rid: str) -> None:
    """Have the error reply aiohttp builds for ``request`` (its handler raised) carry ``rid``."""
    request[_ID_KEY] = rid


def kept_id(request: web.BaseRequest) -> str | None:
    """The id :func:`keep_id` left on ``request``, if any."""
    rid: str | None = request.get(_ID_KEY)
    return rid


def status_for(err: Exception) -> int:
    """The status aiohttp answers an exception escaping a handler with: an HTTPException's
    own, 504 for a timeout, else 500."""
    if isinstance(err, web.HTTPException):
        return err.status
    return 504 if isinstance(err, TimeoutError) else 500


class ErrorReplies(web.RequestHandler):
    """aiohttp's connection handler, with OpenAI-style error replies."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # The parser's message quotes the client's bytes: a few hundred characters of them
        # are enough, and undecodable ones (which aiohttp's pure-Python parser keeps as
        # surrogates) must not make building the reply fail.
        if message is not None:
            message = message[:_MAX_DETAIL].encode("utf-8", "backslashreplace").decode()
        # What aiohttp's own does first (and then it logs the error with a traceback, which
        # is left out: logged below).
        if request.writer.output_size > 0:
            raise ConnectionError(
                "Response is sent already, cannot send another response with the error message"
            )
        err: GatewayError
        if status >= 500:
            # Never the exception's text: it may hold anything (a traceback in debug mode).
            text = "internal error in the gateway" if status == 500 else phrase(status)
            err = GatewayError(text, status=status, type="server_error")
        else:
            err = BadRequest(
                f"The HTTP request could not be read: {message or phrase(status)}",
                status=status,
                code="invalid_http_request",
            )
        # The id the gateway gave the request (kept by a handler that raised); else the
        # client's if it sent one; else a new one (for a request that could not be parsed, its
        # headers were never read), logged so that the reply can be matched with the log.
        rid = kept_id(request) or request_id(request.headers)
        # A bug is an error, with its traceback (aiohttp passes the exception); a request the
        # client got wrong is not: INFO, one line. One kind per status and exception type.
        log.log(
            logging.ERROR if status >= 500 else logging.INFO,
            "request %s: answered %d to %s: %s",
            rid,
            status,
            request.remote,
            " ".join(err.message.split()),  # one line: the parser's message spans several
            exc_info=exc if status >= 500 else None,
            extra={"ratelimit_key": ("http_error", status, type(exc).__name__)},
        )
        resp = error_response(err)
        resp.headers["x-request-id"] = rid
        resp.force_close()
        return resp

    def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: Any
    ) -> Coroutine[Any, Any, tuple[web.StreamResponse, bool]]:
        # Not a coroutine function: it hands aiohttp's coroutine back, so that every request
        # does not pay a coroutine frame for what few requests need (a router's own error).
        return super().finish_response(request, routed(request, resp), start_time)


# What the gateway answers OPTIONS with a target of "*" (the server as a whole): the methods
# its own routes take.
_SERVER_ALLOW = "GET, HEAD, POST"


def routed(request: web.BaseRequest, resp: web.StreamResponse) -> web.StreamResponse:
    """``resp``, or the gateway's reply in its stead when it is the router's own plain-text
    error (:func:`_unrouted`)."""
    if isinstance(resp, web.HTTPException) and isinstance(request, web.Request):
        return _unrouted(request, resp)
    return resp


def _unrouted(request: web.Request, exc: web.HTTPException) -> web.StreamResponse:
    """The reply to a request the router could not route (``exc`` is its own plain-text 404 or
    405), else ``exc`` itself (a handler raised it: the handler chose it).

    The gateway's catch-all route takes any path, so the router fails only where aiohttp
    cannot match a target at all (one not starting with ``/``) and for a plugin's route that
    does not take the method. RFC 9110: ``OPTIONS *`` asks about the server in general
    (§9.3.7): 200 with ``Allow``; ``CONNECT`` asks a proxy for a tunnel, which the gateway is
    not, a method it does not implement (§9.1): 501; anything else keeps the router's status.
    """
    if request.match_info.http_exception is not exc:
        return exc
    target = request.raw_path
    if request.method == "OPTIONS" and target == "*":
        return web.Response(headers={"Allow": _SERVER_ALLOW})
    err: GatewayError
    if request.method == "CONNECT":
        err = GatewayError(
            "CONNECT is not supported: aigw is not a proxy",
            status=501,
            type="invalid_request_error",
            code="method_not_supported",
        )
    elif exc.status == 405:
        err = GatewayError(
            f"Method {request.method} is not allowed on {target}",
            status=405,
            type="invalid_request_error",
            code="method_not_allowed",
            headers={"Allow": exc.headers.get("Allow", "")},
        )
    else:
        err = NotFound(f"Unknown path {request.method} {target}", code="unknown_url")
    return error_response(err)


def phrase(status: int) -> str:
    """The reason phrase of ``status`` (``HTTP 599`` for one that has none)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


def install(
    app: web.Application,
    handler_class: type[ErrorReplies] | None = None,
    handler_kwargs: Mapping[str, Any] | None = None,
) -> None:
    """Have the servers aiohttp makes for ``app`` (the CLI's runner, a test server) answer
    their own errors in OpenAI's shape with an ``x-request-id``: through
    :mod:`aigw.aiohttp_private`, as aiohttp has no public way to; where it cannot, they keep
    aiohttp's plain-text replies (and a warning says so at start-up). ``handler_class`` (a
    subclass of :class:`ErrorReplies`) and ``handler_kwargs`` go to
    :func:`aigw.aiohttp_private.install` (:mod:`aigw.connections` passes its own)."""
    if _AIOHTTP_LIMIT not in logging.getLogger("aiohttp.server").filters:
        logging.getLogger("aiohttp.server").addFilter(_AIOHTTP_LIMIT)
    aiohttp_private.install(app, handler_class or ErrorReplies, handler_kwargs)
