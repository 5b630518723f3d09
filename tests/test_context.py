"""The request context plugins share (aigw.context)."""

from __future__ import annotations

import pytest

from aigw.context import RequestContext


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
