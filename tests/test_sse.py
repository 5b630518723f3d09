"""``aigw.sse`` (the incremental SSE parser and OpenAI framing) and ``aigw.completion``."""

from __future__ import annotations

import itertools
import json
import re
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aigw.completion import StreamAssembler
from aigw.sse import COMMENT, DONE, MAX_EVENT_SIZE, Event, SSEEventTooLarge, SSEParser, encode


def feed_all(pieces: list[bytes], max_event_size: int = MAX_EVENT_SIZE) -> list[Event]:
    """Feed ``pieces`` in turn to one parser and collect every event."""
    parser = SSEParser(max_event_size=max_event_size)
    events: list[Event] = []
    for piece in pieces:
        events.extend(parser.feed(piece))
    return events


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(set(cuts)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


# --------------------------------------------------------------------------- line ends


@pytest.mark.parametrize("eol", [b"\n", b"\r", b"\r\n"], ids=["LF", "CR", "CRLF"])
def test_every_line_end_style(eol: bytes) -> None:
    stream = eol.join([b'data: {"a": 1}', b"", b"event: note", b"data: two", b"", b""])
    assert feed_all([stream]) == [Event(b'{"a": 1}'), Event(b"two", "note")]


def test_mixed_line_ends_in_one_stream() -> None:
    stream = b"data: a\r\ndata: b\rdata: c\n\r\ndata: d\r\r"
    assert feed_all([stream]) == [Event(b"a\nb\nc"), Event(b"d")]


def test_crlf_split_across_two_feeds_is_one_line_end() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    # If the LF were taken as a second line end, "a" would be dispatched on its own.
    assert parser.feed(b"\ndata: b\r\n\r\n") == [Event(b"a\nb")]


def test_cr_then_cr_across_feeds_is_two_line_ends() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\rdata: b\r") == [Event(b"a")]
    assert parser.feed(b"\r") == [Event(b"b")]


def test_pending_cr_only_swallows_one_lf() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\n\n") == [Event(b"a")]


def test_empty_feed_between_cr_and_lf() -> None:
    assert feed_all([b"data: a\r", b"", b"\ndata: b\n\n"]) == [Event(b"a\nb")]


def test_line_end_split_from_a_line_begun_in_earlier_reads() -> None:
    # The line is kept across reads; its CR ends one read and its LF begins the next.
    parser = SSEParser()
    assert parser.feed(b"da") == []
    assert parser.feed(b"ta: a") == []
    assert parser.feed(b"b\r") == []
    assert parser.feed(b"\ndata: c") == []
    assert parser.feed(b"d\r") == []
    assert parser.feed(b"\r") == [Event(b"ab\ncd")]


# --------------------------------------------------------------------------- fields


def test_partial_event_waits_for_the_blank_line() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: x\n") == []
    assert parser.feed(b"data: y") == []
    assert parser.feed(b"\n") == []
    assert parser.feed(b"\n") == [Event(b"x\ny")]


def test_comments_between_events_are_events_of_their_own_and_inside_one_are_dropped() -> None:
    parser = SSEParser()
    assert parser.feed(b": keep-alive\n\n") == [Event(b": keep-alive", COMMENT)]
    assert parser.feed(b":\n\n") == [Event(b":", COMMENT)]
    assert parser.feed(b": OPENROUTER PROCESSING\ndata: x\n: data: not-data\n\n") == [
        Event(b": OPENROUTER PROCESSING", COMMENT),
        Event(b"x"),
    ]


def test_event_and_id_fields() -> None:
    stream = b"event: ping\nid: 7\ndata: {}\n\nid: 8\ndata: next\n\n"
    events = feed_all([stream])
    # the id is not data, and the event name does not leak into the next event
    assert events == [Event(b"{}", "ping"), Event(b"next", "message")]


def test_retry_and_unknown_fields_are_ignored() -> None:
    assert feed_all([b"retry: 3000\nfoo: bar\ndata: x\n\n"]) == [Event(b"x")]


def test_event_without_data_is_not_dispatched_and_resets_the_name() -> None:
    assert feed_all([b"event: lonely\n\ndata: x\n\n"]) == [Event(b"x", "message")]


def test_multi_line_data() -> None:
    stream = b"data: first\ndata: second\ndata:\ndata: fourth\n\n"
    assert feed_all([stream]) == [Event(b"first\nsecond\n\nfourth")]


def test_only_one_space_after_the_colon_is_stripped() -> None:
    assert feed_all([b"data:x\n\ndata:  y\n\ndata\n\n"]) == [
        Event(b"x"),
        Event(b" y"),
        Event(b""),
    ]


def test_utf8_character_split_across_feeds() -> None:
    text = "héllo 世界 🙂"
    raw = f"event: é\ndata: {text}\n\n".encode()
    emoji = raw.index("🙂".encode())
    e_acute = raw.index("é".encode())
    for cut in (e_acute + 1, emoji + 1, emoji + 2, emoji + 3):
        events = feed_all([raw[:cut], raw[cut:]])
        assert [(e.data.decode(), e.event) for e in events] == [(text, "é")]


def test_many_events_in_one_feed() -> None:
    stream = b"".join(encode({"n": i}) for i in range(200))
    events = SSEParser().feed(stream)
    assert [json.loads(e.data)["n"] for e in events] == list(range(200))


def test_event_split_byte_by_byte() -> None:
    stream = b'event: x\r\ndata: {"t": "\xc3\xa9"}\r\n: c\r\ndata: 2\r\n\r\n' + DONE
    pieces = [stream[i : i + 1] for i in range(len(stream))]
    expected = [Event(b'{"t": "\xc3\xa9"}\n2', "x"), Event(b"[DONE]")]
    assert feed_all(pieces) == expected
    assert feed_all([stream]) == expected


def test_encode_and_done_round_trip() -> None:
    obj = {"id": "c1", "choices": [{"delta": {"content": "line\nbreak é"}}]}
    frame = encode(obj)
    assert frame.startswith(b"data: ")
    assert frame.endswith(b"\n\n")
    assert frame.count(b"\n") == 2  # JSON escapes the newline: one event, one data line
    assert [json.loads(e.data) for e in SSEParser().feed(frame)] == [obj]
    assert SSEParser().feed(DONE) == [Event(b"[DONE]")]


# --------------------------------------------------------------------------- property

_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"),
    max_size=12,
)
_eol = st.sampled_from([b"\n", b"\r", b"\r\n"])


