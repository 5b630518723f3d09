"""The ``store`` fixture: every vector store backend the contract suite runs against.

A backend is added by adding its name to ``BACKENDS`` and a branch to :func:`make_store` that
builds a fresh, empty store of dimension ``DIM`` (Qdrant: its local mode; DashVector: a fake).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from aigw.vectorstores import VectorStore
from aigw.vectorstores.loader import load_vector_store

DIM = 8
BACKENDS = ["memory"]


async def make_store(backend: str) -> VectorStore:
    if backend == "memory":
        store = load_vector_store({"type": "memory"}, "test: store")
    else:  # pragma: no cover - a backend listed without a builder
        raise AssertionError(f"no builder for {backend}")
    await store.ensure_collection(DIM)
    return store


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[VectorStore]:
    """A fresh store of dimension ``DIM``, closed after the test."""
    s = await make_store(request.param)
    yield s
    await s.aclose()
