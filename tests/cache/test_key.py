"""``aigw.cache.key``: the cache key recipe (partition and question), its strategies,
``get_path`` and ``scope_hash``."""

from __future__ import annotations

import copy
import functools
import hashlib
import random
import re
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import make_mocked_request
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from aigw.cache.key import (
    DEFAULT_KEY_FROM,
    KEY_VERSION,
    CacheKey,
    Strategy,
    cache_key,
    get_path,
    scope_hash,
)
from aigw.context import RequestContext, Target

FAST = settings(max_examples=100, deadline=None)
SCOPE = "consumer:alice"
STRATEGIES: tuple[Strategy, ...] = ("conversation", "lastQuestion", "allQuestions")


@functools.cache
def mocked_request() -> Any:
    return make_mocked_request("POST", "/v1/chat/completions")


def make_ctx(
    payload: dict[str, Any],
    provider: str = "openai",
    model: str | None = None,
    api: str = "chat.completions",
    target: bool = True,
) -> RequestContext:
    model = model if model is not None else str(payload.get("model", "gpt-4o-mini"))
    return RequestContext(
        request=mocked_request(),
        request_id="req-test",
        api=api,  # type: ignore[arg-type]
        payload=payload,
        model=model,
        target=Target(provider, model) if target else None,
    )


def parts_of(
    payload: dict[str, Any],
    scope: str = SCOPE,
    strategy: Strategy = "conversation",
    key_from: str = DEFAULT_KEY_FROM,
    **ctx: Any,
) -> CacheKey | None:
    return cache_key(make_ctx(payload, **ctx), scope, strategy, key_from)


def key_of(payload: dict[str, Any], **kw: Any) -> str | None:
    """The exact key (``None``: nothing to key on)."""
    key = parts_of(payload, **kw)
    return key.exact if key is not None else None


def partition_of(payload: dict[str, Any], **kw: Any) -> str:
    key = parts_of(payload, **kw)
    assert key is not None
    return key.partition


def chat(*turns: tuple[str, str], **params: Any) -> dict[str, Any]:
    """A chat payload from ``(role, content)`` turns."""
    return {
        "model": "gpt-4o-mini",
        "messages": [{"role": role, "content": content} for role, content in turns],
        **params,
    }


# --------------------------------------------------------------------------- strategies

# JSON values orjson round-trips exactly (no NaN/inf, no lone surrogates, 53-bit ints).
text = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)
content = st.one_of(
    st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=20),
    st.lists(
        st.fixed_dictionaries({"type": st.just("text"), "text": st.text(min_size=1, max_size=10)}),
        min_size=1,
        max_size=3,
    ),
)
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant"]), "content": content},
    optional={"name": text},
)
messages = st.lists(message, min_size=1, max_size=5).map(
    lambda ms: [*ms, {"role": "user", "content": "the question"}]
)
tool = st.fixed_dictionaries(
    {
        "type": st.just("function"),
        "function": st.fixed_dictionaries(
            {
                "name": st.from_regex(r"[a-z_]{1,10}", fullmatch=True),
                "parameters": st.dictionaries(text, json_values, max_size=4),
            },
            optional={"description": text},
        ),
    }
)

GEN_PARAMS: dict[str, st.SearchStrategy[Any]] = {
    "tools": st.lists(tool, min_size=1, max_size=3),
    "tool_choice": st.sampled_from(["auto", "none", "required"])
    | st.fixed_dictionaries(
        {"type": st.just("function"), "function": st.fixed_dictionaries({"name": text})}
    ),
    "response_format": st.sampled_from(
        [{"type": "text"}, {"type": "json_object"}, {"type": "json_schema", "json_schema": {}}]
    ),
    "temperature": st.floats(0, 2),
    "top_p": st.floats(0, 1),
    "max_tokens": st.integers(1, 100_000),
    "max_completion_tokens": st.integers(1, 100_000),
    "stop": text | st.lists(text, max_size=4),
    "n": st.integers(1, 8),
    "seed": st.integers(-(2**53), 2**53),
    "logprobs": st.booleans(),
    "frequency_penalty": st.floats(-2, 2),
    "presence_penalty": st.floats(-2, 2),
    "x_unknown_param": json_values,
}
TRANSPORT: dict[str, st.SearchStrategy[Any]] = {
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    "user": text,
    "metadata": st.dictionaries(text, text, max_size=3),
}


