"""Plugins that decide on the headers alone run before the body is read (``reads_body``)."""

from __future__ import annotations

import asyncio
import importlib
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pluggy
import pytest

from aigw import hookimpl, hookspecs
from aigw.config import load_config
from aigw.errors import ConfigError
from aigw.plugins import LoadedPlugins, load
from tests.conftest import GatewayFactory, write_conf

GATE = """
from aigw import Reply, hookimpl
from aigw.config import Settings

SEEN: list[tuple[str, object]] = []


class GateConfig(Settings):
    key: str = "letmein"


class Gate:
    '''Refuses requests without ``x-key: <key>``, on the headers alone.'''

    config_class = GateConfig
    reads_body = False

    def __init__(self, config: GateConfig) -> None:
        self.key = config.key

    @hookimpl
    async def on_request(self, ctx):
        SEEN.append(("request", (dict(ctx.payload), ctx.model, ctx.target)))
        if ctx.request.headers.get("x-key") != self.key:
            return Reply.json({"error": {"message": "who are you?"}}, status=401)
        return None

    @hookimpl
    async def on_response_headers(self, ctx, reply):
        SEEN.append(("headers", reply.status))

    @hookimpl
    async def on_log(self, ctx):
        SEEN.append(("log", ctx.status))


class Reader:
    '''Records what it sees of the body.'''

    @hookimpl
    async def on_request(self, ctx):
        SEEN.append(("reader", (ctx.model, ctx.target.provider)))


class LogOnly:
    '''No on_request: it never needs the body, wherever it is.'''

    @hookimpl
    async def on_log(self, ctx):
        SEEN.append(("log-only", ctx.status))


class BadFlag(Reader):
    reads_body = "no"


class Caches:
    '''An exact miss, then a semantic hit, recorded as two caches would.'''

    @hookimpl
    async def on_request(self, ctx):
        from aigw.context import CacheOutcome

        ctx.record_cache(CacheOutcome("exact-cache", "exact", "miss", key="e" * 16))
        hit = CacheOutcome("semantic-cache", "semantic", "hit", key="s" * 16, similarity=0.93124)
        ctx.record_cache(hit)
        return Reply.json({"cached": True}, headers={"x-aigw-cache": "forged"})
"""

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def gate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    name = f"gate_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text(GATE, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield importlib.import_module(name)
    sys.modules.pop(name, None)


def conf(gate: ModuleType, first: str = "Gate") -> dict[str, Any]:
    mock = {"name": "mock", "type": "mock", "models": ["m"]}
    return {
        "10-first.yaml": {"plugin": f"{gate.__name__}:{first}"},
        "20-reader.yaml": {"plugin": f"{gate.__name__}:Reader"},
        "90-provider-proxy.yaml": {"plugin": "provider-proxy", "config": {"providers": [mock]}},
    }


async def test_refused_on_the_headers_before_the_body_is_read(
    make_gateway: GatewayFactory, gate: ModuleType
) -> None:
    gw = await make_gateway(conf(gate))
    # Headers promising a large body, and no body at all: the refusal comes without it.
    reader, writer = await asyncio.open_connection(gw.server.host, gw.server.port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000000\r\n\r\n"
    )
    await writer.drain()
    async with asyncio.timeout(10):
        status_line = await reader.readline()
    writer.close()
    assert status_line.startswith(b"HTTP/1.1 401"), status_line
    # The gate saw no body and no target; nothing after it ran.
    assert gate.SEEN[0] == ("request", ({}, "", None))
    assert not [e for e in gate.SEEN if e[0] == "reader"]


@pytest.mark.parametrize(
    "body",
    [
        orjson.dumps({**CHAT, "model": "no-such-model"}),  # would be 404 model_not_found
        b"{not json",  # would be 400 invalid_json
        orjson.dumps({"model": "m"}),  # would be 400: no messages
    ],
)
async def test_a_refused_caller_learns_nothing_about_models_or_bodies(
    make_gateway: GatewayFactory, gate: ModuleType, body: bytes
) -> None:
    gw = await make_gateway(conf(gate))
    headers = {"Content-Type": "application/json"}
    async with gw.http.post(gw.url("/v1/chat/completions"), data=body, headers=headers) as resp:
        assert resp.status == 401
        assert (await resp.json())["error"]["message"] == "who are you?"


