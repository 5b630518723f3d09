"""``type: memory``: the in-process vector store (numpy brute force), the reference backend.

Each namespace holds its vectors in float32 blocks of :data:`BLOCK_ROWS` rows (a namespace
smaller than one block has one block sized to it, doubled as it grows), so a search scans only
its namespace and a growing namespace never copies what it already holds. A search is exact:
one matrix-vector product per block, expired rows masked, the ``k`` best by ``argpartition``.

Measured on the 2-core reference machine (OpenBLAS, 2 threads; benchmarks/vector_search.py),
512-d, k=5: 10k entries in one namespace p50 0.4 ms, 100k p50 4.9-6.7 ms (10 ms with one BLAS
thread; 40 ms and more while another process keeps a core busy). That meets the issue's
10 ms p50 at 100k on a quiet machine, without an ANN index (hnswlib: 0.4 ms, but 41 s to build
100k and approximate deletes/expiry; a candidate above ~50k entries per namespace). Namespaces
of at least ``search_in_thread_above`` entries (default 32,768: about 2 ms of scan) are
searched in a worker thread (numpy releases the GIL; the hand-off costs about 0.4 ms), so the
event loop is not held for longer than that.

Deletes, evictions and moves swap the namespace's last row into the freed one (O(dimension)
per entry), keeping every block dense; an emptied trailing block is freed. Expired entries are
never returned (masked at search time) and are removed lazily, at most ``SWEEP_LIMIT`` per
search or upsert, from a heap of expiry times.

Besides ``max_entries``, ``max_bytes`` bounds what the entries hold (a semantic cache's payload
carries a whole encoded answer: 6,000 answers of 100 kB took 590 MB of RSS before this bound).
Each entry is charged its vector row, its payload (see :func:`payload_bytes`) and
:data:`ENTRY_OVERHEAD`; the least recently used entries are evicted until both bounds hold.
"""

from __future__ import annotations

import asyncio
import heapq
import sys
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from pydantic import Field

from aigw.config import Settings
from aigw.embeddings import Vectors

from . import Match, VectorStoreError

#: Rows per block once a namespace outgrows its first block (16 MiB at 512-d). Measured at
#: 100k x 512: blocks of 4k-32k rows search as fast as one matrix (one gemv call each).
BLOCK_ROWS: Final = 8192
#: Expired entries removed per search or upsert, at most: bounds the work one call does.
SWEEP_LIMIT: Final = 64
_FirstRows: Final = 4
#: What an entry costs beyond its vector row and its payload's contents: its id string, its
#: :class:`_Entry`, its slots in the OrderedDict, the row's id list and the expiry heap (with
#: the heap tuple). Measured with tracemalloc in a full store that evicts (tests/vectorstores/
#: test_memory.py checks it): traced memory within 0.94-1.09x of the charge for 3-key payloads
#: of 0 B to 100 kB and ids of 64 characters (the payload keys, usually shared literals, are
#: charged too; partly filled vector blocks are not, see MemoryVectorStoreConfig).
ENTRY_OVERHEAD: Final = 448


def payload_bytes(payload: Mapping[str, Any]) -> int:
    """What ``payload``'s keys and values cost resident: ``sys.getsizeof`` of each (a str is
    its characters plus a 41-73 byte header; one with non-ASCII characters costs 2 or 4 bytes
    a character), one level deep (nested containers count their own shallow size only) plus
    the dict itself."""
    return sys.getsizeof(payload) + sum(
        sys.getsizeof(k) + sys.getsizeof(v) for k, v in payload.items()
    )


class MemoryVectorStoreConfig(Settings):
    """Settings of the ``memory`` store.

    ``max_entries``: entries held across all namespaces; storing a new id into a full store
    evicts the least recently used entry (stored, or returned by a search). The vectors take
    ``max_entries * dimension * 4`` bytes (205 MB at 100,000 x 512) plus, per namespace, at
    most one partly filled block (namespaces under 8,192 entries: at most 4 rows per entry).
    ``max_bytes`` (default 64 MiB): the bytes the entries hold, each charged its vector row
    (``dimension * 4 + 8``), its payload's keys and values (``sys.getsizeof``, one level deep:
    a str payload value counts its characters plus ~50 bytes) and ``ENTRY_OVERHEAD``
    (448 bytes); least recently used entries are evicted until both bounds hold. An entry
    larger than ``max_bytes`` alone is not stored (the upsert returns without storing it).
    ``search_in_thread_above``: namespaces with at least this many entries are searched in a
    worker thread rather than on the event loop (0: always).
    """

    max_entries: int = Field(100_000, ge=1)
    max_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    search_in_thread_above: int = Field(32_768, ge=0)