@st.composite
def payloads(draw: st.DrawFn) -> dict[str, Any]:
    payload: dict[str, Any] = {"model": draw(st.sampled_from(["gpt-4o-mini", "gpt-4o"]))}
    payload["messages"] = draw(messages)
    for name, values in {**GEN_PARAMS, **TRANSPORT}.items():
        if draw(st.booleans()):
            payload[name] = draw(values)
    return payload


def reorder(obj: Any, rnd: random.Random) -> Any:
    """``obj`` with the key order of every dict (at every level) shuffled."""
    if isinstance(obj, dict):
        items = list(obj.items())
        rnd.shuffle(items)
        return {k: reorder(v, rnd) for k, v in items}
    if isinstance(obj, list):
        return [reorder(v, rnd) for v in obj]
    return obj


def reverse_keys(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: reverse_keys(obj[k]) for k in reversed(obj)}
    if isinstance(obj, list):
        return [reverse_keys(v) for v in obj]
    return obj


ABSENT = object()


def with_field(payload: dict[str, Any], name: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(payload)
    if value is ABSENT:
        out.pop(name, None)
    else:
        out[name] = value
    return out


# --------------------------------------------------------------------------- (a) same key


@FAST
@given(payload=payloads(), strategy=st.sampled_from(STRATEGIES))
def test_byte_identical_payloads_share_a_key(payload: dict[str, Any], strategy: Strategy) -> None:
    twin = orjson.loads(orjson.dumps(payload))
    key = key_of(payload, strategy=strategy)
    assert key is not None
    assert re.fullmatch(r"[0-9a-f]{64}", key)
    assert key_of(twin, strategy=strategy) == key


@FAST
@given(
    payload=payloads(), rnd=st.randoms(use_true_random=False), strategy=st.sampled_from(STRATEGIES)
)
def test_key_order_at_any_level_does_not_matter(
    payload: dict[str, Any], rnd: random.Random, strategy: Strategy
) -> None:
    shuffled = reorder(payload, rnd)
    assert shuffled == payload  # same content, possibly another order
    assert key_of(shuffled, strategy=strategy) == key_of(payload, strategy=strategy)


def test_reversed_key_order_everywhere_gives_the_same_key() -> None:
    payload = chat(
        ("system", "be brief"),
        ("user", "hi"),
        temperature=0.2,
        tools=[
            {
                "type": "function",
                "function": {
                    "name": "f",
                    "description": "d",
                    "parameters": {"type": "object", "properties": {"a": {}, "b": {}}},
                },
            }
        ],
        response_format={"type": "json_schema", "json_schema": {"name": "x", "strict": True}},
    )
    reversed_payload = reverse_keys(payload)
    assert orjson.dumps(reversed_payload) != orjson.dumps(payload)
    assert list(reversed_payload["messages"][0]) == ["content", "role"]
    assert key_of(reversed_payload) == key_of(payload)


# --------------------------------------------------------------------------- (b) keyed fields


@FAST
@given(payload=payloads(), a=text, b=text)
def test_scope_splits_the_key(payload: dict[str, Any], a: str, b: str) -> None:
    assume(a != b)
    assert key_of(payload, scope=a) != key_of(payload, scope=b)


@FAST
@given(payload=payloads())
def test_api_splits_the_key(payload: dict[str, Any]) -> None:
    keys = {key_of(payload, api=api) for api in ("chat.completions", "completions", "embeddings")}
    assert len(keys) == 3


@FAST
@given(payload=payloads(), a=text, b=text)
def test_target_provider_splits_the_key(payload: dict[str, Any], a: str, b: str) -> None:
    assume(a != b)
    assert key_of(payload, provider=a) != key_of(payload, provider=b)


@FAST
@given(payload=payloads(), a=text, b=text)
def test_target_model_splits_the_key(payload: dict[str, Any], a: str, b: str) -> None:
    assume(a != b)
    assert key_of(payload, model=a) != key_of(payload, model=b)


def test_without_a_target_the_requested_model_is_keyed() -> None:
    payload = chat(("user", "hi"))
    assert key_of(payload, model="a", target=False) != key_of(payload, model="b", target=False)
    assert key_of(payload, model="a", target=False) != key_of(payload, model="a")


@FAST
@given(payload=payloads(), data=st.data())
def test_any_message_content_splits_the_key(payload: dict[str, Any], data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(payload["messages"]) - 1))
    new = data.draw(content)
    assume(new != payload["messages"][i]["content"])
    changed = copy.deepcopy(payload)
    changed["messages"][i]["content"] = new
    assert key_of(changed) != key_of(payload)


