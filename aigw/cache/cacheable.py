"""What both caches may store: the rules on the request and on the answer (DESIGN.md §4)."""

from __future__ import annotations

from typing import Any, Literal

from aigw.cache.key import CacheKey, Strategy, cache_key
from aigw.context import RequestContext


def request_key(
    ctx: RequestContext, scope: Literal["consumer", "shared"], strategy: Strategy, key_from: str
) -> CacheKey | str:
    """A cache's key for the request, or why the cache skips it: the request asked so, its
    answer cannot be cached, or the strategy finds nothing to key on. ``scope``: ``consumer``
    (the authenticated consumer's own entries) or ``shared``."""
    if not (ctx.cache_lookup or ctx.cache_store):
        return "skipped by the request"
    why_not = uncacheable_request(ctx.payload)
    if why_not is not None:
        return why_not
    name = "shared" if scope == "shared" else f"consumer:{ctx.consumer or ''}"
    key = cache_key(ctx, name, strategy, key_from)
    return key if key is not None else "nothing to key on"


def uncacheable_request(payload: dict[str, Any]) -> str | None:
    """Why a request's answer cannot be cached, or ``None``."""
    n = payload.get("n")
    if n is not None and n != 1:
        return "n > 1"
    if payload.get("logprobs") or payload.get("top_logprobs"):
        return "logprobs are not stored"
    return None


def uncacheable_answer(ctx: RequestContext, allow_tool_calls: bool) -> str | None:
    """Why the answer may not be stored, or ``None`` when it may."""
    if ctx.status != 200:
        return f"status {ctx.status}"
    completion = ctx.completion
    if completion is None:
        return "incomplete answer"
    choices = completion.get("choices") or []
    if len(choices) != 1:
        return "not exactly one choice"
    finish = choices[0].get("finish_reason")
    message = choices[0].get("message") or {}
    # Some servers end a forced tool call with finish_reason "stop": look at the message too.
    if (finish == "tool_calls" or message.get("tool_calls")) and not allow_tool_calls:
        return "tool calls (cache_tool_calls is off)"
    if finish not in ("stop", "tool_calls"):
        return f"finish_reason {finish!r}"
    if not (message.get("content") or message.get("tool_calls") or message.get("refusal")):
        return "empty answer"
    return None
