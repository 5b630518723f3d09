"""Build an embedder from its config block (``embedder: {type: local, ...}``): ``type`` names
an entry point of the group ``aigw.embedders`` (default ``local``) or a ``module:Class``; see
:mod:`aigw.components` for the rest and the errors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from aigw import components
from aigw.embeddings import Embedder

GROUP = "aigw.embedders"
DEFAULT_TYPE = "local"


def load_embedder(spec: Mapping[str, Any] | None, where: str) -> Embedder:
    """Build (not start) the embedder ``spec`` describes; ``where`` prefixes every error."""
    return cast(Embedder, components.load(GROUP, spec, where, "embedder", DEFAULT_TYPE, Embedder))