async def test_an_admitted_caller_gets_body_errors_seen_on_the_way_back(
    make_gateway: GatewayFactory, gate: ModuleType
) -> None:
    gw = await make_gateway(conf(gate))
    headers = {"x-key": "letmein"}
    bad = {**CHAT, "model": "no-such-model"}
    async with gw.http.post(gw.url("/v1/chat/completions"), json=bad, headers=headers) as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "model_not_found"
    # The gate passed it on, so it sees the core's error reply and its status; the reader,
    # after the body read, never ran.
    assert [e for e in gate.SEEN if e[0] != "request"] == [("headers", 404), ("log", 404)]
    assert not [e for e in gate.SEEN if e[0] == "reader"]
    gate.SEEN.clear()
    async with gw.http.post(gw.url("/v1/chat/completions"), json=CHAT, headers=headers) as resp:
        assert resp.status == 200
    # The plugin after the gate reads the body: payload, model and target are there.
    assert ("reader", ("m", "mock")) in gate.SEEN


async def test_without_reads_body_false_the_body_comes_first(
    make_gateway: GatewayFactory, gate: ModuleType
) -> None:
    # Reader first (it needs the body): a bad body is refused before any plugin runs.
    gw = await make_gateway(
        conf(gate, first="Reader") | {"20-reader.yaml": {"plugin": f"{gate.__name__}:Gate"}}
    )
    headers = {"Content-Type": "application/json", "x-key": "letmein"}
    url = gw.url("/v1/chat/completions")
    async with gw.http.post(url, data=b"{not json", headers=headers) as resp:
        assert resp.status == 400
    assert not [e for e in gate.SEEN if e[0] in ("request", "reader", "headers")]
    assert gate.SEEN == [("log", 400)]


def test_reads_body_must_be_a_bool(tmp_path: Path, gate: ModuleType) -> None:
    from aigw.pipeline import Pipeline

    loaded = load(load_config(write_conf(tmp_path / "conf.d", conf(gate, first="BadFlag"))))
    with pytest.raises(ConfigError, match="reads_body must be True or False"):
        Pipeline(loaded)


async def test_cache_outcomes_become_headers_in_one_place(
    make_gateway: GatewayFactory, gate: ModuleType
) -> None:
    gw = await make_gateway(conf(gate, first="Caches"))
    async with gw.http.post(gw.url("/v1/chat/completions"), json=CHAT) as resp:
        assert resp.status == 200
        headers = resp.headers
    assert headers.getall("x-aigw-cache") == ["hit"]  # the core's, over the reply's own
    assert headers["x-aigw-cache-type"] == "semantic"
    assert headers["x-aigw-cache-key"] == "s" * 16
    assert headers["x-aigw-cache-similarity"] == "0.9312"


async def test_a_plugin_without_on_request_before_the_gate_leaves_it_first(
    make_gateway: GatewayFactory, gate: ModuleType
) -> None:
    files = conf(gate) | {"05-log.yaml": {"plugin": f"{gate.__name__}:LogOnly"}}
    gw = await make_gateway(dict(sorted(files.items())))
    bad = {**CHAT, "model": "no-such-model"}
    async with gw.http.post(gw.url("/v1/chat/completions"), json=bad) as resp:
        assert resp.status == 401  # not 404: the model was never looked up
    assert ("log-only", 401) in gate.SEEN


async def test_a_client_leaving_before_the_headers_went_out_is_a_499(
    tmp_path: Path, gate: ModuleType
) -> None:
    # A whole body's on_response_chunk runs before the headers are sent: the client leaving
    # then (the handler cancelled) is logged as 499, not as the reply's status.
    from aigw import Reply
    from aigw.context import RequestContext
    from aigw.respond import ResponsePhase

    waiting = asyncio.Event()

    class Slow:
        @hookimpl
        async def on_response_chunk(self, ctx: RequestContext, chunk: bytes) -> None:
            waiting.set()
            await asyncio.get_running_loop().create_future()

    pm = pluggy.PluginManager("aigw")
    pm.add_hookspecs(hookspecs)
    pm.register(Slow(), name="slow")
    loaded = LoadedPlugins(pm=pm, order=[("slow", Slow())], terminal=None)  # type: ignore[arg-type]
    responses = ResponsePhase(loaded)
    ctx = RequestContext(request=None, request_id="r1", passed_on=("slow",))  # type: ignore[arg-type]
    task = asyncio.create_task(responses.send(ctx, Reply.json({"ok": True})))
    await waiting.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError) as err:
        await task
    responses.abandon(ctx, err.value)
    assert ctx.status == 499
