"""aiohttp wiring: routes, the per-request flow, and the process lifecycle.

A request to an API route becomes a :class:`~aigw.context.RequestContext` and takes one way,
top to bottom (``handle`` in :func:`_api_handler`): the request phase (:mod:`aigw.pipeline`:
the plugins in conf.d order, the body read and the target resolved just before the first
plugin that needs them), the response phase (:class:`aigw.respond.ResponsePhase`), and
``on_log``, always. Start-up and shutdown use ``cleanup_ctx``: the shared clients
(:class:`aigw.runtime.Runtime`), then each plugin in conf.d order (so they stop in reverse,
and only if they started), then the background write-back drain.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import HttpVersion11, hdrs, web
from pluggy import HookImpl

from aigw import aiohttp_private, connections, http_errors
from aigw.config import Config
from aigw.context import Api, Reply, RequestContext
from aigw.errors import GatewayError, NotFound, drop_tracebacks
from aigw.gateway import Gateway
from aigw.ids import request_id
from aigw.intake import read_payload
from aigw.pipeline import Pipeline, ReadBody
from aigw.plugins import LoadedPlugins, load
from aigw.readiness import verdict
from aigw.respond import ResponsePhase
from aigw.runtime import Runtime

log = logging.getLogger("aigw")

RUNTIME = web.AppKey("runtime", Runtime)
PIPELINE = web.AppKey("pipeline", Pipeline)
PLUGINS = web.AppKey("plugins", LoadedPlugins)

API_ROUTES: dict[str, tuple[str, Api | None]] = {
    "/v1/chat/completions": ("POST", "chat.completions"),
    "/v1/completions": ("POST", "completions"),
    "/v1/embeddings": ("POST", "embeddings"),
    "/v1/models": ("GET", None),
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_app(config: Config, loaded: LoadedPlugins | None = None) -> web.Application:
    """Build the aiohttp application for a loaded conf.d."""
    loaded = loaded or load(config)
    runtime = Runtime(config)
    gateway = runtime.gateway
    g = config.gateway
    pipeline = Pipeline(loaded, _body_reader(g.max_body_bytes, g.body_timeout_s, loaded))
    responses = ResponsePhase(loaded)
    app = web.Application(client_max_size=config.gateway.max_body_bytes)
    app[RUNTIME] = runtime
    app[PIPELINE] = pipeline
    app[PLUGINS] = loaded
    loaded.pm.hook.register_routes(router=app.router, gateway=gateway)
    for path, (method, api) in API_ROUTES.items():
        handler = _api_handler(pipeline, responses, method, api)
        app.router.add_route("*", path, handler, expect_handler=_expect)
    readyz = _get_only(_readyz_handler(loaded))
    app.router.add_route("*", "/healthz", _get_only(_healthz), expect_handler=_expect)
    app.router.add_route("*", "/readyz", readyz, expect_handler=_expect)
    app.router.add_route("*", "/{tail:.*}", _not_found, expect_handler=_expect)
    aiohttp_private.dispatch(app, API_ROUTES.keys())
    connections.install(app, runtime.connections)
    app.on_response_prepare.append(_ensure_request_id)
    app.cleanup_ctx.append(_clients_ctx(runtime))
    starts = {i.plugin_name: i for i in loaded.pm.hook.startup.get_hookimpls()}
    stops = {i.plugin_name: i for i in loaded.pm.hook.shutdown.get_hookimpls()}
    for name, _ in loaded.order:
        app.cleanup_ctx.append(_plugin_ctx(name, starts.get(name), stops.get(name), gateway))
    app.cleanup_ctx.append(_drain_ctx(runtime))
    return app


def _api_handler(
    pipeline: Pipeline, responses: ResponsePhase, method: str, api: Api | None
) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        ctx = RequestContext(request=request, request_id=request_id(request.headers), api=api)
        escaped = False
        try:
            if request.method == method:
                reply = await pipeline.run_request(ctx)
            else:
                # Rejected before any plugin ran: only on_log sees it.
                ctx.error = err = _not_allowed(request, method)
                reply = Reply.from_error(err)
            return await responses.send(ctx, reply)
        except BaseException as err:
            # The client went away (handler cancellation), or a bug outside the plugins'
            # hooks, which aiohttp logs and answers (aigw.http_errors) with this request's id.
            responses.abandon(ctx, err)
            if not isinstance(err, asyncio.CancelledError):
                http_errors.keep_id(request, ctx.request_id)
                escaped = True  # then ctx.error is err, whose traceback aiohttp logs
            raise
        finally:
            ctx.finished_at = time.perf_counter()
            try:
                await pipeline.log(ctx)
            finally:
                # Logged: the error's frames (holding ctx, and the body) can go now, by
                # reference counting, rather than at the collector's next full pass.
                if ctx.error is not None and not escaped:
                    drop_tracebacks(ctx.error)

    return handle


def _not_allowed(request: web.Request, method: str) -> GatewayError:
    return GatewayError(
        f"Method {request.method} is not allowed on {request.path}; use {method}",
        status=405,
        type="invalid_request_error",
        code="method_not_allowed",
        headers={"Allow": method},
    )


def _body_reader(max_body: int, timeout_s: float, loaded: LoadedPlugins) -> ReadBody:
    """The core's step of the request phase: read and validate the body (``max_body`` bytes at
    most, whole within ``timeout_s`` of the request's head: ``gateway.max_body_bytes`` and
    ``body_timeout_s``), and resolve the target with the terminal plugin (an unknown model is
    a 404)."""
    terminal = loaded.terminal

    async def read_body(ctx: RequestContext) -> None:
        if ctx.api is None:
            return
        await read_payload(ctx, max_body, timeout_s)
        ctx.target = terminal.resolve_target(ctx.model)
        if ctx.target is None:
            raise NotFound(
                f"The model `{ctx.model}` does not exist or you do not have access to it.",
                code="model_not_found",
                param="model",
            )

    return read_body


async def _expect(request: web.Request) -> web.StreamResponse | None:
    """The answer to an ``Expect`` header, as aiohttp's own: ``100 Continue`` on HTTP/1.1, the
    header ignored on HTTP/1.0; except that an expectation it cannot meet gets an OpenAI-style
    417 rather than aiohttp's plain-text one."""
    expect = request.headers.get(hdrs.EXPECT, "")
    if request.version != HttpVersion11:
        return None  # HTTP/1.0 has no interim responses
    if expect.lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        # Not the response: uncounted, so a handler failing after it still gets aiohttp's
        # error reply (aiohttp sends none once a response has started).
        request.writer.output_size = 0
        return None
    err = GatewayError(
        f"Unsupported Expect header {expect[:100]!r}; only 100-continue is supported",
        status=417,
        type="invalid_request_error",
        code="expectation_failed",
    )
    return http_errors.error_response(err)


