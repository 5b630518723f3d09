"""Which HTTP proxy, if any, a provider's requests leave through.

A provider's own ``proxy`` wins; an empty one means none. Otherwise the environment decides,
as for any HTTP client: ``HTTPS_PROXY`` for an ``https`` base URL, ``HTTP_PROXY`` for an
``http`` one (either spelling case), unless ``NO_PROXY`` covers the host. It is decided once, at
start-up: aiohttp's own ``trust_env`` would look the environment up again in a thread on every
request. Credentials in the proxy URL become a ``Proxy-Authorization`` header for the proxy:
on the ``CONNECT`` of an ``https`` upstream, never inside its tunnel; on the request itself to
an ``http`` one, which the proxy consumes (it is hop-by-hop). Only ``http://`` proxies are
supported (aiohttp's limit); an ``https`` upstream is reached through a ``CONNECT`` tunnel.
"""

from __future__ import annotations

import base64
import urllib.request

from yarl import URL


def egress_proxy(own: str | None, base_url: str) -> tuple[str | None, str | None]:
    """The proxy URL (without credentials) and its ``Proxy-Authorization`` value, or
    ``(None, None)``.

    ``own`` is the provider's ``proxy`` setting (``None``: ask the environment). Raises
    ``ValueError`` for a proxy that is not ``http://``, naming where it came from.
    """
    origin = "proxy"
    url = own
    if own is None:
        target = URL(base_url)
        env = urllib.request.getproxies_environment()
        url = env.get(target.scheme)
        origin = f"{target.scheme.upper()}_PROXY in the environment"
        if url and target.host and urllib.request.proxy_bypass(target.host):
            url = None
    if not url:
        return None, None
    proxy = URL(url)
    if proxy.scheme != "http" or not proxy.host:
        raise ValueError(f"{origin}: {proxy.with_password(None)} is not an http:// proxy URL")
    if proxy.user is None:
        return str(proxy), None
    return str(proxy.with_user(None)), basic_auth(proxy.user, proxy.password)


def basic_auth(user: str, password: str | None) -> str:
    """The ``Basic`` credentials header value for ``user`` and ``password`` (UTF-8)."""
    return "Basic " + base64.b64encode(f"{user}:{password or ''}".encode()).decode()
