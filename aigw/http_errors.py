"""OpenAI-style answers for the errors aiohttp's server answers on its own.

aiohttp replies by itself, in ``text/plain`` (or HTML), when a request cannot be parsed (a
malformed request line or header, a header too long, a ``Content-Encoding`` it cannot decode:
400) and when a handler raises (500; 504 on a timeout). Those replies passed no gateway code,
so they broke two promises every other response keeps: errors in OpenAI's shape, and an
``x-request-id``. :func:`install` makes aiohttp build them here instead, by overriding
``RequestHandler.handle_error``; having aiohttp's server use that handler takes private names,
guarded in :mod:`aigw.aiohttp_private`. aiohttp still logs them as it did, and still closes
the connection after them.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from aiohttp import web

from aigw import aiohttp_private
from aigw.errors import BadRequest, GatewayError
from aigw.ids import request_id

log = logging.getLogger("aigw")
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


class _Handler(web.RequestHandler):
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
        # aiohttp's own: it logs the error, and raises if the response had already started.
        super().handle_error(request, status, exc, message)
        err: GatewayError
        if status >= 500:
            # Never the exception's text: it may hold anything (a traceback in debug mode).
            text = "internal error in the gateway" if status == 500 else _phrase(status)
            err = GatewayError(text, status=status, type="server_error")
        else:
            err = BadRequest(
                f"The HTTP request could not be read: {message or _phrase(status)}",
                status=status,
                code="invalid_http_request",
            )
        # The id the gateway gave the request (kept by a handler that raised); else the
        # client's if it sent one; else a new one (for a request that could not be parsed, its
        # headers were never read), logged so that the reply can be matched with aiohttp's
        # log line above.
        rid = kept_id(request) or request_id(request.headers)
        if rid != request.headers.get("x-request-id"):
            log.info("request %s: answered %d: %s", rid, status, err.message)
        resp = error_response(err)
        resp.headers["x-request-id"] = rid
        resp.force_close()
        return resp


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


def install(app: web.Application) -> None:
    """Have the servers aiohttp makes for ``app`` (the CLI's runner, a test server) answer
    their own errors in OpenAI's shape with an ``x-request-id``: through
    :mod:`aigw.aiohttp_private`, as aiohttp has no public way to; where it cannot, they keep
    aiohttp's plain-text replies (and a warning says so at start-up)."""
    aiohttp_private.install(app, _Handler)