@FAST
@given(payload=payloads(), data=st.data())
def test_any_message_role_splits_the_key(payload: dict[str, Any], data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(payload["messages"]) - 1))
    new = data.draw(st.sampled_from(["system", "developer", "user", "assistant", "tool"]))
    assume(new != payload["messages"][i]["role"])
    changed = copy.deepcopy(payload)
    changed["messages"][i]["role"] = new
    assert key_of(changed) != key_of(payload)


@FAST
@given(payload=payloads(), a=content, b=content)
def test_system_prompt_splits_the_key(payload: dict[str, Any], a: Any, b: Any) -> None:
    assume(a != b)
    first = copy.deepcopy(payload)
    first["messages"].insert(0, {"role": "system", "content": a})
    second = copy.deepcopy(payload)
    second["messages"].insert(0, {"role": "system", "content": b})
    assert key_of(first) != key_of(second)
    assert key_of(first) != key_of(payload)  # adding a system prompt splits too


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("name", sorted(GEN_PARAMS))
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_every_generation_parameter_splits_the_key(
    name: str, strategy: Strategy, data: st.DataObject
) -> None:
    values = GEN_PARAMS[name]
    payload = data.draw(payloads())
    old = data.draw(st.just(ABSENT) | values)
    new = data.draw(st.just(ABSENT) | values)
    assume((old is ABSENT) != (new is ABSENT) or (old is not ABSENT and old != new))
    before = key_of(with_field(payload, name, old), strategy=strategy)
    after = key_of(with_field(payload, name, new), strategy=strategy)
    assert before is not None
    assert before != after


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ({"temperature": 1}, {"temperature": 1.0}),
        ({"max_tokens": 100}, {"max_tokens": 100.0}),
        ({"seed": 0}, {"seed": -0.0}),
        ({"top_p": 1}, {"top_p": 1.0}),
    ],
)
def test_equal_numbers_share_a_key(one: dict[str, Any], other: dict[str, Any]) -> None:
    assert orjson.dumps(one) != orjson.dumps(other)
    assert key_of(chat(("user", "hi"), **one)) == key_of(chat(("user", "hi"), **other))


def test_numbers_that_differ_do_not_share_a_key() -> None:
    keys = {key_of(chat(("user", "hi"), temperature=t)) for t in (1, 1.5, 0.1, 2**53 + 0.0, 2**60)}
    assert len(keys) == 5


# --------------------------------------------------------------------------- (c) not keyed


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("name", sorted(TRANSPORT))
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_transport_and_caller_fields_do_not_change_the_key(
    name: str, strategy: Strategy, data: st.DataObject
) -> None:
    values = TRANSPORT[name]
    payload = data.draw(payloads())
    old = data.draw(st.just(ABSENT) | values)
    new = data.draw(st.just(ABSENT) | values)
    before = key_of(with_field(payload, name, old), strategy=strategy)
    assert before is not None
    assert key_of(with_field(payload, name, new), strategy=strategy) == before


def test_transport_fields_together_do_not_change_the_key() -> None:
    plain = chat(("user", "hi"), temperature=0)
    dressed = {
        **plain,
        "stream": True,
        "stream_options": {"include_usage": True},
        "user": "u-42",
        "metadata": {"trace": "abc"},
    }
    assert key_of(dressed) == key_of(plain)


# --------------------------------------------------------------------------- strategies


