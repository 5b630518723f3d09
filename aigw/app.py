"""aiohttp wiring: routes, the per-request flow, and the process lifecycle.

A request to an API route becomes a :class:`~aigw.context.RequestContext`; the core reads and
validates the body, resolves the target with the terminal plugin, runs the request phase, sends
the reply through the response phase (:mod:`aigw.respond`), and always runs ``on_log``. Start-up
and shutdown use ``cleanup_ctx``: the shared session, then each plugin in conf.d order (so they
stop in reverse, and only if they started), then the background write-back drain.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import hdrs, web
from aiohttp.http import HttpVersion11
from aiohttp.web_urldispatcher import _default_expect_handler
from pluggy import HookImpl

from aigw import dispatch, http_errors
from aigw.config import Config
from aigw.context import Api, Reply, RequestContext
from aigw.errors import GatewayError, NotFound
from aigw.gateway import Gateway
from aigw.ids import request_id
from aigw.intake import read_payload
from aigw.pipeline import Pipeline
from aigw.plugins import LoadedPlugins, load
from aigw.readiness import verdict
from aigw.respond import send

log = logging.getLogger("aigw")

GATEWAY = web.AppKey("gateway", Gateway)
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
    gateway = Gateway(config)
    pipeline = Pipeline(loaded)
    app = web.Application(client_max_size=config.gateway.max_body_bytes)
    app[GATEWAY] = gateway
    app[PIPELINE] = pipeline
    app[PLUGINS] = loaded
    loaded.pm.hook.register_routes(router=app.router, gateway=gateway)
    for path, (method, api) in API_ROUTES.items():
        handler = _api_handler(gateway, pipeline, loaded, method, api)
        app.router.add_route("*", path, handler, expect_handler=_expect)
    readyz = _get_only(_readyz_handler(gateway, loaded))
    app.router.add_route("*", "/healthz", _get_only(_healthz), expect_handler=_expect)
    app.router.add_route("*", "/readyz", readyz, expect_handler=_expect)
    app.router.add_route("*", "/{tail:.*}", _not_found, expect_handler=_expect)
    dispatch.install(app, API_ROUTES.keys())
    http_errors.install(app)
    app.on_response_prepare.append(_ensure_request_id)
    app.cleanup_ctx.append(_session_ctx(gateway))
    starts = {i.plugin_name: i for i in loaded.pm.hook.startup.get_hookimpls()}
    stops = {i.plugin_name: i for i in loaded.pm.hook.shutdown.get_hookimpls()}
    for name, _ in loaded.order:
        app.cleanup_ctx.append(_plugin_ctx(name, starts.get(name), stops.get(name), gateway))
    app.cleanup_ctx.append(_drain_ctx(gateway))
    return app


def _api_handler(
    gateway: Gateway, pipeline: Pipeline, loaded: LoadedPlugins, method: str, api: Api | None
) -> Handler:
    max_body = gateway.settings.max_body_bytes
    terminal = loaded.terminal

    async def handle(request: web.Request) -> web.StreamResponse:
        ctx = RequestContext(request=request, request_id=request_id(request.headers), api=api)
        try:
            reply = await _request_phase(ctx, request)
            return await send(ctx, reply, pipeline)
        except asyncio.CancelledError:
            # The client went away (handler cancellation); nginx's "client closed request".
            ctx.status = ctx.status or 499
            raise
        except Exception as err:
            # A bug outside the plugins' hooks (a terminal plugin's resolve_target, say):
            # aiohttp logs it and answers it (aigw.http_errors), with this request's id.
            ctx.status, ctx.error = ctx.status or http_errors.status_for(err), err
            http_errors.keep_id(request, ctx.request_id)
            raise
        finally:
            ctx.finished_at = time.perf_counter()
            await pipeline.log(ctx)

    async def _request_phase(ctx: RequestContext, request: web.Request) -> Reply:
        try:
            if request.method != method:
                raise GatewayError(
                    f"Method {request.method} is not allowed on {request.path}; use {method}",
                    status=405,
                    type="invalid_request_error",
                    code="method_not_allowed",
                    headers={"Allow": method},
                )
            if api is not None:
                await read_payload(ctx, max_body)
                ctx.target = terminal.resolve_target(ctx.model)
                if ctx.target is None:
                    raise NotFound(
                        f"The model `{ctx.model}` does not exist or you do not have access to it.",
                        code="model_not_found",
                        param="model",
                    )
            return await pipeline.run_request(ctx)
        except GatewayError as err:
            # Rejected before any plugin ran: only on_log sees it.
            ctx.error, ctx.replied_by = err, None
            return Reply.from_error(err)

    return handle


async def _expect(request: web.Request) -> web.StreamResponse | None:
    """aiohttp's answer to an ``Expect`` header (``100 Continue``), except that an expectation
    it cannot meet gets an OpenAI-style 417 rather than aiohttp's plain-text one."""
    expect = request.headers.get(hdrs.EXPECT, "")
    if request.version != HttpVersion11 or expect.lower() == "100-continue":
        await _default_expect_handler(request)
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
        err = GatewayError(
            f"Method {request.method} is not allowed on {request.path}; use GET",
            status=405,
            type="invalid_request_error",
            code="method_not_allowed",
            headers={"Allow": "GET"},
        )
        return http_errors.error_response(err)

    return guarded


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def _readyz_handler(gateway: Gateway, loaded: LoadedPlugins) -> Handler:
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


def _session_ctx(gateway: Gateway) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        gateway.open_session()
        yield
        await gateway.close_session()

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


def _drain_ctx(gateway: Gateway) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        yield
        await gateway.drain(gateway.shutdown_left())

    return ctx


async def _call(impl: HookImpl, **kwargs: object) -> None:
    """Call a lifecycle hook with the arguments it declares (pluggy's rule)."""
    result = impl.function(**{k: v for k, v in kwargs.items() if k in impl.argnames})
    if inspect.isawaitable(result):
        await result
