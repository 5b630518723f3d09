"""The exact cache key: SHA-256 over canonical JSON of everything that can change the answer.

Hashed (orjson, sorted keys): the key-recipe version, the scope (the consumer, unless shared),
the API, the resolved target (provider and upstream model), the messages the strategy picks,
and every other request field except those that only shape the transport (``stream``,
``stream_options``) or identify the caller (``user``, ``metadata``, ``store``,
``service_tier``). Keying on *all* remaining fields means a parameter added to the API later
(or a provider-specific one) splits the cache instead of leaking answers across it.

Strategies: ``conversation`` (default: the system prompt and every turn), Higress's
``lastQuestion`` (the value at ``cacheKeyFrom``, by default the last message's content),
``allQuestions`` (every user message) and ``disabled`` (no caching).
"""

from __future__ import annotations

import hashlib
from typing import Any, Final, Literal

import orjson

from aigw.context import RequestContext

KEY_VERSION: Final = 2
Strategy = Literal["conversation", "lastQuestion", "allQuestions", "disabled"]
DEFAULT_KEY_FROM: Final = "messages.@reverse.0.content"

# Fields that do not change the answer's content.
NOT_KEYED: Final = frozenset(
    {"model", "messages", "stream", "stream_options", "user", "metadata", "store", "service_tier"}
)


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


def question(payload: dict[str, Any], strategy: Strategy, key_from: str) -> Any:
    """The part of the conversation the strategy keys on (``None``: nothing to key on)."""
    messages = payload.get("messages")
    if strategy == "conversation":
        return messages
    if strategy == "lastQuestion":
        return get_path(payload, key_from)
    if strategy == "allQuestions":
        users = [m.get("content") for m in messages or () if m.get("role") == "user"]
        return users or None
    return None


def exact_key(ctx: RequestContext, scope: str, strategy: Strategy, key_from: str) -> str | None:
    """The hex SHA-256 key of a request, or ``None`` when the strategy finds nothing to key
    (or the request is nested too deeply to be keyed)."""
    payload = ctx.payload
    if strategy == "conversation":
        picked = payload.get("messages")  # intake checked that it is a list of messages
        if not picked:
            return None
    else:
        picked = question(payload, strategy, key_from)
        if picked in (None, "", []) or (
            isinstance(picked, list) and all(p is None for p in picked)
        ):
            return None
    target = ctx.target
    # A JSON array in a fixed order; only the request's own objects need their keys sorted.
    material = (
        KEY_VERSION,
        scope,
        ctx.api,
        target.provider if target else None,
        target.model if target else ctx.model,
        strategy,
        key_from if strategy == "lastQuestion" else None,
        picked,
        {k: v for k, v in payload.items() if k not in NOT_KEYED},
    )
    try:
        canonical = orjson.dumps(material, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        # The material nests the request one level deeper than its body, which the intake
        # only bounded by what orjson can write: the deepest requests cannot be keyed.
        return None
    return hashlib.sha256(canonical).hexdigest()
