"""``exact-cache``: answers repeated requests from a cache instead of the LLM.

Config keys (:class:`ExactCacheConfig`): ``store`` (``{type: memory, max_entries, max_bytes}``
or ``{type: redis, url | host/port, username, password, db, tls, tls_ca_file, tls_cert_file,
tls_key_file, key_prefix, timeout_ms, max_connections, breaker_failures, breaker_cooldown_s}``),
``ttl_seconds`` (1800), ``key_strategy`` / Higress ``cacheKeyStrategy`` (``conversation``,
``lastQuestion``, ``allQuestions``, ``disabled``), ``key_from`` / ``cacheKeyFrom``, ``scope``
(``consumer``: each authenticated consumer has its own entries; ``shared``: one scope),
``cache_tool_calls``, ``single_flight`` and ``single_flight_timeout_s``,
``replay_chunk_chars``.

Reads ``ctx.cache_lookup``/``cache_store`` (skip-header), ``ctx.consumer`` (auth), ``ctx.target``
and, at the end, ``ctx.completion``. Records its outcome on the context
(``ctx.record_cache``: skip, miss or hit, type ``exact``, the key's first 16 hex digits), from
which the core writes the ``x-aigw-cache*`` headers; a follower served after waiting for an
identical request replaces its miss with a hit. A hit is a local reply in the shape the request
asks for (JSON or SSE), with an ``age`` header. Only complete answers are stored: status 200,
``finish_reason`` ``stop`` (or ``tool_calls`` with ``cache_tool_calls``), one choice; the write
happens after the reply, in the background. Entries are kept per scope (see
:mod:`aigw.cache.stores`).

Counts, in the gateway's counters under ``exact-cache``: ``hit``, ``miss``, ``skip``,
``stored``, ``coalesced`` (hits served by waiting for an identical request),
``lookup_failure``/``store_failure``, and Redis's circuit breaker's ``breaker_open``,
``breaker_close`` and ``breaker_skip`` (:mod:`aigw.cache.breaker`).

Fails open: a store error, timeout or garbage value is a miss (or a skipped store), counted and
logged at most every few seconds; the request never fails for the cache. A Redis that keeps
failing is skipped for a cool-down (one warning when that starts, one line when it is back). An
unreachable store makes ``/readyz`` report ``degraded`` (still 200): the gateway serves on. At
start-up, a Redis without ``maxmemory`` (or one that refuses writes when full) is warned about.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Literal

from pydantic import ConfigDict, Field

from aigw import Degraded, hookimpl
from aigw.cache.cacheable import request_key, uncacheable_answer
from aigw.cache.failopen import FailureLog
from aigw.cache.key import DEFAULT_KEY_FROM, CacheKey, Strategy
from aigw.cache.record import CacheRecord, InvalidRecord, make_record
from aigw.cache.redis_store import RedisStore, RedisStoreConfig
from aigw.cache.replay import replay
from aigw.cache.singleflight import PROCEED, SingleFlight
from aigw.cache.stores import ExactStore, MemoryStore, MemoryStoreConfig, StoreError
from aigw.config import Settings
from aigw.context import CacheOutcome, CacheStatus, Reply, RequestContext, Target
from aigw.counters import Counters
from aigw.gateway import Gateway

#: The plugin's entry-point name: its outcomes' ``cache``, its counters' source, its scratch key.
NAME = "exact-cache"
log = logging.getLogger("aigw.exact_cache")


class ExactCacheConfig(Settings):
    """Settings of ``exact-cache``; Higress's camelCase key names are accepted as aliases."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    store: MemoryStoreConfig | RedisStoreConfig = Field(
        default_factory=MemoryStoreConfig, discriminator="type"
    )
    ttl_seconds: int = Field(1800, ge=1)
    key_strategy: Strategy = Field("conversation", alias="cacheKeyStrategy")
    key_from: str = Field(DEFAULT_KEY_FROM, alias="cacheKeyFrom", min_length=1)
    scope: Literal["consumer", "shared"] = "consumer"
    cache_tool_calls: bool = False
    single_flight: bool = True
    single_flight_timeout_s: float = Field(30.0, gt=0)
    replay_chunk_chars: int = Field(16, ge=1)


@dataclass(slots=True)
class _State:
    """Per-request scratch: the key, this cache's verdict so far, and whether this request
    leads its flight."""

    key: CacheKey
    #: The key as logged and sent in x-aigw-cache-key (never the prompt).
    short: str
    #: The target the key was made for; an answer from another (a fallback) is not stored.
    target: Target | None
    status: CacheStatus | None = None
    leading: bool = False
    #: The answer went to the write-back, which lands the flight when done.
    writing: bool = False


