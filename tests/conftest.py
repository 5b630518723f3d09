"""Shared fixtures: a fake OpenAI upstream, and real gateways built from conf.d files.

Every gateway here is the real application (``aigw.app.create_app``) on a free port, built from
conf.d YAML files written to a temporary directory, exactly as ``aigw -c`` would load them.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import yaml
from aiohttp.test_utils import TestServer

from aigw.app import create_app
from aigw.config import load_config
from aigw.ratelimit_log import RateLimitFilter
from tests.fakes import FakeLLM
from tests.redis_server import RedisServer

UPSTREAM_KEY = "sk-upstream-secret"
# For the tests' openai clients: a hang fails the test in this time, not in the client's
# default 10 minutes.
CLIENT_TIMEOUT_S = 30.0


@dataclass
class Upstream:
    """The fake LLM and where it listens."""

    llm: FakeLLM
    server: TestServer

    @property
    def base_url(self) -> str:
        return str(self.server.make_url("/v1"))

    @property
    def root_url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")


@dataclass
class Gateway:
    """A running gateway: its server, a raw HTTP session and an openai client."""

    server: TestServer
    http: aiohttp.ClientSession
    openai: openai.AsyncOpenAI
    conf_dir: Path

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))


def write_conf(conf_dir: Path, files: dict[str, Any]) -> Path:
    """Write ``{"00-gateway.yaml": {...}, ...}`` as YAML files into ``conf_dir``."""
    conf_dir.mkdir(parents=True, exist_ok=True)
    for name, doc in files.items():
        text = doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False)
        (conf_dir / name).write_text(text, encoding="utf-8")
    return conf_dir


def provider_file(upstream: Upstream, **provider: Any) -> dict[str, Any]:
    """A provider-proxy conf.d document with one OpenAI provider pointing at the fake."""
    spec = {
        "name": "fake",
        "type": "openai",
        "base_url": upstream.base_url,
        "api_keys": [UPSTREAM_KEY],
        "models": ["*"],
        "retry_backoff_s": 0,
        **provider,
    }
    return {"plugin": "provider-proxy", "config": {"providers": [spec]}}


@pytest.fixture(autouse=True)
def fresh_log_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with empty log rate limits: the loggers' filters are process-wide,
    and one test's errors would otherwise silence the next one's."""
    for name in (
        "aigw.provider_proxy",
        "aigw.http_errors",
        "aiohttp.server",
        "aigw.connections",
        "aigw.connections.fds",
    ):
        logger = logging.getLogger(name)
        fresh = [
            RateLimitFilter(f.burst, f.period) if isinstance(f, RateLimitFilter) else f
            for f in logger.filters
        ]
        monkeypatch.setattr(logger, "filters", fresh)


@pytest.fixture
async def upstream(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> Upstream:
    """The fake OpenAI upstream on a free port; it only accepts ``UPSTREAM_KEY``."""
    llm = FakeLLM(api_key=UPSTREAM_KEY)
    return Upstream(llm=llm, server=await aiohttp_server(llm.app))


GatewayFactory = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def make_gateway(
    tmp_path: Path, aiohttp_server: Callable[..., Awaitable[TestServer]]
) -> AsyncIterator[GatewayFactory]:
    """Build and start gateways from conf.d documents; closes their clients afterwards."""
    opened: list[Gateway] = []

    async def make(files: dict[str, Any], name: str = "conf.d") -> Gateway:
        conf_dir = write_conf(tmp_path / name, files)
        server = await aiohttp_server(create_app(load_config(conf_dir)))
        gw = Gateway(
            server=server,
            http=aiohttp.ClientSession(),
            openai=openai.AsyncOpenAI(
                base_url=str(server.make_url("/v1")),
                api_key="sk-client",
                max_retries=0,
                timeout=CLIENT_TIMEOUT_S,
            ),
            conf_dir=conf_dir,
        )
        opened.append(gw)
        return gw

    yield make
    for gw in opened:
        await gw.http.close()
        await gw.openai.close()


@pytest.fixture
async def gateway(make_gateway: GatewayFactory, upstream: Upstream) -> Gateway:
    """The gateway with skip-header and provider-proxy in front of the fake upstream."""
    return await make_gateway(
        {
            "20-skip-header.yaml": {"plugin": "skip-header"},
            "90-provider-proxy.yaml": provider_file(upstream),
        }
    )


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis for the whole session: ``AIGW_TEST_REDIS_URL``, or our own redis-server."""
    url = os.environ.get("AIGW_TEST_REDIS_URL")
    if url:
        yield url
        return
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server.url
    server.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own, which the test may stop and restart."""
    if os.environ.get("AIGW_TEST_REDIS_URL"):
        pytest.skip("needs its own redis-server (AIGW_TEST_REDIS_URL is set)")
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def key_prefix() -> str:
    """A Redis key prefix no other test uses."""
    return f"aigw-test:{uuid.uuid4().hex[:12]}:"
