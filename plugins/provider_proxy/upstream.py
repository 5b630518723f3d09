"""Calling one OpenAI-compatible upstream: URL and auth per provider type, retries, timeouts,
and the egress proxy (:mod:`.egress`).

Calls go through the gateway's lean client (:mod:`aigw.http_client`), which costs a fraction
of aiohttp's CPU per call; a provider reached through an egress proxy uses the aiohttp session,
which does the proxy's ``CONNECT`` tunnels and credentials.

Retries happen only here, before anything reached the client: on connection errors and
connect timeouts, on 429 (unless ``Retry-After`` asks for more than a few seconds), on 5xx, and
on 401/403 when another API key is configured, with exponential backoff, moving to the next API
key each time. Any other 4xx is the client's problem and is returned at once.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from urllib.parse import quote, urlsplit

import aiohttp

from aigw.context import Api
from aigw.errors import UpstreamError, UpstreamTimeout
from aigw.gateway import Gateway
from aigw.http_client import ConnectTimeout, HTTPClientError, Origin, ReadTimeout, Response

from .config import ProviderConfig
from .egress import egress_proxy

log = logging.getLogger("aigw.provider_proxy")

_PATHS: dict[Api, str] = {
    "chat.completions": "/chat/completions",
    "completions": "/completions",
    "embeddings": "/embeddings",
}
#: An upstream's answer, from either client: the same attributes are used of both.
UpstreamResponse = Response | aiohttp.ClientResponse
# Retry-After above this is not waited for: the client (or a fallback) gets the 429 now.
_MAX_RETRY_AFTER_S = 2.0


class Upstream:
    """An HTTP upstream built from a :class:`ProviderConfig` (any type but ``mock``)."""

    def __init__(self, cfg: ProviderConfig) -> None:
        self.cfg = cfg
        self.name = cfg.name
        # The headers each API key adds, with the provider's own and Content-Type.
        self._headers = [
            {**cfg.headers, "Content-Type": "application/json", **self._auth(key)}
            for key in cfg.keys or [""]
        ]
        self._turn = itertools.count()  # spreads requests over the keys
        parts = urlsplit(cfg.url)
        self._origin_len = len(f"{parts.scheme}://{parts.netloc}")  # url()[this:]: the target
        self._session: aiohttp.ClientSession | None = None
        self._origin: Origin | None = None
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=cfg.connect_timeout_s, sock_read=cfg.read_timeout_s
        )
        #: The HTTP proxy requests leave through (its credentials are in headers, not here).
        self.proxy, proxy_auth = egress_proxy(cfg.proxy, cfg.url)
        self._proxy_headers: dict[str, str] | None = None
        if proxy_auth is not None:
            # aiohttp sends proxy_headers only on the CONNECT of an https upstream; a plain
            # http request goes to the proxy as it is, so the credentials ride with it.
            if cfg.url.startswith("https:"):
                self._proxy_headers = {"Proxy-Authorization": proxy_auth}
            else:
                for key_headers in self._headers:
                    key_headers["Proxy-Authorization"] = proxy_auth

    def start(self, gateway: Gateway) -> None:
        """Take the gateway's clients (at start-up): the lean one unless there is a proxy."""
        self._session = gateway.session
        if self.proxy is None:
            self._origin = gateway.client.origin(
                self.cfg.url, self.cfg.connect_timeout_s, self.cfg.read_timeout_s
            )

    def url(self, api: Api, model: str) -> str:
        """The endpoint for ``api`` (Azure puts the deployment in the path)."""
        if self.cfg.type == "azure":
            # The deployment comes from the client's model name: quote it, so "../x" or "?..."
            # cannot reach another deployment or rewrite the query.
            return (
                f"{self.cfg.url}/openai/deployments/{quote(model, safe='')}{_PATHS[api]}"
                f"?api-version={self.cfg.api_version}"
            )
        return self.cfg.url + _PATHS[api]

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
        url = self.url(api, model)
        attempts = self.cfg.max_retries + 1
        first = next(self._turn)  # each request walks the keys from its own starting point
        for attempt in range(attempts):
            last = attempt == attempts - 1
            headers.update(self._headers[(first + attempt) % len(self._headers)])
            try:
                resp = await self._send(url, body, headers)
            except (ConnectTimeout, aiohttp.ConnectionTimeoutError) as err:
                if not last:
                    await self._backoff(attempt, None, f"connect timeout: {err}")
                    continue
                raise UpstreamTimeout(f"upstream {self.name} did not answer in time") from err
            except (ReadTimeout, aiohttp.ServerTimeoutError) as err:
                raise UpstreamTimeout(f"upstream {self.name} did not answer in time") from err
            except (HTTPClientError, aiohttp.ClientError) as err:
                if last:
                    raise UpstreamError(f"upstream {self.name} is unreachable: {err}") from err
                await self._backoff(attempt, None, f"connection error: {err}")
                continue
            if last or not self._retryable(resp):
                return resp
            retry_after = _retry_after(resp)
            if retry_after is not None and retry_after > _MAX_RETRY_AFTER_S:
                return resp
            resp.release()
            await self._backoff(attempt, retry_after, f"status {resp.status}")
        raise AssertionError("unreachable")  # the last attempt always returns or raises

    async def _send(self, url: str, body: bytes, headers: dict[str, str]) -> UpstreamResponse:
        if self._origin is not None:
            return await self._origin.post(url[self._origin_len :], body, headers)
        assert self._session is not None, "start() was not called"
        return await self._session.post(
            url,
            data=body,
            headers=headers,
            timeout=self._timeout,
            proxy=self.proxy,
            proxy_headers=self._proxy_headers,
        )

    def _retryable(self, resp: UpstreamResponse) -> bool:
        if resp.status in (401, 403):
            return len(self.cfg.keys) > 1  # a refused key: the next one may work
        return resp.status == 429 or resp.status >= 500

    async def _backoff(self, attempt: int, retry_after: float | None, why: str) -> None:
        delay = max(self.cfg.retry_backoff_s * (2**attempt), retry_after or 0.0)
        log.warning("upstream %s: %s; retry %d in %.2fs", self.name, why, attempt + 1, delay)
        await asyncio.sleep(delay)


def _retry_after(resp: UpstreamResponse) -> float | None:
    try:
        return float(resp.headers.get("Retry-After", ""))
    except ValueError:
        return None
