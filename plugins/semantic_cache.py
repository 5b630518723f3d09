"""``semantic-cache``: answers a question that means the same as one already answered.

After an exact miss, the question the key strategy picks (by default the last message's
content, as Higress's ``lastQuestion``) is embedded and searched among the questions cached
within the same partition: the same scope (consumer), resolved provider and upstream model,
generation parameters, and conversation context (system prompt, tools, earlier turns), so that
"Tell me more." after a talk about stars never matches "Tell me more." after one about tax law.
The best candidates at or above ``threshold`` (cosine similarity) are tried in order; the first
that the hard-negative guard (:mod:`aigw.semantic.guard`: numbers, negation, antonyms, names,
direction, language) lets through is served, replayed in the shape the request asks for, as the
exact cache replays. A miss whose answer is cacheable (the exact cache's rules) is stored,
vector and answer together, after the reply.

Config keys (:class:`SemanticCacheConfig`): ``embedder`` (``{type: local, ...}``: see
:mod:`aigw.embeddings`), ``store`` (``{type: memory, max_entries}``: see
:mod:`aigw.vectorstores`), ``threshold``, ``top_k`` (candidates tried), ``guard`` (a flag per
rule), ``ttl_seconds``, ``key_strategy``/``cacheKeyStrategy``, ``key_from``/``cacheKeyFrom``,
``scope``, ``cache_tool_calls``, ``lookup_budget_ms`` (the whole lookup: embedding and search),
``max_question_chars`` (longer questions are left to the exact cache), ``replay_chunk_chars``.

Records its outcome (type ``semantic``; on a hit the served entry's key and the similarity, on a
miss the best similarity seen) for the ``x-aigw-cache*`` headers. Logs Higress's phrases with a
key hash and the similarity, never the prompt: ``key accepted``, ``score not meet the
threshold``, and ``guard: <reason>`` when the guard rejects a candidate. Counts under
``semantic-cache``: ``hit``, ``miss``, ``skip``, ``stored``, ``guard_<reason>``,
``lookup_failure``, ``store_failure``.

Fails open: an embedder or vector-store error, or a lookup that outlasts ``lookup_budget_ms``,
is a miss (counted, a warning at most every few seconds); storing fails the same way, after
the reply. ``/readyz`` reports ``degraded`` while lookups have been failing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ConfigDict, Field

from aigw import Degraded, hookimpl
from aigw.cache.cacheable import request_key, uncacheable_answer
from aigw.cache.failopen import FailureLog
from aigw.cache.key import CacheKey, Strategy
from aigw.cache.record import CacheRecord, InvalidRecord, decode, encode, make_record
from aigw.cache.replay import replay
from aigw.config import Settings
from aigw.context import CacheOutcome, Reply, RequestContext, Target
from aigw.counters import Counters
from aigw.embeddings import Embedder, Vectors
from aigw.embeddings.loader import load_embedder
from aigw.gateway import Gateway
from aigw.semantic.evaluate import Pair, Report, sweep
from aigw.semantic.guard import GuardConfig, check
from aigw.vectorstores import VectorStore
from aigw.vectorstores.loader import load_vector_store

NAME = "semantic-cache"
log = logging.getLogger("aigw.semantic_cache")

#: The shipped threshold: see README ("semantic-cache") for how it was chosen.
DEFAULT_THRESHOLD = 0.80
# Failures this recent make /readyz say degraded.
_DEGRADED_FOR_S = 30.0


class SemanticCacheConfig(Settings):
    """Settings of ``semantic-cache``; Higress's camelCase key names are accepted as aliases."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    embedder: dict[str, Any] = Field(default_factory=lambda: {"type": "local"})
    store: dict[str, Any] = Field(default_factory=lambda: {"type": "memory"})
    threshold: float = Field(DEFAULT_THRESHOLD, gt=0, le=1)
    top_k: int = Field(3, ge=1, le=100)
    guard: GuardConfig = Field(default_factory=GuardConfig)
    ttl_seconds: int = Field(1800, ge=1)
    key_strategy: Strategy = Field("lastQuestion", alias="cacheKeyStrategy")
    key_from: str = Field("messages.@reverse.0.content", alias="cacheKeyFrom", min_length=1)
    scope: Literal["consumer", "shared"] = "consumer"
    cache_tool_calls: bool = False
    lookup_budget_ms: int = Field(300, ge=1)
    max_question_chars: int = Field(500, ge=1)
    replay_chunk_chars: int = Field(16, ge=1)


