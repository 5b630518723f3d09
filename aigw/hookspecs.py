"""The whole plugin API: every hook a plugin may implement, with its contract.

Plugins implement hooks as ``async`` methods marked ``@aigw.hookimpl``; an implementation may
accept any subset of a hook's arguments. The request and response hooks are not dispatched by
pluggy: :mod:`aigw.pipeline` builds one chain per phase at start-up, in conf.d order, and
awaits each step itself (pluggy calls in LIFO order and cannot short-circuit coroutines).

Phase rules (pinned by ``tests/test_pipeline.py``):

1. ``on_request`` runs in conf.d order until a plugin returns a :class:`~aigw.context.Reply`.
   The last plugin in conf.d is the terminal one and always replies.
2. ``on_response_headers``, then ``on_response_chunk`` per chunk, then ``on_response_end`` run
   in *reverse* order over the plugins that passed the request on; the plugin that replied and
   those after it are skipped (so a cache never re-stores its own hit).
3. Headers are sent after the last ``on_response_headers``; after that they cannot change.
4. ``on_log`` runs for every configured plugin exactly once per request, in conf.d order, also
   after errors and local replies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from aiohttp import web

    from aigw.context import Reply, RequestContext
    from aigw.gateway import Gateway

hookspec = pluggy.HookspecMarker("aigw")


@hookspec
async def startup(gateway: Gateway) -> None:
    """Open the plugin's clients and pools once the event loop runs.

    Called once per process, in conf.d order, before the first request. ``gateway`` gives the
    shared HTTP session, the settings and ``gateway.spawn()`` for tracked background work.
    Raising aborts start-up; plugins started earlier are shut down in reverse order.
    """


@hookspec
async def shutdown() -> None:
    """Close what :func:`startup` opened.

    Called once, in reverse conf.d order, only for plugins whose ``startup`` completed, after
    in-flight requests and background write-backs have drained. Errors are logged, not raised.
    """


@hookspec
def register_routes(router: web.UrlDispatcher, gateway: Gateway) -> None:
    """Add the plugin's own HTTP routes (admin, metrics, dashboard) to ``router``.

    Called once at start-up, before ``startup``; order does not matter. Those routes bypass
    the request pipeline, so they must do their own authentication.
    """


@hookspec
async def check_ready() -> str | None:
    """Probe the plugin's backends for ``GET /readyz``.

    Called concurrently for every plugin that implements it, on each ``/readyz`` request.
    Return ``None`` when ready, or a short reason (no secrets) when a backend is unreachable.
    A plain string means the gateway cannot serve without it (a backend the plugin fails
    closed on): ``/readyz`` answers 503 listing the reasons. Wrap the reason in
    :class:`aigw.Degraded` for a backend the plugin fails open on (a cache): ``/readyz`` stays
    200 with ``"status": "degraded"`` and the reasons, so a load balancer keeps the instance.
    Raising counts as not ready.
    """


@hookspec
async def on_request(ctx: RequestContext) -> Reply | None:
    """Inspect, rewrite or answer a request. Called in conf.d order.

    Valid: ``ctx.request`` (method, path, headers), ``ctx.api``, and whatever earlier plugins
    set (``consumer``, ``cache_lookup``/``cache_store``). The body is read, parsed and
    validated, and the target resolved, just before the first plugin that needs them: for it
    and every plugin after it ``ctx.body``/``ctx.payload``, ``ctx.model``, ``ctx.stream`` and
    ``ctx.target`` are valid too. A plugin that decides on the headers alone (auth) declares
    the class attribute ``reads_body = False``; placed before every plugin with an
    ``on_request`` that reads the body, it runs before the body is read, so a caller it
    refuses has no body read, parsed or validated, and learns nothing about the models (a bad
    body's 400/413/415 or an unknown model's 404 come after it, and it sees them in its
    response hooks). Return ``None`` to pass the request on, or a
    :class:`~aigw.context.Reply` to answer now: later plugins' ``on_request`` are skipped and
    only the plugins before this one see the response. Raise
    :class:`~aigw.errors.GatewayError` to answer with that error; any other exception becomes
    a 500 error reply and is logged.
    """


@hookspec
async def on_response_headers(ctx: RequestContext, reply: Reply) -> None:
    """See the reply before its headers are sent. Reverse order, passed-on plugins only.

    ``reply.status``, ``reply.content_type`` and ``reply.headers`` are final apart from what
    plugins add to ``ctx.response_headers`` here (merged over ``reply.headers``). After the
    last call the headers are sent and cannot change. Raising turns the reply into an error
    reply (the upstream answer is dropped).
    """


@hookspec
async def on_response_chunk(ctx: RequestContext, chunk: bytes) -> bytes | None:
    """See each chunk of the response body on its way to the client. Reverse order.

    A whole-body reply is one chunk, seen before the headers are sent (``ctx.status`` is set
    as they are sent); raising there turns the reply into an error reply. A stream yields one
    chunk per SSE event, and one per comment line the upstream sends between events
    (``: keep-alive``), after its headers were sent: raising stops the response (the client
    sees a cut-off body) and is logged. Return ``None`` to pass the chunk on unchanged, or
    bytes to replace it.
    """


@hookspec
async def on_response_end(ctx: RequestContext) -> None:
    """The response was written in full. Reverse order, passed-on plugins only.

    Not called when the client disconnected or the stream broke (``ctx.complete`` is then
    false and ``ctx.error`` set). ``ctx.status``, ``ctx.usage`` and ``ctx.completion`` (the
    whole answer when the upstream finished it) are valid. Slow work such as a cache write must
    go to ``gateway.spawn()`` rather than hold the connection.
    """


@hookspec
async def on_log(ctx: RequestContext) -> None:
    """Record the request (metrics, access log). Every plugin, once, in conf.d order.

    Runs after the response ended, whatever happened: local replies, errors
    (``ctx.error``), client disconnects. ``ctx.status``, ``ctx.cache_status``,
    ``ctx.usage``, ``ctx.replied_by`` and timings are final. Exceptions are logged and
    ignored, so one plugin cannot hide a request from another.

    Keep it quick and do not wait for I/O here: the connection's next request waits for it,
    and a client that hangs up cancels the handler, cutting short an ``on_log`` that is
    waiting (the other plugins still log). Send slow work (an export over the network) to
    ``gateway.spawn()``, which runs it in the background and drains it at shutdown.
    """
