"""The API routes' dispatch (aigw.aiohttp_private.dispatch): a dict lookup in front of aiohttp's
router that must give the router's result, only faster, and leave the router to it when the
fast paths are off."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from yarl import URL

from aigw import aiohttp_private
from aigw.aiohttp_private import dispatch
from tests.conftest import Gateway

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "dispatch?"}]}

ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]


async def api(request: web.Request) -> web.Response:
    """The gateway's route for every method, in the small apps below."""
    return web.Response(text="api")


class Resolutions(list[tuple[web.UrlDispatcher, str]]):
    """What aiohttp's routers resolved, in order: (router, path)."""

    def of(self, app: web.Application) -> list[str]:
        """The paths ``app``'s router resolved (the fake upstream's has its own)."""
        return [path for router, path in self if router is app.router]


@pytest.fixture
def resolutions(monkeypatch: pytest.MonkeyPatch) -> Iterator[Resolutions]:
    seen = Resolutions()
    resolve = web.UrlDispatcher.resolve

    async def counting(self: web.UrlDispatcher, request: web.Request) -> Any:
        seen.append((self, request.path))
        return await resolve(self, request)

    monkeypatch.setattr(web.UrlDispatcher, "resolve", counting)
    yield seen


async def test_api_paths_skip_the_router(gateway: Gateway, resolutions: Resolutions) -> None:
    async with gateway.http.post(gateway.url("/v1/chat/completions"), json=CHAT) as resp:
        assert resp.status == 200
        assert "dispatch?" in (await resp.json())["choices"][0]["message"]["content"]
        assert resp.headers["x-request-id"]
    async with gateway.http.get(gateway.url("/v1/models")) as resp:
        assert resp.status == 200
    assert resolutions.of(gateway.server.app) == []
    async with gateway.http.get(gateway.url("/healthz")) as resp:
        assert resp.status == 200
    assert resolutions.of(gateway.server.app) == ["/healthz"]


async def test_what_the_lookup_does_not_match_goes_through_the_router(
    gateway: Gateway, resolutions: Resolutions
) -> None:
    # A query string, a percent-encoded path: the same route, found by the router.
    for path in ("/v1/chat/completions?trace=1", "/v1/chat/%63ompletions"):
        url = URL(gateway.url("/") + path.lstrip("/"), encoded=True)  # sent as written
        async with gateway.http.post(url, json=CHAT) as resp:
            assert resp.status == 200, path
            assert "dispatch?" in (await resp.json())["choices"][0]["message"]["content"]
    assert resolutions.of(gateway.server.app) == ["/v1/chat/completions"] * 2
    # A wrong method still gets the API handler's OpenAI-style 405.
    async with gateway.http.get(gateway.url("/v1/chat/completions")) as resp:
        assert resp.status == 405
        assert (await resp.json())["error"]["code"] == "method_not_allowed"


async def test_expect_100_continue_is_answered(gateway: Gateway, resolutions: Resolutions) -> None:
    # aiohttp sends the body only after the server's "100 Continue", which the router's path
    # answers: without it this request would hang until the client's timeout.
    async with gateway.http.post(
        gateway.url("/v1/chat/completions"),
        json=CHAT,
        expect100=True,
        timeout=aiohttp.ClientTimeout(total=5),
    ) as resp:
        assert resp.status == 200
    assert resolutions.of(gateway.server.app) == ["/v1/chat/completions"]


async def test_handlers_see_the_app_and_response_signals_run(
    aiohttp_client: ClientFactory,
    resolutions: Resolutions,
) -> None:
    app = web.Application()
    seen: list[str] = []

    async def noting(request: web.Request) -> web.Response:
        seen.append(f"{request.app is app} {request.match_info.route.resource.canonical}")
        return web.Response(text="api")

    async def stamp(request: web.Request, response: web.StreamResponse) -> None:
        response.headers["x-signal"] = "ran"

    app.router.add_route("*", "/v1/models", noting)
    app.on_response_prepare.append(stamp)
    dispatch(app, ["/v1/models"])
    client = await aiohttp_client(app)
    resp = await client.get("/v1/models")
    assert (await resp.text(), resp.headers["x-signal"]) == ("api", "ran")
    assert seen == ["True /v1/models"]
    assert resolutions.of(app) == []


async def test_dispatched_handlers_see_the_apps_config(aiohttp_client: ClientFactory) -> None:
    # request.config_dict looks request.app up in the match info's stack of apps.
    app = web.Application()
    key = web.AppKey("setting", str)
    app[key] = "from the app"

    async def reading(request: web.Request) -> web.Response:
        return web.Response(text=request.config_dict[key])

    app.router.add_route("*", "/v1/models", reading)
    dispatch(app, ["/v1/models"])
    client = await aiohttp_client(app)
    resp = await client.get("/v1/models")
    assert (resp.status, await resp.text()) == (200, "from the app")


async def test_each_request_has_a_match_info_of_its_own(
    aiohttp_client: ClientFactory,
    resolutions: Resolutions,
) -> None:
    # A match info is a dict a handler may write to, as the router's fresh one per request is:
    # nothing written for one request may show in the next.
    app = web.Application()

    async def writing(request: web.Request) -> web.Response:
        before = request.match_info.get("who")
        request.match_info["who"] = request.headers["who"]
        return web.Response(text=f"{before}")

    app.router.add_route("*", "/v1/models", writing)
    dispatch(app, ["/v1/models"])
    client = await aiohttp_client(app)
    seen = [await (await client.get("/v1/models", headers={"who": w})).text() for w in "ab"]
    assert seen == ["None", "None"]
    assert resolutions.of(app) == []


async def test_an_app_with_middlewares_keeps_them_on_the_api_routes(
    aiohttp_client: ClientFactory,
    resolutions: Resolutions,
) -> None:
    # Whoever embeds the app and adds a middleware (an auth check, say) gets it on every route.
    @web.middleware
    async def locked(request: web.Request, handler: Any) -> web.StreamResponse:
        raise web.HTTPUnauthorized()

    app = web.Application(middlewares=[locked])
    app.router.add_route("*", "/v1/models", api)
    dispatch(app, ["/v1/models"])
    client = await aiohttp_client(app)
    assert (await client.get("/v1/models")).status == 401
    assert resolutions.of(app) == ["/v1/models"]


async def test_a_route_registered_first_keeps_its_precedence(
    aiohttp_client: ClientFactory,
    resolutions: Resolutions,
) -> None:
    # A plugin's GET /v1/models, registered before the gateway's route for every method: the
    # router sends GETs to the plugin, so the lookup must not take the path over.
    app = web.Application()

    async def plugin(request: web.Request) -> web.Response:
        return web.Response(text="plugin")

    app.router.add_get("/v1/models", plugin)
    app.router.add_route("*", "/v1/models", api)
    dispatch(app, ["/v1/models"])
    client = await aiohttp_client(app)
    assert await (await client.get("/v1/models")).text() == "plugin"
    assert await (await client.post("/v1/models")).text() == "api"
    assert resolutions.of(app) == ["/v1/models", "/v1/models"]


async def test_with_the_fast_paths_off_the_router_serves_them(
    aiohttp_client: ClientFactory,
    resolutions: Resolutions,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(aiohttp_private, "FAST_PATHS_OK", False)
    app = web.Application()
    app.router.add_route("*", "/v1/models", api)
    assert dispatch(app, ["/v1/models"]) is False
    client = await aiohttp_client(app)
    assert await (await client.get("/v1/models")).text() == "api"
    assert resolutions.of(app) == ["/v1/models"]