async def _ensure_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """Every response, including plugins' own routes and 404s, carries an ``x-request-id``."""
    if "x-request-id" not in response.headers:
        rid = http_errors.kept_id(request) or request_id(request.headers)
        response.headers["x-request-id"] = rid


def _get_only(handler: Handler) -> Handler:
    """A GET endpoint that answers other methods with an OpenAI-style 405."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        if request.method in ("GET", "HEAD"):
            return await handler(request)
        return http_errors.error_response(_not_allowed(request, "GET"))

    return guarded


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def _readyz_handler(loaded: LoadedPlugins) -> Handler:
    # Probes in conf.d order, so the problems are listed in it (pluggy would call them LIFO).
    rank = {name: i for i, (name, _) in enumerate(loaded.order)}
    impls = sorted(loaded.pm.hook.check_ready.get_hookimpls(), key=lambda i: rank[i.plugin_name])

    async def readyz(request: web.Request) -> web.Response:
        results = await asyncio.gather(*(_probe(i) for i in impls), return_exceptions=True)
        status, body = verdict(results)
        return web.json_response(body, status=status)

    return readyz


async def _probe(impl: HookImpl) -> object:
    """One plugin's ``check_ready`` result."""
    result = impl.function()
    return await result if inspect.isawaitable(result) else result


async def _not_found(request: web.Request) -> web.Response:
    err = NotFound(f"Unknown path {request.method} {request.path}", code="unknown_url")
    return http_errors.error_response(err)


def _clients_ctx(runtime: Runtime) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        runtime.open()
        yield
        await runtime.close()

    return ctx


def _plugin_ctx(
    name: str, start: HookImpl | None, stop: HookImpl | None, gateway: Gateway
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        if start is not None:
            await _call(start, gateway=gateway)
        yield
        if stop is not None:
            # What is left of the shutdown budget, but a second at least: a plugin whose
            # shutdown hangs must not keep the process alive.
            try:
                async with asyncio.timeout(max(gateway.shutdown_left(), 1.0)):
                    await _call(stop)
            except TimeoutError:
                log.warning("plugin %s did not shut down in time; going on without it", name)
            except Exception:
                log.exception("plugin %s failed to shut down", name)

    return ctx


def _drain_ctx(runtime: Runtime) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        yield
        await runtime.drain(runtime.shutdown_left())

    return ctx


async def _call(impl: HookImpl, **kwargs: object) -> None:
    """Call a lifecycle hook with the arguments it declares (pluggy's rule)."""
    result = impl.function(**{k: v for k, v in kwargs.items() if k in impl.argnames})
    if inspect.isawaitable(result):
        await result
