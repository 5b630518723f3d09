"""conf.d loading (``aigw.config``) and plugin activation (``aigw.plugins``)."""

from __future__ import annotations

import re
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest

from aigw.config import GatewaySettings, expand_env, load_config
from aigw.errors import ConfigError
from aigw.pipeline import Pipeline
from aigw.plugins import installed, load
from tests.conftest import write_conf

PROXY: dict[str, Any] = {
    "plugin": "provider-proxy",
    "config": {"providers": [{"name": "m", "type": "mock"}]},
}


def conf(tmp_path: Path, files: dict[str, Any]) -> Path:
    return write_conf(tmp_path / "conf.d", files)


def plugin_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str) -> str:
    """Write ``source`` as a fresh, uniquely named module importable from ``tmp_path``."""
    name = f"aigw_test_plugin_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


# --------------------------------------------------------------------------- reading conf.d


def test_files_are_read_in_file_name_order(tmp_path: Path) -> None:
    root = conf(
        tmp_path,
        {
            "20-a.yaml": {"plugin": "skip-header"},
            "10-b.yaml": PROXY,
            "notes.txt": "plugin: not-yaml-so-ignored\n",
        },
    )
    cfg = load_config(root)
    assert [(e.file.name, e.name) for e in cfg.plugins] == [
        ("10-b.yaml", "provider-proxy"),
        ("20-a.yaml", "skip-header"),
    ]
    assert cfg.plugins[0].config == PROXY["config"]
    assert cfg.plugins[1].config == {}
    assert cfg.source == root


def test_gateway_block_and_defaults(tmp_path: Path) -> None:
    cfg = load_config(conf(tmp_path, {"90-p.yaml": PROXY}))
    assert cfg.gateway == GatewaySettings()
    root = conf(
        tmp_path,
        {"00-gateway.yaml": {"gateway": {"port": 9999, "workers": 3, "log_level": "debug"}}},
    )
    g = load_config(root).gateway
    assert (g.port, g.workers, g.log_level, g.host) == (9999, 3, "debug", "127.0.0.1")


@pytest.mark.parametrize("value", [False, "false", "no", "0", "off", ""])
def test_disabled_file_is_skipped(tmp_path: Path, value: Any) -> None:
    root = conf(
        tmp_path,
        {
            "10-s.yaml": {"plugin": "skip-header", "enabled": value},
            # a disabled file is not resolved, so even an unknown plugin is fine
            "20-x.yaml": {"plugin": "no-such-plugin", "enabled": value},
            "90-p.yaml": PROXY,
        },
    )
    cfg = load_config(root)
    assert [e.name for e in cfg.plugins] == ["provider-proxy"]
    assert [name for name, _ in load(cfg).order] == ["provider-proxy"]


@pytest.mark.parametrize(("env", "names"), [({}, []), ({"CACHE_ON": "1"}, ["skip-header"])])
def test_enabled_from_the_environment(
    tmp_path: Path, env: dict[str, str], names: list[str]
) -> None:
    root = conf(
        tmp_path,
        {
            "10-s.yaml": {"plugin": "skip-header", "enabled": "${CACHE_ON:+true}"},
            "90-p.yaml": PROXY,
        },
    )
    assert [e.name for e in load_config(root, env=env).plugins] == [*names, "provider-proxy"]


def test_disabled_file_may_use_unset_variables(tmp_path: Path) -> None:
    doc = {
        "plugin": "skip-header",
        "enabled": "${REDIS_URL:+true}",
        "config": {"u": "${REDIS_URL}"},
    }
    root = conf(tmp_path, {"10-s.yaml": doc, "90-p.yaml": PROXY})
    assert [e.name for e in load_config(root, env={}).plugins] == ["provider-proxy"]


# --------------------------------------------------------------------------- ${VAR} expansion


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("${A}", {"A": "x"}, "x"),
        ("${A}", {"A": ""}, ""),
        ("pre-${A}-${B}-post", {"A": "1", "B": "2"}, "pre-1-2-post"),
        ("${A:-dflt}", {}, "dflt"),
        ("${A:-dflt}", {"A": ""}, "dflt"),
        ("${A:-dflt}", {"A": "set"}, "set"),
        ("${A:-}", {}, ""),
        ("${A:-http://h:1/v1}", {}, "http://h:1/v1"),
        ("${A:+word}", {}, ""),
        ("${A:+word}", {"A": ""}, ""),
        ("${A:+word}", {"A": "v"}, "word"),
        ("no variables $A {A}", {}, "no variables $A {A}"),
    ],
)
def test_expand_string(text: str, env: dict[str, str], expected: str) -> None:
    assert expand_env(text, "f.yaml", env) == expected


