"""The Redis store over TLS, against a real redis-server listening with TLS.

Certificates come from a throwaway CA (trustme). The server's certificate is always verified:
a server signed by another CA is a store error (the cache fails open), never a trusted one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from pydantic import ValidationError

from aigw.cache.redis_store import RedisStore, RedisStoreConfig
from aigw.cache.stores import StoreError
from tests.cache.test_stores import SCOPE, rec
from tests.conftest import GatewayFactory, Upstream
from tests.redis_server import RedisServer
from tests.test_exact_cache import ask, cache_conf, settle

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("AIGW_TEST_REDIS_URL")), reason="starts its own TLS redis-server"
)


@dataclass(frozen=True)
class Pki:
    """PEM files: the CA, the server's certificate and key, a client certificate and key."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing here


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    where = tmp_path_factory.mktemp("pki")
    ca, other = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    client = ca.issue_cert("aigw-client")
    files = Pki(*(where / n for n in ("ca", "scert", "skey", "ccert", "ckey", "other")))
    ca.cert_pem.write_to_path(str(files.ca))
    other.cert_pem.write_to_path(str(files.other_ca))
    server.cert_chain_pems[0].write_to_path(str(files.server_cert))
    server.private_key_pem.write_to_path(str(files.server_key))
    client.cert_chain_pems[0].write_to_path(str(files.client_cert))
    client.private_key_pem.write_to_path(str(files.client_key))
    return files


class TlsRedis(RedisServer):
    """A redis-server that also listens with TLS on ``tls_port``."""

    def __init__(self, workdir: Path, pki: Pki, client_certs: bool) -> None:
        super().__init__(
            workdir,
            *("--tls-cert-file", str(pki.server_cert), "--tls-key-file", str(pki.server_key)),
            *("--tls-ca-cert-file", str(pki.ca)),
            *("--tls-auth-clients", "yes" if client_certs else "no"),
            port_options=("--port", "--tls-port"),
        )

    @property
    def tls_port(self) -> int:
        return self.ports["--tls-port"]

    @property
    def tls_url(self) -> str:
        return f"rediss://127.0.0.1:{self.tls_port}/0"


def serve(tmp_path: Path, pki: Pki, client_certs: bool) -> Iterator[TlsRedis]:
    server = TlsRedis(tmp_path, pki, client_certs)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def tls_redis(tmp_path: Path, pki: Pki) -> Iterator[TlsRedis]:
    """TLS without client certificates."""
    yield from serve(tmp_path, pki, client_certs=False)


@pytest.fixture
def mtls_redis(tmp_path: Path, pki: Pki) -> Iterator[TlsRedis]:
    """TLS that requires a client certificate (Redis's own default)."""
    yield from serve(tmp_path, pki, client_certs=True)


async def round_trip(**config: Any) -> str | None:
    """Store a record and read it back through a store built from ``config``."""
    # A generous deadline: a TLS handshake on a busy CI machine can take over the 100 ms default.
    store = RedisStore(RedisStoreConfig(key_prefix="tls:", timeout_ms=5000, **config))
    try:
        await store.set(rec("k", "over tls"))
        found = await store.get(SCOPE, "k")
    finally:
        await store.aclose()
    return found.response["choices"][0]["message"]["content"] if found else None


async def test_rediss_url_with_a_private_ca(tls_redis: TlsRedis, pki: Pki) -> None:
    assert await round_trip(url=tls_redis.tls_url, tls_ca_file=str(pki.ca)) == "over tls"


async def test_host_port_and_tls_flag(tls_redis: TlsRedis, pki: Pki) -> None:
    got = await round_trip(
        host="127.0.0.1", port=tls_redis.tls_port, tls=True, tls_ca_file=str(pki.ca)
    )
    assert got == "over tls"


async def test_client_certificate(mtls_redis: TlsRedis, pki: Pki) -> None:
    got = await round_trip(
        url=mtls_redis.tls_url,
        tls_ca_file=str(pki.ca),
        tls_cert_file=str(pki.client_cert),
        tls_key_file=str(pki.client_key),
    )
    assert got == "over tls"
    # Without one, the server refuses the handshake: a store error, which the cache fails
    # open on.
    with pytest.raises(StoreError):
        await round_trip(url=mtls_redis.tls_url, tls_ca_file=str(pki.ca))


async def test_a_server_signed_by_another_ca_is_not_trusted(tls_redis: TlsRedis, pki: Pki) -> None:
    with pytest.raises(StoreError, match=r"(?i)certificate"):
        await round_trip(url=tls_redis.tls_url, tls_ca_file=str(pki.other_ca))
    with pytest.raises(StoreError):  # nor by the system's CAs
        await round_trip(url=tls_redis.tls_url)


def test_tls_mistakes_are_config_errors(tmp_path: Path, pki: Pki) -> None:
    ca = str(pki.ca)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"url": "redis://h:6379/0", "tls_ca_file": ca}, "only with TLS"),
        ({"host": "h", "tls_ca_file": ca}, "only with TLS"),
        ({"url": "redis://h:6379/0", "tls": True}, "rediss://"),
        ({"url": "rediss://h", "tls_cert_file": str(pki.client_cert)}, "go together"),
        ({"url": "rediss://h", "tls_ca_file": str(tmp_path / "missing.pem")}, "no such file"),
    ]
    for config, message in cases:
        with pytest.raises(ValidationError, match=message):
            RedisStoreConfig(**config)


async def test_gateway_shares_answers_through_tls_redis(
    make_gateway: GatewayFactory, upstream: Upstream, tls_redis: TlsRedis, pki: Pki
) -> None:
    store = {"type": "redis", "url": tls_redis.tls_url, "tls_ca_file": str(pki.ca)}
    store["timeout_ms"] = 5000  # see round_trip
    gw = await make_gateway(cache_conf(upstream, store))
    assert (await ask(gw))[0] == "miss"
    await settle(gw)
    assert (await ask(gw))[0] == "hit"
    assert upstream.llm.chat_calls == 1
