"""The Redis exact store, through ``redis.asyncio`` (the maintained successor of aioredis).

Every call has a deadline (``timeout_ms``, default 100 ms) so a slow Redis costs a request at
most that much; errors and timeouts raise :class:`~aigw.cache.stores.StoreError` for the cache
to treat as a miss. A dropped connection (a Redis restart) is retried once at once, so the
first request after a restart does not miss needlessly. A Redis that keeps failing is skipped
for a while (:class:`~aigw.cache.breaker.CircuitBreaker`: ``breaker_failures`` failures in a
row, then calls fail at once for ``breaker_cooldown_s``, then one probe), so a stalled Redis
does not cost every request the whole deadline. Replies are parsed by hiredis (C),
installed with aigw, which makes a Redis hit markedly cheaper than redis-py's Python parser.

Lookups are batched: the GETs of every request that looks up during one turn of the event loop
go to Redis as one ``MGET`` on the next turn. A redis-py command costs far more CPU in Python
than Redis needs to answer it, so under load this is what keeps a Redis hit cheap; a lone
request waits one loop turn, microseconds.

Key layout: ``<key_prefix>{<scope hash>}:<exact key>`` (:func:`aigw.cache.key.scope_hash`).
``SCAN MATCH <key_prefix>{<scope hash>}:*`` (:meth:`RedisStore.purge`) finds exactly a
consumer's entries, walking the whole keyspace to do so (a step at a time, each within the
timeout). The braces are a Redis Cluster hash tag (a consumer's entries would share a slot),
but this client is not cluster-aware: Redis Cluster is not supported.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal, ParamSpec, TypeVar

import redis.asyncio as redis
from pydantic import Field, model_validator
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from aigw.config import Settings

from .breaker import CircuitBreaker
from .key import scope_hash
from .record import CacheRecord, decode, encode
from .stores import StoreError

T = TypeVar("T")
P = ParamSpec("P")
# Keys looked up in one loop turn, each with its callers' futures.
_Batch = dict[str, list[asyncio.Future[bytes | str | None]]]

# Keys per SCAN step and per UNLINK of a purge.
PURGE_BATCH = 500

# Keys per MGET: every lookup of a batch shares its deadline, so a huge batch (or one huge value)
# should not make a whole burst of lookups miss together.
MAX_BATCH = 128

# Bounds of the parsed-record memo: it holds values, their records and rendered replies, so the
# process may use about three times PARSED_MAX_BYTES for it.
PARSED_MAX = 1024
PARSED_MAX_BYTES = 4 * 1024 * 1024


class RedisStoreConfig(Settings):
    """``type: redis``.

    ``url`` (``redis://`` or ``rediss://`` for TLS; ``redis://user:pass@host:port/db``), or
    ``host``/``port``. ``username``/``password``: ACL user and password, password only, or
    none. ``db``: database number. ``tls``: use TLS with ``host``/``port``. ``tls_ca_file``:
    PEM bundle of the CAs that may sign the server's certificate (default: the system's);
    ``tls_cert_file`` + ``tls_key_file``: a client certificate, for servers that require one
    (Redis's own default, ``tls-auth-clients yes``). The server's certificate and host name are
    always verified. ``key_prefix``: namespace for keys (``<key_prefix>{<scope hash>}:<key>``).
    ``timeout_ms``: deadline of each call. ``max_connections``: pool size; with every
    connection busy, a call waits for one (within ``timeout_ms``). ``breaker_failures``: calls
    failed in a row (timeouts, lost connections) after which Redis is skipped, every call
    failing open at once, for ``breaker_cooldown_s`` seconds before one probe call.
    """

    type: Literal["redis"] = "redis"
    url: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(6379, ge=1, le=65535)
    username: str | None = None
    password: str | None = None
    db: int | None = Field(None, ge=0)
    tls: bool = False
    key_prefix: str = "aigw:"
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    timeout_ms: float = Field(100.0, gt=0)
    max_connections: int = Field(64, ge=1)
    breaker_failures: int = Field(5, ge=1)
    breaker_cooldown_s: float = Field(5.0, gt=0)

    @property
    def uses_tls(self) -> bool:
        """Whether connections are TLS (``rediss://``, or ``tls`` with ``host``/``port``)."""
        return self.url.startswith("rediss://") if self.url else self.tls

    @model_validator(mode="after")
    def _check_tls(self) -> RedisStoreConfig:
        # Caught here, a TLS mistake is a start-up error naming the key; at run time it would
        # only be a cache that always misses (the store fails open).
        if self.url and self.tls and not self.uses_tls:
            raise ValueError("tls: true with a redis:// url; use a rediss:// url instead")
        files = {
            "tls_ca_file": self.tls_ca_file,
            "tls_cert_file": self.tls_cert_file,
            "tls_key_file": self.tls_key_file,
        }
        given = {name: path for name, path in files.items() if path}
        if given and not self.uses_tls:
            raise ValueError(f"{', '.join(given)}: only with TLS (a rediss:// url, or tls: true)")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("tls_cert_file and tls_key_file go together")
        for name, path in given.items():
            if not Path(path).is_file():
                raise ValueError(f"{name}: no such file {path!r}")
        return self


class RedisStore:
    """Exact store on a shared Redis: what lets several gateway instances share answers."""

    local = False

    def __init__(self, config: RedisStoreConfig) -> None:
        self.prefix = config.key_prefix
        self.timeout = config.timeout_ms / 1000
        common: dict[str, Any] = {
            "username": config.username or None,
            "password": config.password or None,
            "socket_timeout": self.timeout,
            "socket_connect_timeout": self.timeout,
            "retry": Retry(NoBackoff(), retries=1),
            "retry_on_error": [RedisConnectionError],
            "max_connections": config.max_connections,
        }
        if config.db is not None:
            common["db"] = config.db
        if config.uses_tls:  # a plain connection would reject these arguments
            common["ssl_ca_certs"] = config.tls_ca_file
            common["ssl_certfile"] = config.tls_cert_file
            common["ssl_keyfile"] = config.tls_key_file
        # A blocking pool: with every connection busy, a command waits for one (within its
        # deadline) instead of failing at once with "Too many connections", which under a
        # burst turned lookups into misses and dropped write-backs.
        common["timeout"] = self.timeout
        pool: redis.BlockingConnectionPool
        if config.url:
            pool = redis.BlockingConnectionPool.from_url(config.url, **common)
        else:
            connection_class = redis.SSLConnection if config.tls else redis.Connection
            pool = redis.BlockingConnectionPool(
                host=config.host, port=config.port, connection_class=connection_class, **common
            )
        self.client = redis.Redis(connection_pool=pool)
        self.breaker = CircuitBreaker("redis", config.breaker_failures, config.breaker_cooldown_s)
        self._batch: _Batch | None = None  # Redis keys (see _key)
        self._inflight: set[asyncio.Task[None]] = set()
        # Parsed records of recently read values, oldest first (see _decode).
        self._parsed: dict[bytes, CacheRecord] = {}
        self._parsed_bytes = 0

    async def _run(
        self, what: str, command: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """``command(*args, **kwargs)`` within the deadline, unless the breaker skips it."""
        breaker = self.breaker
        breaker.check(what)
        try:
            async with asyncio.timeout(self.timeout):
                result = await command(*args, **kwargs)
        except TimeoutError:
            error = StoreError(f"redis {what}: timed out after {self.timeout * 1000:.0f} ms")
        except ResponseError as err:
            breaker.succeeded()  # Redis answered, refusing this command (say, OOM): it is there
            raise StoreError(f"redis {what}: {err}") from None
        except (RedisError, OSError) as err:
            error = StoreError(f"redis {what}: {err}")
        else:
            breaker.succeeded()
            return result
        breaker.failed(error)
        raise error from None

    def _key(self, scope: str, key: str) -> str:
        """The Redis key of ``key`` in ``scope``."""
        return f"{self.prefix}{{{scope_hash(scope)}}}:{key}"

    async def get(self, scope: str, key: str) -> CacheRecord | None:
        loop = asyncio.get_running_loop()
        batch = self._batch
        if batch is None or len(batch) >= MAX_BATCH:
            if batch is not None:
                self._send_batch()  # full: it goes now, and this lookup starts the next one
            batch = self._batch = {}
            loop.call_soon(self._send_batch)
        # One future per caller, not per key: a caller that gives up (its client hung up)
        # cancels its own future only.
        future: asyncio.Future[bytes | str | None] = loop.create_future()
        batch.setdefault(self._key(scope, key), []).append(future)
        value = await future
        if value is None:
            return None
        if not isinstance(value, bytes):
            raise StoreError("redis GET: unexpected value type")
        return self._decode(value)

    def _send_batch(self) -> None:
        batch, self._batch = self._batch, None
        if batch:
            task = asyncio.get_running_loop().create_task(self._mget(batch))
            self._inflight.add(task)  # a reference, so the task cannot be collected mid-way
            task.add_done_callback(functools.partial(self._settle, batch))

    async def _mget(self, batch: _Batch) -> None:
        try:
            values = await self._run("MGET", self.client.mget, list(batch))
        except StoreError as err:  # of its class: a skipped call (CircuitOpen) stays one
            return _fail(batch, str(err), type(err))
        except Exception as err:  # a redis-py surprise: still only a miss, and said so
            return _fail(batch, f"redis MGET: {err!r}")
        if len(values) != len(batch):
            return _fail(batch, "redis MGET: wrong number of values")
        for futures, value in zip(batch.values(), values, strict=True):
            for future in futures:
                if not future.done():
                    future.set_result(value)

    def _settle(self, batch: _Batch, task: asyncio.Task[None]) -> None:
        """Whatever became of the batch's task (even cancelled before it ran), every caller
        gets an answer."""
        self._inflight.discard(task)
        _fail(batch, "redis MGET: lookup abandoned")

    def _decode(self, value: bytes) -> CacheRecord:
        """The record in ``value``, parsed once per distinct value.

        A hot entry comes back from Redis byte for byte the same each time, so its parsed record
        (and the reply rendered from it) is kept, keyed by those bytes. Only parsing is saved:
        every lookup still asks Redis, so an entry deleted, expired or rewritten there is never
        served from here.
        """
        record = self._parsed.get(value)
        if record is None:
            record = decode(value)
            self._parsed[value] = record
            self._parsed_bytes += len(value)
            while self._parsed_bytes > PARSED_MAX_BYTES or len(self._parsed) > PARSED_MAX:
                oldest = next(iter(self._parsed))
                del self._parsed[oldest]
                self._parsed_bytes -= len(oldest)
        return record

    async def set(self, record: CacheRecord) -> None:
        value = encode(record)
        redis_key = self._key(record.scope, record.key)
        await self._run("SET", self.client.set, redis_key, value, ex=record.ttl)

    async def delete(self, scope: str, key: str) -> None:
        await self._run("DEL", self.client.delete, self._key(scope, key))

    async def purge(self, scope: str) -> int:
        """``SCAN`` for the scope's keys and ``UNLINK`` them a batch at a time (each call
        within ``timeout_ms``; a failure raises :class:`StoreError` with what was removed so
        far left removed). Entries written meanwhile may survive it."""
        match = _glob_escape(self._key(scope, "")) + "*"
        removed, cursor = 0, 0
        while True:
            cursor, keys = await self._run(
                "SCAN", self.client.scan, cursor, match=match, count=PURGE_BATCH
            )
            if keys:
                removed += await self._run("UNLINK", self.client.unlink, *keys)
            if cursor == 0:
                return removed

    async def ping(self) -> None:
        await self._run("PING", self.client.ping)

    async def memory_limit(self) -> tuple[int, str]:
        """Redis's ``maxmemory`` (bytes, 0 for none) and ``maxmemory-policy``.
        :class:`StoreError` if the server will not say: ``CONFIG`` is often denied by an ACL
        or renamed away on managed Redis."""
        config = await self._run("CONFIG GET", self.client.config_get, "maxmemory*")
        limit, policy = config.get("maxmemory"), config.get("maxmemory-policy")
        if not (isinstance(limit, str) and limit.isdigit() and isinstance(policy, str)):
            raise StoreError(f"redis CONFIG GET: unexpected reply {config!r}")
        return int(limit), policy

    async def aclose(self) -> None:
        self._send_batch()  # lookups waiting for the next loop turn go now, on the open client
        while self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
        await self.client.aclose(close_connection_pool=True)


def _glob_escape(text: str) -> str:
    """``text`` matched literally by a Redis ``MATCH`` pattern (a prefix may hold ``*``)."""
    return "".join("\\" + c if c in "\\*?[]" else c for c in text)


def _fail(batch: _Batch, message: str, error: type[StoreError] = StoreError) -> None:
    """Answer every caller of ``batch`` still waiting with an ``error`` (one each: an exception
    raised in several tasks would collect all their tracebacks)."""
    for futures in batch.values():
        for future in futures:
            if not future.done():
                future.set_exception(error(message))