def test_expand_nested_values_and_leave_non_strings() -> None:
    doc = {"a": ["${X}", 1, True, None], "b": {"c": "${Y:-7}"}, "d": 2.5}
    assert expand_env(doc, "f", {"X": "x"}) == {
        "a": ["x", 1, True, None],
        "b": {"c": "7"},
        "d": 2.5,
    }


def test_expand_keys_too() -> None:
    # Model patterns are mapping keys: `models: {"${CHAT_MODEL:-gpt-4o}": "${DEPLOYMENT}"}`.
    doc = {"models": {"${CHAT_MODEL:-gpt-4o}": "${DEPLOYMENT}", "fixed": None}}
    env = {"CHAT_MODEL": "my-model", "DEPLOYMENT": "dep-1"}
    assert expand_env(doc, "f", env) == {"models": {"my-model": "dep-1", "fixed": None}}
    assert expand_env(doc, "f", {"DEPLOYMENT": "d"}) == {"models": {"gpt-4o": "d", "fixed": None}}
    with pytest.raises(ConfigError, match="expands to 'x', which is already a key"):
        expand_env({"models": {"x": 1, "${A}": 2}}, "f", {"A": "x"})


def test_expand_uses_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIGW_TEST_VAR", "from-env")
    monkeypatch.delenv("AIGW_TEST_UNSET", raising=False)
    assert expand_env("${AIGW_TEST_VAR}|${AIGW_TEST_UNSET:-d}", "f") == "from-env|d"


def test_expansion_through_load_config(tmp_path: Path) -> None:
    root = conf(
        tmp_path,
        {
            "00-gateway.yaml": "gateway:\n  port: ${PORT:-8123}\n  host: ${HOST}\n",
            "90-p.yaml": {
                "plugin": "provider-proxy",
                "config": {"providers": [{"name": "m", "type": "mock", "api_key": "${KEY}"}]},
            },
        },
    )
    cfg = load_config(root, env={"HOST": "0.0.0.0", "KEY": "sk-1"})
    assert (cfg.gateway.host, cfg.gateway.port) == ("0.0.0.0", 8123)
    assert cfg.plugins[0].config["providers"][0]["api_key"] == "sk-1"


def test_unset_variable_names_the_file_and_key(tmp_path: Path) -> None:
    doc = {
        "plugin": "provider-proxy",
        "config": {"providers": [{"name": "m", "type": "mock", "api_key": "${MISSING_KEY}"}]},
    }
    root = conf(tmp_path, {"90-p.yaml": doc})
    with pytest.raises(ConfigError) as err:
        load_config(root, env={"OTHER": "x"})
    msg = str(err.value)
    assert str(root / "90-p.yaml") in msg
    assert "config.providers.0.api_key" in msg
    assert "MISSING_KEY" in msg


# --------------------------------------------------------------------------- file errors


def test_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a directory"):
        load_config(tmp_path / "nope")


def test_no_enabled_plugin(tmp_path: Path) -> None:
    root = conf(tmp_path, {"00-gateway.yaml": {"gateway": {}}})
    with pytest.raises(ConfigError, match="no enabled plugin"):
        load_config(root)


def test_invalid_yaml(tmp_path: Path) -> None:
    root = conf(tmp_path, {"10-bad.yaml": "plugin: [unclosed\n", "90-p.yaml": PROXY})
    with pytest.raises(ConfigError) as err:
        load_config(root)
    assert str(root / "10-bad.yaml") in str(err.value)
    assert "invalid YAML" in str(err.value)


@pytest.mark.parametrize("text", ["- plugin: skip-header\n", "just a string\n", "42\n"])
def test_file_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    root = conf(tmp_path, {"10-list.yaml": text, "90-p.yaml": PROXY})
    with pytest.raises(ConfigError) as err:
        load_config(root)
    assert str(root / "10-list.yaml") in str(err.value)
    assert "mapping" in str(err.value)


def test_unknown_top_level_key(tmp_path: Path) -> None:
    root = conf(tmp_path, {"10-s.yaml": {"plugin": "skip-header", "confg": {}}, "90-p.yaml": PROXY})
    with pytest.raises(ConfigError) as err:
        load_config(root)
    assert str(root / "10-s.yaml") in str(err.value)
    assert "confg" in str(err.value)


def test_missing_plugin_name(tmp_path: Path) -> None:
    root = conf(tmp_path, {"10-s.yaml": {"config": {}}, "90-p.yaml": PROXY})
    with pytest.raises(ConfigError, match=re.escape("10-s.yaml: plugin:")):
        load_config(root)


