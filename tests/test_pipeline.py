"""Phase semantics of the plugin pipeline, pinned through a real gateway.

The plugins here are classes in a temporary module loaded via ``module:Class`` from conf.d,
exactly the path a user's own plugin takes. They record every hook call in ``EVENTS``.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest
from aiohttp import ClientPayloadError
from aiohttp.test_utils import TestServer
from aiohttp.web import HTTPBadRequest
from multidict import CIMultiDict

from aigw.app import PLUGINS, create_app
from aigw.config import load_config
from aigw.context import Reply, RequestContext
from aigw.respond import ResponsePhase
from tests.conftest import GatewayFactory, write_conf

RECORDER = """
from __future__ import annotations

from aigw import Degraded, Reply, hookimpl
from aigw.config import Settings
from aigw.errors import GatewayError

EVENTS: list[tuple[str, str]] = []
IDS: list[str] = []


class RecorderConfig(Settings):
    reply: bool = False
    raise_in: str | None = None
    gateway_error: bool = False
    late_header: bool = False
    replace: str | None = None
    ready_problem: str | None = None
    degraded: str | None = None
    fail_startup: bool = False
    bad_reply: str | None = None
    echo_body: bool = False
    bad_header: bool = False


class Recorder:
    config_class = RecorderConfig

    def __init__(self, config: RecorderConfig) -> None:
        self.c = config
        self.label = type(self).__name__

    def hit(self, phase: str) -> None:
        EVENTS.append((self.label, phase))
        if self.c.raise_in == phase:
            if self.c.gateway_error:
                raise GatewayError("I am a teapot", status=418, type="teapot", code="short")
            raise RuntimeError("boom")

    @hookimpl
    async def on_request(self, ctx):
        self.hit("request")
        if self.c.bad_reply == "not a Reply":
            return {"answered_by": self.label}
        if self.c.bad_reply == "Content-Type twice":
            return Reply(body=b"{}", headers={"Content-Type": "application/json"})
        if self.c.reply:
            return Reply.json({"answered_by": self.label}, status=203)
        if self.c.echo_body:
            body = await ctx.request.read()
            return Reply.json({"read": body.decode(), "text": await ctx.request.text()})
        return None

    @hookimpl
    async def on_response_headers(self, ctx, reply):
        self.hit("headers")
        ctx.response_headers["x-seen-by-" + self.label.lower()] = "yes"
        if self.c.bad_header:
            ctx.response_headers["x-bad"] = "a\\r\\nb"  # aiohttp refuses it when sending

    @hookimpl
    async def on_response_chunk(self, ctx, chunk):
        self.hit("chunk")
        if self.c.late_header:
            ctx.response_headers["x-late"] = "too late"
        if self.c.replace is not None:
            return chunk.replace(b"You said", self.c.replace.encode())
        return None

    @hookimpl
    async def on_response_end(self, ctx):
        self.hit("end")

    @hookimpl
    async def on_log(self, ctx):
        EVENTS.append((self.label, f"log:{ctx.status}"))
        IDS.append(ctx.request_id)

    @hookimpl
    async def startup(self, gateway):
        self.hit("startup")
        if self.c.fail_startup:
            raise RuntimeError("cannot start")

    @hookimpl
    async def shutdown(self):
        EVENTS.append((self.label, "shutdown"))

    @hookimpl
    def register_routes(self, router, gateway):
        async def hello(request):
            from aiohttp import web
            return web.json_response({"hello": self.label})
        router.add_get("/plugin/" + self.label.lower(), hello)

    @hookimpl
    async def check_ready(self):
        if self.c.degraded is not None:
            return Degraded(self.c.degraded)
        return self.c.ready_problem


