"""A refused request's memory (its body above all) is freed when its reply is done, by reference
counting alone, not whenever the garbage collector next runs a full pass.

In production the collector runs rarely (``aigw.cli._tune_gc``): a reference cycle through an
error's traceback (the error kept in ``ctx.error``, its frames holding ``ctx`` and the body)
kept twenty 7 MB bad-JSON bodies resident, 59 → 364 MB. Here the collector is off while the
requests run, so whatever is still alive afterwards is held by a cycle.
"""

from __future__ import annotations

import gc
import io
import tracemalloc
from collections.abc import Iterator

import aiohttp
import orjson
import pytest

from aigw.context import RequestContext
from tests.conftest import Gateway

CHAT = "/v1/chat/completions"
BODY_MB = 2
CONTENT = "x" * (BODY_MB << 20)
BAD_BODIES = [
    # Not JSON (orjson's error keeps the whole document, as a str).
    b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "' + CONTENT.encode() + b'"}',
    # JSON, but not a request: refused by validation.
    orjson.dumps({"model": "gpt-4o", "messages": "not a list", "x": CONTENT}),
    # JSON, but not an object.
    orjson.dumps([CONTENT]),
]


@pytest.fixture
def no_collector() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def live_contexts() -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, RequestContext))


@pytest.mark.parametrize("body", BAD_BODIES, ids=["bad-json", "invalid-request", "not-an-object"])
async def test_a_refused_requests_body_is_freed_without_the_collector(
    gateway: Gateway, no_collector: None, body: bytes
) -> None:
    # One connection, so that the health check after each request runs only once that
    # request's handler (on_log included) is done with it.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http:
        headers = {"Content-Type": "application/json"}
        async with http.post(gateway.url(CHAT), data=b"{}", headers=headers) as resp:
            assert resp.status == 400  # a warm-up, so that what is allocated once is counted out
        before_contexts = live_contexts()
        tracemalloc.start()
        try:
            before, _ = tracemalloc.get_traced_memory()
            for _ in range(5):
                body_io = io.BytesIO(body)  # raw bytes this large make aiohttp warn
                async with http.post(gateway.url(CHAT), data=body_io, headers=headers) as resp:
                    assert resp.status == 400, await resp.text()
                    await resp.read()
                del body_io
                async with http.get(gateway.url("/healthz")) as resp:
                    assert resp.status == 200
            after, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        # Every request's context went with its reply (none kept alive by a cycle)...
        assert live_contexts() == before_contexts
        # ... and its body: 5 bodies of 2 MB (and as much again decoded) went through; less
        # than one of them is left.
        assert after - before < (BODY_MB << 20) // 2, f"{(after - before) >> 10} KiB left"