class _Entry:
    """Where an id lives and what it carries."""

    __slots__ = ("expires_at", "namespace", "payload", "row", "seq", "size")

    def __init__(
        self,
        namespace: str,
        row: int,
        expires_at: float,
        payload: Mapping[str, Any],
        seq: int,
        size: int,
    ) -> None:
        self.namespace = namespace
        self.row = row
        self.expires_at = expires_at
        self.payload = payload
        self.seq = seq  # which upsert wrote it: tells a stale heap item from the live one
        self.size = size  # what it is charged against max_bytes


class _Space:
    """One namespace: dense rows ``0..n-1`` over blocks, with ids and expiry times per row."""

    __slots__ = ("expires", "ids", "vecs", "version")

    def __init__(self, dimension: int) -> None:
        self.vecs: list[npt.NDArray[np.float32]] = [np.empty((_FirstRows, dimension), np.float32)]
        self.expires: list[npt.NDArray[np.float64]] = [np.empty(_FirstRows, np.float64)]
        self.ids: list[str] = []
        # Bumped on every change of rows: a threaded search whose snapshot went stale
        # re-scores its candidates against the current rows.
        self.version = 0

    def __len__(self) -> int:
        return len(self.ids)

    def append(self, id: str, vector: Vectors, expires_at: float) -> int:
        row = len(self.ids)
        b, r = divmod(row, BLOCK_ROWS)
        if b == len(self.vecs):
            self.vecs.append(np.empty((BLOCK_ROWS, vector.shape[0]), np.float32))
            self.expires.append(np.empty(BLOCK_ROWS, np.float64))
        elif r == len(self.expires[b]):  # the first block, full and smaller than a block
            self._resize_first(min(2 * r, BLOCK_ROWS))
        self.vecs[b][r] = vector
        self.expires[b][r] = expires_at
        self.ids.append(id)
        self.version += 1
        return row

    def set(self, row: int, vector: Vectors, expires_at: float) -> None:
        b, r = divmod(row, BLOCK_ROWS)
        self.vecs[b][r] = vector
        self.expires[b][r] = expires_at
        self.version += 1

    def remove(self, row: int) -> str | None:
        """Free ``row`` by moving the last row into it; the id moved (now at ``row``), if any."""
        last = len(self.ids) - 1
        moved = None
        if row != last:
            b, r = divmod(row, BLOCK_ROWS)
            lb, lr = divmod(last, BLOCK_ROWS)
            self.vecs[b][r] = self.vecs[lb][lr]
            self.expires[b][r] = self.expires[lb][lr]
            moved = self.ids[row] = self.ids[last]
        self.ids.pop()
        self.version += 1
        n = last
        if len(self.vecs) > 1 and n <= (len(self.vecs) - 1) * BLOCK_ROWS:
            self.vecs.pop()  # the trailing block is empty
            self.expires.pop()
        elif len(self.vecs) == 1 and _FirstRows < len(self.expires[0]) >= 4 * n:
            # A quarter full: halve, so a shrunk namespace holds at most 4 rows per entry.
            self._resize_first(max(len(self.expires[0]) // 2, _FirstRows))
        return moved

    def _resize_first(self, rows: int) -> None:
        n = min(len(self.ids), rows)
        vecs = np.empty((rows, self.vecs[0].shape[1]), np.float32)
        vecs[:n] = self.vecs[0][:n]
        expires = np.empty(rows, np.float64)
        expires[:n] = self.expires[0][:n]
        self.vecs[0], self.expires[0] = vecs, expires

    def vector(self, row: int) -> npt.NDArray[np.float32]:
        b, r = divmod(row, BLOCK_ROWS)
        row_vector: npt.NDArray[np.float32] = self.vecs[b][r]
        return row_vector

    def expiry(self, row: int) -> float:
        b, r = divmod(row, BLOCK_ROWS)
        return float(self.expires[b][r])


def _top_rows(
    vecs: Sequence[npt.NDArray[np.float32]],
    expires: Sequence[npt.NDArray[np.float64]],
    n: int,
    query: npt.NDArray[np.float32],
    k: int,
    now: float,
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float32]]:
    """The rows of the ``k`` best unexpired scores among rows ``0..n-1``, best first."""
    scores = np.empty(len(vecs) * BLOCK_ROWS if len(vecs) > 1 else len(expires[0]), np.float32)
    for b, (block, exp) in enumerate(zip(vecs, expires, strict=True)):
        start = b * BLOCK_ROWS
        m = min(n - start, len(exp))
        if m <= 0:
            break
        out = scores[start : start + m]
        np.matmul(block[:m], query, out=out)
        out[exp[:m] <= now] = -np.inf
    scores = scores[:n]
    rows = np.argpartition(scores, n - k)[n - k :] if k < n else np.arange(n)
    rows = rows[np.argsort(-scores[rows], kind="stable")]
    best = scores[rows]
    keep = best > -np.inf
    return rows[keep], best[keep]


class MemoryVectorStore:
    """The in-process store (see the module's docstring); follows
    :class:`~aigw.vectorstores.VectorStore`.

    Entries live in one process: instances of the gateway's workers do not share them. Fails
    with :class:`~aigw.vectorstores.VectorStoreError` on a vector of the wrong dimension (or
    not finite, or zero), or when used before :meth:`ensure_collection`.
    """

    Config = MemoryVectorStoreConfig
    sweep_limit: int = SWEEP_LIMIT

    def __init__(self, config: MemoryVectorStoreConfig | None = None) -> None:
        config = config or MemoryVectorStoreConfig()
        self.max_entries = config.max_entries
        self.max_bytes = config.max_bytes
        self.bytes = 0  # charged by the entries held (see MemoryVectorStoreConfig)
        self.thread_above = config.search_in_thread_above
        self.dimension: int | None = None
        self._spaces: dict[str, _Space] = {}
        # id -> entry, least recently used first
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._expiry: list[tuple[float, int, str]] = []  # heap of (expires_at, seq, id)
        self._seq = 0

    def __len__(self) -> int:
        """Entries held, expired ones not yet swept included."""
        return len(self._entries)

    def namespace_size(self, namespace: str) -> int:
        """Entries held in ``namespace`` (for tests and benchmarks)."""
        space = self._spaces.get(namespace)
        return 0 if space is None else len(space)

    def allocated_rows(self) -> int:
        """Rows of vector storage allocated over all namespaces (the memory bound's measure)."""
        return sum(sum(len(e) for e in s.expires) for s in self._spaces.values())

    async def ensure_collection(self, dimension: int) -> None:
        """Fix the dimension; a different one once entries exist is a :class:`VectorStoreError`
        (the embedder changed: its vectors cannot be compared with the stored ones)."""
        if dimension < 1:
            raise VectorStoreError(f"dimension must be positive, not {dimension}")
        if self.dimension not in (None, dimension) and self._entries:
            raise VectorStoreError(
                f"memory vector store holds {self.dimension}-d vectors, not {dimension}-d"
            )
        if self.dimension != dimension:
            self._spaces.clear()
        self.dimension = dimension

    async def search(self, vector: Vectors, k: int, namespace: str) -> list[Match]:
        query = self._normalised(vector)
        self._sweep()
        space = self._spaces.get(namespace)
        if space is None or k < 1:
            return []
        n, version, now = len(space), space.version, time.time()
        if n < self.thread_above:
            rows, scores = _top_rows(space.vecs, space.expires, n, query, k, now)
        else:
            # Snapshot the block lists: rows written meanwhile are caught by the version check.
            rows, scores = await asyncio.to_thread(
                _top_rows, tuple(space.vecs), tuple(space.expires), n, query, k, now
            )
            if self._spaces.get(namespace) is not space:
                return []  # the namespace was deleted meanwhile
            if space.version != version:
                rows, scores = self._rescore(space, rows, query, now)
        out = []
        for row, score in zip(rows.tolist(), scores.tolist(), strict=True):
            id = space.ids[row]
            self._entries.move_to_end(id)
            out.append(Match(id, min(1.0, max(0.0, score)), self._entries[id].payload))
        return out

    def _rescore(
        self,
        space: _Space,
        rows: npt.NDArray[np.intp],
        query: npt.NDArray[np.float32],
        now: float,
    ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float32]]:
        """Candidates of a stale snapshot scored against what their rows hold now.

        Rows may have been overwritten or moved during the threaded scan: each returned id is
        scored against its current vector, so a similarity is never another entry's (an entry
        moved meanwhile may be missed by this one search: a miss, not a wrong answer).
        """
        live = sorted({r for r in rows.tolist() if r < len(space) and space.expiry(r) > now})
        if not live:
            return np.empty(0, np.intp), np.empty(0, np.float32)
        picked = np.array(live, np.intp)
        scores = np.array([float(space.vector(r) @ query) for r in live], np.float32)
        order = np.argsort(-scores, kind="stable")
        return picked[order], scores[order]

    async def upsert(
        self,
        id: str,
        vector: Vectors,
        namespace: str,
        payload: Mapping[str, Any],
        expires_at: float,
    ) -> None:
        """Store (or replace) ``id``; evicts least recently used entries until ``max_entries``
        and ``max_bytes`` hold. An entry larger than ``max_bytes`` on its own is not stored
        (and an entry it would have replaced is removed): a cache misses, it does not fail."""
        vec = self._normalised(vector)
        self._sweep()
        stored = dict(payload)
        size = vec.nbytes + 8 + payload_bytes(stored) + ENTRY_OVERHEAD
        entry = self._entries.get(id)
        if size > self.max_bytes:
            if entry is not None:
                self._remove(id)  # its old value must not outlive the write that replaced it
            return
        self._seq += 1
        if entry is not None and entry.namespace == namespace:
            self._spaces[namespace].set(entry.row, vec, expires_at)
            entry.expires_at, entry.payload, entry.seq = expires_at, stored, self._seq
            self.bytes += size - entry.size
            entry.size = size
            self._entries.move_to_end(id)
            while self.bytes > self.max_bytes:  # this entry is last: it fits on its own
                self._remove(next(iter(self._entries)))
        else:
            if entry is not None:
                self._remove(id)
            while self._entries and (
                len(self._entries) >= self.max_entries or self.bytes + size > self.max_bytes
            ):
                self._remove(next(iter(self._entries)))  # the least recently used
            space = self._spaces.get(namespace)
            if space is None:
                space = self._spaces[namespace] = _Space(vec.shape[0])
            row = space.append(id, vec, expires_at)
            self._entries[id] = _Entry(namespace, row, expires_at, stored, self._seq, size)
            self.bytes += size
        heapq.heappush(self._expiry, (expires_at, self._seq, id))
        if len(self._expiry) > 2 * len(self._entries) + 64:
            # Replaced entries leave stale heap items: rebuild so the heap stays O(entries).
            self._expiry = [(e.expires_at, e.seq, i) for i, e in self._entries.items()]
            heapq.heapify(self._expiry)

    async def delete(self, ids: Sequence[str] = (), namespace: str | None = None) -> int:
        """Forget ``ids`` (only those in ``namespace`` when it is given), or, with no ids, the
        whole of ``namespace``; how many entries were held (expired ones included). With
        neither, nothing."""
        if isinstance(ids, str):
            raise TypeError("ids must be a sequence of ids, not one string")
        count = 0
        if ids:
            for id in ids:
                entry = self._entries.get(id)
                if entry is not None and namespace in (None, entry.namespace):
                    self._remove(id)
                    count += 1
        elif namespace is not None:
            space = self._spaces.pop(namespace, None)
            if space is not None:
                for id in space.ids:
                    self.bytes -= self._entries.pop(id).size
                count = len(space)
        return count

    async def aclose(self) -> None:
        """Drop every entry (the store lives in this process only)."""
        self._spaces.clear()
        self._entries.clear()
        self._expiry.clear()
        self.bytes = 0

    def _normalised(self, vector: Vectors) -> npt.NDArray[np.float32]:
        if self.dimension is None:
            raise VectorStoreError("memory vector store: ensure_collection() was not called")
        vec = np.asarray(vector, dtype=np.float32)
        if vec.ndim == 2 and vec.shape[0] == 1:
            vec = vec[0]
        if vec.shape != (self.dimension,):
            raise VectorStoreError(
                f"dimension mismatch: the store holds {self.dimension}-d vectors, "
                f"got shape {vec.shape}"
            )
        norm = float(np.linalg.norm(vec))
        if not np.isfinite(norm) or norm == 0.0:
            raise VectorStoreError("vector is zero or not finite")
        # Normalised here too: a caller's rounding must not turn cosine into > 1.
        return vec / np.float32(norm)

    def _remove(self, id: str) -> None:
        entry = self._entries.pop(id)
        self.bytes -= entry.size
        space = self._spaces[entry.namespace]
        moved = space.remove(entry.row)
        if moved is not None:
            self._entries[moved].row = entry.row
        if not space.ids:
            del self._spaces[entry.namespace]

    def _sweep(self) -> None:
        """Remove up to :attr:`sweep_limit` expired entries (bounded work per call)."""
        heap, now = self._expiry, time.time()
        for _ in range(self.sweep_limit):
            if not heap or heap[0][0] > now:
                return
            _, seq, id = heapq.heappop(heap)
            entry = self._entries.get(id)
            if entry is not None and entry.seq == seq:
                self._remove(id)