class A(Recorder): pass
class B(Recorder): pass
class C(Recorder): pass
"""

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def recorder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """A fresh recorder module (unique name, so no import cache is shared between tests)."""
    name = f"recorder_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text(RECORDER, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    yield module
    sys.modules.pop(name, None)


def conf(recorder: ModuleType, chunks: int = 3, **per_plugin: dict[str, Any]) -> dict[str, Any]:
    """conf.d with recorders A, B, C (in that order) before a mock provider-proxy."""
    files: dict[str, Any] = {}
    for i, label in enumerate("ABC"):
        files[f"{i + 1}0-{label}.yaml"] = {
            "plugin": f"{recorder.__name__}:{label}",
            "config": per_plugin.get(label, {}),
        }
    mock = {"name": "mock", "type": "mock", "mock": {"chunks": chunks}}
    files["90-provider-proxy.yaml"] = {"plugin": "provider-proxy", "config": {"providers": [mock]}}
    return files


def phase(recorder: ModuleType, name: str) -> list[str]:
    return [label for label, p in recorder.EVENTS if p == name]


async def post(gw: Any, body: dict[str, Any]) -> tuple[int, CIMultiDict[str], bytes]:
    async with gw.http.post(gw.url("/v1/chat/completions"), json=body) as resp:
        return resp.status, CIMultiDict(resp.headers), await resp.read()


async def test_hook_on_request(make_gateway: GatewayFactory, recorder: ModuleType) -> None:
    gw = await make_gateway(conf(recorder, B={"reply": True}))
    status, headers, body = await post(gw, CHAT)
    assert status == 203 and orjson.loads(body) == {"answered_by": "B"}
    # conf.d order, stopping at the first Reply: C and the proxy never see the request.
    assert phase(recorder, "request") == ["A", "B"]
    # Only the plugins that passed the request on see the response.
    assert phase(recorder, "headers") == ["A"]
    assert "x-seen-by-a" in headers and "x-seen-by-b" not in headers


async def test_plugins_can_read_the_body_the_core_read(
    make_gateway: GatewayFactory, recorder: ModuleType
) -> None:
    gw = await make_gateway(conf(recorder, B={"echo_body": True}))
    raw = orjson.dumps(CHAT)
    async with gw.http.post(
        gw.url("/v1/chat/completions"), data=raw, headers={"Content-Type": "application/json"}
    ) as resp:
        assert resp.status == 200
        assert await resp.json() == {"read": raw.decode(), "text": raw.decode()}


async def test_a_response_aiohttp_refuses_becomes_an_openai_error(
    make_gateway: GatewayFactory, recorder: ModuleType
) -> None:
    # A header value aiohttp refuses to send (a plugin's bug): an OpenAI error goes instead,
    # with the request's id.
    gw = await make_gateway(conf(recorder, A={"bad_header": True}))
    async with gw.http.post(
        gw.url("/v1/chat/completions"), json=CHAT, headers={"x-request-id": "rid-500"}
    ) as resp:
        assert (resp.status, resp.headers.get("x-request-id")) == (500, "rid-500")
        assert resp.headers["Content-Type"].startswith("application/json")
        err = (await resp.json())["error"]
        assert (err["type"], err["message"]) == ("server_error", "internal error in the gateway")
    # Without a client id, the one the gateway gave the request, which the plugins log too
    # (and they see the status the client got).
    for stream in (False, True, False, True):  # one connection, kept alive throughout
        async with gw.http.post(
            gw.url("/v1/chat/completions"), json={**CHAT, "stream": stream}
        ) as resp:
            assert resp.status == 500 and (await resp.json())["error"]["type"] == "server_error"
            assert resp.headers["x-request-id"] == recorder.IDS[-1]
        assert recorder.EVENTS[-1] == ("C", "log:500")


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (RuntimeError("a terminal plugin's bug"), 500),
        (TimeoutError(), 504),
        (HTTPBadRequest(), 400),
    ],
)
async def test_a_handler_that_raises_is_answered_with_the_requests_own_id(
    make_gateway: GatewayFactory, recorder: ModuleType, error: Exception, status: int
) -> None:
    # An exception escaping the core's handler (outside the plugins' hooks) is answered by
    # aiohttp, with the status it picks for it: the reply must carry the id the plugins
    # logged (no client id here), and on_log must see that status.
    gw = await make_gateway(conf(recorder))
    terminal = gw.server.app[PLUGINS].terminal

    def broken(model: str) -> None:
        raise error

    terminal.resolve_target = broken  # type: ignore[method-assign]
    async with gw.http.post(gw.url("/v1/chat/completions"), json=CHAT) as resp:
        assert resp.status == status
        assert resp.headers["x-request-id"] == recorder.IDS[-1]
        if status >= 500:
            assert (await resp.json())["error"]["type"] == "server_error"
    assert recorder.EVENTS[-1] == ("C", f"log:{status}")


async def test_hook_on_response_headers(make_gateway: GatewayFactory, recorder: ModuleType) -> None:
    gw = await make_gateway(conf(recorder))
    status, headers, _ = await post(gw, CHAT)
    assert status == 200
    assert phase(recorder, "request") == ["A", "B", "C"]
    assert phase(recorder, "headers") == ["C", "B", "A"]
    assert all(f"x-seen-by-{p}" in headers for p in "abc")


async def test_hook_on_response_chunk(make_gateway: GatewayFactory, recorder: ModuleType) -> None:
    gw = await make_gateway(conf(recorder, chunks=1, B={"replace": "B heard"}))
    stream = await gw.openai.chat.completions.create(**CHAT, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert "B heard: hi" in text and "You said" not in text
    chunks = phase(recorder, "chunk")
    # Every chunk passes C, then B, then A.
    assert len(chunks) >= 6 and len(chunks) % 3 == 0
    assert all(chunks[i : i + 3] == ["C", "B", "A"] for i in range(0, len(chunks), 3))


async def test_hook_on_response_end(make_gateway: GatewayFactory, recorder: ModuleType) -> None:
    gw = await make_gateway(conf(recorder))
    await post(gw, CHAT)
    assert phase(recorder, "end") == ["C", "B", "A"]
    assert recorder.EVENTS.index(("A", "end")) > recorder.EVENTS.index(("A", "chunk"))


async def test_response_end_skipped_when_stream_breaks(
    make_gateway: GatewayFactory, recorder: ModuleType
) -> None:
    gw = await make_gateway(conf(recorder, B={"raise_in": "chunk"}))
    async with gw.http.post(gw.url("/v1/chat/completions"), json={**CHAT, "stream": True}) as resp:
        assert resp.status == 200  # headers were already sent when B failed
        body = b""
        with pytest.raises(ClientPayloadError):  # the connection is cut, not ended cleanly
            async for data in resp.content.iter_any():
                body += data
    assert b"[DONE]" not in body
    assert b'"error"' in body  # the client is told the stream failed
    assert phase(recorder, "end") == []
    assert sorted(phase(recorder, "log:200")) == ["A", "B", "C"]


async def test_hook_on_log(make_gateway: GatewayFactory, recorder: ModuleType) -> None:
    gw = await make_gateway(conf(recorder, B={"reply": True}))
    await post(gw, CHAT)  # a local reply
    assert [(p, s) for p, s in recorder.EVENTS if s.startswith("log")] == [
        ("A", "log:203"),
        ("B", "log:203"),
        ("C", "log:203"),
    ]


@pytest.mark.parametrize(
    ("gateway_error", "status", "err_type"), [(False, 500, "server_error"), (True, 418, "teapot")]
)
async def test_exception_becomes_openai_error(
    make_gateway: GatewayFactory,
    recorder: ModuleType,
    gateway_error: bool,
    status: int,
    err_type: str,
) -> None:
    gw = await make_gateway(
        conf(recorder, B={"raise_in": "request", "gateway_error": gateway_error})
    )
    got, headers, body = await post(gw, CHAT)
    assert got == status
    err = orjson.loads(body)["error"]
    assert set(err) == {"message", "type", "code", "param"} and err["type"] == err_type
    assert "Traceback" not in body.decode() and "boom" not in body.decode()
    assert headers["x-request-id"]
    assert phase(recorder, "request") == ["A", "B"]
    assert phase(recorder, "headers") == ["A"]  # B raised: it did not pass the request on
    assert sorted(phase(recorder, f"log:{status}")) == ["A", "B", "C"]


@pytest.mark.parametrize("bad_reply", ["not a Reply", "Content-Type twice"])
async def test_a_reply_that_cannot_be_sent_becomes_openai_error(
    make_gateway: GatewayFactory, recorder: ModuleType, bad_reply: str
) -> None:
    gw = await make_gateway(conf(recorder, B={"bad_reply": bad_reply}))
    async with gw.http.post(
        gw.url("/v1/chat/completions"), json=CHAT, headers={"x-request-id": "req-7"}
    ) as resp:
        status, headers, body = resp.status, resp.headers, await resp.read()
    assert status == 500 and headers["x-request-id"] == "req-7"
    err = orjson.loads(body)["error"]
    assert set(err) == {"message", "type", "code", "param"} and err["type"] == "server_error"
    assert sorted(phase(recorder, "log:500")) == ["A", "B", "C"]  # the status the client saw


async def test_on_log_runs_for_input_rejected_by_the_core(
    make_gateway: GatewayFactory, recorder: ModuleType
) -> None:
    gw = await make_gateway(conf(recorder))
    status, _, _ = await post(gw, {"model": "m"})
    assert status == 400
    assert phase(recorder, "request") == []
    assert sorted(phase(recorder, "log:400")) == ["A", "B", "C"]


async def test_headers_are_frozen_once_sent(
    make_gateway: GatewayFactory, recorder: ModuleType
) -> None:
    gw = await make_gateway(conf(recorder, A={"late_header": True}))
    status, headers, _ = await post(gw, {**CHAT, "stream": True})
    assert status == 200 and "x-seen-by-a" in headers
    assert "x-late" not in headers


async def test_failing_response_headers_hook_becomes_error_reply(
    make_gateway: GatewayFactory, recorder: ModuleType
) -> None:
    gw = await make_gateway(conf(recorder, B={"raise_in": "headers"}))
    status, _, body = await post(gw, {**CHAT, "stream": True})
    assert status == 500
    assert orjson.loads(body)["error"]["type"] == "server_error"


async def run_lifecycle(conf_dir: Path) -> None:
    server = TestServer(create_app(load_config(conf_dir)))
    try:
        await server.start_server()
    finally:
        await server.close()


async def test_hook_startup(tmp_path: Path, recorder: ModuleType) -> None:
    await run_lifecycle(write_conf(tmp_path / "c", conf(recorder)))
    assert phase(recorder, "startup") == ["A", "B", "C"]


async def test_hook_shutdown(tmp_path: Path, recorder: ModuleType) -> None:
    await run_lifecycle(write_conf(tmp_path / "c", conf(recorder)))
    assert phase(recorder, "shutdown") == ["C", "B", "A"]


async def test_shutdown_only_for_started_plugins(tmp_path: Path, recorder: ModuleType) -> None:
    with pytest.raises(RuntimeError, match="cannot start"):
        await run_lifecycle(write_conf(tmp_path / "c", conf(recorder, B={"fail_startup": True})))
    assert phase(recorder, "startup") == ["A", "B"]
    assert phase(recorder, "shutdown") == ["A"]


async def test_hook_register_routes(make_gateway: GatewayFactory, recorder: ModuleType) -> None:
    gw = await make_gateway(conf(recorder))
    async with gw.http.get(gw.url("/plugin/b")) as resp:
        assert resp.status == 200 and await resp.json() == {"hello": "B"}
    assert phase(recorder, "request") == []  # own routes bypass the pipeline


async def test_hook_check_ready(make_gateway: GatewayFactory, recorder: ModuleType) -> None:
    ready = await make_gateway(conf(recorder), name="ready")
    async with ready.http.get(ready.url("/readyz")) as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "ready"}
    sick = await make_gateway(conf(recorder, C={"ready_problem": "vector db down"}), name="sick")
    async with sick.http.get(sick.url("/readyz")) as resp:
        assert resp.status == 503
        assert await resp.json() == {"status": "not ready", "problems": ["vector db down"]}
    # A backend the plugin fails open on: reported, and the instance stays in rotation.
    degraded = await make_gateway(conf(recorder, A={"degraded": "cache down"}), name="degraded")
    async with degraded.http.get(degraded.url("/readyz")) as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "degraded", "problems": ["cache down"]}
    # Any blocking problem wins over degraded ones; every reason is listed, in conf.d order.
    both = await make_gateway(
        conf(recorder, A={"degraded": "cache down"}, C={"ready_problem": "auth down"}), name="both"
    )
    async with both.http.get(both.url("/readyz")) as resp:
        assert resp.status == 503
        assert (await resp.json())["problems"] == ["cache down", "auth down"]


async def test_a_stream_cancelled_before_it_starts_is_closed() -> None:
    # The client leaves (aiohttp cancels the handler) while the response phase runs, before
    # the stream started: the reply's stream, which holds the upstream request, is closed.
    import pluggy

    from aigw import hookimpl, hookspecs
    from aigw.plugins import LoadedPlugins

    closed, waiting = asyncio.Event(), asyncio.Event()

    class Stream:  # what the provider's Relay looks like to the response phase
        def __aiter__(self) -> Stream:
            return self

        async def __anext__(self) -> bytes:
            return b"data: {}\n\n"

        async def aclose(self) -> None:
            closed.set()

    class Slow:  # its headers hook waits until the client leaves
        @hookimpl
        async def on_response_headers(self, ctx: RequestContext) -> None:
            waiting.set()
            await asyncio.get_running_loop().create_future()

    pm = pluggy.PluginManager("aigw")
    pm.add_hookspecs(hookspecs)
    pm.register(Slow(), name="slow")
    responses = ResponsePhase(LoadedPlugins(pm=pm, order=[("slow", Slow())], terminal=None))  # type: ignore[arg-type]
    ctx = RequestContext(request=None, request_id="r1", api="chat.completions", passed_on=("slow",))
    task = asyncio.create_task(responses.send(ctx, Reply(stream=Stream())))
    await waiting.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert closed.is_set()


async def test_replies_ready_together_are_written_together(
    tmp_path: Path, recorder: ModuleType
) -> None:
    # send() yields to the loop once before writing (see aigw.respond): two replies ready in the
    # same turn both run their headers phase before either is written and ends.
    from unittest import mock

    from aiohttp.test_utils import make_mocked_request

    from aigw import Reply
    from aigw.context import RequestContext
    from aigw.plugins import load

    loaded = load(load_config(write_conf(tmp_path / "conf.d", conf(recorder))))
    responses = ResponsePhase(loaded)
    passed = tuple(name for name, _ in loaded.order[:-1])  # A, B, C: the proxy replied

    async def answer(n: int) -> None:
        transport = mock.Mock(**{"is_closing.return_value": False})  # an open connection
        request = make_mocked_request("POST", "/v1/chat/completions", transport=transport)
        request.writer.output_size = 0  # a number, as a real writer's (older aiohttp: a Mock)
        ctx = RequestContext(request=request, request_id=f"r{n}", passed_on=passed)
        await responses.send(ctx, Reply.json({"n": n}))
        assert ctx.complete

    await asyncio.gather(answer(1), answer(2))
    phases = [p for label, p in recorder.EVENTS if label == "A" and p in ("headers", "end")]
    assert phases == ["headers", "headers", "end", "end"]