@st.composite
def sse_streams(draw: st.DrawFn) -> tuple[bytes, list[Event]]:
    """A valid stream with mixed line ends, and the events it must produce (a comment before
    an event's first data line is an event of its own; after it, part of the event)."""
    lines: list[bytes] = []
    expected: list[Event] = []
    for _ in range(draw(st.integers(0, 5))):
        name = draw(st.none() | _text.filter(bool))
        block: list[bytes] = []
        if name is not None:
            block.append(b"event: " + name.encode())
        data = draw(st.lists(_text, max_size=3))
        block.extend(b"data: " + d.encode() for d in data)
        if draw(st.booleans()):
            block.insert(draw(st.integers(0, len(block))), b": " + draw(_text).encode())
        if draw(st.booleans()):
            block.insert(draw(st.integers(0, len(block))), b"id: " + draw(_text).encode())
        lines.extend([*block, b""])
        before_data = block[: next((i for i, b in enumerate(block) if b.startswith(b"data")), None)]
        expected.extend(Event(b, COMMENT) for b in before_data if b.startswith(b":"))
        if data:
            expected.append(Event("\n".join(data).encode(), name or "message"))
    out = b""
    prev = b""
    for line in lines:
        eol = draw(_eol)
        if prev == b"\r" and not line and eol == b"\n":
            eol = b"\r\n"  # a bare LF right after a CR would join it into one CRLF line end
        out += line + eol
        prev = eol
    return out, expected


