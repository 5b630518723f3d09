"""What only the ``memory`` store promises: its bound, its sweep, its blocks and its thread."""

from __future__ import annotations

import asyncio
import time
import tracemalloc

import numpy as np
import pytest

from aigw.embeddings import Vectors
from aigw.vectorstores import VectorStoreError, memory
from aigw.vectorstores.memory import MemoryVectorStore, MemoryVectorStoreConfig

DIM = 16
LATER = time.time() + 3600.0
PAST = time.time() - 1.0


def rows(n: int, seed: int = 0) -> Vectors:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    out: Vectors = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of 16 rows, so a few hundred entries span many blocks."""
    monkeypatch.setattr(memory, "BLOCK_ROWS", 16)


async def test_max_entries_evicts_least_recently_used() -> None:
    s = MemoryVectorStore(MemoryVectorStoreConfig(max_entries=3))
    await s.ensure_collection(DIM)
    v = rows(5)
    for i in range(3):
        await s.upsert(f"e{i}", v[i], "ns", {}, LATER)
    # e0 is returned by a search: used, so e1 is now the least recently used.
    assert (await s.search(v[0], 1, "ns"))[0].id == "e0"
    await s.upsert("e3", v[3], "other", {}, LATER)
    assert len(s) == 3
    found = {m.id for m in await s.search(v[0], 10, "ns")} | {
        m.id for m in await s.search(v[0], 10, "other")
    }
    assert found == {"e0", "e2", "e3"}
    await s.upsert("e2", v[4], "ns", {}, LATER)  # replacing an id evicts nothing
    assert len(s) == 3


async def test_memory_is_bounded_by_max_entries(small_blocks: None) -> None:
    cap = 200
    s = MemoryVectorStore(MemoryVectorStoreConfig(max_entries=cap))
    await s.ensure_collection(DIM)
    v = rows(2000)
    for i in range(2000):
        # One big namespace and many small ones, all competing for the same bound.
        ns = "big" if i % 2 else f"small-{i % 37}"
        await s.upsert(f"id{i}", v[i], ns, {}, LATER)
        assert len(s) <= cap
    assert len(s) == cap
    # The entries plus at most one partly filled block, or 4 rows per entry when small.
    assert s.allocated_rows() <= 4 * cap
    for i in range(0, 2000, 3):
        await s.delete([f"id{i}"])
    assert s.allocated_rows() <= 4 * len(s) + 16 * 38


async def test_sweep_removes_a_bounded_number_per_call() -> None:
    s = MemoryVectorStore()
    await s.ensure_collection(DIM)
    v = rows(300)
    for i in range(300):
        await s.upsert(f"x{i}", v[i], "ns", {}, PAST)
    # Each upsert swept what had expired before it, at most sweep_limit at a time.
    assert len(s) <= 300
    s2 = MemoryVectorStore()
    await s2.ensure_collection(DIM)
    s2.sweep_limit = 0  # store 300 expired entries without sweeping them
    for i in range(300):
        await s2.upsert(f"x{i}", v[i], "ns", {}, PAST)
    await s2.upsert("live", v[0], "ns", {}, LATER)
    assert len(s2) == 301
    s2.sweep_limit = 64
    assert [m.id for m in await s2.search(v[0], 5, "ns")] == ["live"]
    assert len(s2) == 301 - 64  # one call removed sweep_limit, not all
    await s2.search(v[0], 5, "ns")
    assert len(s2) == 301 - 128


async def test_sweep_skips_entries_renewed_since() -> None:
    s = MemoryVectorStore()
    await s.ensure_collection(DIM)
    v = rows(2)
    s.sweep_limit = 0
    await s.upsert("a", v[0], "ns", {}, PAST)
    await s.upsert("a", v[0], "ns", {}, LATER)  # renewed: its old heap item is stale
    s.sweep_limit = 64
    assert [m.id for m in await s.search(v[0], 5, "ns")] == ["a"]
    assert len(s) == 1


async def test_stale_heap_items_stay_bounded() -> None:
    s = MemoryVectorStore()
    await s.ensure_collection(DIM)
    v = rows(1)
    for i in range(5000):
        await s.upsert("same", v[0], "ns", {}, LATER + i)
    assert len(s._expiry) <= 2 * len(s) + 65


async def _reference_check(
    s: MemoryVectorStore, ref: dict[str, tuple[str, np.ndarray]], order: list[str]
) -> None:
    """Search each namespace with a few queries and compare with an exact search of ``ref``;
    the ids returned become the most recently used in ``order``."""
    for ns in {n for n, _ in ref.values()}:
        names = [i for i, (n, _) in ref.items() if n == ns]
        mat = np.stack([ref[i][1] for i in names])
        for q in rows(3, seed=len(names)):
            want = np.sort(mat @ q)[::-1][:5]
            got = await s.search(q, 5, ns)
            assert [m.id for m in got] and len(got) == min(5, len(names))
            np.testing.assert_allclose([m.similarity for m in got], np.clip(want, 0, 1), atol=1e-5)
            for m in got:
                order.remove(m.id)
                order.append(m.id)
                assert ref[m.id][0] == ns
                assert m.similarity == pytest.approx(max(0.0, float(ref[m.id][1] @ q)), abs=1e-5)


@pytest.mark.parametrize("thread_above", [0, 10**9])
async def test_random_operations_match_an_exact_search(
    small_blocks: None, thread_above: int
) -> None:
    """Upserts, moves, deletes and evictions across blocks keep the rows and ids consistent;
    both the inline and the threaded search agree with an exact search."""
    rng = np.random.default_rng(7)
    s = MemoryVectorStore(
        MemoryVectorStoreConfig(max_entries=150, search_in_thread_above=thread_above)
    )
    await s.ensure_collection(DIM)
    ref: dict[str, tuple[str, np.ndarray]] = {}
    order: list[str] = []  # least recently used first
    pool = rows(400, seed=1)
    for step in range(1500):
        op = rng.random()
        id = f"id{rng.integers(0, 250)}"
        if op < 0.75:
            ns = f"ns{rng.integers(0, 3)}"
            vec = pool[rng.integers(0, 400)]
            await s.upsert(id, vec, ns, {"id": id}, LATER)
            if id not in ref and len(ref) >= 150:
                del ref[order.pop(0)]
            if id in order:
                order.remove(id)
            order.append(id)
            ref[id] = (ns, vec)
        elif op < 0.95:
            removed = await s.delete([id])
            assert removed == (1 if id in ref else 0)
            if id in ref:
                del ref[id]
                order.remove(id)
        else:
            ns = f"ns{rng.integers(0, 3)}"
            gone = [i for i, (n, _) in ref.items() if n == ns]
            assert await s.delete(namespace=ns) == len(gone)
            for i in gone:
                del ref[i]
                order.remove(i)
        assert set(s._entries) == set(ref)
        if step % 100 == 0:
            await _reference_check(s, ref, order)
    await _reference_check(s, ref, order)


async def test_threaded_search_rescores_rows_changed_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An upsert that lands while a threaded scan runs never gives a stale similarity."""
    s = MemoryVectorStore(MemoryVectorStoreConfig(search_in_thread_above=0))
    await s.ensure_collection(DIM)
    v = rows(3)
    await s.upsert("a", v[0], "ns", {}, LATER)
    await s.upsert("b", v[1], "ns", {}, LATER)
    started, release = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    real = memory._top_rows

    def slow_top_rows(*args: object) -> object:
        loop.call_soon_threadsafe(started.set)
        asyncio.run_coroutine_threadsafe(release.wait(), loop).result(5)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(memory, "_top_rows", slow_top_rows)
    search = asyncio.create_task(s.search(v[0], 2, "ns"))
    await started.wait()
    # While the scan runs: "a" now holds another vector, "b" is deleted.
    await s.upsert("a", v[2], "ns", {}, LATER)
    await s.delete(["b"])
    release.set()
    got = await search
    assert [m.id for m in got] == ["a"]
    assert got[0].similarity == pytest.approx(max(0.0, float(v[2] @ v[0])), abs=1e-5)


