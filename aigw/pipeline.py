"""Ordered, awaited dispatch of the request and response phases.

pluggy is the registry, not the dispatcher: it calls implementations in LIFO order and cannot
stop at the first coroutine result. So each phase's chain is built once, here, in conf.d
order from ``pm.hook.<name>.get_hookimpls()``, and every step is awaited in turn. The response
chains are precomputed for every possible replying plugin, so a request allocates nothing to
find them. The rules are in :mod:`aigw.hookspecs`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aigw.context import Reply, RequestContext
from aigw.errors import ConfigError, GatewayError
from aigw.plugins import LoadedPlugins

log = logging.getLogger("aigw.pipeline")

Step = tuple[str, Callable[..., Awaitable[Any]], tuple[str, ...]]
# Almost every implementation takes just ``ctx``: those are called positionally, which saves
# building a keyword dict per step on every request.
_CTX_ONLY = ("ctx",)


@dataclass(frozen=True, slots=True)
class ResponseChains:
    """The response-phase steps run for a request, last plugin first; the core skips a phase
    whose list is empty, so plugins that do not hook it cost nothing."""

    headers: list[Step]
    chunk: list[Step]
    end: list[Step]


_NO_CHAINS = ResponseChains([], [], [])

_PHASES = ("on_request", "on_response_headers", "on_response_chunk", "on_response_end", "on_log")


class Pipeline:
    """The request/response chains of one configured gateway.

    :meth:`run_request` returns the reply (never raises for plugin errors: they become error
    replies); :meth:`chains` gives the reverse chains over the plugins that passed the request
    on, which the ``response_*`` methods run; :meth:`log` runs ``on_log`` for every plugin.
    """

    def __init__(self, loaded: LoadedPlugins) -> None:
        self.names = [name for name, _ in loaded.order]
        steps: dict[str, dict[str, Step]] = {}
        for phase in _PHASES:
            by_name: dict[str, Step] = {}
            for impl in getattr(loaded.pm.hook, phase).get_hookimpls():
                if impl.wrapper or impl.hookwrapper or impl.tryfirst or impl.trylast:
                    raise ConfigError(
                        f"plugin {impl.plugin_name!r}: {phase} cannot be a wrapper or use "
                        "tryfirst/trylast; conf.d order decides"
                    )
                by_name[impl.plugin_name] = (impl.plugin_name, impl.function, impl.argnames)
            steps[phase] = by_name
        order = self.names
        self._request = [steps["on_request"][n] for n in order if n in steps["on_request"]]
        self._log = [steps["on_log"][n] for n in order if n in steps["on_log"]]
        self._index = {n: i for i, n in enumerate(order)}
        # _chains[i]: the response steps of the plugins before plugin i (which replied), last
        # first; _passed_on[i]: those plugins' names, in order.
        self._chains = [
            ResponseChains(
                *(
                    [steps[phase][n] for n in reversed(order[:i]) if n in steps[phase]]
                    for phase in ("on_response_headers", "on_response_chunk", "on_response_end")
                )
            )
            for i in range(len(order))
        ]
        self._passed_on = [tuple(order[:i]) for i in range(len(order))]

    async def run_request(self, ctx: RequestContext) -> Reply:
        """Run ``on_request`` in conf.d order until a plugin replies; errors become replies."""
        for name, fn, args in self._request:
            try:
                reply = await fn(ctx) if args == _CTX_ONLY else await fn(**_kw(args, ctx))
            except GatewayError as err:
                ctx.error = err
                reply = Reply.from_error(err)
            except Exception as err:
                log.exception("request %s: plugin %s failed in on_request", ctx.request_id, name)
                ctx.error = err
                reply = Reply.from_error(GatewayError("internal error in the gateway"))
            if reply is not None:
                if not isinstance(reply, Reply):
                    log.error(
                        "request %s: plugin %s returned %r from on_request, not a Reply",
                        ctx.request_id,
                        name,
                        type(reply).__name__,
                    )
                    ctx.error = TypeError(f"{name}.on_request returned {type(reply).__name__}")
                    reply = Reply.from_error(GatewayError("internal error in the gateway"))
                ctx.reply, ctx.replied_by = reply, name
                ctx.passed_on = self._passed_on[self._index[name]]
                return reply
        raise RuntimeError("the terminal plugin returned no reply")  # checked at start-up

    def chains(self, ctx: RequestContext) -> ResponseChains:
        """The response-phase steps for ``ctx``: those of the plugins that passed it on."""
        if ctx.replied_by is None:
            return _NO_CHAINS
        return self._chains[self._index[ctx.replied_by]]

    async def response_headers(
        self, ctx: RequestContext, reply: Reply, chains: ResponseChains
    ) -> None:
        """``on_response_headers`` in reverse order; an exception propagates to the core."""
        for _, fn, args in chains.headers:
            await fn(**_kw(args, ctx, reply=reply))

    async def response_chunk(
        self, ctx: RequestContext, chunk: bytes, chains: ResponseChains
    ) -> bytes:
        """``on_response_chunk`` in reverse order; each may replace the chunk."""
        for _, fn, args in chains.chunk:
            out = await fn(**_kw(args, ctx, chunk=chunk))
            if out is not None:
                chunk = out
        return chunk

    async def response_end(self, ctx: RequestContext, chains: ResponseChains) -> None:
        """``on_response_end`` in reverse order; errors are logged, not raised."""
        for name, fn, args in chains.end:
            try:
                await (fn(ctx) if args == _CTX_ONLY else fn(**_kw(args, ctx)))
            except Exception:
                log.exception(
                    "request %s: plugin %s failed in on_response_end", ctx.request_id, name
                )

    async def log(self, ctx: RequestContext) -> None:
        """``on_log`` for every plugin, in conf.d order; errors are logged, not raised.

        A cancellation (the client hanging up) arriving meanwhile does not skip the plugins
        after the one it interrupted: every plugin logs, then the cancellation propagates.
        """
        cancelled: asyncio.CancelledError | None = None
        for name, fn, args in self._log:
            try:
                await (fn(ctx) if args == _CTX_ONLY else fn(**_kw(args, ctx)))
            except asyncio.CancelledError as err:
                cancelled = err
            except Exception:
                log.exception("request %s: plugin %s failed in on_log", ctx.request_id, name)
        if cancelled is not None:
            raise cancelled


def _kw(args: tuple[str, ...], ctx: RequestContext, **extra: Any) -> dict[str, Any]:
    """Pass an implementation only the arguments it declares, as pluggy does."""
    extra["ctx"] = ctx
    return {a: extra[a] for a in args}