@settings(max_examples=300, deadline=None)
@given(sse_streams(), st.data())
def test_any_split_gives_the_same_events(
    stream: tuple[bytes, list[Event]], data: st.DataObject
) -> None:
    raw, expected = stream
    cuts = data.draw(st.lists(st.integers(1, max(1, len(raw) - 1)), max_size=len(raw)))
    # Splits right after a CR (between the halves of a CRLF) are the interesting ones.
    after_cr = [i + 1 for i, byte in enumerate(raw[:-1]) if byte == 0x0D]
    if after_cr:
        cuts += data.draw(st.lists(st.sampled_from(after_cr)))
    assert feed_all([raw]) == expected
    assert feed_all(split_at(raw, cuts)) == expected


def largest_event(raw: bytes) -> int:
    """The size :class:`SSEParser` bounds: the largest run of lines between blank lines,
    counting each line end as one byte; a comment before the event's first data line is an
    event of its own, counted alone."""
    size = largest = 0
    data = False
    for line in re.split(rb"\r\n|\r|\n", raw):
        if not line:
            size, data = 0, False
        elif line.startswith(b":") and not data:
            largest = max(largest, len(line) + 1)
        else:
            size += len(line) + 1
            data = data or line.split(b":", 1)[0] == b"data"
            largest = max(largest, size)
    return largest


@settings(max_examples=150, deadline=None)
@given(sse_streams())
def test_every_two_piece_split_gives_the_same_events_and_the_same_bound(
    stream: tuple[bytes, list[Event]],
) -> None:
    raw, expected = stream
    largest = largest_event(raw)
    for cut in range(len(raw) + 1):
        pieces = [raw[:cut], raw[cut:]]
        assert feed_all(pieces, max_event_size=max(1, largest)) == expected
        if largest > 1:
            # One byte less is too little, wherever the stream was split.
            with pytest.raises(SSEEventTooLarge):
                feed_all(pieces, max_event_size=largest - 1)


# --------------------------------------------------------------------------- size bound


def test_a_line_past_the_bound_raises_before_it_ends() -> None:
    parser = SSEParser(max_event_size=100)
    assert parser.feed(b"data: " + b"x" * 90) == []
    with pytest.raises(SSEEventTooLarge, match="larger than 100 bytes") as info:
        parser.feed(b"x" * 5)
    assert isinstance(info.value, ValueError)
    assert info.value.limit == 100


@pytest.mark.parametrize(
    ("line", "events"),
    [
        (b"data: " + b"x" * 95, [Event(b"x" * 95)]),
        (b": " + b"c" * 99, [Event(b": " + b"c" * 99, COMMENT)]),
        (b"event: " + b"e" * 94, []),
    ],
    ids=["data", "comment", "event"],
)
def test_a_whole_line_past_the_bound_in_one_read_raises(line: bytes, events: list[Event]) -> None:
    assert len(line) == 101  # with its line end: 102 bytes
    with pytest.raises(SSEEventTooLarge):
        SSEParser(max_event_size=101).feed(line + b"\n\n")
    assert SSEParser(max_event_size=102).feed(line + b"\n\n") == events  # at the bound


def test_many_short_lines_past_the_bound_raise() -> None:
    line = b"data: " + b"x" * 9 + b"\n"  # 16 bytes
    parser = SSEParser(max_event_size=160)
    assert parser.feed(line * 10) == []  # 160 bytes: at the bound
    with pytest.raises(SSEEventTooLarge):
        parser.feed(b"d")  # the next line has begun


def test_the_bound_is_per_event_not_per_stream() -> None:
    event = b"data: " + b"x" * 9 + b"\n" + b"data: " + b"y" * 9 + b"\n\n"  # 32 bytes
    parser = SSEParser(max_event_size=32)
    events: list[Event] = []
    for _ in range(50):
        for piece in (event[:7], event[7:20], event[20:]):
            events.extend(parser.feed(piece))
    assert events == [Event(b"x" * 9 + b"\n" + b"y" * 9)] * 50


def test_an_endless_line_is_cut_off_after_the_bound_and_one_read() -> None:
    limit, read = 1 << 20, 64 << 10
    parser = SSEParser(max_event_size=limit)
    fed = 0
    with pytest.raises(SSEEventTooLarge):
        while fed < 100 * limit:
            parser.feed(b"data: " if fed == 0 else b"x" * read)
            fed += read
    assert fed <= limit + read


def test_the_bound_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        SSEParser(max_event_size=0)


