"""The cache record both caches store: the normalised answer plus metadata.

Stored: ``id``, ``model``, ``created``, ``system_fingerprint``, per choice the message content,
tool calls, reasoning content, refusal, annotations and finish reason, and ``usage``; plus when
it was stored, its TTL, its key hash and scope. Serialised with orjson. :func:`decode` rejects
anything that is not a well-formed record, so a corrupted or foreign value is a miss, never a
broken reply.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

RECORD_VERSION: Final = 1
_TEXT_FIELDS: Final = ("content", "reasoning_content", "refusal")
_LIST_FIELDS: Final = ("tool_calls", "annotations")  # annotations: a search model's citations
_TEXT: Final = (str, type(None))
# The finish reasons OpenAI's client accepts (the cache stores only "stop" and "tool_calls").
_FINISH_REASONS: Final = frozenset(
    {"stop", "length", "tool_calls", "content_filter", "function_call"}
)
#: Above any time a server could mean (and below orjson's 64-bit limit on integers).
_MAX_TIME: Final = 2**53
_DETAILS: Final = ("prompt_tokens_details", "completion_tokens_details")
# What a replay copies into the response head, and the types the openai client accepts there.
_HEAD_TYPES: Final = (
    ("id", _TEXT),  # replaced by a fresh id anyway
    ("model", (str,)),
    ("created", (int,)),
    ("system_fingerprint", _TEXT),
)


# Not frozen: a frozen dataclass sets each field through object.__setattr__, which made
# creating a record (once per stored answer) cost four times as much. Records are shared
# between requests all the same: treat them as read-only.
@dataclass(slots=True)
class CacheRecord:
    """One cached answer. ``response`` is a normalised ``chat.completion`` object."""

    response: dict[str, Any]
    stored_at: float
    ttl: int
    key: str
    scope: str
    #: The replayed JSON body around its id, rendered on first use (see replay.py).
    rendered: list[bytes] = field(default_factory=list, compare=False, repr=False)

    @property
    def age(self) -> int:
        """Whole seconds since the record was stored."""
        return max(0, int(time.time() - self.stored_at))


class InvalidRecord(ValueError):
    """A value that is not a record this version can replay."""


def normalise(completion: dict[str, Any]) -> dict[str, Any]:
    """Keep what a replay needs from an upstream ``chat.completion``, drop the rest.

    Raises :class:`InvalidRecord` for a value a replay could not render (content that is not
    text, no model name), checked here, as it is copied, rather than in a second pass over the
    answer. What it returns, :func:`decode` accepts: a ``created`` that is not whole seconds
    becomes them (the time now if missing), an ``id`` or ``system_fingerprint`` that is not
    text becomes null, and malformed token counts are left out.
    """
    choices = []
    for choice in completion.get("choices") or ():
        message = choice.get("message") or {}
        index, finish = choice.get("index", 0), choice.get("finish_reason")
        if not (isinstance(message, dict) and isinstance(index, int) and isinstance(finish, _TEXT)):
            raise InvalidRecord("malformed choice")
        # OpenAI's order and nulls: role, content, refusal, then what is present.
        kept: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None}
        for f in _TEXT_FIELDS:
            value = message.get(f)
            if value is not None:
                if not isinstance(value, str):
                    raise InvalidRecord(f"malformed choice: {f} is not text")
                kept[f] = value
        for f in _LIST_FIELDS:
            value = message.get(f)
            if value:  # [] means none
                if not isinstance(value, list):
                    raise InvalidRecord(f"malformed choice: {f} is not a list")
                kept[f] = value
        for call in kept.get("tool_calls") or ():
            _check_tool_call(call)
        choices.append({"index": index, "message": kept, "finish_reason": finish})
    # The head as decode() demands it, so that what is stored in Redis can be read back.
    model, created = completion.get("model"), completion.get("created")
    if not isinstance(model, str):
        raise InvalidRecord("answer without a model name")
    if type(created) is not int or not 0 <= created < _MAX_TIME:
        # Some servers send a float, or none at all; the openai client requires whole seconds.
        if isinstance(created, float) and 0 <= created < _MAX_TIME:  # NaN is not
            created = int(created)
        else:
            created = int(time.time())
    rid, fingerprint = completion.get("id"), completion.get("system_fingerprint")
    out = {
        "id": rid if isinstance(rid, str) else None,  # replaced by a fresh id anyway
        "model": model,
        "created": created,
        "system_fingerprint": fingerprint if isinstance(fingerprint, str) else None,
        "choices": choices,
    }
    usage = completion.get("usage")
    if usage:
        try:
            _check_usage(usage)
            out["usage"] = usage
        except InvalidRecord:
            pass  # malformed token counts: the answer is kept without them
    return out


def make_record(completion: dict[str, Any], key: str, scope: str, ttl: int) -> CacheRecord:
    """A record of ``completion`` stored now; raises :class:`InvalidRecord` when a replay
    could not render it (content that is not text, say), so it is never stored: the memory
    store would replay it wrong and Redis would refuse it on every read."""
    return CacheRecord(normalise(completion), time.time(), ttl, key, scope)


def encode(record: CacheRecord) -> bytes:
    """Serialise a record."""
    return orjson.dumps(
        {
            "v": RECORD_VERSION,
            "response": record.response,
            "stored_at": record.stored_at,
            "ttl": record.ttl,
            "key": record.key,
            "scope": record.scope,
        }
    )


def _check_choices(choices: Any) -> None:
    if not isinstance(choices, list) or not choices:
        raise InvalidRecord("record without choices")
    for choice in choices:
        _check_choice(choice)


def _check_choice(choice: Any) -> None:
    """Everything a replay reads from a choice has the type it expects."""
    # The same rules normalise() applies as it copies an upstream answer, here on a stored
    # value (from Redis, which anything may have written), plus what the openai client needs.
    message = choice.get("message")
    if not (
        isinstance(choice.get("index"), int)
        and isinstance(message, dict)
        and choice.get("finish_reason") in _FINISH_REASONS
    ):
        raise InvalidRecord("malformed choice")
    for f in _TEXT_FIELDS:
        if not isinstance(message.get(f), _TEXT):
            raise InvalidRecord(f"malformed choice: {f} is not text")
    for f in _LIST_FIELDS:
        if f in message and not isinstance(message[f], list):
            raise InvalidRecord(f"malformed choice: {f} is not a list")
    for call in message.get("tool_calls") or ():
        _check_tool_call(call)


def _check_usage(usage: Any) -> None:
    """OpenAI's usage shape: three token counts, optional objects of detailed counts."""
    # Spelt out, without generators: it runs for every answer stored and every Redis hit.
    if usage is None:
        return
    if not (
        isinstance(usage, dict)
        and isinstance(usage.get("prompt_tokens"), int)
        and isinstance(usage.get("completion_tokens"), int)
        and isinstance(usage.get("total_tokens"), int)
    ):
        raise InvalidRecord("usage is not an object of token counts")
    for name in _DETAILS:
        details = usage.get(name)
        if details is None:
            continue
        if not isinstance(details, dict):
            raise InvalidRecord(f"usage.{name} is not an object of token counts")
        for v in details.values():
            if v is not None and not isinstance(v, int):
                raise InvalidRecord(f"usage.{name} is not an object of token counts")