def test_last_question_keeps_the_earlier_turns_in_the_partition() -> None:
    # Unlike Higress, "2+2?" after two different conversations is not one entry: the earlier
    # turns and the system prompt are the context, in the partition.
    a = chat(("system", "be brief"), ("user", "hello"), ("assistant", "hi!"), ("user", "2+2?"))
    b = chat(("user", "something else"), ("assistant", "ok"), ("user", "2+2?"))
    c = chat(("user", "2+2?"))
    keys = [parts_of(p, strategy="lastQuestion") for p in (a, b, c)]
    assert all(k is not None and k.question == "2+2?" for k in keys)
    assert len({k.exact for k in keys if k}) == 3 and len({k.partition for k in keys if k}) == 3
    # The same text as the last message of another role is another request (an assistant's
    # prefill to continue, a system message): the same question in another partition.
    d = chat(("system", "be brief"), ("user", "hello"), ("assistant", "hi!"), ("assistant", "2+2?"))
    last_d, last_a = (parts_of(p, strategy="lastQuestion") for p in (d, a))
    assert last_d is not None and last_a is not None and last_d.question == last_a.question
    assert last_d.partition != last_a.partition
    assert key_of(d) != key_of(a)  # the conversation strategy keys the role too


def test_last_question_differs_for_a_different_last_message() -> None:
    a = chat(("user", "hello"), ("assistant", "hi!"), ("user", "2+2?"))
    b = chat(("user", "hello"), ("assistant", "hi!"), ("user", "3+3?"))
    assert key_of(a, strategy="lastQuestion") != key_of(b, strategy="lastQuestion")


def test_last_question_is_still_split_by_target_params_and_scope() -> None:
    b = chat(("user", "2+2?"))
    base = key_of(b, strategy="lastQuestion")
    assert key_of(copy.deepcopy(b), strategy="lastQuestion") == base
    assert key_of(b, strategy="lastQuestion", model="gpt-4o") != base
    assert key_of(b, strategy="lastQuestion", provider="other") != base
    assert key_of({**b, "temperature": 0.5}, strategy="lastQuestion") != base
    assert key_of({**b, "tools": [{"type": "function"}]}, strategy="lastQuestion") != base
    assert key_of(b, strategy="lastQuestion", scope="shared") != base


def test_last_question_with_a_custom_path() -> None:
    # The question is what the path picks; the context is still every turn before the last.
    a = chat(("user", "first"), ("assistant", "x"), ("user", "later one"))
    b = chat(("user", "first"), ("assistant", "x"), ("user", "something different"))
    c = chat(("user", "other first"), ("assistant", "x"), ("user", "later one"))
    path = "messages.0.content"
    first = parts_of(a, strategy="lastQuestion", key_from=path)
    assert first is not None and first.question == "first"
    assert key_of(b, strategy="lastQuestion", key_from=path) == first.exact
    assert key_of(c, strategy="lastQuestion", key_from=path) != first.exact
    # with the default path, a and b differ in their question instead
    assert key_of(a, strategy="lastQuestion") != key_of(b, strategy="lastQuestion")
    # the path is keyed: two paths picking the same text are two entries
    assert key_of(a, strategy="lastQuestion", key_from="messages.2.content") != key_of(
        a, strategy="lastQuestion"
    )


def test_strategies_do_not_share_keys() -> None:
    payload = chat(("user", "hi"))
    keys = {key_of(payload, strategy=s) for s in STRATEGIES}
    assert len(keys) == 3


def test_all_questions_ignores_assistant_turns() -> None:
    a = chat(("user", "q1"), ("assistant", "a1"), ("user", "q2"))
    b = chat(("user", "q1"), ("assistant", "something else"), ("user", "q2"))
    c = chat(("user", "q1"), ("user", "q2"))
    keys = {key_of(p, strategy="allQuestions") for p in (a, b, c)}
    assert len(keys) == 1
    assert None not in keys


@pytest.mark.parametrize(
    "other",
    [
        chat(("user", "q1"), ("assistant", "a1"), ("user", "q2 changed")),
        chat(("user", "q1 changed"), ("assistant", "a1"), ("user", "q2")),
        chat(("user", "q2"), ("assistant", "a1"), ("user", "q1")),
        chat(("user", "q2")),
        chat(("user", "q1"), ("assistant", "a1"), ("user", "q2"), ("user", "q3")),
    ],
    ids=["last-changed", "first-changed", "swapped", "dropped", "added"],
)
def test_all_questions_depends_on_every_user_turn(other: dict[str, Any]) -> None:
    base = chat(("user", "q1"), ("assistant", "a1"), ("user", "q2"))
    assert key_of(other, strategy="allQuestions") != key_of(base, strategy="allQuestions")


