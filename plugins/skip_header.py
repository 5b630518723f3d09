"""``skip-header``: per-request cache controls sent by the client.

- ``x-higress-skip-ai-cache: on`` (value case-insensitive), as in Higress: no lookup, no store.
- ``Cache-Control: no-cache``: skip the lookup but store the fresh answer (a refresh).
- ``Cache-Control: no-store``: look up, but never store this answer.

It sets ``ctx.cache_lookup`` / ``ctx.cache_store`` for the cache plugins after it, and adds
these headers to ``ctx.strip_headers`` so they are not forwarded upstream. No config keys.
It never fails a request.
"""

from __future__ import annotations

from typing import Final

from aigw import hookimpl
from aigw.context import RequestContext

SKIP_HEADER: Final = "x-higress-skip-ai-cache"


class SkipHeaderPlugin:
    """Reads the client's cache-control headers into the context."""

    @hookimpl
    async def on_request(self, ctx: RequestContext) -> None:
        headers = ctx.request.headers
        skip = headers.get(SKIP_HEADER)
        if skip is not None:
            ctx.strip_headers.add(SKIP_HEADER)
            if skip.strip().lower() == "on":
                ctx.cache_lookup = ctx.cache_store = False
        control = headers.get("Cache-Control")
        if control is not None:
            ctx.strip_headers.add("cache-control")
            directives = {d.strip().split("=", 1)[0].lower() for d in control.split(",")}
            if "no-cache" in directives:
                ctx.cache_lookup = False
            if "no-store" in directives:
                ctx.cache_store = False