def test_a_long_line_costs_no_more_than_as_many_bytes_of_small_events() -> None:
    """Each read is scanned once: a 4 MiB line in 1 KiB reads (quadratic when every read
    re-scanned the buffer: thousands of times slower) is cheaper than 4 MiB of ordinary
    events, whose per-line work it lacks."""
    size, read = 4 << 20, 1 << 10
    line = b"data: " + b"x" * size + b"\n\n"
    small = encode({"choices": [{"delta": {"content": "token"}}]})
    events = small * (len(line) // len(small))

    def cpu_seconds(stream: bytes) -> float:
        pieces = [stream[i : i + read] for i in range(0, len(stream), read)]
        best = float("inf")
        for _ in range(3):
            parser = SSEParser(max_event_size=2 * size)
            start = time.process_time()
            for piece in pieces:
                parser.feed(piece)
            best = min(best, time.process_time() - start)
        return best

    assert cpu_seconds(line) < cpu_seconds(events)


# --------------------------------------------------------------------------- assembler

HEAD = {
    "id": "chatcmpl-abc",
    "object": "chat.completion.chunk",
    "created": 1_700_000_000,
    "model": "gpt-4o-mini-2024-07-18",
    "system_fingerprint": "fp_123",
}


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, index: int = 0) -> Any:
    choice = {"index": index, "delta": delta or {}, "logprobs": None, "finish_reason": finish}
    return {**HEAD, "choices": [choice]}


def assemble(chunks: list[dict[str, Any]]) -> StreamAssembler:
    asm = StreamAssembler()
    for c in chunks:
        asm.feed(c)
    return asm


def test_content_pieces_joined_and_head_copied() -> None:
    asm = assemble(
        [
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": "Hel"}),
            chunk({"content": "lo, "}),
            chunk({"content": "wörld"}),
            chunk({}, "stop"),
        ]
    )
    out = asm.result()
    assert out["object"] == "chat.completion"
    for key in ("id", "created", "model", "system_fingerprint"):
        assert out[key] == HEAD[key]
    assert out["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello, wörld", "refusal": None},
            "finish_reason": "stop",
        }
    ]
    assert "usage" not in out


def test_head_from_the_first_chunk_that_has_it() -> None:
    # Azure OpenAI opens a stream with its prompt filter results: no id, model or time yet.
    azure_first = {
        "id": "",
        "object": "",
        "created": 0,
        "model": "",
        "choices": [],
        "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}],
    }
    no_fingerprint = {k: v for k, v in chunk({"role": "assistant"}).items()}
    del no_fingerprint["system_fingerprint"]
    out = assemble([azure_first, no_fingerprint, chunk({"content": "ok"}, "stop")]).result()
    for key in ("id", "created", "model", "system_fingerprint"):
        assert out[key] == HEAD[key]


def test_role_only_first_chunk() -> None:
    asm = assemble([chunk({"role": "assistant"})])
    assert not asm.finished
    msg = asm.result()["choices"][0]["message"]
    assert msg["role"] == "assistant"
    assert msg["content"] is None
    asm.feed(chunk({"content": "ok"}, "stop"))
    assert asm.result()["choices"][0]["message"]["content"] == "ok"


def test_finished_only_after_finish_reason() -> None:
    asm = StreamAssembler()
    assert not asm.finished
    asm.feed(chunk({"role": "assistant", "content": ""}))
    asm.feed(chunk({"content": "x"}))
    assert not asm.finished
    asm.feed(chunk({}, "length"))
    assert asm.finished
    assert asm.result()["choices"][0]["finish_reason"] == "length"


def test_finished_needs_every_choice() -> None:
    asm = assemble([chunk({"content": "a"}, index=0), chunk({"content": "b"}, index=1)])
    asm.feed(chunk({}, "stop", index=1))
    assert not asm.finished
    asm.feed(chunk({}, "stop", index=0))
    assert asm.finished
    choices = asm.result()["choices"]
    assert [(c["index"], c["message"]["content"]) for c in choices] == [(0, "a"), (1, "b")]


