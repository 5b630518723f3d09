"""``provider-proxy``: the terminal plugin that sends requests to LLM providers.

Config keys (see :class:`~.config.ProviderProxyConfig`): ``providers``, each with ``name``,
``type`` (openai, azure, dashscope, mock), ``base_url``, ``api_keys``, ``models`` (patterns or
pattern → upstream name), ``enabled``, ``fallbacks``, timeouts and retry settings;
``drop_headers`` and ``forward_headers`` (which client headers go upstream).

It resolves every request's target for the core (exact model, then longest prefix, then
``*``), rewrites the model to the upstream name, asks streams for usage, relays the answer and
sets ``ctx.usage`` and ``ctx.completion``. Failures become OpenAI errors: the upstream's status
for HTTP errors, 502 when unreachable, 504 on timeout; retries and fallbacks happen only before
the first byte.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import orjson

from aigw import hookimpl
from aigw.context import SSE_CT, Reply, RequestContext, Target
from aigw.errors import GatewayError, UpstreamError, UpstreamTimeout
from aigw.gateway import Gateway
from aigw.headers import UpstreamHeaders, downstream_headers
from aigw.http_client import HTTPClientError
from aigw.http_client.pool import redact_url

from .config import ProviderConfig, ProviderProxyConfig
from .mock import MockProvider
from .relay import Relay, record_body, relay_stream
from .routing import ModelRouter
from .upstream import Upstream, failure

log = logging.getLogger("aigw.provider_proxy")

__all__ = ["ProviderProxyConfig", "ProviderProxyPlugin"]


class ProviderProxyPlugin:
    """Terminal plugin: routes each request to a provider and relays its answer."""

    config_class = ProviderProxyConfig
    terminal: ClassVar[bool] = True

    def __init__(self, config: ProviderProxyConfig) -> None:
        self.config = config
        self.providers: dict[str, ProviderConfig] = {
            p.name: p for p in config.providers if p.enabled
        }
        self.router = ModelRouter(list(self.providers.values()))
        self.backends: dict[str, Upstream | MockProvider] = {
            p.name: MockProvider(p.name, p.mock) if p.type == "mock" else Upstream(p)
            for p in self.providers.values()
        }
        self._own_routers = {name: ModelRouter([p]) for name, p in self.providers.items()}
        self._upstream_headers = UpstreamHeaders(config.drop_headers, config.forward_headers)

    def resolve_target(self, model: str) -> Target | None:
        """The provider and upstream model serving ``model``."""
        return self.router.resolve(model)

    def model_ids(self) -> list[str]:
        """Concrete model names from the providers' patterns."""
        return self.router.listed()

    def serving(self) -> tuple[set[str], set[str]]:
        """Providers that own a route, and those that answer only as another's fallback."""
        routed = self.router.providers_in_use()
        fallback_only: set[str] = set()
        todo = list(routed)
        while todo:
            for name in self.providers[todo.pop()].fallbacks:
                if name in self.providers and name not in routed | fallback_only:
                    fallback_only.add(name)
                    todo.append(name)
        return routed, fallback_only

    def describe(self) -> list[str]:
        """One line per provider: its type, URL and the models it serves (for logs/check)."""
        lines = []
        routed, fallback_only = self.serving()
        for p in self.config.providers:
            state = (
                ""
                if p.name in routed
                else "  (as a fallback only)"
                if p.name in fallback_only
                else "  (disabled)"
                if not p.enabled
                else "  (shadowed)"
            )
            where = "" if p.type == "mock" else f" {redact_url(p.url)}"
            backend = self.backends.get(p.name)
            if isinstance(backend, Upstream) and backend.proxy:
                where += f" via proxy {backend.proxy}"
            models = ", ".join(f"{k}→{v}" if v else k for k, v in p.models.items())
            lines.append(f"{p.name} [{p.type}{where}] serves: {models}{state}")
        return lines

    @hookimpl
    async def startup(self, gateway: Gateway) -> None:
        for backend in self.backends.values():
            if isinstance(backend, Upstream):
                backend.start(gateway)
        for line in self.describe():
            log.info("provider %s", line)
        in_use = set.union(*self.serving())  # a fallback mock answers too, when it is reached
        mocks = [p.name for p in self.providers.values() if p.type == "mock" and p.name in in_use]
        if mocks:
            log.warning(
                "!!! the MOCK provider %s is serving: answers are fake. Set OPENAI_API_KEY or "
                "configure a real provider in conf.d !!!",
                ", ".join(mocks),
            )

    @hookimpl
    async def on_request(self, ctx: RequestContext) -> Reply:
        if ctx.api is None:
            return self._models()
        assert ctx.target is not None  # the core resolved it before the request phase
        candidates = self._candidates(ctx.target, ctx.model)
        for i, target in enumerate(candidates):
            last = i == len(candidates) - 1
            ctx.target = target  # who actually answers (a fallback may differ from the first)
            try:
                return await self._call(ctx, target, last)
            except GatewayError as err:
                if last:
                    raise
                log.warning(
                    "request %s: provider %s failed (%s); trying %s",
                    ctx.request_id,
                    target.provider,
                    err.message,
                    candidates[i + 1].provider,
                )
        raise AssertionError("unreachable")  # the last candidate returns or raises

    def _candidates(self, first: Target, model: str) -> list[Target]:
        """The target, then its provider's enabled fallbacks that serve the requested model
        (each with its own mapping of that name)."""
        targets = [first]
        for name in self.providers[first.provider].fallbacks:
            router = self._own_routers.get(name)
            routed = router.resolve(model) if router is not None else None
            if routed is not None:
                targets.append(routed)
        return targets

    async def _call(self, ctx: RequestContext, target: Target, last: bool) -> Reply:
        backend = self.backends[target.provider]
        payload = ctx.payload
        if ctx.stream or payload.get("model") != target.model:
            payload = {**payload, "model": target.model}
            if ctx.stream and ctx.api != "embeddings":
                payload["stream_options"] = {
                    **(payload.get("stream_options") or {}),
                    "include_usage": True,
                }
        assert ctx.api is not None
        if isinstance(backend, MockProvider):
            return await self._call_mock(ctx, backend, payload, target)
        body = ctx.body if payload is ctx.payload else orjson.dumps(payload)
        headers = self._upstream_headers(ctx.request.headers)
        headers["x-request-id"] = ctx.request_id
        resp = await backend.post(ctx.api, target.model, body, headers)
        if not last and (resp.status == 429 or resp.status >= 500):
            resp.release()  # a fallback follows; this answer is not the client's
            raise UpstreamError(f"upstream {target.provider} answered {resp.status}")
        out_headers = downstream_headers(resp.headers)
        if ctx.stream and resp.status == 200 and resp.content_type == SSE_CT:
            limit = backend.cfg.max_event_bytes
            events = relay_stream(ctx, resp.content.iter_any(), target.provider, limit)
            return Reply(stream=Relay(events, resp), content_type=SSE_CT, headers=out_headers)
        try:
            raw = await resp.read()
        except TimeoutError as e:  # ReadTimeout
            raise UpstreamTimeout(f"upstream {target.provider} stalled mid-answer") from e
        except HTTPClientError as e:
            raise failure(target.provider, "broke the answer", e, request_id=ctx.request_id) from e
        finally:
            resp.release()
        return Reply(
            status=resp.status, body=record_body(ctx, resp.status, raw), headers=out_headers
        )

    async def _call_mock(
        self,
        ctx: RequestContext,
        mock: MockProvider,
        payload: dict[str, Any],
        target: Target,
    ) -> Reply:
        """The mock's answer, relayed through the same path as a real upstream's."""
        assert ctx.api is not None
        if ctx.stream:
            source = mock.stream(ctx.api, payload, target.model)
            stream = relay_stream(ctx, source, target.provider)
            return Reply(stream=stream, content_type=SSE_CT)
        body = await mock.body(ctx.api, payload, target.model)
        return Reply(body=record_body(ctx, 200, body))

    def _models(self) -> Reply:
        data: list[dict[str, Any]] = [
            {"id": m, "object": "model", "created": 0, "owned_by": t.provider}
            for m in self.model_ids()
            if (t := self.router.resolve(m)) is not None
        ]
        return Reply.json({"object": "list", "data": data})
