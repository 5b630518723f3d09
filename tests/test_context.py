"""The request context plugins share (aigw.context)."""

from __future__ import annotations

import pytest

from aigw.context import CacheOutcome, RequestContext


def test_context_fields_are_fixed_and_its_containers_are_per_request() -> None:
    a = RequestContext(request=None, request_id="a", model="m")  # type: ignore[arg-type]
    b = RequestContext(request=None, request_id="b")  # type: ignore[arg-type]
    assert (a.model, b.model, a.cache_lookup, a.status) == ("m", "", True, 0)
    a.payload["x"] = a.scratch["p"] = 1
    a.response_headers["h"] = "1"
    assert b.payload == b.scratch == {} and not b.response_headers
    with pytest.raises(AttributeError):
        RequestContext(request=None, request_id="c", modle="m")  # type: ignore[arg-type]
    with pytest.raises(AttributeError):
        a.cache_stauts = "hit"  # type: ignore[attr-defined]


def test_one_outcome_per_cache_and_the_verdict_over_all() -> None:
    ctx = RequestContext(request=None, request_id="a")  # type: ignore[arg-type]
    assert ctx.cache_status is None and ctx.cache_hit is None
    ctx.record_cache(CacheOutcome("exact-cache", "exact", "skip", reason="no key"))
    assert ctx.cache_status == "skip"
    ctx.record_cache(CacheOutcome("exact-cache", "exact", "miss", key="k1"))  # replaces the skip
    ctx.record_cache(CacheOutcome("semantic-cache", "semantic", "miss", similarity=0.5))
    assert [o.status for o in ctx.cache_outcomes] == ["miss", "miss"]
    assert ctx.cache_status == "miss" and ctx.cache_hit is None
    hit = CacheOutcome("semantic-cache", "semantic", "hit", key="k2", similarity=0.93)
    ctx.record_cache(hit)
    assert ctx.cache_outcomes == (CacheOutcome("exact-cache", "exact", "miss", key="k1"), hit)
    assert ctx.cache_status == "hit" and ctx.cache_hit is hit
    with pytest.raises(AttributeError):
        ctx.cache_status = "miss"  # type: ignore[misc]  # derived from the outcomes only