def test_plugin_config_must_be_a_mapping(tmp_path: Path) -> None:
    root = conf(tmp_path, {"90-p.yaml": {"plugin": "provider-proxy", "config": ["x"]}})
    with pytest.raises(ConfigError, match=re.escape("90-p.yaml: config: expected a mapping")):
        load_config(root)


def test_gateway_file_holds_only_the_gateway(tmp_path: Path) -> None:
    doc = {"gateway": {}, "plugin": "skip-header"}
    root = conf(tmp_path, {"00-g.yaml": doc, "90-p.yaml": PROXY})
    with pytest.raises(ConfigError, match=re.escape("00-g.yaml")):
        load_config(root)


def test_two_gateway_files(tmp_path: Path) -> None:
    root = conf(
        tmp_path,
        {"00-g.yaml": {"gateway": {}}, "01-g.yaml": {"gateway": {"port": 1}}, "90-p.yaml": PROXY},
    )
    with pytest.raises(ConfigError, match=re.escape("01-g.yaml")):
        load_config(root)


@pytest.mark.parametrize(
    ("gateway", "key"),
    [
        ({"port": 70000}, "gateway.port"),
        ({"port": "eighty"}, "gateway.port"),
        ({"workers": 0}, "gateway.workers"),
        ({"max_body_bytes": 0}, "gateway.max_body_bytes"),
        ({"log_level": "loud"}, "gateway.log_level"),
        ({"prot": 8080}, "gateway.prot"),
    ],
)
def test_bad_gateway_values(tmp_path: Path, gateway: dict[str, Any], key: str) -> None:
    root = conf(tmp_path, {"00-gateway.yaml": {"gateway": gateway}, "90-p.yaml": PROXY})
    with pytest.raises(ConfigError) as err:
        load_config(root)
    assert f"{root / '00-gateway.yaml'}: {key}:" in str(err.value)


# --------------------------------------------------------------------------- plugins


def test_installed_plugins() -> None:
    assert {"provider-proxy", "skip-header"} <= set(installed())


def test_load_builds_plugins_in_order(tmp_path: Path) -> None:
    root = conf(tmp_path, {"10-s.yaml": {"plugin": "skip-header"}, "90-p.yaml": PROXY})
    loaded = load(load_config(root))
    assert [name for name, _ in loaded.order] == ["skip-header", "provider-proxy"]
    assert loaded.terminal is loaded.order[-1][1]
    assert loaded.pm.has_plugin("skip-header")
    assert Pipeline(loaded).names == ["skip-header", "provider-proxy"]


def test_unknown_plugin_lists_the_installed_ones(tmp_path: Path) -> None:
    root = conf(tmp_path, {"10-x.yaml": {"plugin": "exact-cahce"}, "90-p.yaml": PROXY})
    with pytest.raises(ConfigError) as err:
        load(load_config(root))
    msg = str(err.value)
    assert str(root / "10-x.yaml") in msg
    assert "exact-cahce" in msg
    assert "provider-proxy" in msg
    assert "skip-header" in msg


def test_bad_key_in_plugin_config_names_file_and_path(tmp_path: Path) -> None:
    doc = {"plugin": "provider-proxy", "config": {"providers": [{"name": "m", "bogus": 1}]}}
    root = conf(tmp_path, {"90-p.yaml": doc})
    with pytest.raises(ConfigError) as err:
        load(load_config(root))
    assert f"{root / '90-p.yaml'}: config.providers.0.bogus:" in str(err.value)


def test_every_bad_key_is_reported(tmp_path: Path) -> None:
    providers = [{"name": "a", "type": "mock", "max_retries": -1}, {"name": "", "type": "x"}]
    root = conf(
        tmp_path, {"90-p.yaml": {"plugin": "provider-proxy", "config": {"providers": providers}}}
    )
    with pytest.raises(ConfigError) as err:
        load(load_config(root))
    msg = str(err.value)
    for key in (
        "config.providers.0.max_retries",
        "config.providers.1.name",
        "config.providers.1.type",
    ):
        assert key in msg


def test_plugin_without_config_class_rejects_config(tmp_path: Path) -> None:
    root = conf(
        tmp_path, {"10-s.yaml": {"plugin": "skip-header", "config": {"x": 1}}, "90-p.yaml": PROXY}
    )
    with pytest.raises(
        ConfigError, match=re.escape("10-s.yaml: config: plugin 'skip-header' takes no config")
    ):
        load(load_config(root))


def test_plugin_configured_twice(tmp_path: Path) -> None:
    root = conf(
        tmp_path,
        {
            "10-s.yaml": {"plugin": "skip-header"},
            "20-s.yaml": {"plugin": "skip-header"},
            "90-p.yaml": PROXY,
        },
    )
    with pytest.raises(ConfigError) as err:
        load(load_config(root))
    assert "20-s.yaml" in str(err.value)
    assert "configured twice" in str(err.value)


