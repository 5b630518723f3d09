"""``aigw.cache.record`` (normalise, encode, decode) and ``aigw.cache.replay`` (JSON and SSE)."""

from __future__ import annotations

import copy
import itertools
import time
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from aigw.cache.record import (
    RECORD_VERSION,
    CacheRecord,
    InvalidRecord,
    decode,
    encode,
    make_record,
    normalise,
)
from aigw.cache.replay import completion_body, replay, stream_chunks
from aigw.completion import StreamAssembler
from aigw.context import SSE_CT
from aigw.sse import SSEParser

FAST = settings(max_examples=100, deadline=None)
DONE_EVENT = b"data: [DONE]\n\n"

USAGE = {
    "prompt_tokens": 9,
    "completion_tokens": 12,
    "total_tokens": 21,
    "prompt_tokens_details": {"cached_tokens": 0},
}
TEXT = "Hello there! This answer is long enough to be split into several chunks. Ünïcødé ✓."


def completion(message: dict[str, Any], finish: str = "stop", **extra: Any) -> dict[str, Any]:
    """An upstream ``chat.completion`` carrying ``message``, with junk a cache should drop."""
    return {
        "id": "chatcmpl-upstream123",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "gpt-4o-mini-2024-07-18",
        "system_fingerprint": "fp_abc123",
        "service_tier": "default",
        "x_junk": {"a": 1},
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", **message, "annotations": [], "junk": 1},
                "logprobs": {"content": []},
                "finish_reason": finish,
                "junk": "x",
            }
        ],
        "usage": USAGE,
        **extra,
    }


TOOL_CALLS = [
    {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'},
    },
    {
        "id": "call_2",
        "type": "function",
        "function": {"name": "get_time", "arguments": '{"tz": "Europe/Paris"}'},
    },
]
PLAIN = completion({"content": TEXT, "refusal": None})
TOOLS = completion({"content": None, "tool_calls": TOOL_CALLS}, "tool_calls")
REASONING = completion({"content": TEXT, "reasoning_content": "Let me think about it first."})
REFUSAL = completion({"content": None, "refusal": "I can't help with that request."})
ALL = {"plain": PLAIN, "tools": TOOLS, "reasoning": REASONING, "refusal": REFUSAL}


def record_of(upstream: dict[str, Any], ttl: int = 60) -> CacheRecord:
    return make_record(upstream, "k" * 64, "consumer:alice", ttl)


# --------------------------------------------------------------------------- record


@pytest.mark.parametrize("name", sorted(ALL))
def test_round_trip_keeps_what_replay_needs(name: str) -> None:
    upstream = ALL[name]
    before = time.time()
    record = record_of(upstream, ttl=123)
    assert before <= record.stored_at <= time.time()
    back = decode(encode(record))
    assert back == record
    assert (back.key, back.scope, back.ttl) == ("k" * 64, "consumer:alice", 123)

    r = back.response
    for field in ("id", "model", "created", "system_fingerprint", "usage"):
        assert r[field] == upstream[field]
    [choice] = r["choices"]
    [original] = upstream["choices"]
    assert choice["index"] == 0
    assert choice["finish_reason"] == original["finish_reason"]
    message = choice["message"]
    assert message["role"] == "assistant"
    for field in ("content", "tool_calls", "reasoning_content", "refusal"):
        assert message.get(field) == original["message"].get(field)


@pytest.mark.parametrize("name", sorted(ALL))
def test_normalise_drops_junk(name: str) -> None:
    r = normalise(ALL[name])
    assert set(r) == {"id", "model", "created", "system_fingerprint", "choices", "usage"}
    [choice] = r["choices"]
    assert set(choice) == {"index", "message", "finish_reason"}
    assert set(choice["message"]) <= {
        "role",
        "content",
        "tool_calls",
        "reasoning_content",
        "refusal",
    }
    assert "annotations" not in choice["message"]
    assert "junk" not in choice["message"]


