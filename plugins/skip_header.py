"""``skip-header``: per-request cache controls sent by the client.

- ``x-higress-skip-ai-cache: on`` (value case-insensitive), as in Higress: no lookup, no store.
- ``Cache-Control: no-cache``: skip the lookup but store the fresh answer (a refresh).
- ``Cache-Control: no-store``: look up, but never store this answer.

It sets ``ctx.cache_lookup`` / ``ctx.cache_store`` for the cache plugins after it (every
``Cache-Control`` line counts). The proxy never forwards these headers upstream, whether or not
this plugin runs. No config keys. It never fails a request.
"""

from __future__ import annotations

from typing import Final

from aigw import hookimpl
from aigw.context import RequestContext

SKIP_HEADER: Final = "x-higress-skip-ai-cache"


class SkipHeaderPlugin:
    """Reads the client's cache-control headers into the context."""

    reads_body = False  # the headers decide: it runs before the body is read

    @hookimpl
    async def on_request(self, ctx: RequestContext) -> None:
        headers = ctx.request.headers
        skip = headers.get(SKIP_HEADER)
        if skip is not None and skip.strip().lower() == "on":
            ctx.cache_lookup = ctx.cache_store = False
        controls = headers.getall("Cache-Control", ())
        if controls:
            directives = {
                d.strip().split("=", 1)[0].lower() for c in controls for d in c.split(",")
            }
            if "no-cache" in directives:
                ctx.cache_lookup = False
            if "no-store" in directives:
                ctx.cache_store = False
