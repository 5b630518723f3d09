"""Ordered, awaited dispatch of the request phase and of ``on_log``.

pluggy is the registry, not the dispatcher: it calls implementations in LIFO order and cannot
stop at the first coroutine result. So each phase's chain is built once, here, in conf.d
order from ``pm.hook.<name>.get_hookimpls()`` (:func:`hook_steps`), and every step is awaited
in turn. The response phase is :mod:`aigw.respond`'s. The rules are in :mod:`aigw.hookspecs`.

The request body is read when the first plugin that needs it is reached, not before: plugins
that declare ``reads_body = False`` (auth, say) run first on the headers alone, so a caller
they refuse never gets its body read, parsed or its model looked up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aigw.context import Reply, RequestContext
from aigw.errors import ConfigError, GatewayError
from aigw.plugins import LoadedPlugins

log = logging.getLogger("aigw.pipeline")

Step = tuple[str, Callable[..., Awaitable[Any]], tuple[str, ...]]
#: Reads the request's body and resolves its target (the core's, run once per request).
ReadBody = Callable[[RequestContext], Awaitable[None]]
# Almost every implementation takes just ``ctx``: those are called positionally, which saves
# building a keyword dict per step on every request.
CTX_ONLY = ("ctx",)
RESPONSE_PHASES = ("on_response_headers", "on_response_chunk", "on_response_end")
_INTERNAL = GatewayError("internal error in the gateway")


def hook_steps(loaded: LoadedPlugins, phase: str) -> dict[str, Step]:
    """Each plugin's implementation of ``phase``, by plugin name, in conf.d order."""
    by_name: dict[str, Step] = {}
    for impl in getattr(loaded.pm.hook, phase).get_hookimpls():
        if impl.wrapper or impl.hookwrapper or impl.tryfirst or impl.trylast:
            raise ConfigError(
                f"plugin {impl.plugin_name!r}: {phase} cannot be a wrapper or use "
                "tryfirst/trylast; conf.d order decides"
            )
        by_name[impl.plugin_name] = (impl.plugin_name, impl.function, impl.argnames)
    return {name: by_name[name] for name, _ in loaded.order if name in by_name}


def call(step: Step, ctx: RequestContext, **extra: Any) -> Awaitable[Any]:
    """Call a step with the arguments it declares, as pluggy does."""
    _, fn, args = step
    if args == CTX_ONLY:
        return fn(ctx)
    extra["ctx"] = ctx
    return fn(**{a: extra[a] for a in args})


def reads_body(plugin: object, name: str) -> bool:
    """Whether ``plugin``'s ``on_request`` needs the body (``reads_body``, default true)."""
    value = getattr(plugin, "reads_body", True)
    if not isinstance(value, bool):
        raise ConfigError(f"plugin {name!r}: reads_body must be True or False, not {value!r}")
    return value


class Pipeline:
    """The request chain and the ``on_log`` chain of one configured gateway.

    :meth:`run_request` returns the reply (never raises for plugin errors: they become error
    replies) and leaves in ``ctx.passed_on`` the plugins that passed the request on, whose
    response hooks then run; :meth:`log` runs ``on_log`` for every plugin. ``read_body`` is
    the core's step that reads the body and resolves the target; it runs just before the
    first plugin whose ``reads_body`` is true (the terminal one at the latest). Without it
    (``aigw check``) the chains are only built and checked.
    """

    def __init__(self, loaded: LoadedPlugins, read_body: ReadBody | None = None) -> None:
        self.names = [name for name, _ in loaded.order]
        requests = hook_steps(loaded, "on_request")
        # Only an on_request can need the body: a plugin without one (metrics, an access log)
        # placed before auth must not have the body read before auth decides.
        order = [
            (name, reads_body(plugin, name) and name in requests) for name, plugin in loaded.order
        ]
        for phase in RESPONSE_PHASES:
            hook_steps(loaded, phase)  # checked here too, so that `aigw check` reports them
        self._log = list(hook_steps(loaded, "on_log").values())
        # The plugins' steps in conf.d order, with the core's read step ("" names it) before
        # the first plugin that reads the body: one loop, no coroutine per part.
        first = next(i for i, (_, needs) in enumerate(order) if needs or i == len(order) - 1)
        self._steps = [requests[n] for n, _ in order if n in requests]
        if read_body is not None:
            at = sum(1 for n, _ in order[:first] if n in requests)
            self._steps.insert(at, ("", read_body, CTX_ONLY))
        # What ctx.passed_on is when a step replies: the plugins before it (a precomputed
        # tuple per step, so a request allocates nothing to find it).
        prefix = {name: tuple(self.names[:i]) for i, name in enumerate(self.names)}
        self._passed = {name: prefix[name] for name in requests}
        self._passed[""] = tuple(self.names[:first])
        #: The plugin the body is read just before (for ``aigw check``).
        self.body_read_before = self.names[first]

    async def run_request(self, ctx: RequestContext) -> Reply:
        """Run ``on_request`` in conf.d order until a plugin replies; errors become replies.

        The body is read between the plugins that do not need it and those that do; an error
        reading it (400, 413, 415, an unknown model's 404) is the reply, seen on the way back
        by the plugins before (``ctx.replied_by`` is then ``None``: no plugin replied).
        """
        for step in self._steps:
            name, fn, args = step
            try:
                reply = await (fn(ctx) if args == CTX_ONLY else call(step, ctx))
            except GatewayError as err:
                ctx.error = err
                reply = Reply.from_error(err)
            except Exception as err:
                if not name:
                    raise  # the core's own bug: aiohttp answers it (aigw.http_errors)
                log.exception("request %s: plugin %s failed in on_request", ctx.request_id, name)
                ctx.error = err
                reply = Reply.from_error(_INTERNAL)
            if reply is not None:
                if not isinstance(reply, Reply):
                    log.error(
                        "request %s: plugin %s returned %r from on_request, not a Reply",
                        ctx.request_id,
                        name,
                        type(reply).__name__,
                    )
                    ctx.error = TypeError(f"{name}.on_request returned {type(reply).__name__}")
                    reply = Reply.from_error(_INTERNAL)
                ctx.reply, ctx.replied_by = reply, name or None
                ctx.passed_on = self._passed[name]
                return reply
        raise RuntimeError("the terminal plugin returned no reply")  # checked at start-up

    async def log(self, ctx: RequestContext) -> None:
        """``on_log`` for every plugin, in conf.d order; errors are logged, not raised.

        A cancellation (the client hanging up) arriving meanwhile does not skip the plugins
        after the one it interrupted: every plugin logs, then the cancellation propagates.
        """
        cancelled: asyncio.CancelledError | None = None
        for step in self._log:
            try:
                await (step[1](ctx) if step[2] == CTX_ONLY else call(step, ctx))
            except asyncio.CancelledError as err:
                cancelled = err
            except Exception:
                log.exception("request %s: plugin %s failed in on_log", ctx.request_id, step[0])
        if cancelled is not None:
            raise cancelled
