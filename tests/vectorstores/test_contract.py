"""The contract every vector store passes unchanged (memory now; Qdrant, DashVector later).

Vectors are ``DIM``-d; ``unit(i)`` is the i-th basis vector, so cosines are known exactly.
Expiry is given as wall-clock ``expires_at`` in the past or the future: no sleeps.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from aigw.vectorstores import Match, VectorStore, VectorStoreError

from .conftest import DIM

LATER = time.time() + 3600.0
PAST = time.time() - 1.0


def unit(*weights: float) -> np.ndarray:
    """A normalised vector with the given leading components."""
    v = np.zeros(DIM, np.float32)
    v[: len(weights)] = weights
    return (v / np.linalg.norm(v)).astype(np.float32)


def angled(cos: float) -> np.ndarray:
    """A unit vector whose cosine with ``unit(1)`` is ``cos``."""
    return unit(cos, math.sqrt(max(0.0, 1.0 - cos * cos)))


async def put(store: VectorStore, id: str, vec: np.ndarray, ns: str = "ns", **kw: object) -> None:
    await store.upsert(id, vec, ns, kw.get("payload", {"id": id}), kw.get("expires_at", LATER))  # type: ignore[arg-type]


def ids(matches: list[Match]) -> list[str]:
    return [m.id for m in matches]


async def test_is_a_vector_store(store: VectorStore) -> None:
    assert isinstance(store, VectorStore)


async def test_empty_store_finds_nothing(store: VectorStore) -> None:
    assert await store.search(unit(1), 5, "ns") == []


async def test_upsert_then_search_returns_id_payload_similarity(store: VectorStore) -> None:
    await put(store, "a", unit(1), payload={"key": "k1", "n": 3})
    [m] = await store.search(unit(1), 5, "ns")
    assert m.id == "a"
    assert dict(m.payload) == {"key": "k1", "n": 3}
    assert isinstance(m.similarity, float)
    assert m.similarity == pytest.approx(1.0, abs=1e-5)


async def test_similarity_is_cosine_clamped_to_zero(store: VectorStore) -> None:
    for i, cos in enumerate([0.95, 0.8, 0.3, 0.0]):
        await put(store, f"c{i}", angled(cos))
    await put(store, "neg", unit(-1, 0.2))
    found = {m.id: m.similarity for m in await store.search(unit(1), 10, "ns")}
    assert found["c0"] == pytest.approx(0.95, abs=1e-4)
    assert found["c1"] == pytest.approx(0.8, abs=1e-4)
    assert found["c2"] == pytest.approx(0.3, abs=1e-4)
    for sim in found.values():
        assert 0.0 <= sim <= 1.0
    # Orthogonal and opposite vectors, when returned at all, count as 0.
    assert found.get("c3", 0.0) == pytest.approx(0.0, abs=1e-4)
    assert found.get("neg", 0.0) == 0.0


async def test_similarity_of_unnormalised_query_is_cosine(store: VectorStore) -> None:
    await put(store, "a", angled(0.6))
    [m] = await store.search(unit(1) * np.float32(7.0), 1, "ns")
    assert m.similarity == pytest.approx(0.6, abs=1e-4)


async def test_k_best_first(store: VectorStore) -> None:
    for i, cos in enumerate([0.5, 0.9, 0.7, 0.99, 0.6]):
        await put(store, f"v{i}", angled(cos))
    got = await store.search(unit(1), 3, "ns")
    assert ids(got) == ["v3", "v1", "v2"]
    assert [m.similarity for m in got] == sorted((m.similarity for m in got), reverse=True)
    assert ids(await store.search(unit(1), 1, "ns")) == ["v3"]
    assert len(await store.search(unit(1), 50, "ns")) == 5


async def test_upsert_same_id_replaces(store: VectorStore) -> None:
    await put(store, "a", unit(1), payload={"v": 1})
    await put(store, "a", unit(0, 1), payload={"v": 2})
    [m] = await store.search(unit(0, 1), 5, "ns")
    assert (m.id, dict(m.payload)) == ("a", {"v": 2})
    assert m.similarity == pytest.approx(1.0, abs=1e-5)
    assert ids(await store.search(unit(1), 5, "ns")) in (["a"], [])  # one entry, not two
    assert all(m.similarity < 0.01 for m in await store.search(unit(1), 5, "ns"))


async def test_upsert_same_id_in_another_namespace_moves_it(store: VectorStore) -> None:
    await put(store, "a", unit(1), ns="one")
    await put(store, "a", unit(1), ns="two", payload={"where": "two"})
    assert await store.search(unit(1), 5, "one") == []
    [m] = await store.search(unit(1), 5, "two")
    assert (m.id, dict(m.payload)) == ("a", {"where": "two"})


async def test_namespaces_are_isolated(store: VectorStore) -> None:
    await put(store, "x", unit(1), ns="tenant-a|gpt-4o")
    await put(store, "y", angled(0.9), ns="tenant-b|gpt-4o")
    assert ids(await store.search(unit(1), 5, "tenant-a|gpt-4o")) == ["x"]
    assert ids(await store.search(unit(1), 5, "tenant-b|gpt-4o")) == ["y"]
    assert await store.search(unit(1), 5, "tenant-c|gpt-4o") == []


async def test_expired_entries_are_never_returned(store: VectorStore) -> None:
    await put(store, "old", unit(1), expires_at=PAST)
    await put(store, "fresh", angled(0.9), expires_at=LATER)
    assert ids(await store.search(unit(1), 5, "ns")) == ["fresh"]


async def test_upsert_renews_expiry(store: VectorStore) -> None:
    await put(store, "a", unit(1), expires_at=PAST)
    assert await store.search(unit(1), 5, "ns") == []
    await put(store, "a", unit(1), expires_at=LATER)
    assert ids(await store.search(unit(1), 5, "ns")) == ["a"]
    await put(store, "a", unit(1), expires_at=PAST)
    assert await store.search(unit(1), 5, "ns") == []


async def test_delete_by_ids(store: VectorStore) -> None:
    for i in range(4):
        await put(store, f"d{i}", angled(0.9 - i / 10))
    assert await store.delete(["d1", "d3", "missing"]) == 2
    assert ids(await store.search(unit(1), 10, "ns")) == ["d0", "d2"]
    assert await store.delete(["d1"]) == 0


async def test_delete_by_ids_within_a_namespace(store: VectorStore) -> None:
    await put(store, "a", unit(1), ns="one")
    await put(store, "b", unit(1), ns="two")
    assert await store.delete(["a", "b"], namespace="one") == 1
    assert await store.search(unit(1), 5, "one") == []
    assert ids(await store.search(unit(1), 5, "two")) == ["b"]


async def test_delete_a_namespace(store: VectorStore) -> None:
    for i in range(3):
        await put(store, f"a{i}", unit(1, i), ns="one")
    await put(store, "b", unit(1), ns="two")
    assert await store.delete(namespace="one") == 3
    assert await store.search(unit(1), 5, "one") == []
    assert ids(await store.search(unit(1), 5, "two")) == ["b"]
    assert await store.delete(namespace="one") == 0
    await put(store, "a0", unit(1), ns="one")  # a deleted namespace can be used again
    assert ids(await store.search(unit(1), 5, "one")) == ["a0"]


async def test_delete_nothing(store: VectorStore) -> None:
    await put(store, "a", unit(1))
    assert await store.delete() == 0
    assert ids(await store.search(unit(1), 5, "ns")) == ["a"]


@pytest.mark.parametrize("shape", [(DIM + 1,), (DIM - 1,), (2, DIM)])
async def test_dimension_mismatch_is_an_error(store: VectorStore, shape: tuple[int, ...]) -> None:
    wrong = np.ones(shape, np.float32)
    with pytest.raises(VectorStoreError, match="dimension"):
        await store.upsert("a", wrong, "ns", {}, LATER)
    with pytest.raises(VectorStoreError, match="dimension"):
        await store.search(wrong, 5, "ns")
    assert await store.search(unit(1), 5, "ns") == []  # the failed upsert stored nothing


async def test_ensure_collection_again_keeps_entries(store: VectorStore) -> None:
    await put(store, "a", unit(1))
    await store.ensure_collection(DIM)
    assert ids(await store.search(unit(1), 5, "ns")) == ["a"]


async def test_aclose(store: VectorStore) -> None:
    await put(store, "a", unit(1))
    await store.aclose()
    await store.aclose()  # twice is harmless
