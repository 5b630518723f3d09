"""The cache key: a *partition* and a *question*, and the exact key over both.

The partition is everything that must match for one answer to serve another: the key-recipe
version, the scope (the consumer, unless shared), the API, the resolved target (provider and
upstream model), the strategy, every request field except those that only shape the
transport (``stream``, ``stream_options``) or identify the caller (``user``, ``metadata``,
``store``, ``service_tier``), and the conversation context: the system prompt and the turns
before the last message. The question is what the strategy picks from the conversation. The
exact cache keys on both; the semantic cache embeds the question and searches only among
entries of the same partition. Keying on *all* remaining fields means a parameter added to
the API later (or a provider-specific one) splits the cache instead of leaking answers
across it.

Strategies: ``conversation`` (default: the question is the last message, the turns before it
are the context), Higress's ``lastQuestion`` (the question is the value at ``cacheKeyFrom``,
by default the last message's content; unlike Higress, the turns before the last message stay
in the partition, so "how old is he?" after two different conversations is not one entry),
``allQuestions`` (every user message is the question; as in Higress there is no context, so
assistant turns and the system prompt are not keyed) and ``disabled`` (no caching).

Both parts are written as canonical JSON (orjson, sorted keys; a parameter that is a whole
number is written as one whether sent as ``1`` or ``1.0``), each once: the partition hash is
the SHA-256 of the partition's JSON, the exact key the SHA-256 of that JSON followed by the
question's. A JSON array ends where it ends, so the two together still tell every request
apart.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Any, Final, Literal

import orjson

from aigw.context import RequestContext

KEY_VERSION: Final = 4
Strategy = Literal["conversation", "lastQuestion", "allQuestions", "disabled"]
DEFAULT_KEY_FROM: Final = "messages.@reverse.0.content"

# Fields that do not change the answer's content (messages: keyed as context and question).
NOT_KEYED: Final = frozenset(
    {"model", "messages", "stream", "stream_options", "user", "metadata", "store", "service_tier"}
)


# Not frozen: set through object.__setattr__, a frozen dataclass costs several times as much
# to create, and one is created per request. Treat it as read-only.
@dataclass(slots=True)
class CacheKey:
    """A request's cache key (:func:`cache_key`).

    ``scope``: whose entries these are (``consumer:<name>`` or ``shared``). ``question``: what
    the strategy picked, as found in the request (text, content parts, the last message, or
    the list of user contents). ``exact``: hex SHA-256 of the partition and the question, the
    exact cache's key. :attr:`partition`: hex SHA-256 of everything but the question (the
    scope included).
    """

    scope: str
    question: Any
    exact: str
    #: The partition's canonical JSON, hashed only when asked: a hit never needs it.
    partition_json: bytes

    @property
    def partition(self) -> str:
        """Hex SHA-256 of the partition: which entries a semantic search may match."""
        return hashlib.sha256(self.partition_json).hexdigest()


def get_path(obj: Any, path: str) -> Any:
    """A small GJSON subset for ``cacheKeyFrom``: dotted keys, list indices, ``@reverse``."""
    for part in path.split("."):
        if part == "@reverse" and isinstance(obj, list):
            obj = obj[::-1]
        elif isinstance(obj, list) and part.isascii() and part.isdigit():
            index = int(part)
            obj = obj[index] if index < len(obj) else None
        elif isinstance(obj, dict):
            obj = obj.get(part)
        else:
            return None
        if obj is None:
            return None
    return obj


def _pick(payload: dict[str, Any], strategy: Strategy, key_from: str) -> tuple[Any, Any]:
    """``(context, question)`` of the strategies other than ``conversation``; the question
    is ``None`` when there is nothing to key on."""
    if strategy == "lastQuestion":
        messages = payload.get("messages")
        context = None
        if isinstance(messages, list) and messages:
            # The last message's role is context too: its content asked by a user is not the
            # same request as by the system, or as an assistant's prefill to continue. (Its
            # other fields, a name say, are not keyed, as in Higress.)
            last = messages[-1]
            role = last.get("role") if isinstance(last, dict) else None
            context = [*messages[:-1], {"role": role}]
        picked = get_path(payload, key_from)
    elif strategy == "allQuestions":
        context = None  # as in Higress: the user turns are the whole question
        messages = payload.get("messages") or ()
        picked = [m.get("content") for m in messages if m.get("role") == "user"]
    else:
        return None, None
    if picked in ("", []) or (isinstance(picked, list) and all(p is None for p in picked)):
        picked = None
    return context, picked


def cache_key(
    ctx: RequestContext, scope: str, strategy: Strategy, key_from: str
) -> CacheKey | None:
    """The request's :class:`CacheKey` for ``scope``, or ``None`` when the strategy finds
    nothing to key on (or the request is nested too deeply to be keyed)."""
    payload = ctx.payload
    if strategy == "conversation":  # the default, inline
        messages = payload.get("messages")  # intake checked that it is a list of messages
        if not messages:
            return None
        context, picked = messages[:-1], messages[-1]
    else:
        context, picked = _pick(payload, strategy, key_from)
        if picked is None:
            return None
    target = ctx.target
    # A JSON array in a fixed order; only the request's own objects need their keys sorted.
    partition = (
        KEY_VERSION,
        scope,
        ctx.api,
        target.provider if target else None,
        target.model if target else ctx.model,
        strategy,
        key_from if strategy == "lastQuestion" else None,
        context,
        {k: _whole(v) if type(v) is float else v for k, v in payload.items() if k not in NOT_KEYED},
    )
    try:
        head = orjson.dumps(partition, option=orjson.OPT_SORT_KEYS)
        tail = orjson.dumps(picked, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        # The partition nests the request one level deeper than its body, which the intake
        # only bounded by what orjson can write: the deepest requests cannot be keyed.
        return None
    digest = hashlib.sha256(head)
    digest.update(tail)
    return CacheKey(scope, picked, digest.hexdigest(), head)


def _whole(number: float) -> float | int:
    """A float that is a whole number as that integer (``1.0`` → ``1``, ``-0.0`` → ``0``), so
    that equal parameters key alike (beyond 2**53 floats are not exact integers: left alone)."""
    return int(number) if number.is_integer() and abs(number) < 2**53 else number


@functools.lru_cache(maxsize=4096)
def scope_hash(scope: str) -> str:
    """A short hex hash of ``scope`` for store keys (``prefix{<this>}:<key>`` in Redis): it
    names a consumer's entries without writing the consumer's name, and holds no character
    that a key pattern or a Redis Cluster hash tag would read specially. Memoised, as it is
    asked on every Redis lookup."""
    return hashlib.sha256(scope.encode()).hexdigest()[:16]
