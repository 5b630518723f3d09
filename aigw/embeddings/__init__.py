"""Embedders: text in, L2-normalised vectors out, for the semantic cache.

An embedder is chosen by ``type:`` in the semantic cache's ``embedder:`` block, through the
entry-point group ``aigw.embedders`` (``local`` ships with aigw; remote ones and third-party ones
plug in the same way). Each entry point names a class with a ``Config`` (a
:class:`aigw.config.Settings` model of its settings) and a constructor taking that config; the
instance follows :class:`Embedder`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

Vectors = npt.NDArray[np.float32]


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into vectors.

    ``model``: what it embeds with, as ``aigw check`` shows it. ``dimension``: the length of its
    vectors, known once :meth:`start` returned. :meth:`embed` returns one L2-normalised float32
    row per text, in order; text longer than the model takes is truncated (never an error). It
    raises :class:`EmbeddingError` (or ``TimeoutError``) when it cannot embed; the semantic
    cache then fails open (a miss). :meth:`aclose` releases what :meth:`start` took.
    """

    model: str
    dimension: int

    async def start(self) -> None: ...

    async def embed(self, texts: Sequence[str]) -> Vectors: ...

    async def aclose(self) -> None: ...


class EmbeddingError(Exception):
    """An embedder could not embed (its model failed, a remote service answered an error)."""
