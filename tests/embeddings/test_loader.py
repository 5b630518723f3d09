"""``load_embedder``: ``type:`` through the entry-point group, settings validated by the class's
Config, every error a ConfigError naming where and the key."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from aigw.components import installed
from aigw.config import Settings
from aigw.embeddings import Embedder, Vectors
from aigw.embeddings.loader import GROUP, load_embedder
from aigw.embeddings.local import LocalEmbedder
from aigw.errors import ConfigError

WHERE = "conf.d/35-semantic-cache.yaml: config.embedder"


class TinyEmbedder:
    """A third-party embedder referenced as ``module:Class``."""

    class Config(Settings):
        dim: int = 3

    model = "tiny"

    def __init__(self, config: TinyEmbedder.Config) -> None:
        self.dimension = config.dim

    async def start(self) -> None:
        pass

    async def embed(self, texts: Sequence[str]) -> Vectors:
        return np.ones((len(texts), self.dimension), np.float32)

    async def aclose(self) -> None:
        pass


class NoConfig:
    pass


class BrokenConfig:
    class Config(Settings):
        pass

    def __init__(self, config: Any) -> None:
        raise RuntimeError("cannot open its device")


def test_local_is_installed_and_the_default() -> None:
    assert installed(GROUP)["local"] == "aigw.embeddings.local:LocalEmbedder"
    for spec in (None, {}, {"type": "local"}):
        emb = load_embedder(spec, WHERE)
        assert isinstance(emb, LocalEmbedder) and isinstance(emb, Embedder)
        assert emb.config == LocalEmbedder.Config()


def test_settings_reach_the_embedder() -> None:
    emb = load_embedder(
        {"type": "local", "threads": 1, "max_batch": 8, "cache_size": 5, "max_chars": 100}, WHERE
    )
    assert isinstance(emb, LocalEmbedder)
    assert (emb.config.threads, emb.config.max_batch) == (1, 8)
    assert (emb.config.cache_size, emb.config.max_chars) == (5, 100)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"threads": 0}, f"{WHERE}.threads: Input should be greater than or equal to 1"),
        ({"max_batch": "many"}, f"{WHERE}.max_batch: Input should be a valid integer"),
        ({"cache_size": -1}, f"{WHERE}.cache_size: Input should be greater than or equal to 0"),
        ({"max_chars": 0}, f"{WHERE}.max_chars: Input should be greater than or equal to 1"),
        ({"modle": "x"}, f"{WHERE}.modle: Extra inputs are not permitted"),
        ({"type": "nope"}, f"{WHERE}.type: unknown embedder 'nope'; installed: local"),
        ({"type": 3}, f"{WHERE}.type: expected the name of an installed embedder, got 3"),
        ({"type": "no.such.module:X"}, f"{WHERE}.type: cannot load embedder 'no.such.module:X'"),
        ({"type": f"{__name__}:WHERE"}, f"{WHERE}.type: '{__name__}:WHERE' is not a class"),
        ({"type": f"{__name__}:NoConfig"}, f"{WHERE}.type: embedder '{__name__}:NoConfig' has"),
        ({"type": f"{__name__}:BrokenConfig"}, "cannot open its device"),
    ],
)
def test_errors_name_where_and_the_key(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_embedder(spec, WHERE)
    assert str(err.value).startswith(message) or message in str(err.value)
    assert str(err.value).startswith(WHERE)


def test_not_a_mapping_is_an_error() -> None:
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_embedder(["local"], WHERE)  # type: ignore[arg-type]


async def test_a_module_class_reference_loads_a_third_party_embedder() -> None:
    emb = load_embedder({"type": f"{__name__}:TinyEmbedder", "dim": 4}, WHERE)
    assert isinstance(emb, TinyEmbedder)
    await emb.start()
    assert (await emb.embed(["a", "b"])).shape == (2, 4)