async def _check_memory_limit(store: RedisStore) -> None:
    """Warn if Redis will grow without bound, or refuse writes when full: every answer stays
    its whole TTL, so the cache's memory is bounded by Redis's ``maxmemory`` alone."""
    try:
        limit, policy = await store.memory_limit()
    except StoreError as err:  # CONFIG denied (ACL) or renamed (managed Redis): not ours to know
        log.debug("exact-cache: cannot read redis's maxmemory: %s", err)
        return
    if limit == 0:
        log.warning(
            "exact-cache: redis has no maxmemory: it grows with every answer cached until the "
            "machine runs out; set maxmemory (say 1gb) and maxmemory-policy allkeys-lru "
            "(or volatile-ttl) in redis.conf"
        )
    elif policy == "noeviction":
        log.warning(
            "exact-cache: redis's maxmemory-policy is noeviction: once full it refuses every "
            "new answer; set maxmemory-policy allkeys-lru (or volatile-ttl)"
        )


class ExactCachePlugin:
    """Exact-match response cache with single-flight, on a memory or Redis store."""

    config_class = ExactCacheConfig
    # Set by startup, before any request: they report to the gateway's counters.
    counters: Counters
    failures: FailureLog

    def __init__(self, config: ExactCacheConfig) -> None:
        self.config = config
        self.store: ExactStore = (
            RedisStore(config.store)
            if isinstance(config.store, RedisStoreConfig)
            else MemoryStore(config.store)
        )
        self.flights = SingleFlight()
        self._gateway: Gateway | None = None
        # The memory store's lookup, called without a coroutine (see MemoryStore.peek).
        self._peek = self.store.peek if isinstance(self.store, MemoryStore) else None

    @hookimpl
    async def startup(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self.counters = gateway.counters
        self.failures = FailureLog(log, gateway.counters, NAME)
        if isinstance(self.store, RedisStore):
            self.store.breaker.report_to(gateway.counters, NAME)
        try:
            await self.store.ping()
        except StoreError as err:
            log.warning("exact-cache store unreachable at start-up (serving without it): %s", err)
            return
        if isinstance(self.store, RedisStore):
            await _check_memory_limit(self.store)

    @hookimpl
    async def shutdown(self) -> None:
        await self.store.aclose()

    @hookimpl
    async def check_ready(self) -> str | None:
        try:
            await self.store.ping()
        except StoreError as err:
            # The cache fails open: without its store the gateway still answers everything.
            return Degraded(f"exact-cache: {err}")
        return None

    @hookimpl
    async def on_request(self, ctx: RequestContext) -> Reply | None:
        if ctx.api != "chat.completions":
            return None
        cfg = self.config
        key = request_key(ctx, cfg.scope, cfg.key_strategy, cfg.key_from)
        if isinstance(key, str):
            self._skip(ctx, key)
            return None
        state = ctx.scratch[NAME] = _State(key, key.exact[:16], ctx.target)
        if not ctx.cache_lookup:
            self._skip(ctx, "no lookup asked (the answer is stored)", state)
            return None
        joining = ctx.cache_store and cfg.single_flight
        if joining and not self.store.local:
            # A lookup that waits (Redis) may read just before a leader's record is written
            # and return just after its flight landed. Who leads is settled before it, so a
            # request that then misses follows (and finds the record on a second lookup)
            # rather than leading a second flight upstream. (A memory lookup cannot
            # interleave, so its hits skip the flight.)
            state.leading = self.flights.lead(key.exact)
        reply = self._look_here(ctx, state) if self._peek else await self._lookup(ctx, state)
        if reply is not None or not joining:
            return reply
        if self.store.local:
            # The common case, nobody else asking the same, costs one dict insert.
            state.leading = self.flights.lead(key.exact)
        if not state.leading:
            return await self._follow(ctx, state)
        return None

    def _skip(self, ctx: RequestContext, reason: str, state: _State | None = None) -> None:
        """Record that this cache neither looked nor answered, and why."""
        short = None
        if state is not None:
            state.status, short = "skip", state.short
        ctx.record_cache(CacheOutcome(NAME, "exact", "skip", short, reason=reason))
        self.counters.inc(NAME, "skip")

    async def _lookup(self, ctx: RequestContext, state: _State) -> Reply | None:
        """A hit from the store, or ``None`` and a miss."""
        try:
            record = await self.store.get(state.key.scope, state.key.exact)
        except (StoreError, InvalidRecord) as err:
            self.failures.failed("lookup", err)
            record = None
        return self._answer(ctx, state, record)

    def _look_here(self, ctx: RequestContext, state: _State) -> Reply | None:
        """:meth:`_lookup` in the memory store, without awaiting anything."""
        assert self._peek is not None
        try:
            record = self._peek(state.key.exact)
        except InvalidRecord as err:
            self.failures.failed("lookup", err)
            record = None
        return self._answer(ctx, state, record)

    def _answer(
        self, ctx: RequestContext, state: _State, record: CacheRecord | None
    ) -> Reply | None:
        """The hit ``record`` makes, or ``None`` and a miss. A leading request's hit lands
        its flight, so whoever joined it meanwhile is served the same record."""
        if record is not None:
            # The scope too: every store checks it, not only those whose keys carry it.
            if record.key == state.key.exact and record.scope == state.key.scope:
                reply = self._replay(ctx, state, record)
                if reply is not None:
                    log.info("cache hit for key: %s", state.short)
                    if state.leading:
                        state.leading = False
                        self.flights.land(state.key.exact, record)
                    return reply
            else:
                self.failures.failed("lookup", "stored record belongs to another key")
        if state.status != "miss":  # a follower's second lookup: logged once
            log.info("cache miss for key: %s", state.short)
            state.status = "miss"
            ctx.record_cache(CacheOutcome(NAME, "exact", "miss", state.short))
        return None

    async def _follow(self, ctx: RequestContext, state: _State) -> Reply | None:
        """Wait for the leader of this key's flight and answer from its record. If the leader
        failed or its client left, or waiting takes too long, look the store up again first
        (the answer may be there: a refresh, another instance), leading the flight if free."""
        deadline = time.monotonic() + self.config.single_flight_timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return await self._lookup(ctx, state)  # then upstream, without coalescing
            landed = await self.flights.wait(state.key.exact, remaining)
            if isinstance(landed, CacheRecord):
                # Replayed in this request's shape, which may fail where the leader's did not
                # (a damaged record from Redis): then this one goes upstream on its own.
                reply = self._replay(ctx, state, landed)
                if reply is not None:
                    self.counters.inc(NAME, "coalesced")
                    log.info(
                        "cache hit for key: %s (waited for the identical request)", state.short
                    )
                return reply
            if landed is PROCEED:
                return None
            state.leading = self.flights.lead(state.key.exact)
            if state.leading:
                return await self._lookup(ctx, state)

    def _replay(self, ctx: RequestContext, state: _State, record: CacheRecord) -> Reply | None:
        """:meth:`_hit`, or ``None`` (a miss, counted as a failure) for a record that cannot
        be replayed."""
        try:
            return self._hit(ctx, state, record)
        except Exception as err:  # a stored record decode() let through
            self.failures.failed("lookup", f"cannot replay the stored record: {err!r}")
            return None

    def _hit(self, ctx: RequestContext, state: _State, record: CacheRecord) -> Reply:
        usage = record.response.get("usage")
        usage = dict(usage) if usage else None  # a copy: the record is shared
        reply = replay(
            record,
            ctx.stream,
            ctx.include_usage,
            {"age": str(record.age)},
            self.config.replay_chunk_chars,
        )
        # Only now that the reply exists: a record that cannot be replayed leaves no trace.
        self.counters.inc(NAME, "hit")
        state.status = "hit"
        ctx.record_cache(CacheOutcome(NAME, "exact", "hit", state.short))  # replaces a miss
        ctx.usage = usage
        return reply

    @hookimpl
    async def on_response_end(self, ctx: RequestContext) -> None:
        state: _State | None = ctx.scratch.get(NAME)
        if state is None or not ctx.cache_store:
            return
        why_not = uncacheable_answer(ctx, self.config.cache_tool_calls)
        if ctx.target is not state.target and ctx.target != state.target:
            why_not = f"answered by fallback {ctx.target}"
        if why_not is not None or ctx.completion is None:
            log.debug("not caching key %s: %s", state.short, why_not)
            return
        try:
            record = make_record(
                ctx.completion, state.key.exact, state.key.scope, self.config.ttl_seconds
            )
        except InvalidRecord as err:
            log.debug("not caching key %s: %s", state.short, err)
            return
        state.writing = True
        if self.store.local:
            await self._store(record, state.leading)  # no I/O: cheaper than a task
        else:
            assert self._gateway is not None
            self._gateway.spawn(self._store(record, state.leading), "exact-cache write-back")

    async def _store(self, record: CacheRecord, leading: bool) -> None:
        """Write the record, then release the followers of its flight with it.

        Landing after the write means a new identical request always finds either the flight
        or the stored record, never neither.
        """
        try:
            await self.store.set(record)
            self.counters.inc(NAME, "stored")
        except StoreError as err:
            self.failures.failed("store", err)
        finally:
            if leading:
                self.flights.land(record.key, record)

    @hookimpl
    async def on_log(self, ctx: RequestContext) -> None:
        state: _State | None = ctx.scratch.get(NAME)
        if state is None:
            return
        if state.leading and not state.writing:
            # No record to share. A failure (no answer, 5xx, 429, or a reply that never
            # reached its end: a stream that broke, a client that left): one follower retries.
            # A complete answer that may not be stored: the followers all go upstream now.
            failed = not ctx.complete or ctx.status >= 500 or ctx.status == 429
            self.flights.land(state.key.exact, None if failed else PROCEED)
        if state.status == "miss":  # counted once, and not if it became a hit
            self.counters.inc(NAME, "miss")