def question_text(question: Any) -> str | None:
    """The text to embed of what the key strategy picked: a string, a message's content, the
    text parts of a content list, or several user turns joined; ``None`` when there is nothing
    that text alone can match: no text, or anything else beside it (an image, audio, a file:
    "What is in this image?" about two pictures is two questions)."""
    if isinstance(question, str):
        return question or None
    if isinstance(question, dict):
        if "content" in question:
            return question_text(question["content"])
        if question.get("type") == "text" and isinstance(question.get("text"), str):
            return question["text"] or None
        return None
    if isinstance(question, list):
        parts = [question_text(item) for item in question]
        if not parts or None in parts:
            return None
        return "\n".join(p for p in parts if p) or None
    return None


@dataclass(slots=True)
class _State:
    """Per-request scratch between the lookup and the write-back."""

    key: CacheKey
    namespace: str
    text: str
    short: str
    target: Target | None
    vector: Vectors | None = None


class SemanticCachePlugin:
    """Similarity-matched response cache: an embedder, a vector store, a threshold and a
    guard."""

    config_class = SemanticCacheConfig
    counters: Counters
    failures: FailureLog

    def __init__(self, config: SemanticCacheConfig) -> None:
        self.config = config
        self.embedder: Embedder = load_embedder(config.embedder, f"{NAME}: embedder")
        self.store: VectorStore = load_vector_store(config.store, f"{NAME}: store")
        self._gateway: Gateway | None = None
        self._budget = config.lookup_budget_ms / 1000
        self._last_failure = -_DEGRADED_FOR_S

    def describe(self) -> list[str]:
        """What ``aigw check`` shows of it."""
        cfg = self.config
        return [
            f"embedder: {cfg.embedder.get('type', 'local')} ({self.embedder.model}, "
            f"{self.embedder.dimension}-d)",
            f"store: {cfg.store.get('type', 'memory')}; threshold {cfg.threshold:g}, "
            f"top {cfg.top_k}, guard: {', '.join(cfg.guard.enabled()) or 'off'}",
        ]

    async def evaluate(self, pairs: Sequence[Pair]) -> Report:
        """``aigw eval``: the hit and false-hit rates of labelled ``pairs`` through this
        cache's embedder and guard, per threshold (the embedder is started and closed here)."""
        await self.embedder.start()
        try:
            cached = await self.embedder.embed([p.cached for p in pairs])
            new = await self.embedder.embed([p.new for p in pairs])
        finally:
            await self.embedder.aclose()
        similarities = [max(0.0, float(s)) for s in (cached * new).sum(axis=1)]
        guard = self.config.guard
        return sweep(pairs, similarities, lambda a, b: check(a, b, guard))

    @hookimpl
    async def startup(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self.counters = gateway.counters
        self.failures = FailureLog(log, gateway.counters, NAME)
        began = time.perf_counter()
        await self.embedder.start()
        await self.store.ensure_collection(self.embedder.dimension)
        log.info(
            "semantic-cache: %s (%d-d) ready in %.1fs",
            self.embedder.model,
            self.embedder.dimension,
            time.perf_counter() - began,
        )

    @hookimpl
    async def shutdown(self) -> None:
        await self.embedder.aclose()
        await self.store.aclose()

    @hookimpl
    async def check_ready(self) -> str | None:
        if time.monotonic() - self._last_failure < _DEGRADED_FOR_S:
            return Degraded("semantic-cache: lookups are failing (served without it)")
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
        text = question_text(key.question)
        if text is None:
            self._skip(ctx, "no text to match on")
            return None
        if len(text) > cfg.max_question_chars:
            # A long text's vector is its first few hundred characters' (two texts that
            # differ further on score 0.99): only the exact cache may answer it.
            self._skip(ctx, "question too long to match by meaning")
            return None
        state = ctx.scratch[NAME] = _State(key, key.partition, text, key.exact[:16], ctx.target)
        if not ctx.cache_lookup:
            self._skip(ctx, "no lookup asked (the answer is stored)", state)
            return None
        try:
            async with asyncio.timeout(self._budget):
                return await self._lookup(ctx, state)
        except Exception as err:  # EmbeddingError, VectorStoreError, a timeout, a backend's bug
            self._failed("lookup", err if str(err) else f"over {cfg.lookup_budget_ms} ms")
            self._miss(ctx, state, None)
            return None

    async def _lookup(self, ctx: RequestContext, state: _State) -> Reply | None:
        cfg = self.config
        state.vector = (await self.embedder.embed([state.text]))[0]
        matches = await self.store.search(state.vector, cfg.top_k, state.namespace)
        best = matches[0].similarity if matches else None
        for match in matches:
            short = str(match.payload.get("key", match.id))[:16]
            if match.similarity < cfg.threshold:
                log.info(
                    "score not meet the threshold %g: %s with score %.4f",
                    cfg.threshold,
                    short,
                    match.similarity,
                )
                break
            cached = match.payload.get("question")
            reason = check(str(cached), state.text, cfg.guard)
            if reason is not None:
                log.info("guard: %s: %s with score %.4f", reason, short, match.similarity)
                self.counters.inc(NAME, "guard_" + reason.replace(" ", "_"))
                continue
            try:
                record = decode(str(match.payload["record"]).encode())
                if record.scope != state.key.scope:  # the namespace holds the scope: never
                    raise InvalidRecord("a stored record of another scope")
                reply = self._hit(ctx, record, short, match.similarity)
            except Exception as err:  # a damaged entry: a miss, never a failed request
                self._failed("lookup", f"cannot replay entry {short}: {err!r}")
                break
            log.info("key accepted: %s with score: %.4f", short, match.similarity)
            return reply
        self._miss(ctx, state, best)
        return None

    def _hit(self, ctx: RequestContext, record: CacheRecord, short: str, score: float) -> Reply:
        usage = record.response.get("usage")
        reply = replay(
            record,
            ctx.stream,
            ctx.include_usage,
            {"age": str(record.age)},
            self.config.replay_chunk_chars,
        )
        self.counters.inc(NAME, "hit")
        ctx.record_cache(CacheOutcome(NAME, "semantic", "hit", short, similarity=round(score, 4)))
        ctx.usage = dict(usage) if usage else None
        # Not stored again: the answer stays under the wording that asked it.
        ctx.scratch.pop(NAME, None)
        return reply

    def _miss(self, ctx: RequestContext, state: _State, best: float | None) -> None:
        self.counters.inc(NAME, "miss")
        score = round(best, 4) if best is not None else None
        ctx.record_cache(CacheOutcome(NAME, "semantic", "miss", state.short, similarity=score))

    def _skip(self, ctx: RequestContext, reason: str, state: _State | None = None) -> None:
        short = state.short if state is not None else None
        ctx.record_cache(CacheOutcome(NAME, "semantic", "skip", short, reason=reason))
        self.counters.inc(NAME, "skip")

    def _failed(self, kind: str, err: BaseException | str) -> None:
        self._last_failure = time.monotonic()
        self.failures.failed(kind, err)

    @hookimpl
    async def on_response_end(self, ctx: RequestContext) -> None:
        state: _State | None = ctx.scratch.get(NAME)
        if state is None or not ctx.cache_store or ctx.completion is None:
            return
        why_not = uncacheable_answer(ctx, self.config.cache_tool_calls)
        if ctx.target is not state.target and ctx.target != state.target:
            why_not = f"answered by fallback {ctx.target}"
        if why_not is not None:
            log.debug("semantic-cache: not storing %s: %s", state.short, why_not)
            return
        try:
            record = make_record(
                ctx.completion, state.key.exact, state.key.scope, self.config.ttl_seconds
            )
        except InvalidRecord as err:
            log.debug("semantic-cache: not storing %s: %s", state.short, err)
            return
        assert self._gateway is not None
        self._gateway.spawn(self._store(state, record), "semantic-cache write-back")

    async def _store(self, state: _State, record: CacheRecord) -> None:
        """Embed (unless the lookup did) and store the question with its answer."""
        try:
            async with asyncio.timeout(max(self._budget, 5.0)):
                vector = state.vector
                if vector is None:
                    vector = (await self.embedder.embed([state.text]))[0]
                await self.store.upsert(
                    state.key.exact,
                    vector,
                    state.namespace,
                    {"question": state.text, "key": state.short, "record": encode(record).decode()},
                    record.stored_at + record.ttl,
                )
            self.counters.inc(NAME, "stored")
        except Exception as err:  # EmbeddingError, VectorStoreError, a timeout, a backend's bug
            self._failed("store", err if str(err) else "timed out")