def test_tool_calls_merged_by_index() -> None:
    def tc(index: int, **fields: Any) -> dict[str, Any]:
        return chunk({"tool_calls": [{"index": index, **fields}]})

    asm = assemble(
        [
            chunk({"role": "assistant", "content": None}),
            tc(0, id="call_a", type="function", function={"name": "get_weather", "arguments": ""}),
            tc(0, function={"arguments": '{"ci'}),
            tc(1, id="call_b", type="function", function={"name": "get_time", "arguments": '{"tz'}),
            tc(0, function={"arguments": 'ty": "Paris"}'}),
            tc(1, function={"arguments": '": "UTC"}'}),
            chunk({}, "tool_calls"),
        ]
    )
    out = asm.result()["choices"][0]
    assert out["finish_reason"] == "tool_calls"
    assert out["message"]["content"] is None
    calls = out["message"]["tool_calls"]
    assert calls == [
        {
            "id": "call_a",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        },
        {
            "id": "call_b",
            "type": "function",
            "function": {"name": "get_time", "arguments": '{"tz": "UTC"}'},
        },
    ]
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [
        {"city": "Paris"},
        {"tz": "UTC"},
    ]


def test_reasoning_content_and_refusal() -> None:
    asm = assemble(
        [
            chunk({"role": "assistant", "content": ""}),
            chunk({"reasoning_content": "Let me "}),
            chunk({"reasoning_content": "think."}),
            chunk({"refusal": "I can't "}),
            chunk({"refusal": "help with that."}),
            chunk({}, "stop"),
        ]
    )
    msg = asm.result()["choices"][0]["message"]
    assert msg["reasoning_content"] == "Let me think."
    assert msg["refusal"] == "I can't help with that."
    assert msg["content"] is None


def test_no_reasoning_key_without_reasoning() -> None:
    msg = assemble([chunk({"content": "x"}, "stop")]).result()["choices"][0]["message"]
    assert "reasoning_content" not in msg


def test_usage_chunk_with_empty_choices() -> None:
    usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    asm = assemble(
        [{**chunk({"content": "hi"}), "usage": None}, {**chunk({}, "stop"), "usage": None}]
    )
    assert asm.usage is None
    asm.feed({**HEAD, "choices": [], "usage": usage})
    assert asm.usage == usage
    out = asm.result()
    assert out["usage"] == usage
    assert len(out["choices"]) == 1
    assert out["choices"][0]["message"]["content"] == "hi"
    assert asm.finished


def test_usage_only_stream_is_not_finished() -> None:
    asm = StreamAssembler()
    asm.feed({**HEAD, "choices": [], "usage": {"total_tokens": 1}})
    assert not asm.finished
    assert asm.result()["choices"] == []


def test_head_comes_from_the_chunks() -> None:
    head = {"id": "chatcmpl-zz", "created": 42, "model": "qwen-max", "system_fingerprint": None}
    asm = StreamAssembler()
    asm.feed({**head, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}}]})
    out = asm.result()
    assert {k: out[k] for k in head} == head
    assert out["object"] == "chat.completion"


@pytest.mark.parametrize("cut", [0, 1, 2, 3, 4])
def test_a_byte_order_mark_opening_the_stream_is_ignored(cut: int) -> None:
    raw = b"\xef\xbb\xbfdata: 1\n\ndata: 2\n\n"
    assert feed_all([raw[:cut], raw[cut:]]) == [Event(b"1"), Event(b"2")]
    # Only the stream's first bytes: one later is part of a line.
    assert feed_all([b"data: 1\n\n", b"\xef\xbb\xbfdata: 2\n\n"]) == [Event(b"1")]


def test_keep_alive_comments_between_events_do_not_add_up_to_an_event() -> None:
    pings = b": ping\n" * 1000  # no blank lines between them: each is passed on alone
    events = feed_all([pings, b"data: 1\n\n"], max_event_size=1024)
    assert events[:-1] == [Event(b": ping", COMMENT)] * 1000 and events[-1] == Event(b"1")
    with pytest.raises(SSEEventTooLarge):  # one comment is still bounded
        feed_all([b":" + b"x" * 2000 + b"\n"], max_event_size=1024)
