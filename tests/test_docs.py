"""The docs stay true to the code: hooks documented and tested, README commands real."""

from __future__ import annotations

import ast
import inspect
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from aigw import hookspecs
from tests.conftest import GatewayFactory

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
SPECS = {
    name: fn
    for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
    if hasattr(fn, "aigw_spec")
}


def test_there_are_hookspecs() -> None:
    assert {"on_request", "on_log", "startup"} <= set(SPECS)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_hookspec_documented_in_readme(name: str) -> None:
    args = ", ".join(inspect.signature(SPECS[name]).parameters)
    assert f"`{name}({args})`" in README, f"README's hook table lacks `{name}({args})`"
    assert SPECS[name].__doc__, f"hookspec {name} has no docstring"


def _test_names() -> set[str]:
    names = set()
    for path in Path(__file__).parent.rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                names.add(node.name)
    return names


@pytest.mark.parametrize("name", sorted(SPECS))
def test_hookspec_has_a_test(name: str) -> None:
    assert f"test_hook_{name}" in _test_names()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_ci_runs_the_readme_test_command() -> None:
    test_command = next(b.strip() for b in _blocks("sh") if "pytest" in b)
    assert test_command in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


async def test_readme_plugin_example_works(
    make_gateway: GatewayFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = next(b for b in _blocks("python") if b.startswith("# my_plugins.py"))
    conf = next(b for b in _blocks("yaml") if b.startswith("# conf.d/15-deny.yaml"))
    module = f"my_plugins_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(code, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    deny: dict[str, Any] = yaml.safe_load(conf)
    deny["plugin"] = deny["plugin"].replace("my_plugins", module)
    mock = {"name": "mock", "type": "mock", "models": {"*": "served-by-mock"}}
    gw = await make_gateway(
        {
            "15-deny.yaml": deny,
            "90-p.yaml": {"plugin": "provider-proxy", "config": {"providers": [mock]}},
        }
    )
    msg = [{"role": "user", "content": "hi"}]
    url = gw.url("/v1/chat/completions")
    async with gw.http.post(url, json={"model": "gpt-3.5-turbo", "messages": msg}) as resp:
        assert resp.status == 403 and (await resp.json())["error"]["code"] == "denied"
    async with gw.http.post(url, json={"model": "gpt-4o", "messages": msg}) as resp:
        assert resp.status == 200 and resp.headers["x-served-model"] == "served-by-mock"
    sys.modules.pop(module, None)


def test_readme_plugin_example_loads_with_the_aigw_script(tmp_path: Path) -> None:
    # As the README has it: my_plugins.py next to conf.d/, `aigw` run from that directory. The
    # console script, unlike `python -m`, does not put the working directory on sys.path.
    code = next(b for b in _blocks("python") if b.startswith("# my_plugins.py"))
    conf = next(b for b in _blocks("yaml") if b.startswith("# conf.d/15-deny.yaml"))
    (tmp_path / "my_plugins.py").write_text(code, encoding="utf-8")
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    (conf_d / "15-deny.yaml").write_text(conf, encoding="utf-8")
    (conf_d / "90-p.yaml").write_text(
        "plugin: provider-proxy\nconfig:\n  providers: [{name: m, type: mock}]\n", "utf-8"
    )
    script = Path(sys.executable).parent / "aigw"
    done = subprocess.run(
        [str(script), "check", "-c", "conf.d"], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "my_plugins:DenyModelPlugin" in done.stdout


@pytest.mark.parametrize(
    "conf_dir", sorted(p for p in (ROOT / "examples").iterdir() if p.is_dir()), ids=lambda p: p.name
)
def test_example_conf_sets_are_valid(conf_dir: Path) -> None:
    from aigw.cli import describe
    from aigw.config import load_config

    assert "is valid" in describe(load_config(conf_dir))


def test_every_package_is_declared_in_setup_cfg() -> None:
    """A package missing from setup.cfg works in an editable install and breaks `pip install .`."""
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    declared = set(cfg["options"]["packages"].split())
    found = set()
    for top, name in (("aigw", "aigw"), ("plugins", "aigw_plugins")):
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top).parts
            found.add(".".join((name, *rel)))
    assert found == declared