def test_normalise_fills_role_and_content_and_skips_missing_usage() -> None:
    r = normalise({"id": "x", "model": "m", "choices": [{"message": {"tool_calls": TOOL_CALLS}}]})
    assert "usage" not in r
    assert r["choices"] == [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": None,
                "refusal": None,
                "tool_calls": TOOL_CALLS,
            },
            "finish_reason": None,
        }
    ]


def test_normalised_message_keeps_openai_key_order() -> None:
    r = normalise({"model": "m", "choices": [{"message": {"content": "hi", "role": "assistant"}}]})
    assert list(r["choices"][0]["message"]) == ["role", "content", "refusal"]


def test_record_age_counts_whole_seconds() -> None:
    record = CacheRecord({"choices": []}, time.time() - 5.5, 60, "k", "s")
    assert 5 <= record.age <= 6
    future = CacheRecord({"choices": []}, time.time() + 100, 60, "k", "s")
    assert future.age == 0


def encoded(**changes: Any) -> bytes:
    obj: dict[str, Any] = orjson.loads(encode(record_of(PLAIN)))
    for name, value in changes.items():
        if value is None:
            del obj[name]
        else:
            obj[name] = value
    return orjson.dumps(obj)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00\xff\xfe garbage",
        b"\xc3\x28",
        b"not json",
        b'{"v": 1,',
        b"null",
        b"42",
        b'"a string"',
        b"[]",
        b"[1, 2]",
        b"{}",
        encoded(v=None),
        encoded(v=RECORD_VERSION + 1),
        encoded(v=0),
        encoded(v="1"),
        encoded(response=None),
        encoded(response=[]),
        encoded(response="text"),
        encoded(response={"id": "x"}),
        encoded(response={"choices": []}),
        encoded(response={"choices": None}),
        encoded(response={"choices": "abc"}),
        encoded(response={"choices": 7}),
        encoded(response={"choices": {"message": {}}}),
        encoded(response={"choices": [{}]}),
        encoded(response={"choices": [{"message": "hi"}]}),
        encoded(response={"choices": [{"message": {}}, "x"]}),
        encoded(stored_at=None),
        encoded(stored_at="yesterday"),
        encoded(stored_at={}),
        encoded(stored_at="nan"),  # float() takes these; no age can be computed from them
        encoded(stored_at="inf"),
        encoded(response={**normalise(PLAIN), "usage": "garbage"}),
        encoded(response={**normalise(PLAIN), "usage": 5}),
        encoded(ttl=None),
        encoded(ttl="forever"),
        encoded(ttl=[]),
        encoded(key=None),
        encoded(scope=None),
    ],
)
def test_decode_rejects_anything_but_a_record(raw: bytes) -> None:
    with pytest.raises(InvalidRecord):
        decode(raw)


def test_invalid_record_is_a_value_error() -> None:
    assert issubclass(InvalidRecord, ValueError)


@FAST
@given(raw=st.binary(max_size=200))
def test_arbitrary_bytes_only_raise_invalid_record(raw: bytes) -> None:
    try:
        record = decode(raw)
    except InvalidRecord:
        return
    assert isinstance(record, CacheRecord)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


def json_paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    paths = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            paths.extend(json_paths(v, (*prefix, k)))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            paths.extend(json_paths(v, (*prefix, i)))
    return paths


VALID: dict[str, Any] = orjson.loads(encode(record_of(TOOLS)))
VALID_PATHS = json_paths(VALID)[1:]


@FAST
@given(path=st.sampled_from(VALID_PATHS), value=json_values, drop=st.booleans())
def test_a_damaged_record_only_raises_invalid_record(
    path: tuple[Any, ...], value: Any, drop: bool
) -> None:
    damaged = copy.deepcopy(VALID)
    parent = damaged
    for part in path[:-1]:
        parent = parent[part]
    if drop:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    try:
        record = decode(orjson.dumps(damaged))
    except InvalidRecord:
        return
    # What decode accepts, a hit must be able to serve (what ExactCachePlugin._hit reads).
    assert record.age >= 0
    usage = record.response.get("usage")
    assert usage is None or dict(usage) == usage
    ChatCompletion.model_validate_json(completion_body(record))
    assert list(stream_chunks(record, include_usage=True, piece_chars=4))[-1] == DONE_EVENT


