"""Reading and validating an OpenAI API request before the plugins see it.

Bad input never reaches a plugin and never produces a traceback: each problem raises a
:class:`~aigw.errors.GatewayError` with OpenAI's error shape and the right status (400, 408,
413, 415), naming the offending ``param``. A body that does not arrive whole within
``gateway.body_timeout_s`` of the request's head is a 408, logged as one rate-limited INFO line
on ``aigw.intake``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage

from aigw import aiohttp_private
from aigw.context import Api, RequestContext
from aigw.errors import BadRequest, GatewayError, PayloadTooLarge
from aigw.ratelimit_log import RateLimitFilter

log = logging.getLogger("aigw.intake")
log.addFilter(RateLimitFilter())

_MAX_DEPTH = 253  # orjson.dumps refuses 254 levels and more
_MAX_REASON = 300  # characters of aiohttp's message about an unreadable body

_REQUIRED: dict[Api, str] = {
    "chat.completions": "messages",
    "completions": "prompt",
    "embeddings": "input",
}


async def read_payload(ctx: RequestContext, max_bytes: int, timeout_s: float = 60.0) -> None:
    """Read the body once, parse it and fill ``ctx.body``, ``payload``, ``model``, ``stream``.

    The body must have arrived whole ``timeout_s`` after the request's head
    (``ctx.started_at``): else 408, and the connection is closed (see :func:`_timed_out`).
    """
    request = ctx.request
    ctype = request.headers.get("Content-Type")
    # The exact header is by far the most common: no need to parse it then.
    if ctype not in (None, "application/json") and request.content_type != "application/json":
        raise GatewayError(
            f"Unsupported Content-Type {request.content_type!r}; send application/json",
            status=415,
            type="invalid_request_error",
            code="unsupported_media_type",
        )
    length = request.content_length  # parsed from the header at every access
    if length is not None and length > max_bytes:
        raise _too_large(max_bytes)
    try:
        # The body arrived whole (almost always: with the headers): taken as it lies, without
        # read()'s two awaited reads and copy (aigw.aiohttp_private says what that saves).
        body = aiohttp_private.take_body(request)
        if body is None:
            # Still arriving: a client sending it slowly (or not at all) must not hold the
            # connection, its buffers and this coroutine for ever.
            left = ctx.started_at + timeout_s - time.perf_counter()
            try:
                async with asyncio.timeout(left):
                    body = await request.read()  # which checks the size as it reads
            except TimeoutError:
                raise _timed_out(ctx, timeout_s) from None
        elif len(body) > max_bytes:  # chunked: no Content-Length to check beforehand
            raise _too_large(max_bytes)
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(max_bytes) from None
    except (BadHttpMessage, web.RequestPayloadError) as err:
        # A body that does not match its Content-Encoding, or a broken chunked encoding. The
        # rest of it cannot be read either: end the stream here, so aiohttp does not try to
        # (and log that as an unhandled error), and close the connection after the reply.
        request.content.feed_eof()
        raise BadRequest(
            f"The request body could not be read: {_reason(err)}",
            code="invalid_body",
            headers={"Connection": "close"},
        ) from None
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise BadRequest(
            f"The request body is not valid JSON: {err}", code="invalid_json"
        ) from None
    if not isinstance(payload, dict):
        raise BadRequest("The request body must be a JSON object", code="invalid_json")
    # orjson reads JSON nested up to 1024 levels but writes only up to 254, and the gateway
    # writes requests (cache keys, upstream bodies): refuse what it could not write. Only a
    # body that long, with that many brackets, can be that deep: most bodies skip the test.
    if len(body) > 2 * _MAX_DEPTH and body.count(b"[") + body.count(b"{") > _MAX_DEPTH:
        try:
            orjson.dumps(payload)
        except orjson.JSONEncodeError:
            raise BadRequest(
                f"The request body is nested more than {_MAX_DEPTH} levels deep",
                code="invalid_json",
            ) from None
    ctx.body, ctx.payload = body, payload
    validate(ctx.api, payload)
    ctx.model = payload["model"]
    ctx.stream = payload.get("stream") is True
    ctx.include_usage = bool((payload.get("stream_options") or {}).get("include_usage"))


def _reason(err: Exception) -> str:
    """The client-facing part of a body error: aiohttp's message, without its status code, on
    one line and bounded (the parser's message quotes the client's bytes, over several lines)."""
    cause = err.__cause__ if isinstance(err, web.RequestPayloadError) else err
    message = getattr(cause, "message", None) or str(err) or type(err).__name__
    return " ".join(str(message).split())[:_MAX_REASON]


def _timed_out(ctx: RequestContext, timeout_s: float) -> GatewayError:
    """The 408 for a body that did not arrive in time, closing the connection.

    The rest of the body is left unread: a reply sent before the body's end is the connection
    handler's to finish (:mod:`aigw.connections`: what still arrives is dropped, the
    connection half-closed).
    """
    request = ctx.request
    log.info(
        "request %s: answered 408 to %s: the body did not arrive within %gs",
        ctx.request_id,
        request.remote,
        timeout_s,
        extra={"ratelimit_key": "body_timeout"},
    )
    return GatewayError(
        f"The request body did not arrive within {timeout_s:g} seconds",
        status=408,
        type="invalid_request_error",
        code="request_timeout",
        headers={"Connection": "close"},
    )


def _too_large(limit: int) -> GatewayError:
    return PayloadTooLarge(f"The request body is larger than the limit of {limit} bytes")


def validate(api: Api | None, payload: dict[str, Any]) -> None:
    """Check the fields every upstream needs, so errors are ours and clear."""
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise _param("you must provide a model parameter", "model", "missing_required_parameter")
    stream = payload.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise _param("'stream' must be a boolean", "stream")
    options = payload.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _param("'stream_options' must be an object", "stream_options")
    if api is None:
        return
    field = _REQUIRED[api]
    if field not in payload:
        raise _param(f"Missing required parameter: '{field}'", field, "missing_required_parameter")
    if api == "chat.completions":
        _check_messages(payload["messages"])
    n = payload.get("n")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise _param("'n' must be a positive integer", "n")


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise _param("'messages' must be a non-empty array", "messages")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise _param(f"messages[{i}] must be an object with a 'role'", f"messages[{i}].role")


def _param(message: str, param: str, code: str = "invalid_value") -> BadRequest:
    return BadRequest(message, param=param, code=code)
