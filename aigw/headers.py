"""Which headers cross the gateway, in each direction.

Never forwarded upstream: hop-by-hop headers (RFC 9110 §7.6.1), any header that carries
credentials (:func:`is_credential`: the gateway's own key, or a key the client meant for some
other service), the cache controls, the client's choice of OpenAI organisation or project, its
address (``Forwarded``, ``X-Forwarded-*``), ``Host``, and length/encoding headers that no
longer match the body the gateway sends; the operator may name more, or forward only the
headers it names (:class:`UpstreamHeaders`). Never copied back to the client: hop-by-hop
headers, headers about the upstream's host or account (HSTS, ``Alt-Svc``, ``Via``, ``Age``,
``openai-organization``), and length/encoding/type headers aiohttp recomputes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Final

from multidict import MultiMapping

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

# Headers that carry credentials, by name; :func:`is_credential` also knows them by pattern.
CREDENTIALS: Final = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "api-key",
        "apikey",
        "x-api-key",
        "x-goog-api-key",
        "anthropic-api-key",
        "x-auth-token",
        "x-amz-security-token",
        "ocp-apim-subscription-key",
        "x-auth",
        "token",
        "key",
    }
)
# Names containing one of these, or ending with one of those (once "_" is read as "-"), carry
# credentials too: "x-ms-foo-key", "x-vault-token", "x-client-secret", "set-cookie"...
_CREDENTIAL_PARTS: Final = (
    "authorization",
    "authentication",
    "cookie",
    "api-key",
    "apikey",
    "secret",
    "password",
    "credential",
)
_CREDENTIAL_ENDS: Final = ("-key", "-token", "-auth")


# Names that look like credentials but are not: an idempotency key lets the provider drop a
# retried request it already processed, which is what the client wants.
NOT_CREDENTIALS: Final = frozenset({"idempotency-key", "x-idempotency-key"})


def is_credential(name: str) -> bool:
    """Whether a header named ``name`` (lower-case) carries credentials: one of
    :data:`CREDENTIALS`, or a name that looks like one (``*-key``, ``*-token``, ``*-auth``,
    anything with ``authorization``, ``cookie``, ``api-key``, ``secret``, ``password``...)."""
    name = name.replace("_", "-")
    return name not in NOT_CREDENTIALS and (
        name in CREDENTIALS
        or name.endswith(_CREDENTIAL_ENDS)
        or any(part in name for part in _CREDENTIAL_PARTS)
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
_to_downstream: dict[str, bool] = {}


def _kept(
    headers: Mapping[str, str], crosses: Callable[[str], bool], memo: dict[str, bool]
) -> dict[str, str]:
    out = {}
    for k, v in headers.items():
        ok = memo.get(k)
        if ok is None:
            ok = crosses(k.lower())
            if len(memo) < _MEMO_MAX:
                memo[k] = ok
        if ok:
            out[k] = v
    return out


class UpstreamHeaders:
    """The filter of the client's headers on their way upstream: call it with the request's
    headers for those that may go.

    ``drop``: more header names never forwarded (any case). ``forward``: if given, the only
    client headers forwarded (the gateway still sets its own: the API key, ``Content-Type``,
    ``x-request-id``, a provider's ``headers``). Neither can let through a header of
    :data:`NOT_UPSTREAM` or one that carries credentials (:func:`is_credential`): naming one
    in ``forward`` is a ``ValueError``.
    """

    __slots__ = ("_connection_only", "_dropped", "_forward", "_memo")

    def __init__(self, drop: Iterable[str] = (), forward: Iterable[str] | None = None) -> None:
        self._dropped = NOT_UPSTREAM.union(name.lower() for name in drop)
        self._forward = None if forward is None else frozenset(n.lower() for n in forward)
        if self._forward is not None:
            never = sorted(n for n in self._forward if n in self._dropped or is_credential(n))
            if never:
                raise ValueError(f"{', '.join(never)}: never forwarded upstream")
        # A Connection line naming only these (keep-alive, as every SDK sends) drops nothing
        # more: the request takes the memo's path.
        self._connection_only = self._dropped | {""}
        self._memo: dict[str, bool] = {}

    def crosses(self, name: str) -> bool:
        """Whether a client header named ``name`` (lower-case) may go upstream."""
        if name in self._dropped or is_credential(name):
            return False
        return self._forward is None or name in self._forward

    def __call__(self, incoming: MultiMapping[str]) -> dict[str, str]:
        """The client's headers (case-insensitive, as aiohttp's) that may go upstream."""
        if "connection" in incoming:  # any Connection line, the first may be empty
            # Headers named in Connection are hop-by-hop for this hop only, on every
            # Connection line (a client may send several).
            named = {h.strip().lower() for v in incoming.getall("connection") for h in v.split(",")}
            if not named <= self._connection_only:
                crosses = self.crosses
                return {
                    k: v
                    for k, v in incoming.items()
                    if (n := k.lower()) not in named and crosses(n)
                }
        return _kept(incoming, self.crosses, self._memo)


def _crosses_downstream(name: str) -> bool:
    return name not in NOT_DOWNSTREAM


def downstream_headers(upstream: Mapping[str, str]) -> dict[str, str]:
    """The upstream response headers worth passing to the client (rate limits, ids, ...)."""
    out = _kept(upstream, _crosses_downstream, _to_downstream)
    upstream_id = upstream.get("x-request-id")
    if upstream_id:
        out["x-upstream-request-id"] = upstream_id
    return out