@FAST
@given(
    field=st.sampled_from(["id", "model", "created", "system_fingerprint", "usage"]),
    value=json_values | st.floats(),
    drop=st.booleans(),
)
def test_what_make_record_stores_decode_reads_back(field: str, value: Any, drop: bool) -> None:
    # A record Redis holds is read back through decode(): an answer make_record accepts but
    # decode() refuses would be written on every miss and refused on every lookup.
    upstream = copy.deepcopy(PLAIN)
    if drop:
        del upstream[field]
    else:
        upstream[field] = value
    try:
        record = record_of(upstream)
    except InvalidRecord:
        assert field == "model"  # only an answer without a model name is refused
        return
    back = decode(encode(record))
    assert back.response == record.response
    assert back.response["choices"] == normalise(PLAIN)["choices"]


def test_a_head_decode_would_refuse_is_repaired() -> None:
    before = int(time.time())
    for created, expected in ((1_700_000_000.7, 1_700_000_000), (None, None), ("soon", None)):
        r = normalise({**PLAIN, "created": created, "id": 7, "system_fingerprint": ["x"]})
        assert r["created"] == expected if expected else before <= r["created"] <= time.time()
        assert (r["id"], r["system_fingerprint"]) == (None, None)
    assert "usage" not in normalise({**PLAIN, "usage": {"total_tokens": "many"}})
    with pytest.raises(InvalidRecord):
        normalise({**PLAIN, "model": None})


@pytest.mark.parametrize(
    "choices",
    [[{"message": {"content": "hi"}}], [{"index": 0, "message": {"tool_calls": "oops"}}]],
    ids=["no-index", "tool-calls-not-a-list"],
)
def test_whatever_decode_accepts_replays_as_a_stream(choices: list[Any]) -> None:
    response = {**normalise(PLAIN), "choices": choices}
    raw = encode(CacheRecord(response, time.time(), 60, "k", "s"))
    try:
        record = decode(raw)
    except InvalidRecord:
        return  # rejected: a miss, as it should be
    events = list(stream_chunks(record, include_usage=True, piece_chars=4))
    assert events[-1] == DONE_EVENT


# --------------------------------------------------------------------------- JSON replay


@pytest.mark.parametrize("name", sorted(ALL))
def test_completion_body_is_an_openai_chat_completion(name: str) -> None:
    upstream = ALL[name]
    record = record_of(upstream)
    body = completion_body(record)
    parsed = ChatCompletion.model_validate_json(body)
    assert parsed.object == "chat.completion"
    assert parsed.id.startswith("chatcmpl-")
    assert parsed.id != upstream["id"]
    assert parsed.model == upstream["model"]
    assert parsed.created == upstream["created"]
    assert parsed.system_fingerprint == upstream["system_fingerprint"]
    assert parsed.usage is not None
    assert parsed.usage.model_dump(exclude_none=True, exclude_unset=True) == USAGE
    [choice] = parsed.choices
    [original] = upstream["choices"]
    assert choice.finish_reason == original["finish_reason"]
    assert choice.message.role == "assistant"
    assert choice.message.content == original["message"].get("content")
    assert choice.message.refusal == original["message"].get("refusal")
    calls = [c.model_dump() for c in choice.message.tool_calls or ()]
    assert calls == (original["message"].get("tool_calls") or [])
    raw = orjson.loads(body)["choices"][0]["message"]
    assert raw.get("reasoning_content") == original["message"].get("reasoning_content")