def test_last_plugin_must_be_terminal(tmp_path: Path) -> None:
    root = conf(tmp_path, {"10-p.yaml": PROXY, "20-s.yaml": {"plugin": "skip-header"}})
    with pytest.raises(ConfigError) as err:
        load(load_config(root))
    msg = str(err.value)
    assert str(root / "20-s.yaml") in msg
    assert "'skip-header' is not" in msg


def test_terminal_plugin_must_be_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mod = plugin_module(
        tmp_path,
        monkeypatch,
        """
        import aigw

        class Echo:
            terminal = True

            def resolve_target(self, model):
                return aigw.Target("echo", model)

            def model_ids(self):
                return []

            @aigw.hookimpl
            async def on_request(self, ctx):
                return aigw.Reply.json({})
        """,
    )
    root = conf(tmp_path, {"10-p.yaml": PROXY, "90-echo.yaml": {"plugin": f"{mod}:Echo"}})
    with pytest.raises(ConfigError) as err:
        load(load_config(root))
    msg = str(err.value)
    assert str(root / "10-p.yaml") in msg
    assert "'provider-proxy' must be the last" in msg


def test_module_class_plugin_with_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mod = plugin_module(
        tmp_path,
        monkeypatch,
        """
        import aigw
        from aigw.config import Settings

        class Cfg(Settings):
            greeting: str = "hi"
            times: int = 1

        class Greeter:
            config_class = Cfg

            def __init__(self, config):
                self.config = config

            @aigw.hookimpl
            async def on_request(self, ctx):
                return None
        """,
    )
    doc = {"plugin": f"{mod}:Greeter", "config": {"greeting": "hello", "times": "3"}}
    root = conf(tmp_path, {"10-g.yaml": doc, "90-p.yaml": PROXY})
    loaded = load(load_config(root))
    assert [name for name, _ in loaded.order] == [f"{mod}:Greeter", "provider-proxy"]
    greeter = loaded.order[0][1]
    assert (greeter.config.greeting, greeter.config.times) == ("hello", 3)  # type: ignore[attr-defined]

    bad = {"plugin": f"{mod}:Greeter", "config": {"times": "many"}}
    root = conf(tmp_path, {"10-g.yaml": bad, "90-p.yaml": PROXY})
    with pytest.raises(ConfigError, match=re.escape("10-g.yaml: config.times:")):
        load(load_config(root))


def test_module_class_that_cannot_be_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mod = plugin_module(tmp_path, monkeypatch, "NOT_A_CLASS = 1\n")
    for ref, match in (
        (f"{mod}:Missing", "cannot load"),
        ("aigw_no_such_module_xyz:Cls", "cannot load"),
        (f"{mod}:NOT_A_CLASS", "is not a class"),
    ):
        root = conf(tmp_path, {"10-x.yaml": {"plugin": ref}, "90-p.yaml": PROXY})
        with pytest.raises(ConfigError, match=match) as err:
            load(load_config(root))
        assert "10-x.yaml" in str(err.value)


MISSPELT = """
    import aigw

    class Typo:
        @aigw.hookimpl
        async def on_requets(self, ctx):
            return None
    """


def test_misspelt_hook_is_an_error_at_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mod = plugin_module(tmp_path, monkeypatch, MISSPELT)
    root = conf(tmp_path, {"10-t.yaml": {"plugin": f"{mod}:Typo"}, "90-p.yaml": PROXY})
    cfg = load_config(root)  # the conf.d itself is fine
    with pytest.raises(ConfigError, match="on_requets"):
        load(cfg)


def test_misspelt_hook_error_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mod = plugin_module(tmp_path, monkeypatch, MISSPELT)
    root = conf(tmp_path, {"10-t.yaml": {"plugin": f"{mod}:Typo"}, "90-p.yaml": PROXY})
    with pytest.raises(ConfigError) as err:
        load(load_config(root))
    assert "10-t.yaml" in str(err.value)


def test_tryfirst_hookimpl_is_rejected_by_the_pipeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mod = plugin_module(
        tmp_path,
        monkeypatch,
        """
        import aigw

        class Eager:
            @aigw.hookimpl(tryfirst=True)
            async def on_request(self, ctx):
                return None
        """,
    )
    root = conf(tmp_path, {"10-e.yaml": {"plugin": f"{mod}:Eager"}, "90-p.yaml": PROXY})
    loaded = load(load_config(root))  # pluggy itself accepts tryfirst
    with pytest.raises(ConfigError) as err:
        Pipeline(loaded)
    assert f"'{mod}:Eager'" in str(err.value)
    assert "tryfirst" in str(err.value)
