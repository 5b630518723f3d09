"""The reference floor: the simplest correct aiohttp pass-through proxy.

One pooled `ClientSession`; `POST /v1/chat/completions` is forwarded with its body and its
`Content-Type` and `Authorization` headers, and the answer comes back unparsed: a JSON answer
whole, an SSE answer chunk by chunk as it arrives. Whatever aigw adds on top of this (config,
plugins, cache lookups, header hygiene) is what `benchmarks.run` measures as overhead.

    python -m benchmarks.bare_proxy --port 9001 --upstream http://127.0.0.1:9000
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Sequence

import aiohttp
import orjson
from aiohttp import web

from benchmarks._runtime import serve

SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM_URL = web.AppKey("upstream_url", str)

FORWARDED_HEADERS = ("Content-Type", "Authorization")


def _bad_gateway(exc: Exception) -> web.Response:
    body = {
        "error": {
            "message": f"upstream unreachable: {exc!r}",
            "type": "upstream_error",
            "param": None,
            "code": None,
        }
    }
    return web.Response(status=502, body=orjson.dumps(body), content_type="application/json")


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """Forward one request upstream and relay the answer."""
    body = await request.read()
    headers = {name: value for name in FORWARDED_HEADERS if (value := request.headers.get(name))}
    try:
        upstream = await request.app[SESSION].post(
            request.app[UPSTREAM_URL], data=body, headers=headers
        )
    except aiohttp.ClientError as exc:
        return _bad_gateway(exc)
    async with upstream:
        content_type = upstream.headers.get("Content-Type", "application/json")
        if not content_type.startswith("text/event-stream"):
            try:
                payload = await upstream.read()
            except aiohttp.ClientError as exc:
                return _bad_gateway(exc)
            return web.Response(
                status=upstream.status, body=payload, headers={"Content-Type": content_type}
            )
        response = web.StreamResponse(
            status=upstream.status,
            headers={"Content-Type": content_type, "Cache-Control": "no-cache"},
        )
        await response.prepare(request)
        # Once the headers are out an upstream failure can only be signalled by cutting the
        # connection, which is what letting the error propagate does.
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response


def make_app(upstream: str) -> web.Application:
    """The bare proxy as an aiohttp application forwarding to `upstream` (scheme://host:port)."""
    app = web.Application()
    app[UPSTREAM_URL] = upstream.rstrip("/") + "/v1/chat/completions"

    async def client_session(app: web.Application) -> AsyncIterator[None]:
        # limit=0: the pool grows to whatever concurrency the load asks for, like a gateway's.
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=300),
        ) as session:
            app[SESSION] = session
            yield

    app.cleanup_ctx.append(client_session)
    app.router.add_post("/v1/chat/completions", chat_completions)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point: serve the bare proxy until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:9000")
    args = parser.parse_args(argv)
    serve(make_app(args.upstream), args.host, args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
