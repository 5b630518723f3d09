"""Vector stores: where the semantic cache keeps question vectors, and searches them.

A store is chosen by ``type:`` in the semantic cache's ``store:`` block, through the entry-point
group ``aigw.vector_stores`` (``memory`` ships with aigw; Qdrant, DashVector and third-party
ones plug in the same way). Each entry point names a class with a ``Config`` (a
:class:`aigw.config.Settings` model) and a constructor taking that config; the instance follows
:class:`VectorStore`. ``tests/vectorstores/`` is the contract every store must pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from aigw.embeddings import Vectors


@dataclass(frozen=True, slots=True)
class Match:
    """A stored vector found by a search: its id, its cosine similarity to the query (in
    [0, 1]: negative cosines count as 0), and the payload stored with it."""

    id: str
    similarity: float
    payload: Mapping[str, Any]


@runtime_checkable
class VectorStore(Protocol):
    """Stores vectors by id within namespaces, and finds the nearest in one namespace.

    Vectors are L2-normalised float32 rows of the embedder's dimension. A namespace is an
    opaque string (the semantic cache's partition: scope, model, parameters, context); a search
    never returns an entry of another namespace, nor one past its ``expires_at`` (wall-clock
    seconds, ``time.time()``, so that instances sharing a store agree). Storing an id again
    replaces the entry (in whatever namespace it was). :meth:`ensure_collection` comes first
    (again with the same dimension keeps the entries; another dimension is an error).
    :meth:`delete` removes ``ids`` (only those in ``namespace``, when one is given), or the
        whole ``namespace`` when no ids are, and returns how many it removed. Methods raise
    :class:`VectorStoreError` (or ``TimeoutError``) when the
    backend fails; the semantic cache then fails open.
    """

    async def ensure_collection(self, dimension: int) -> None: ...

    async def search(self, vector: Vectors, k: int, namespace: str) -> list[Match]: ...

    async def upsert(
        self,
        id: str,
        vector: Vectors,
        namespace: str,
        payload: Mapping[str, Any],
        expires_at: float,
    ) -> None: ...

    async def delete(self, ids: Sequence[str] = (), namespace: str | None = None) -> int: ...

    async def aclose(self) -> None: ...


class VectorStoreError(Exception):
    """A vector store's backend failed (unreachable, an error answer, a dimension mismatch)."""