def test_every_replay_gets_a_fresh_id() -> None:
    record = record_of(PLAIN)
    ids = {orjson.loads(completion_body(record))["id"] for _ in range(5)}
    assert len(ids) == 5
    assert all(i.startswith("chatcmpl-") for i in ids)
    streamed = {orjson.loads(next(stream_chunks(record, False, 16))[6:-2])["id"] for _ in range(5)}
    assert len(streamed) == 5
    assert not ids & streamed


def test_completion_body_without_usage() -> None:
    upstream = {k: v for k, v in PLAIN.items() if k != "usage"}
    body = orjson.loads(completion_body(record_of(upstream)))
    assert "usage" not in body
    ChatCompletion.model_validate(body)


# --------------------------------------------------------------------------- SSE replay


def data_of(events: list[bytes]) -> list[bytes]:
    """Check OpenAI's framing of every event and return the JSON payloads (without DONE)."""
    assert events[-1] == DONE_EVENT
    assert DONE_EVENT not in events[:-1]
    out = []
    for event in events[:-1]:
        assert event.startswith(b"data: ")
        assert event.endswith(b"\n\n")
        data = event[len(b"data: ") : -2]
        assert b"\n" not in data and b"\r" not in data
        out.append(data)
    return out


def chunks_of(record: CacheRecord, include_usage: bool, piece_chars: int) -> list[dict[str, Any]]:
    datas = data_of(list(stream_chunks(record, include_usage, piece_chars)))
    for data in datas:
        ChatCompletionChunk.model_validate_json(data)
    return [orjson.loads(d) for d in datas]


def assemble(stream: bytes, cuts: list[int] | None = None) -> dict[str, Any]:
    """Parse an SSE byte stream (cut into reads at ``cuts``) and assemble the completion."""
    bounds = [0, *sorted(set(cuts or ())), len(stream)]
    parser = SSEParser()
    assembler = StreamAssembler()
    datas = []
    for a, b in itertools.pairwise(bounds):
        datas.extend(event.data for event in parser.feed(stream[a:b]))
    assert datas[-1] == b"[DONE]"
    for data in datas[:-1]:
        assembler.feed(orjson.loads(data))
    assert assembler.finished
    return assembler.result()


def deltas(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c["choices"][0]["delta"] for c in chunks if c["choices"]]


