"""Which headers cross the gateway (aigw.headers), including its per-name memo."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from aigw import headers as h


def incoming(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def test_upstream_drops_by_name_whatever_the_spelling_every_time() -> None:
    for _ in range(2):  # the second pass answers from the memo
        for spelling in ("Authorization", "AUTHORIZATION", "authorization"):
            got = h.upstream_headers(incoming((spelling, "Bearer sk-client"), ("X-Trace", "1")))
            assert got == {"X-Trace": "1"}


def test_a_name_listed_in_connection_is_dropped_even_after_it_was_forwarded() -> None:
    assert h.upstream_headers(incoming(("X-Hop", "a"))) == {"X-Hop": "a"}
    got = h.upstream_headers(incoming(("Connection", "x-hop"), ("X-Hop", "a"), ("X-Kept", "b")))
    assert got == {"X-Kept": "b"}
    assert h.upstream_headers(incoming(("X-Hop", "a"))) == {"X-Hop": "a"}  # only for that hop


@pytest.mark.parametrize("first_line", ["close", ""])
def test_names_on_every_connection_line_are_dropped(first_line: str) -> None:
    got = h.upstream_headers(
        incoming(
            ("Connection", first_line),
            ("connection", "x-secret-hop"),
            ("X-Secret-Hop", "leaked?"),
            ("X-Kept", "b"),
        )
    )
    assert got == {"X-Kept": "b"}


def test_the_memo_is_bounded_and_names_past_it_are_still_filtered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(h, "_to_upstream", {})
    many = [(f"X-Client-{i}", "v") for i in range(h._MEMO_MAX + 50)]
    assert len(h.upstream_headers(incoming(*many))) == len(many)
    assert len(h._to_upstream) == h._MEMO_MAX
    got = h.upstream_headers(incoming(("CoOkIe", "session=1"), ("X-New", "v")))
    assert got == {"X-New": "v"}


def test_downstream_keeps_rate_limits_and_renames_the_upstream_id() -> None:
    for _ in range(2):
        got = h.downstream_headers(
            incoming(
                ("Date", "today"),
                ("Server", "upstream"),
                ("X-Request-Id", "up-1"),
                ("x-ratelimit-remaining-requests", "99"),
                ("Strict-Transport-Security", "max-age=1"),
                ("OpenAI-Organization", "org-operator"),  # the operator's account
                ("OpenAI-Project", "proj_operator"),
            )
        )
        assert got == {"x-ratelimit-remaining-requests": "99", "x-upstream-request-id": "up-1"}
