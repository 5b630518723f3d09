"""Which headers cross the gateway, in each direction.

Never forwarded upstream: hop-by-hop headers (RFC 9110 §7.6.1), the client's credentials
(the gateway's own key), the cache controls, the client's choice of OpenAI organisation or
project, its address (``Forwarded``, ``X-Forwarded-*``), ``Host``, and length/encoding headers
that no longer match the body the gateway sends. Never copied back to the client: hop-by-hop
headers, headers about the upstream's host or account (HSTS, ``Alt-Svc``, ``Via``, ``Age``,
``openai-organization``), and length/encoding/type headers aiohttp recomputes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

NOT_UPSTREAM: Final = HOP_BY_HOP | {
    # Cache controls are for the gateway, whichever plugins run.
    "cache-control",
    "x-higress-skip-ai-cache",
    # The operator's key decides which organisation and project pay, not the client.
    "openai-organization",
    "openai-project",
    # The client's address is nobody's business upstream.
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
    "host",
    "authorization",
    "api-key",
    "x-api-key",
    "cookie",
    "content-length",
    "content-encoding",
    "content-type",
    "accept-encoding",
    "expect",
}

NOT_DOWNSTREAM: Final = HOP_BY_HOP | {
    # About the upstream's host or its account, not the gateway's.
    "strict-transport-security",
    "alt-svc",
    "via",
    "age",
    "openai-organization",
    "openai-project",
    "x-request-id",  # the gateway's own id goes to the client; the upstream's is renamed
    "content-length",
    "content-encoding",
    "content-type",
    "date",
    "server",
    "set-cookie",
}


# Whether a header name crosses, per spelling. Clients send the same few names on every
# request; lowercasing and looking each one up again made up half the cost of the filtering.
# Bounded, because names come from clients.
_MEMO_MAX = 1024
_to_upstream: dict[str, bool] = {}
_to_downstream: dict[str, bool] = {}


def _kept(
    headers: Mapping[str, str], dropped: frozenset[str], memo: dict[str, bool]
) -> dict[str, str]:
    out = {}
    for k, v in headers.items():
        ok = memo.get(k)
        if ok is None:
            ok = k.lower() not in dropped
            if len(memo) < _MEMO_MAX:
                memo[k] = ok
        if ok:
            out[k] = v
    return out


def upstream_headers(incoming: Mapping[str, str]) -> dict[str, str]:
    """The client's headers that may go upstream."""
    if "connection" in incoming:  # any Connection line, the first may be empty
        # Headers named in Connection are hop-by-hop for this hop only, on every Connection
        # line (a client may send several).
        named = (v for k, v in incoming.items() if k.lower() == "connection")
        dropped = NOT_UPSTREAM.union(h.strip().lower() for v in named for h in v.split(","))
        return {k: v for k, v in incoming.items() if k.lower() not in dropped}
    return _kept(incoming, NOT_UPSTREAM, _to_upstream)


def downstream_headers(upstream: Mapping[str, str]) -> dict[str, str]:
    """The upstream response headers worth passing to the client (rate limits, ids, ...)."""
    out = _kept(upstream, NOT_DOWNSTREAM, _to_downstream)
    upstream_id = upstream.get("x-request-id")
    if upstream_id:
        out["x-upstream-request-id"] = upstream_id
    return out
