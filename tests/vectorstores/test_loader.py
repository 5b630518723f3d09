"""``load_vector_store``: the entry point by ``type:``, its settings validated, errors named."""

from __future__ import annotations

import pytest

from aigw.errors import ConfigError
from aigw.vectorstores import VectorStore
from aigw.vectorstores.loader import load_vector_store
from aigw.vectorstores.memory import MemoryVectorStore

WHERE = "conf.d/40-semantic-cache.yaml: config.store"


@pytest.mark.parametrize("spec", [None, {}, {"type": "memory"}])
def test_default_is_memory(spec: dict[str, object] | None) -> None:
    store = load_vector_store(spec, WHERE)
    assert isinstance(store, MemoryVectorStore) and isinstance(store, VectorStore)
    assert store.max_entries == 100_000


def test_settings_are_passed() -> None:
    store = load_vector_store({"type": "memory", "max_entries": 5}, WHERE)
    assert isinstance(store, MemoryVectorStore) and store.max_entries == 5


def test_unknown_type_lists_the_installed_ones() -> None:
    with pytest.raises(ConfigError) as err:
        load_vector_store({"type": "qdrnt"}, WHERE)
    assert str(err.value) == f"{WHERE}.type: unknown vector store 'qdrnt'; installed: memory"


@pytest.mark.parametrize(
    ("spec", "key"),
    [({"max_entries": 0}, "max_entries"), ({"max_entires": 10}, "max_entires")],
)
def test_bad_settings_name_where_and_the_key(spec: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{WHERE}\.{key}: "):
        load_vector_store(spec, WHERE)


def test_not_a_mapping() -> None:
    with pytest.raises(ConfigError, match=rf"^{WHERE}: expected a mapping"):
        load_vector_store(["memory"], WHERE)  # type: ignore[arg-type]
