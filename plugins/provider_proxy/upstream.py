"""Calling one OpenAI-compatible upstream: URL and auth per provider type, retries, timeouts,
and the egress proxy (:mod:`.egress`).

Credentials in ``base_url`` (``https://user:password@host/v1``) are taken out of it at
start-up and sent as ``Authorization: Basic`` unless the provider's key sets ``Authorization``
itself: the URL in use, and so every message that names it, never holds them, and the proxy
path works too (aiohttp refuses credentials in a URL next to an ``Authorization`` header).

Calls go through one :class:`~aigw.transport.Transport`, picked at start-up: the gateway's
lean pooled client (:mod:`aigw.http_client`), which costs a fraction of aiohttp's CPU per call,
or, for a provider reached through an egress proxy, aiohttp's session, which does the proxy's
``CONNECT`` tunnels and credentials. Both fail with :mod:`aigw.http_client`'s errors.

Retries happen only here, before anything reached the client, and only where the upstream cannot
have processed the request: on connection errors, connect timeouts and a kept-alive connection the
upstream had closed (:class:`~aigw.http_client.StaleConnection`), on 429 (unless ``Retry-After``
asks for more than a few seconds), on 5xx, and on 401/403 when another API key is configured, with
exponential backoff, moving to the next API key each time. Any other 4xx is the client's problem and
is returned at once.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from urllib.parse import quote

from yarl import URL

from aigw.context import Api
from aigw.errors import GatewayError, UpstreamError, UpstreamTimeout
from aigw.gateway import Gateway
from aigw.http_client import (
    ConnectError,
    ConnectTimeout,
    HTTPClientError,
    ReadTimeout,
    StaleConnection,
)
from aigw.ratelimit_log import RateLimitFilter
from aigw.transport import (
    PooledTransport,
    ProxyTransport,
    Transport,
    UpstreamRequest,
    UpstreamResponse,
)

from .config import ProviderConfig
from .egress import basic_auth, egress_proxy

log = logging.getLogger("aigw.provider_proxy")
# An upstream that is down fails (and retries) every request: a line a kind per 10 s is enough.
log.addFilter(RateLimitFilter())

_PATHS: dict[Api, str] = {
    "chat.completions": "/chat/completions",
    "completions": "/completions",
    "embeddings": "/embeddings",
}
# Retry-After above this is not waited for: the client (or a fallback) gets the 429 now.
_MAX_RETRY_AFTER_S = 2.0


class Upstream:
    """An HTTP upstream built from a :class:`ProviderConfig` (any type but ``mock``).

    :attr:`transport` carries its requests. :meth:`start` picks it unless one was set before
    (a test's :class:`~aigw.mock_transport.MockTransport`); a wrapper (tracing) may replace it
    after start-up with one that calls the original.
    """

    def __init__(self, cfg: ProviderConfig) -> None:
        self.cfg = cfg
        self.name = cfg.name
        base = URL(cfg.url)
        #: The base URL, without the credentials it may have had (they are a header now).
        # A password alone (https://:token@host) is credentials too.
        userinfo = base.user is not None or base.password is not None
        self.base_url = str(base.with_user(None)) if userinfo else cfg.url
        # The headers each API key adds, with the provider's own and Content-Type.
        self._headers = []
        for key in cfg.keys or [""]:
            own = {**cfg.headers, "Content-Type": "application/json", **self._auth(key)}
            if userinfo and "authorization" not in {n.lower() for n in own}:
                own["Authorization"] = basic_auth(base.user or "", base.password)
            self._headers.append(own)
        self._turn = itertools.count()  # spreads requests over the keys
        #: The HTTP proxy requests leave through (its credentials are kept apart).
        self.proxy, self._proxy_auth = egress_proxy(cfg.proxy, self.base_url)
        self.transport: Transport | None = None

    def start(self, gateway: Gateway) -> None:
        """Pick the transport (at start-up): the lean client, or the session via the proxy."""
        if self.transport is not None:
            return
        cfg = self.cfg
        if self.proxy is None:
            self.transport = PooledTransport(
                gateway.client,
                self.base_url,
                cfg.connect_timeout_s,
                cfg.read_timeout_s,
                max_body_bytes=cfg.max_response_bytes,
            )
        else:
            self.transport = ProxyTransport(
                gateway.session,
                self.proxy,
                self._proxy_auth,
                cfg.connect_timeout_s,
                cfg.read_timeout_s,
                max_body_bytes=cfg.max_response_bytes,
            )

    def url(self, api: Api, model: str) -> str:
        """The endpoint for ``api`` (Azure puts the deployment in the path)."""
        if self.cfg.type == "azure":
            # The deployment comes from the client's model name: quote it, so "../x" or "?..."
            # cannot reach another deployment or rewrite the query.
            return (
                f"{self.base_url}/openai/deployments/{quote(model, safe='')}{_PATHS[api]}"
                f"?api-version={self.cfg.api_version}"
            )
        return self.base_url + _PATHS[api]

    def _auth(self, key: str) -> dict[str, str]:
        if not key:
            return {}
        if self.cfg.type == "azure":
            return {"api-key": key}
        return {"Authorization": f"Bearer {key}"}

    async def post(
        self, api: Api, model: str, body: bytes, headers: dict[str, str]
    ) -> UpstreamResponse:
        """POST with retries; returns the final response (its body not yet read).

        ``headers`` is this request's own dict: each attempt writes its API key's headers into
        it (every key of a provider sets the same names, so each attempt replaces the last's).
        Raises :class:`UpstreamError` (unreachable) or :class:`UpstreamTimeout`.
        """
        transport = self.transport
        assert transport is not None, "start() was not called"
        request = UpstreamRequest(self.url(api, model), body, headers)
        attempts = self.cfg.max_retries + 1
        first = next(self._turn)  # each request walks the keys from its own starting point
        for attempt in range(attempts):
            last = attempt == attempts - 1
            headers.update(self._headers[(first + attempt) % len(self._headers)])
            rid = headers.get("x-request-id")  # the gateway's, for the log
            try:
                resp = await transport.send(request)
            except ConnectTimeout as err:
                if not last:
                    await self._backoff(attempt, None, f"connect timeout: {err}")
                    continue
                raise failure(
                    self.name, "did not answer in time", err, UpstreamTimeout, rid
                ) from err
            except ReadTimeout as err:
                raise failure(
                    self.name, "did not answer in time", err, UpstreamTimeout, rid
                ) from err
            except (ConnectError, StaleConnection) as err:
                # The upstream cannot have processed the request: it never reached it.
                if last:
                    raise failure(self.name, "is unreachable", err, request_id=rid) from err
                await self._backoff(attempt, None, f"connection error: {err}")
                continue
            except HTTPClientError as err:
                # The request was sent and the answer broke: the upstream may have processed
                # (and billed) it, so it is not sent again.
                raise failure(self.name, "broke the answer", err, request_id=rid) from err
            if last or not self._retryable(resp):
                return resp
            retry_after = _retry_after(resp)
            if retry_after is not None and retry_after > _MAX_RETRY_AFTER_S:
                return resp
            resp.release()
            await self._backoff(attempt, retry_after, f"status {resp.status}")
        raise AssertionError("unreachable")  # the last attempt always returns or raises

    def _retryable(self, resp: UpstreamResponse) -> bool:
        if resp.status in (401, 403):
            return len(self.cfg.keys) > 1  # a refused key: the next one may work
        return resp.status == 429 or resp.status >= 500

    async def _backoff(self, attempt: int, retry_after: float | None, why: str) -> None:
        delay = max(self.cfg.retry_backoff_s * (2**attempt), retry_after or 0.0)
        log.warning("upstream %s: %s; retry %d in %.2fs", self.name, why, attempt + 1, delay)
        await asyncio.sleep(delay)


def failure(
    provider: str,
    what: str,
    err: Exception,
    kind: type[GatewayError] = UpstreamError,
    request_id: str | None = None,
) -> GatewayError:
    """The client's error (``kind``) for a call to ``provider`` that failed in the transport:
    ``"upstream <provider> <what>"``. The transport's own message, ``err``, names the
    upstream's host, port or address, which are the operator's business: it goes to the log
    (a warning naming the request, rate-limited per kind: an upstream that is down fails
    every request) and stays on the error's cause, never in the client's message."""
    log.warning("request %s: upstream %s %s: %s", request_id, provider, what, err)
    return kind(f"upstream {provider} {what}")


def _retry_after(resp: UpstreamResponse) -> float | None:
    try:
        return float(resp.headers.get("Retry-After", ""))
    except ValueError:
        return None