@pytest.mark.parametrize("include_usage", [False, True])
def test_stream_of_plain_content(include_usage: bool) -> None:
    record = record_of(PLAIN)
    chunks = chunks_of(record, include_usage, piece_chars=8)

    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["id"].startswith("chatcmpl-")
    assert chunks[0]["id"] != PLAIN["id"]
    for c in chunks:
        assert c["object"] == "chat.completion.chunk"
        assert c["model"] == PLAIN["model"]
        assert c["created"] == PLAIN["created"]
        assert c["system_fingerprint"] == PLAIN["system_fingerprint"]

    ds = deltas(chunks)
    assert ds[0] == {"role": "assistant", "content": ""}
    pieces = [d["content"] for d in ds[1:-1]]
    assert all(set(d) == {"content"} for d in ds[1:-1])
    assert len(pieces) == -(-len(TEXT) // 8) > 1
    assert all(0 < len(p) <= 8 for p in pieces)
    assert "".join(pieces) == TEXT

    with_choices = [c for c in chunks if c["choices"]]
    finish = with_choices[-1]["choices"][0]
    assert finish["delta"] == {}
    assert finish["finish_reason"] == "stop"
    assert all(c["choices"][0]["finish_reason"] is None for c in with_choices[:-1])

    if include_usage:
        *rest, last = chunks
        assert last["choices"] == []
        assert last["usage"] == USAGE
        assert all("usage" in c and c["usage"] is None for c in rest)
    else:
        assert all(c["choices"] for c in chunks)
        assert all(c.get("usage") is None for c in chunks)


def test_stream_of_tool_calls() -> None:
    chunks = chunks_of(record_of(TOOLS), include_usage=False, piece_chars=5)
    ds = deltas(chunks)
    assert ds[0] == {"role": "assistant", "content": None}  # as OpenAI opens a tool call
    assert ds[-1] == {}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    calls = [d["tool_calls"] for d in ds if "tool_calls" in d]
    assert all(len(c) == 1 for c in calls)
    flat = [c[0] for c in calls]
    for n, expected in enumerate(TOOL_CALLS):
        mine = [c for c in flat if c["index"] == n]
        first, *rest = mine
        assert first["id"] == expected["id"]
        assert first["type"] == "function"
        assert first["function"] == {"name": expected["function"]["name"], "arguments": ""}
        assert len(rest) > 1
        assert all(set(c) == {"index", "function"} for c in rest)
        assert all(set(c["function"]) == {"arguments"} for c in rest)
        args = "".join(c["function"]["arguments"] for c in rest)
        assert args == expected["function"]["arguments"]
    # tool calls come in order: all of call 0, then all of call 1
    assert [c["index"] for c in flat] == sorted(c["index"] for c in flat)


def test_stream_of_reasoning_and_refusal() -> None:
    ds = deltas(chunks_of(record_of(REASONING), include_usage=False, piece_chars=6))
    reasoning = "".join(d.get("reasoning_content", "") for d in ds)
    assert reasoning == REASONING["choices"][0]["message"]["reasoning_content"]
    assert "".join(d.get("content", "") for d in ds) == TEXT
    # the reasoning comes before the answer
    first_content = next(i for i, d in enumerate(ds) if d.get("content"))
    last_reasoning = max(i for i, d in enumerate(ds) if "reasoning_content" in d)
    assert last_reasoning < first_content

    ds = deltas(chunks_of(record_of(REFUSAL), include_usage=False, piece_chars=6))
    assert "".join(d.get("refusal", "") for d in ds) == REFUSAL["choices"][0]["message"]["refusal"]
    assert "".join(d.get("content") or "" for d in ds) == ""


@pytest.mark.parametrize("name", sorted(ALL))
@pytest.mark.parametrize("include_usage", [False, True])
def test_stream_assembles_back_to_the_record(name: str, include_usage: bool) -> None:
    record = record_of(ALL[name])
    stream = b"".join(stream_chunks(record, include_usage, 7))
    assembled = assemble(stream)
    expected = dict(record.response)
    if not include_usage:
        del expected["usage"]
    assert {**normalise(assembled), "id": None} == {**expected, "id": None}

    # stream → record → stream: the second generation assembles to the same answer
    again = assemble(b"".join(stream_chunks(record_of(assembled), include_usage, 3)))
    assert {**again, "id": None} == {**assembled, "id": None}


text = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=60)
tool_calls = st.lists(
    st.fixed_dictionaries(
        {
            "id": st.from_regex(r"call_[A-Za-z0-9]{1,8}", fullmatch=True),
            "type": st.just("function"),
            "function": st.fixed_dictionaries(
                {"name": st.from_regex(r"[a-z_]{1,12}", fullmatch=True), "arguments": text}
            ),
        }
    ),
    min_size=1,
    max_size=3,
)
messages = st.fixed_dictionaries(
    {},
    optional={
        "content": text,
        "reasoning_content": text,
        "refusal": text,
        "tool_calls": tool_calls,
    },
)
usages = st.fixed_dictionaries(
    {
        "prompt_tokens": st.integers(0, 10**6),
        "completion_tokens": st.integers(0, 10**6),
        "total_tokens": st.integers(0, 10**6),
    }
)


@st.composite
def upstreams(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(1, 2))
    out: dict[str, Any] = {
        "id": "chatcmpl-up",
        "object": "chat.completion",
        "created": draw(st.integers(0, 2**31)),
        "model": draw(st.sampled_from(["gpt-4o", "gpt-4o-mini", "o3-mini"])),
        "system_fingerprint": draw(st.none() | st.just("fp_x")),
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", **draw(messages)},
                "finish_reason": draw(
                    st.sampled_from(["stop", "length", "tool_calls", "content_filter"])
                ),
            }
            for i in range(n)
        ],
    }
    if draw(st.booleans()):
        out["usage"] = draw(usages)
    return out


