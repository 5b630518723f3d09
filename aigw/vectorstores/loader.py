"""Build the vector store a ``store:`` block names: ``type`` (default ``memory``) names an entry
point of the group ``aigw.vector_stores`` or a ``module:Class``; see :mod:`aigw.components` for
the rest and the errors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from aigw import components
from aigw.vectorstores import VectorStore

GROUP = "aigw.vector_stores"
DEFAULT_TYPE = "memory"


def load_vector_store(spec: Mapping[str, Any] | None, where: str) -> VectorStore:
    """The store ``spec`` describes (``None`` or ``{}``: the default ``memory`` store);
    ``where`` prefixes every error."""
    return cast(
        VectorStore,
        components.load(GROUP, spec, where, "vector store", DEFAULT_TYPE, VectorStore),
    )
