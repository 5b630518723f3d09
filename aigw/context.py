"""Per-request state shared by plugins: :class:`RequestContext`, :class:`Reply`, :class:`Target`.

Plugins are singletons, so everything a request needs lives here. Contracts between plugins are
typed fields (``consumer``, ``cache_lookup``, ``cache_outcomes``, ``target``, ``completion`` ...);
a plugin's private per-request data goes in ``ctx.scratch[<plugin name>]``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import orjson
from multidict import CIMultiDict

if TYPE_CHECKING:
    from aiohttp import web

    from aigw.errors import GatewayError

Api = Literal["chat.completions", "completions", "embeddings"]
CacheStatus = Literal["hit", "miss", "skip"]

JSON_CT = "application/json"
SSE_CT = "text/event-stream"


@dataclass(frozen=True, slots=True)
class Target:
    """Where a request goes: the provider (by its configured name) and the upstream model name."""

    provider: str
    model: str


@dataclass(slots=True)
class CacheOutcome:
    """What one cache decided for one request, recorded with :meth:`RequestContext.record_cache`.

    ``cache`` is the plugin's name (``exact-cache``), ``type`` the kind of match it makes
    (``exact``, ``semantic``), ``status`` its verdict. ``key`` is the (shortened) hash of the
    entry looked up or served, never the prompt; ``similarity`` the cosine similarity of the
    best candidate a semantic cache found, in [0, 1]; ``reason`` why it skipped or rejected
    (``no key``, ``guard: number mismatch``). The core turns the outcomes into the
    ``x-aigw-cache*`` headers; the access log and metrics read them. Treat it as read-only
    (it is not frozen only because a frozen dataclass costs four times as much to build,
    once per cached request).
    """

    cache: str
    type: str
    status: CacheStatus
    key: str | None = None
    similarity: float | None = None
    reason: str | None = None


@dataclass(slots=True)
class Reply:
    """A response produced by a plugin: a whole ``body``, or a ``stream`` of chunks.

    The terminal plugin always returns one; any earlier plugin may return one to answer locally
    (a cache hit, an auth failure). For a stream, each item the iterator yields is one chunk
    (for SSE, one complete ``data: ...\\n\\n`` event) and is passed to ``on_response_chunk``.
    """

    status: int = 200
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None
    content_type: str = JSON_CT
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
        """A JSON reply serialised with orjson."""
        return cls(status=status, body=orjson.dumps(obj), headers=headers or {})

    @classmethod
    def from_error(cls, err: GatewayError) -> Reply:
        """The OpenAI-style error reply for ``err``."""
        return cls(status=err.status, body=err.body(), headers=dict(err.headers))


class RequestContext:
    """Everything known about one request, from arrival to the access log.

    Set by the core: ``request``, ``request_id``, ``api`` on arrival; ``body``, ``payload``,
    ``model``, ``stream``, ``include_usage``, ``target`` when the body is read, just before the
    first plugin that needs it (until then empty: see :func:`aigw.hookspecs.on_request`).
    Set by plugins: ``consumer`` (auth), ``cache_lookup``/``cache_store`` (skip-header),
    ``cache_outcomes`` (caches, through :meth:`record_cache`). Set by the terminal while the
    answer flows: ``usage`` and ``completion``. Set by the response phase
    (:class:`aigw.respond.ResponsePhase`, their one writer): ``status``, ``complete``,
    ``first_byte_at``.

    Built with keywords: ``request`` and ``request_id`` are required, any other field may be
    given (a test's context, say). The fields are slots, so a misspelt one is an error, not
    a silent new attribute. Written out rather than a dataclass: a dataclass ``__init__`` with
    this many keyword defaults cost half as much again, once per request.
    """

    __slots__ = (
        "api",
        "body",
        "cache_lookup",
        "cache_outcomes",
        "cache_store",
        "complete",
        "completion",
        "consumer",
        "error",
        "finished_at",
        "first_byte_at",
        "include_usage",
        "model",
        "passed_on",
        "payload",
        "replied_by",
        "reply",
        "request",
        "request_id",
        "response_headers",
        "scratch",
        "started_at",
        "status",
        "stream",
        "target",
        "usage",
    )

    request: web.Request
    request_id: str
    api: Api | None
    started_at: float
    #: The raw request body and its parsed JSON object (read once by the core).
    body: bytes
    payload: dict[str, Any]
    model: str
    stream: bool
    #: The client asked for the usage chunk of a stream (``stream_options.include_usage``).
    include_usage: bool
    target: Target | None

    #: The authenticated caller (set by an auth plugin); the default cache scope.
    consumer: str | None
    #: Whether caches may answer this request, and whether they may store its answer.
    cache_lookup: bool
    cache_store: bool
    #: What each cache decided, in the order they ran (one per cache: see record_cache).
    cache_outcomes: tuple[CacheOutcome, ...]

    reply: Reply | None
    replied_by: str | None
    #: Plugins whose ``on_request`` ran and passed the request on, in order.
    passed_on: tuple[str, ...]
    #: Headers plugins add in ``on_response_headers``; merged over the reply's own.
    response_headers: CIMultiDict[str]
    #: The status sent to the client (499: it left first); written by the response phase only.
    status: int
    #: Token usage of the answer (OpenAI ``usage`` object) once known.
    usage: dict[str, Any] | None
    #: The whole answer as one OpenAI ``chat.completion`` object, set by the terminal only when
    #: the upstream finished it (a stream after its terminal event); ``None`` for errors and
    #: broken streams. Caches store this.
    completion: dict[str, Any] | None
    #: True once the response was written to the client in full.
    complete: bool
    #: When the answer's first byte went out (a stream's first event, not a keep-alive).
    first_byte_at: float | None
    finished_at: float | None
    error: BaseException | None
    #: Private per-request data of each plugin, keyed by plugin name.
    scratch: dict[str, Any]

    def __init__(
        self, *, request: web.Request, request_id: str, api: Api | None = None, **fields: Any
    ) -> None:
        self.request = request
        self.request_id = request_id
        self.api = api
        self.started_at = time.perf_counter()
        self.body = b""
        self.payload = {}
        self.model = ""
        self.stream = False
        self.include_usage = False
        self.target = None
        self.consumer = None
        self.cache_lookup = True
        self.cache_store = True
        self.cache_outcomes = ()
        self.reply = None
        self.replied_by = None
        self.passed_on = ()
        self.response_headers = CIMultiDict()
        self.status = 0
        self.usage = None
        self.completion = None
        self.complete = False
        self.first_byte_at = None
        self.finished_at = None
        self.error = None
        self.scratch = {}
        for name, value in fields.items():
            setattr(self, name, value)  # a name that is not a field raises AttributeError

    def __repr__(self) -> str:
        return f"<RequestContext {self.request_id} {self.api} model={self.model!r}>"

    def record_cache(self, outcome: CacheOutcome) -> None:
        """Record a cache's verdict; a later one of the same cache replaces its earlier one (a
        miss that became a hit after waiting for an identical request, say)."""
        outcomes = self.cache_outcomes
        if not outcomes:  # the common case: the first cache to decide
            self.cache_outcomes = (outcome,)
            return
        self.cache_outcomes = (*(o for o in outcomes if o.cache != outcome.cache), outcome)

    @property
    def cache_hit(self) -> CacheOutcome | None:
        """The outcome of the cache that answered, if one did."""
        for outcome in self.cache_outcomes:
            if outcome.status == "hit":
                return outcome
        return None

    @property
    def cache_status(self) -> CacheStatus | None:
        """The request's cache verdict over every cache (``x-aigw-cache``, the access log's
        ``cache_status``): ``hit`` if one answered, else ``miss`` if one looked, else ``skip``
        if each skipped; ``None`` when no cache saw the request."""
        status: CacheStatus | None = None
        for outcome in self.cache_outcomes:
            if outcome.status == "hit":
                return "hit"
            if outcome.status == "miss" or status is None:
                status = outcome.status
        return status

    @property
    def elapsed_ms(self) -> float:
        """Milliseconds since the request arrived (to ``finished_at`` once set)."""
        end = self.finished_at if self.finished_at is not None else time.perf_counter()
        return (end - self.started_at) * 1000.0