@FAST
@given(
    upstream=upstreams(),
    include_usage=st.booleans(),
    piece_chars=st.integers(1, 20),
    data=st.data(),
)
def test_any_record_streams_validly_and_assembles_back(
    upstream: dict[str, Any], include_usage: bool, piece_chars: int, data: st.DataObject
) -> None:
    record = decode(encode(record_of(upstream)))
    events = list(stream_chunks(record, include_usage, piece_chars))
    chunks = chunks_of(record, include_usage, piece_chars)
    assert len({c["id"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    for c in chunks:
        for choice in c["choices"]:
            delta = choice["delta"]
            for field in ("content", "reasoning_content", "refusal"):
                assert len(delta.get(field) or "") <= piece_chars
            for call in delta.get("tool_calls") or ():
                assert len(call["function"].get("arguments", "")) <= piece_chars
    usage_chunks = [c for c in chunks if not c["choices"]]
    if include_usage:
        assert usage_chunks == [chunks[-1]]
        assert chunks[-1]["usage"] == upstream.get("usage")
        assert all(c["usage"] is None for c in chunks[:-1])
    else:
        assert usage_chunks == []
        assert all("usage" not in c for c in chunks)

    stream = b"".join(events)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=8))
    assembled = assemble(stream, cuts)
    expected = dict(record.response)
    if not include_usage:
        expected.pop("usage", None)
    assert {**normalise(assembled), "id": None} == {**expected, "id": None}


async def test_replay_reply_shapes() -> None:
    record = record_of(PLAIN)
    headers = {"x-aigw-cache": "hit"}

    plain = replay(record, stream=False, include_usage=True, headers=headers)
    assert plain.stream is None
    assert plain.status == 200
    assert plain.headers == headers
    assert ChatCompletion.model_validate_json(plain.body).choices[0].message.content == TEXT

    streamed = replay(record, stream=True, include_usage=True, headers=headers, piece_chars=4)
    assert streamed.content_type == SSE_CT
    assert streamed.body == b""
    assert streamed.headers == headers
    assert streamed.stream is not None
    events = [event async for event in streamed.stream]
    datas = data_of(events)
    assert orjson.loads(datas[-1])["usage"] == USAGE
    assert assemble(b"".join(events))["choices"][0]["message"]["content"] == TEXT


def test_annotations_survive_a_json_replay() -> None:
    notes = [{"type": "url_citation", "url_citation": {"url": "https://example.org", "title": "t"}}]
    completion = {
        "id": "chatcmpl-a",
        "model": "m",
        "created": 1,
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": "see", "annotations": notes},
            }
        ],
    }
    record = decode(encode(make_record(completion, "k", "s", 60)))
    body = orjson.loads(completion_body(record))
    assert body["choices"][0]["message"]["annotations"] == notes


@pytest.mark.parametrize(
    "message",
    [
        {"content": [{"type": "text", "text": "parts"}]},  # some servers: a list of parts
        {"content": "ok", "refusal": {"reason": "x"}},
        {"content": None, "tool_calls": {"id": "call_1"}},
        {"content": None, "tool_calls": ["not an object"]},
    ],
)
def test_an_answer_a_replay_could_not_render_is_no_record(message: dict[str, Any]) -> None:
    # Stored, it would replay as an empty or broken answer (memory) or be refused on every
    # read (Redis): it is never made into a record.
    with pytest.raises(InvalidRecord):
        make_record(completion(message), "k", "s", 60)
    with pytest.raises(InvalidRecord):
        make_record({**completion({"content": "ok"}), "choices": [{"index": "0"}]}, "k", "s", 60)