@pytest.mark.parametrize(
    ("payload", "strategy", "key_from"),
    [
        (chat(("user", "hi")), "disabled", DEFAULT_KEY_FROM),
        (chat(("user", "hi"), ("user", "")), "lastQuestion", DEFAULT_KEY_FROM),
        (chat(("user", "hi"), ("user", None)), "lastQuestion", DEFAULT_KEY_FROM),
        ({"model": "m", "messages": [{"role": "user"}]}, "lastQuestion", DEFAULT_KEY_FROM),
        ({"model": "m", "messages": []}, "lastQuestion", DEFAULT_KEY_FROM),
        ({"model": "m"}, "lastQuestion", DEFAULT_KEY_FROM),
        (chat(("user", "hi")), "lastQuestion", "messages.5.content"),
        (chat(("user", "hi")), "lastQuestion", "prompt"),
        (chat(("system", "s"), ("assistant", "a")), "allQuestions", DEFAULT_KEY_FROM),
        ({"model": "m"}, "allQuestions", DEFAULT_KEY_FROM),
        ({"model": "m"}, "conversation", DEFAULT_KEY_FROM),
    ],
    ids=[
        "disabled",
        "empty-last",
        "null-last",
        "no-content",
        "no-messages-list",
        "no-messages",
        "path-out-of-range",
        "path-missing",
        "no-user-turns",
        "all-no-messages",
        "conversation-no-messages",
    ],
)
def test_nothing_to_key_on_gives_none(
    payload: dict[str, Any], strategy: Strategy, key_from: str
) -> None:
    assert key_of(payload, strategy=strategy, key_from=key_from) is None


# --------------------------------------------------------------------------- partition, question

HISTORY = (("system", "be brief"), ("user", "hello"), ("assistant", "hi!"))


@pytest.mark.parametrize("strategy", ["conversation", "lastQuestion"])
def test_requests_differing_only_in_the_question_share_a_partition(strategy: Strategy) -> None:
    a = parts_of(chat(*HISTORY, ("user", "2+2?"), temperature=0), strategy=strategy)
    b = parts_of(chat(*HISTORY, ("user", "3+3?"), temperature=0), strategy=strategy)
    assert a is not None and b is not None
    assert a.partition == b.partition and re.fullmatch(r"[0-9a-f]{64}", a.partition)
    assert a.exact != b.exact and a.scope == b.scope == SCOPE
    if strategy == "lastQuestion":
        assert (a.question, b.question) == ("2+2?", "3+3?")
    else:  # the last message, role and all
        assert (a.question, b.question) == (
            {"role": "user", "content": "2+2?"},
            {"role": "user", "content": "3+3?"},
        )


BASE = chat(*HISTORY, ("user", "2+2?"), temperature=0)


@pytest.mark.parametrize("strategy", ["conversation", "lastQuestion"])
@pytest.mark.parametrize(
    ("payload", "ctx"),
    [
        (chat(*HISTORY, ("user", "2+2?"), temperature=0.5), {}),
        (chat(*HISTORY, ("user", "2+2?"), temperature=0, seed=1), {}),
        (BASE, {"scope": "consumer:bob"}),
        (BASE, {"scope": "shared"}),
        (BASE, {"provider": "azure"}),
        (BASE, {"model": "gpt-4o"}),
        (BASE, {"api": "completions"}),
        (chat(*HISTORY[:2], ("assistant", "hello!"), ("user", "2+2?"), temperature=0), {}),
        (chat(*HISTORY[1:], ("user", "2+2?"), temperature=0), {}),
        (chat(("system", "be long"), *HISTORY[1:], ("user", "2+2?"), temperature=0), {}),
        (chat(("user", "2+2?"), temperature=0), {}),
    ],
    ids=[
        "parameter",
        "added-parameter",
        "scope",
        "shared",
        "provider",
        "model",
        "api",
        "earlier-turn",
        "no-system-prompt",
        "system-prompt",
        "no-history",
    ],
)
def test_a_keyed_field_or_the_context_splits_the_partition(
    strategy: Strategy, payload: dict[str, Any], ctx: dict[str, Any]
) -> None:
    base = parts_of(BASE, strategy=strategy)
    other = parts_of(payload, strategy=strategy, **ctx)
    assert base is not None and other is not None
    assert other.question == base.question  # only the partition differs ...
    assert other.partition != base.partition and other.exact != base.exact  # ... and splits


