"""Which headers cross the gateway (aigw.headers), including its per-name memo."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from aigw import headers as h


def incoming(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


upstream_headers = h.UpstreamHeaders()  # the default policy


def test_upstream_drops_by_name_whatever_the_spelling_every_time() -> None:
    for _ in range(2):  # the second pass answers from the memo
        for spelling in ("Authorization", "AUTHORIZATION", "authorization"):
            got = upstream_headers(incoming((spelling, "Bearer sk-client"), ("X-Trace", "1")))
            assert got == {"X-Trace": "1"}


def test_a_name_listed_in_connection_is_dropped_even_after_it_was_forwarded() -> None:
    assert upstream_headers(incoming(("X-Hop", "a"))) == {"X-Hop": "a"}
    got = upstream_headers(incoming(("Connection", "x-hop"), ("X-Hop", "a"), ("X-Kept", "b")))
    assert got == {"X-Kept": "b"}
    assert upstream_headers(incoming(("X-Hop", "a"))) == {"X-Hop": "a"}  # only for that hop


@pytest.mark.parametrize("first_line", ["close", ""])
def test_names_on_every_connection_line_are_dropped(first_line: str) -> None:
    got = upstream_headers(
        incoming(
            ("Connection", first_line),
            ("connection", "x-secret-hop"),
            ("X-Secret-Hop", "leaked?"),
            ("X-Kept", "b"),
        )
    )
    assert got == {"X-Kept": "b"}


def test_the_memo_is_bounded_and_names_past_it_are_still_filtered() -> None:
    fresh = h.UpstreamHeaders()
    many = [(f"X-Client-{i}", "v") for i in range(h._MEMO_MAX + 50)]
    assert len(fresh(incoming(*many))) == len(many)
    assert len(fresh._memo) == h._MEMO_MAX
    got = fresh(incoming(("CoOkIe", "session=1"), ("X-New", "v")))
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


# An OpenAI SDK's request (httpx): every name the SDK sends besides its credentials.
SDK_HEADERS = (
    ("Host", "gw:8080"),
    ("Accept-Encoding", "gzip, deflate"),
    ("Connection", "keep-alive"),
    ("Accept", "application/json"),
    ("Content-Type", "application/json"),
    ("User-Agent", "AsyncOpenAI/Python 1.54.0"),
    ("X-Stainless-Lang", "python"),
    ("X-Stainless-Package-Version", "1.54.0"),
    ("X-Stainless-Retry-Count", "0"),
    ("OpenAI-Beta", "assistants=v2"),
    ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    ("Idempotency-Key", "stainless-python-retry-1"),
    ("Authorization", "Bearer sk-gw"),
    ("Content-Length", "97"),
)
SDK_FORWARDED = [
    "Accept",
    "User-Agent",
    "X-Stainless-Lang",
    "X-Stainless-Package-Version",
    "X-Stainless-Retry-Count",
    "OpenAI-Beta",
    "traceparent",
    "Idempotency-Key",  # looks like a credential (*-key) but is not: the provider dedups with it
]


@pytest.mark.parametrize(
    "name",
    [
        "X-Goog-Api-Key",
        "Anthropic-Api-Key",
        "X-Auth-Token",
        "X-Amz-Security-Token",
        "Ocp-Apim-Subscription-Key",
        "X-Ms-Client-Key",
        "X-Client-Secret",
        "X_Api_Key",
        "Proxy-Authorization",
        "X-Goog-Iam-Authorization-Token",
        "X-Vault-Token",
        "X-Session-Cookie",
        "X-Db-Password",
        "X-Custom-Auth",
        "apikey",
    ],
)
def test_headers_that_carry_credentials_never_go_upstream(name: str) -> None:
    for headers in (incoming((name, "secret")), incoming(("Connection", "x-hop"), (name, "s"))):
        for _ in range(2):  # the second pass answers from the memo
            assert upstream_headers(headers) == {}, name


def test_an_sdk_request_keeps_its_ordinary_headers() -> None:
    got = upstream_headers(incoming(*SDK_HEADERS))
    assert list(got) == SDK_FORWARDED


def test_the_operator_drops_more_or_forwards_only_what_it_names() -> None:
    dropped = h.UpstreamHeaders(drop=["X-Stainless-Lang", "openai-beta"])
    got = dropped(incoming(*SDK_HEADERS))
    assert list(got) == [n for n in SDK_FORWARDED if n not in ("X-Stainless-Lang", "OpenAI-Beta")]
    only = h.UpstreamHeaders(forward=["user-agent", "TRACEPARENT", "x-absent"])
    for _ in range(2):
        assert list(only(incoming(*SDK_HEADERS))) == ["User-Agent", "traceparent"]
    # A Connection line naming another header takes the other path: same rules.
    hop = incoming(("Connection", "x-hop"), ("X-Hop", "a"), *SDK_HEADERS)
    assert list(only(hop)) == ["User-Agent", "traceparent"]


@pytest.mark.parametrize("name", ["Authorization", "x-goog-api-key", "Host", "cache-control"])
def test_forwarding_a_header_that_never_goes_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match=f"{name.lower()}: never forwarded upstream"):
        h.UpstreamHeaders(forward=["user-agent", name])
