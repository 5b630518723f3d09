"""``ModelRouter`` (exact, then longest prefix, then ``*``) and the provider-proxy settings."""

from __future__ import annotations

from typing import Any

import pytest
from aigw_plugins.provider_proxy.config import ProviderConfig, ProviderProxyConfig
from aigw_plugins.provider_proxy.routing import ModelRouter
from pydantic import ValidationError

from aigw.config import expand_env
from aigw.context import Target


def provider(name: str, models: Any, **extra: Any) -> ProviderConfig:
    return ProviderConfig.model_validate({"name": name, "type": "mock", "models": models, **extra})


def router(*providers: ProviderConfig) -> ModelRouter:
    return ModelRouter(list(providers))


# --------------------------------------------------------------------------- precedence


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 1, 0), (1, 2, 0)])
def test_exact_beats_prefix_beats_star(order: tuple[int, ...]) -> None:
    ps = [
        provider("any", ["*"]),
        provider("family", ["gpt-4*"]),
        provider("one", ["gpt-4o"]),
    ]
    r = router(*(ps[i] for i in order))
    assert r.resolve("gpt-4o") == Target("one", "gpt-4o")
    assert r.resolve("gpt-4-turbo") == Target("family", "gpt-4-turbo")
    assert r.resolve("gpt-4o-mini") == Target("family", "gpt-4o-mini")
    assert r.resolve("claude-3") == Target("any", "claude-3")


@pytest.mark.parametrize("reverse", [False, True])
def test_longest_prefix_wins_whatever_the_order(reverse: bool) -> None:
    ps = [provider("short", ["gpt*"]), provider("mid", ["gpt-4*"]), provider("long", ["gpt-4o*"])]
    r = router(*(reversed(ps) if reverse else ps))
    assert r.resolve("gpt-4o-mini").provider == "long"
    assert r.resolve("gpt-4o").provider == "long"
    assert r.resolve("gpt-4-turbo").provider == "mid"
    assert r.resolve("gpt-3.5-turbo").provider == "short"
    assert r.resolve("o1") is None


def test_prefix_patterns_of_one_provider() -> None:
    r = router(provider("p", ["qwen*", "qwen-max*", "deepseek-*"]))
    assert r.resolve("qwen-max-latest") == Target("p", "qwen-max-latest")
    assert r.resolve("deepseek-chat") == Target("p", "deepseek-chat")
    assert r.resolve("deepseek") is None


def test_ties_go_to_the_first_declared_provider() -> None:
    first = provider("first", ["gpt-4o", "gpt-4*", "*"])
    second = provider("second", ["gpt-4o", "gpt-4*", "*"])
    for r, winner in ((router(first, second), "first"), (router(second, first), "second")):
        assert r.resolve("gpt-4o").provider == winner
        assert r.resolve("gpt-4.1").provider == winner
        assert r.resolve("mistral").provider == winner


def test_tie_on_a_prefix_keeps_the_first_rename() -> None:
    r = router(provider("a", {"gpt-4*": "gpt-4o"}), provider("b", {"gpt-4*": "gpt-4.1"}))
    assert r.resolve("gpt-4-turbo") == Target("a", "gpt-4o")


# --------------------------------------------------------------------------- renames


def test_exact_rename() -> None:
    r = router(provider("p", {"fast": "gpt-4o-mini", "smart": "gpt-4o", "gpt-4o": None}))
    assert r.resolve("fast") == Target("p", "gpt-4o-mini")
    assert r.resolve("smart") == Target("p", "gpt-4o")
    assert r.resolve("gpt-4o") == Target("p", "gpt-4o")
    assert r.resolve("gpt-4o-mini") is None  # a rename target is not itself a route


def test_prefix_rename() -> None:
    r = router(provider("p", {"claude*": "gpt-4o", "gpt*": None}))
    assert r.resolve("claude-3-opus") == Target("p", "gpt-4o")
    assert r.resolve("gpt-3.5") == Target("p", "gpt-3.5")


def test_star_rename() -> None:
    r = router(provider("exact", ["gpt-4o"]), provider("rest", {"*": "qwen-plus"}))
    assert r.resolve("anything-at-all") == Target("rest", "qwen-plus")
    assert r.resolve("gpt-4o") == Target("exact", "gpt-4o")


def test_unknown_model_without_star_is_none() -> None:
    r = router(provider("p", ["gpt-4o", "o1*"]))
    assert r.resolve("gpt-4") is None
    assert r.resolve("gpt-4") is None  # memoised misses stay misses
    assert r.resolve("o1-preview") == Target("p", "o1-preview")


def test_default_models_serve_everything() -> None:
    p = ProviderConfig(name="p")
    assert p.models == {"*": None}
    assert router(p).resolve("whatever") == Target("p", "whatever")


def test_resolve_is_stable_across_calls() -> None:
    r = router(provider("a", ["gpt*"]), provider("b", ["*"]))
    names = [f"gpt-{i}" for i in range(50)] + [f"x-{i}" for i in range(50)]
    first = [r.resolve(n) for n in names]
    assert [r.resolve(n) for n in names] == first
    assert {t.provider for t in first if t} == {"a", "b"}