def _check_tool_call(call: Any) -> None:
    """A function call a replay can render: an id, the function's name and its arguments.
    (Custom tool calls, whose input is free text, are not replayed.)"""
    fn = call.get("function") if isinstance(call, dict) else None
    if not (
        isinstance(fn, dict)
        and isinstance(call.get("id"), str)
        and call.get("type") == "function"
        and isinstance(fn.get("name"), str)
        and isinstance(fn.get("arguments"), str)
    ):
        raise InvalidRecord("malformed choice: a tool call is not a function call")


def decode(raw: bytes) -> CacheRecord:
    """Parse and check a stored value; raises :class:`InvalidRecord`."""
    try:
        obj = orjson.loads(raw)
        if obj["v"] != RECORD_VERSION:
            raise InvalidRecord(f"record version {obj['v']!r}")
        response = obj["response"]
        _check_choices(response["choices"])
        _check_usage(response.get("usage"))
        for name, types in _HEAD_TYPES:
            if not isinstance(response.get(name), types):
                raise InvalidRecord(f"{name} is not a {types[0].__name__}")
        stored_at = float(obj["stored_at"])
        if not math.isfinite(stored_at):
            raise InvalidRecord(f"stored_at {stored_at} is not a time")
        return CacheRecord(response, stored_at, int(obj["ttl"]), str(obj["key"]), str(obj["scope"]))
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as err:
        if isinstance(err, InvalidRecord):
            raise
        raise InvalidRecord(f"malformed record: {err!r}") from None