async def test_threaded_search_of_a_namespace_deleted_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s = MemoryVectorStore(MemoryVectorStoreConfig(search_in_thread_above=0))
    await s.ensure_collection(DIM)
    v = rows(1)
    await s.upsert("a", v[0], "ns", {}, LATER)
    started, release = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    real = memory._top_rows

    def slow_top_rows(*args: object) -> object:
        loop.call_soon_threadsafe(started.set)
        asyncio.run_coroutine_threadsafe(release.wait(), loop).result(5)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(memory, "_top_rows", slow_top_rows)
    search = asyncio.create_task(s.search(v[0], 1, "ns"))
    await started.wait()
    assert await s.delete(namespace="ns") == 1
    release.set()
    assert await search == []


async def test_vectors_are_normalised_and_zero_rejected() -> None:
    s = MemoryVectorStore()
    await s.ensure_collection(DIM)
    v = rows(1)[0]
    await s.upsert("a", v * 3.0, "ns", {}, LATER)
    assert (await s.search(v, 1, "ns"))[0].similarity == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(VectorStoreError):
        await s.upsert("z", np.zeros(DIM, np.float32), "ns", {}, LATER)
    with pytest.raises(VectorStoreError):
        await s.search(np.full(DIM, np.nan, np.float32), 1, "ns")


async def test_use_before_ensure_collection_and_dimension_change() -> None:
    s = MemoryVectorStore()
    with pytest.raises(VectorStoreError, match="ensure_collection"):
        await s.search(rows(1)[0], 1, "ns")
    await s.ensure_collection(DIM)
    await s.upsert("a", rows(1)[0], "ns", {}, LATER)
    with pytest.raises(VectorStoreError, match="16-d"):
        await s.ensure_collection(DIM * 2)