# --------------------------------------------------------------------------- introspection


def test_providers_in_use_marks_a_fully_shadowed_provider() -> None:
    r = router(
        provider("openai", ["gpt-4o", "gpt-4o-mini", "*"]),
        provider("mock", ["gpt-4o", "gpt-4o-mini", "*"]),
    )
    assert r.providers_in_use() == {"openai"}
    assert r.resolve("gpt-4o").provider == "openai"


def test_partly_shadowed_provider_is_in_use() -> None:
    r = router(
        provider("a", ["gpt-4o", "gpt*"]),
        provider("b", ["gpt-4o", "o1"]),  # gpt-4o is taken, but o1 is b's
        provider("c", ["gpt*"]),  # same prefix as a: nothing left
        provider("d", ["gpt-4*"]),  # longer prefix: owns gpt-4* names
    )
    assert r.providers_in_use() == {"a", "b", "d"}
    assert r.resolve("o1") == Target("b", "o1")
    assert r.resolve("gpt-4.1").provider == "d"


def test_listed_has_only_exact_names() -> None:
    r = router(
        provider("a", {"fast": "gpt-4o-mini", "gpt-4*": None, "*": None}),
        provider("b", ["o1", "fast", "claude*"]),
    )
    assert r.listed() == ["fast", "o1"]


def test_listed_is_empty_with_only_patterns() -> None:
    assert router(provider("a", ["gpt*", "*"])).listed() == []


# --------------------------------------------------------------------------- ProviderConfig


@pytest.mark.parametrize("value", ["", None])
def test_empty_enabled_means_disabled(value: Any) -> None:
    assert ProviderConfig(name="p", enabled=value).enabled is False


@pytest.mark.parametrize(("env", "enabled"), [({}, False), ({"OPENAI_API_KEY": "sk-x"}, True)])
def test_enabled_from_plus_expansion(env: dict[str, str], enabled: bool) -> None:
    raw = expand_env({"name": "openai", "enabled": "${OPENAI_API_KEY:+true}"}, "f.yaml", env)
    assert ProviderConfig.model_validate(raw).enabled is enabled


def test_enabled_still_rejects_garbage() -> None:
    with pytest.raises(ValidationError):
        ProviderConfig(name="p", enabled="maybe")


def test_models_as_a_list() -> None:
    p = provider("p", ["gpt-4o", "gpt-4*", "*"])
    assert p.models == {"gpt-4o": None, "gpt-4*": None, "*": None}


@pytest.mark.parametrize("pattern", ["gpt-*-mini", "*gpt", "**", "a*b*"])
def test_star_must_end_the_pattern(pattern: str) -> None:
    with pytest.raises(ValidationError, match="may only end a pattern"):
        provider("p", [pattern])


@pytest.mark.parametrize("pattern", ["*", "gpt-*", "gpt-4o"])
def test_valid_patterns(pattern: str) -> None:
    assert list(provider("p", [pattern]).models) == [pattern]


def test_azure_needs_base_url() -> None:
    with pytest.raises(ValidationError, match="azure needs base_url"):
        ProviderConfig(name="az", type="azure")
    ok = ProviderConfig(name="az", type="azure", base_url="https://r.openai.azure.com/")
    assert ok.url == "https://r.openai.azure.com"


def test_unknown_provider_key_is_rejected() -> None:
    with pytest.raises(ValidationError) as err:
        ProviderConfig.model_validate({"name": "p", "base_ulr": "http://x"})
    assert err.value.errors()[0]["loc"] == ("base_ulr",)


def test_unknown_type_is_rejected() -> None:
    with pytest.raises(ValidationError):
        ProviderConfig.model_validate({"name": "p", "type": "anthropic"})


# --------------------------------------------------------------------------- ProviderProxyConfig


def proxy(*providers: dict[str, Any]) -> ProviderProxyConfig:
    return ProviderProxyConfig.model_validate({"providers": list(providers)})


def test_proxy_config_accepts_fallbacks_to_known_providers() -> None:
    cfg = proxy(
        {"name": "a", "type": "mock", "fallbacks": ["b"]},
        {"name": "b", "type": "mock", "enabled": ""},
    )
    assert [p.name for p in cfg.providers] == ["a", "b"]
    assert [p.enabled for p in cfg.providers] == [True, False]


def test_proxy_config_rejects_duplicate_names() -> None:
    with pytest.raises(ValidationError, match="unique"):
        proxy({"name": "a", "type": "mock"}, {"name": "a", "type": "mock"})


def test_proxy_config_rejects_unknown_fallback() -> None:
    with pytest.raises(ValidationError, match="unknown fallback 'nope'"):
        proxy({"name": "a", "type": "mock", "fallbacks": ["nope"]})


def test_proxy_config_rejects_all_disabled() -> None:
    with pytest.raises(ValidationError, match="no provider is enabled"):
        proxy({"name": "a", "enabled": False}, {"name": "b", "enabled": ""})


def test_proxy_config_needs_a_provider() -> None:
    with pytest.raises(ValidationError):
        proxy()