def test_the_strategy_splits_the_partition() -> None:
    partitions = {partition_of(BASE, strategy=s) for s in STRATEGIES}
    assert len(partitions) == 3


def test_all_questions_has_no_context() -> None:
    # As in Higress: the user turns are the question; assistant turns are not keyed.
    a = parts_of(chat(("user", "q1"), ("assistant", "a1"), ("user", "q2")), strategy="allQuestions")
    b = parts_of(chat(("user", "q1"), ("assistant", "zz"), ("user", "q3")), strategy="allQuestions")
    assert a is not None and b is not None
    assert a.question == ["q1", "q2"] and b.question == ["q1", "q3"]
    assert a.partition == b.partition and a.exact != b.exact


@FAST
@given(
    payload=payloads(), rnd=st.randoms(use_true_random=False), strategy=st.sampled_from(STRATEGIES)
)
def test_key_order_does_not_change_the_partition(
    payload: dict[str, Any], rnd: random.Random, strategy: Strategy
) -> None:
    assert partition_of(reorder(payload, rnd), strategy=strategy) == partition_of(
        payload, strategy=strategy
    )


def test_the_exact_key_hashes_the_partition_then_the_question() -> None:
    key = parts_of(BASE)
    assert key is not None
    assert orjson.loads(key.partition_json)[:3] == [KEY_VERSION, SCOPE, "chat.completions"]
    assert KEY_VERSION == 4  # the recipe changed: keys of version 3 are never looked up
    assert key.partition == hashlib.sha256(key.partition_json).hexdigest()
    question = orjson.dumps(key.question, option=orjson.OPT_SORT_KEYS)
    assert key.exact == hashlib.sha256(key.partition_json + question).hexdigest()


def test_scope_hash() -> None:
    hashes = {scope_hash(s) for s in ("consumer:alice", "consumer:bob", "shared", "consumer:")}
    assert len(hashes) == 4
    assert all(re.fullmatch(r"[0-9a-f]{16}", h) for h in hashes)
    assert scope_hash("consumer:alice") == hashlib.sha256(b"consumer:alice").hexdigest()[:16]


# --------------------------------------------------------------------------- get_path

DOC = {
    "messages": [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u1"},
        {"role": "user", "content": [{"type": "text", "text": "parts"}]},
    ],
    "a": {"b": {"c": 0}},
    "s": "string",
}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("a.b.c", 0),
        ("a.b", {"c": 0}),
        ("s", "string"),
        ("messages.0.content", "s"),
        ("messages.1.role", "user"),
        ("messages.2.content.0.text", "parts"),
        ("messages.@reverse.0.role", "user"),
        ("messages.@reverse.1.content", "u1"),
        ("messages.@reverse.2.content", "s"),
        ("messages.@reverse.@reverse.0.content", "s"),
        ("messages.3.content", None),
        ("messages.99", None),
        ("messages.@reverse.3", None),
        ("messages.-1.content", None),
        ("messages.first", None),
        ("a.x.c", None),
        ("a.b.c.d", None),
        ("s.0", None),
        ("missing", None),
        ("a.@reverse", None),
    ],
)
def test_get_path(path: str, expected: Any) -> None:
    assert get_path(DOC, path) == expected


def test_get_path_does_not_modify_its_input() -> None:
    doc = copy.deepcopy(DOC)
    get_path(doc, "messages.@reverse.0.content")
    assert doc == DOC


def test_get_path_with_a_non_ascii_digit_gives_none() -> None:
    assert get_path(DOC, "messages.².content") is None
