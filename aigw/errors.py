"""Errors the gateway turns into OpenAI-style replies, and the start-up ``ConfigError``.

Every :class:`GatewayError` becomes a local reply whose body is the OpenAI error shape
``{"error": {"message", "type", "code", "param"}}`` with the error's HTTP status. Anything
else raised while serving a request becomes a 500 with the same shape (and is logged with a
traceback); clients never see a traceback.
"""

from __future__ import annotations

from typing import Any

import orjson


class ConfigError(Exception):
    """Invalid configuration, raised at start-up only; the message names the file and key."""


class GatewayError(Exception):
    """An error that ends the request with an OpenAI-style error reply.

    :param status: the HTTP status of the reply.
    :param message: a human-readable message for the client (never a traceback or a secret).
    :param type: OpenAI's error ``type`` (``invalid_request_error``, ``server_error``, ...).
    :param code: a short machine-readable code, or ``None``.
    :param param: the request field at fault, or ``None``.
    :param headers: extra response headers (for example ``Allow`` or ``Retry-After``).
    """

    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        if code is not None:
            self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> bytes:
        """The OpenAI-style JSON error body."""
        return error_body(self.message, self.type, self.code, self.param)


class BadRequest(GatewayError):
    """400: the request body or parameters are invalid."""

    status = 400
    type = "invalid_request_error"


class AuthError(GatewayError):
    """401: the caller did not present valid gateway credentials."""

    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class NotFound(GatewayError):
    """404: unknown path or model."""

    status = 404
    type = "invalid_request_error"
    code = "not_found"


class PayloadTooLarge(GatewayError):
    """413: the request body is over the configured limit."""

    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class UpstreamError(GatewayError):
    """502: the upstream provider could not be reached or sent an unusable answer."""

    status = 502
    type = "upstream_error"
    code = "upstream_unreachable"


class UpstreamTimeout(GatewayError):
    """504: the upstream provider did not answer in time."""

    status = 504
    type = "upstream_error"
    code = "upstream_timeout"


def error_body(message: str, type: str, code: str | None = None, param: str | None = None) -> bytes:
    """Serialise an OpenAI-style error body. A message quoting undecodable client bytes (a
    path aiohttp's pure-Python parser kept as surrogates) has them escaped."""
    err: dict[str, Any] = {"message": message, "type": type, "code": code, "param": param}
    try:
        return orjson.dumps({"error": err})
    except orjson.JSONEncodeError:
        err["message"] = message.encode("utf-8", "backslashreplace").decode()
        return orjson.dumps({"error": err})


def drop_tracebacks(err: BaseException | None) -> None:
    """Let the frames ``err`` was raised through go: clear the traceback of ``err`` and of every
    exception chained to it, and forget a context that ``raise ... from None`` suppressed.

    For an error kept after its request (``ctx.error``) once it has been logged: its traceback
    holds the frames it passed through, whose locals include the request's context, which holds
    the error (a reference cycle), and its body. Only the garbage collector frees a cycle, and
    late: twenty 7 MB bad-JSON requests kept 305 MB resident. A suppressed context is never
    shown, and may be large (orjson's ``JSONDecodeError.doc`` is the whole body, as a str).
    """
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        err.__traceback__ = None
        if err.__suppress_context__:
            err.__context__ = None
        err = err.__cause__ or err.__context__