def _store(max_bytes: int, max_entries: int = 10**6) -> MemoryVectorStore:
    return MemoryVectorStore(MemoryVectorStoreConfig(max_bytes=max_bytes, max_entries=max_entries))


def _answer(i: int, size: int) -> dict[str, str]:
    """A semantic cache's payload: its question, its exact-cache key and a whole answer."""
    return {"question": f"q{i}", "key": f"{i:064d}", "record": (f"{i:08d}" + "r" * size)[:size]}


def _charge(payload: dict[str, str]) -> int:
    return DIM * 4 + 8 + memory.payload_bytes(payload) + memory.ENTRY_OVERHEAD


async def test_max_bytes_bounds_many_large_payloads() -> None:
    """The store's own accounting stays within max_bytes and matches its entries, and what
    tracemalloc sees held stays within 1.5x max_bytes (the old store held all 200 answers)."""
    cap = 1024 * 1024
    s = _store(cap)
    await s.ensure_collection(DIM)
    v = rows(64)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i in range(200):
            await s.upsert(f"{i:064d}", v[i % 64], "ns", _answer(i, 100_000), LATER)
            assert s.bytes <= cap
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert s.bytes == sum(e.size for e in s._entries.values())
    assert 5 <= len(s) <= 10  # ~100 kB each: the bound, not max_entries, decided
    assert held <= 1.5 * cap + 64 * 1024
    # The least recently used went first: the newest entries are the ones held.
    assert set(s._entries) == {f"{i:064d}" for i in range(200 - len(s), 200)}


async def test_max_bytes_overhead_matches_what_small_entries_hold() -> None:
    """ENTRY_OVERHEAD keeps the charge honest when payloads are small (many entries)."""
    cap = 2 * 1024 * 1024
    s = _store(cap)
    await s.ensure_collection(DIM)
    v = rows(64)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i in range(8000):
            await s.upsert(f"{i:064d}", v[i % 64], "ns", _answer(i, 200), LATER)
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert len(s) < 8000 and s.bytes <= cap
    assert 0.7 * cap <= held <= 1.5 * cap


async def test_replacing_an_id_reaccounts_its_bytes() -> None:
    s = _store(64 * 1024)
    await s.ensure_collection(DIM)
    v = rows(3)
    small, big = _answer(0, 100), _answer(0, 20_000)
    await s.upsert("a", v[0], "ns", small, LATER)
    assert s.bytes == _charge(small)
    await s.upsert("a", v[1], "ns", big, LATER)  # same namespace: replaced in place
    assert s.bytes == _charge(big)
    await s.upsert("a", v[2], "other", small, LATER)  # moved to another namespace
    assert s.bytes == _charge(small) and len(s) == 1
    # Growing an entry in place evicts others, never itself.
    await s.upsert("b", v[0], "ns", _answer(1, 20_000), LATER)
    await s.upsert("c", v[1], "ns", _answer(2, 20_000), LATER)
    await s.upsert("a", v[2], "other", _answer(0, 40_000), LATER)
    assert "a" in s._entries and "b" not in s._entries
    assert s.bytes == sum(e.size for e in s._entries.values()) <= 64 * 1024


async def test_deletes_and_expiry_give_bytes_back() -> None:
    s = _store(1024 * 1024)
    await s.ensure_collection(DIM)
    v = rows(6)
    for i in range(4):
        await s.upsert(f"e{i}", v[i], "ns" if i < 2 else "gone", _answer(i, 1000), LATER)
    one = _charge(_answer(0, 1000))
    assert s.bytes == 4 * one
    assert await s.delete(["e0"]) == 1
    assert s.bytes == 3 * one
    assert await s.delete(namespace="gone") == 2
    assert s.bytes == one
    s.sweep_limit = 0
    await s.upsert("old", v[4], "ns", _answer(4, 1000), PAST)
    assert s.bytes == 2 * one
    s.sweep_limit = 64
    await s.search(v[0], 1, "ns")  # the sweep removes the expired entry
    assert s.bytes == one and len(s) == 1
    await s.aclose()
    assert s.bytes == 0


async def test_an_entry_larger_than_max_bytes_is_not_stored() -> None:
    s = _store(16 * 1024)
    await s.ensure_collection(DIM)
    v = rows(2)
    await s.upsert("small", v[0], "ns", _answer(0, 100), LATER)
    await s.upsert("huge", v[1], "ns", _answer(1, 32 * 1024), LATER)  # no error
    assert [m.id for m in await s.search(v[1], 5, "ns")] == ["small"]
    # Replacing an id with an oversized value forgets the old value rather than serve it.
    await s.upsert("small", v[0], "ns", _answer(0, 32 * 1024), LATER)
    assert len(s) == 0 and s.bytes == 0


def test_max_bytes_defaults_to_64_mib() -> None:
    assert MemoryVectorStoreConfig().max_bytes == 64 * 1024 * 1024
    assert MemoryVectorStore().max_bytes == 64 * 1024 * 1024
