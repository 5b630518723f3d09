"""The ``aigw`` command: ``--version``, ``check``, and serving the shipped conf.d for real."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

import aigw
from aigw.cli import main
from tests.conftest import UPSTREAM_KEY, Upstream, write_conf

SHIPPED = Path(__file__).parent.parent / "conf.d"
ENV_KNOBS = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "AIGW_HOST", "AIGW_PORT")
SERVING = re.compile(r"serving .* on http://127\.0\.0\.1:(\d+)")
TIMEOUT_S = 30.0
# A conf.d file: the terminal plugin with the offline mock provider.
MOCK_PROXY = {"plugin": "provider-proxy", "config": {"providers": [{"name": "m", "type": "mock"}]}}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No OPENAI_* / AIGW_* variable from the developer's shell leaks into the shipped conf.d."""
    for name in ENV_KNOBS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def line_of(out: str, needle: str) -> str:
    matches = [line for line in out.splitlines() if needle in line]
    assert len(matches) == 1, f"{needle!r} in:\n{out}"
    return matches[0]


# --------------------------------------------------------------------------- --version, check


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"aigw {aigw.__version__}"


def test_check_prints_pipeline_and_providers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    providers = [
        {
            "name": "up",
            "type": "openai",
            "base_url": "http://127.0.0.1:9/v1/",
            "models": {"fast": "gpt-4o-mini", "gpt-4*": None},
        },
        {"name": "off", "type": "mock", "enabled": False},
        {"name": "dup", "type": "mock", "models": ["fast", "gpt-4*"]},
        {"name": "rest", "type": "mock", "models": ["*"]},
    ]
    root = write_conf(
        tmp_path / "conf.d",
        {
            "00-gateway.yaml": {
                "gateway": {"port": 8181, "workers": 2, "header_timeout_s": 5, "max_connections": 9}
            },
            "20-skip-header.yaml": {"plugin": "skip-header"},
            "90-provider-proxy.yaml": {
                "plugin": "provider-proxy",
                "config": {"providers": providers},
            },
        },
    )
    rc, out, err = run(["check", "-c", str(root)], capsys)
    assert (rc, err) == (0, "")
    assert f"{root} is valid" in out
    assert "127.0.0.1:8181" in line_of(out, "listen:")
    assert "workers: 2" in line_of(out, "listen:")
    assert "a request head within 5s, its body within 60s" in line_of(out, "clients:")
    assert line_of(out, "max connections").endswith(": 9")
    skip = line_of(out, "skip-header")
    proxy = line_of(out, "provider-proxy  [terminal]")
    assert skip.strip().startswith("1. skip-header")
    assert "[terminal]" not in skip
    assert "20-skip-header.yaml" in skip
    assert "on_request" in skip
    assert proxy.strip().startswith("2. provider-proxy")
    assert "90-provider-proxy.yaml" in proxy
    assert out.index(skip) < out.index(proxy) < out.index("providers:")
    # skip-header decides on the headers: the body is read after it, before the proxy.
    read = line_of(out, "the request body is read")
    assert out.index(skip) < out.index(read) < out.index(proxy)
    up = line_of(out, "up [openai")
    assert "http://127.0.0.1:9/v1" in up
    assert "fast→gpt-4o-mini" in up
    assert not up.endswith(")")
    assert line_of(out, "off [mock]").endswith("(disabled)")
    assert line_of(out, "dup [mock]").endswith("(shadowed)")
    assert not line_of(out, "rest [mock]").endswith(")")


def test_check_command_line_overrides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_conf(
        tmp_path / "conf.d",
        {
            "90-p.yaml": {
                "plugin": "provider-proxy",
                "config": {"providers": [{"name": "m", "type": "mock"}]},
            }
        },
    )
    rc, out, _ = run(["check", "-c", str(root), "--host", "0.0.0.0", "--port", "1234"], capsys)
    assert rc == 0
    assert "listen: 0.0.0.0:1234" in out


def test_config_error_exits_2_on_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_conf(
        tmp_path / "conf.d",
        {
            "00-gateway.yaml": {"gateway": {"port": 70000}},
            "90-p.yaml": {"plugin": "provider-proxy", "config": {"providers": [{"name": "m"}]}},
        },
    )
    rc, out, err = run(["check", "-c", str(root)], capsys)
    assert rc == 2
    assert out == ""
    assert "configuration error" in err
    assert f"{root / '00-gateway.yaml'}: gateway.port" in err


def test_plugin_error_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_conf(tmp_path / "conf.d", {"10-s.yaml": {"plugin": "skip-header"}})
    rc, out, err = run(["check", "-c", str(root)], capsys)
    assert (rc, out) == (2, "")
    assert "must be terminal" in err


def test_unreadable_files_and_broken_plugins_are_config_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = MOCK_PROXY
    root = write_conf(tmp_path / "conf.d", {"90-p.yaml": proxy})
    (root / ".#30-x.yaml").symlink_to(tmp_path / "gone")  # an editor's lock: skipped
    assert run(["check", "-c", str(root)], capsys)[0] == 0
    (root / "40-latin1.yaml").write_bytes(b"plugin: caf\xe9\n")
    rc, _, err = run(["check", "-c", str(root)], capsys)
    assert rc == 2 and f"{root / '40-latin1.yaml'}: not UTF-8 text" in err
    (root / "40-latin1.yaml").unlink()
    # A plugin module that does not even compile, and one whose constructor fails.
    (tmp_path / "broken_mod.py").write_text("def oops(:\n")
    (tmp_path / "raising_mod.py").write_text(
        "class P:\n    def __init__(self):\n        raise RuntimeError('no')\n"
    )
    monkeypatch.chdir(tmp_path)  # module:Class is found in the working directory
    for module, expected in (("broken_mod", "SyntaxError"), ("raising_mod", "RuntimeError")):
        write_conf(root, {"10-x.yaml": {"plugin": f"{module}:P"}})
        rc, _, err = run(["check", "-c", str(root)], capsys)
        assert rc == 2 and f"{root / '10-x.yaml'}: " in err and expected in err, err


def test_a_mock_reached_as_a_fallback_is_announced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    providers = [
        {"name": "real", "base_url": "http://127.0.0.1:9/v1", "fallbacks": ["fake"]},
        {"name": "fake", "type": "mock"},
    ]
    conf = {"plugin": "provider-proxy", "config": {"providers": providers}}
    root = write_conf(tmp_path / "conf.d", {"90-p.yaml": conf})
    rc, out, _ = run(["check", "-c", str(root)], capsys)
    assert rc == 0 and line_of(out, "fake [mock]").endswith("(as a fallback only)")


def test_missing_conf_dir_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(["check", "-c", str(tmp_path / "absent")], capsys)
    assert rc == 2
    assert "not a directory" in err


def test_bad_command_line_override_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write_conf(
        tmp_path / "conf.d",
        {
            "90-p.yaml": {
                "plugin": "provider-proxy",
                "config": {"providers": [{"name": "m", "type": "mock"}]},
            }
        },
    )
    rc, _, err = run(["check", "-c", str(root), "--port", "70000"], capsys)
    assert rc == 2
    assert "port" in err


def test_check_rejects_what_serving_rejects(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    mod = f"aigw_test_cli_{uuid.uuid4().hex}"
    (tmp_path / f"{mod}.py").write_text(
        textwrap.dedent(
            """
            import aigw

            class Eager:
                @aigw.hookimpl(tryfirst=True)
                async def on_request(self, ctx):
                    return None
            """
        ),
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    root = write_conf(
        tmp_path / "conf.d",
        {
            "10-e.yaml": {"plugin": f"{mod}:Eager"},
            "90-p.yaml": MOCK_PROXY,
        },
    )
    rc, _, err = run(["check", "-c", str(root)], capsys)
    assert rc == 2
    assert "tryfirst" in err


def test_shipped_conf_without_openai_key(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = run(["check", "-c", str(SHIPPED)], capsys)
    assert (rc, err) == (0, "")
    assert "listen: 127.0.0.1:8080" in out
    assert "[terminal]" in line_of(out, "provider-proxy")
    assert line_of(out, "openai [openai").endswith("(disabled)")
    mock = line_of(out, "mock [mock]")
    assert "(disabled)" not in mock
    assert "(shadowed)" not in mock


def test_shipped_conf_with_openai_key(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_env.setenv("OPENAI_API_KEY", "sk-test-not-used")
    clean_env.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    rc, out, err = run(["check", "-c", str(SHIPPED)], capsys)
    assert (rc, err) == (0, "")
    openai_line = line_of(out, "openai [openai")
    assert "http://127.0.0.1:9/v1" in openai_line
    assert "(disabled)" not in openai_line
    assert "(shadowed)" not in openai_line
    assert line_of(out, "mock [mock]").endswith("(shadowed)")
    assert "sk-test-not-used" not in out  # keys are never printed


# --------------------------------------------------------------------------- real process


async def spawn_aigw(
    conf: Path,
    env: dict[str, str],
    *args: str,
    launcher: tuple[str, ...] = (),
    new_session: bool = False,
) -> asyncio.subprocess.Process:
    """``[launcher] python -m aigw -c <conf> --port 0 [args]``, its stderr piped; with
    ``new_session`` in a process group of its own, as a terminal's foreground job is."""
    return await asyncio.create_subprocess_exec(
        *launcher,
        sys.executable,
        "-m",
        "aigw",
        "-c",
        str(conf),
        "--port",
        "0",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        start_new_session=new_session,
    )


@contextlib.asynccontextmanager
async def aigw_process(
    env: dict[str, str], *args: str, servers: int = 1
) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    """Start ``python -m aigw -c <shipped conf.d> --port 0 [args]``; yield it and the port it
    bound once ``servers`` processes said they are serving on it."""
    proc = await spawn_aigw(SHIPPED, env, *args)
    assert proc.stderr is not None
    seen: list[str] = []
    drain: asyncio.Task[None] | None = None
    try:
        ports: list[int] = []
        async with asyncio.timeout(TIMEOUT_S):
            while len(ports) < servers:
                raw = await proc.stderr.readline()
                if not raw:
                    pytest.fail("aigw exited before serving:\n" + "".join(seen))
                seen.append(raw.decode(errors="replace"))
                if m := SERVING.search(seen[-1]):
                    ports.append(int(m.group(1)))
        (port,) = set(ports)  # with --workers, all of them on one port

        async def keep_reading() -> None:  # a full pipe must never block the gateway
            assert proc.stderr is not None
            while raw := await proc.stderr.readline():
                seen.append(raw.decode(errors="replace"))

        drain = asyncio.create_task(keep_reading())
        yield proc, port
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(TIMEOUT_S):
            rc = await proc.wait()
            await drain
        assert rc == 0, "".join(seen)
        assert any("shutting down" in line for line in seen)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if drain is not None and not drain.done():
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain


def fine_then(tmp_path: Path, name: str, body: str) -> Path:
    """A conf.d of plugin ``Fine`` (it logs "Fine was shut down"), then plugin ``name`` with
    the class ``body`` given (both in a module on ``tmp_path``), then the mock provider."""
    module = f"plugins_{name.lower()}"
    (tmp_path / f"{module}.py").write_text(
        "import asyncio, logging\n"
        "from aigw import hookimpl\n"
        "class Fine:\n"
        "    @hookimpl\n"
        "    async def shutdown(self):\n"
        "        logging.getLogger('aigw').warning('Fine was shut down')\n"
        f"class {name}:\n" + body,
        encoding="utf-8",
    )
    return write_conf(
        tmp_path / "conf.d",
        {
            "10-fine.yaml": {"plugin": f"{module}:Fine"},
            f"20-{name.lower()}.yaml": {"plugin": f"{module}:{name}"},
            "90-p.yaml": MOCK_PROXY,
        },
    )


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ENV_KNOBS}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def client_for(port: int) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{port}/v1",
        api_key="sk-client",
        max_retries=0,
        timeout=TIMEOUT_S,
    )


def user(text: str) -> Any:
    return [{"role": "user", "content": text}]


async def test_serve_shipped_conf_with_the_mock_provider() -> None:
    text = "hello from the end-to-end test"
    async with aigw_process(child_env()) as (_, port), client_for(port) as client:
        whole = await client.chat.completions.create(model="gpt-4o-mini", messages=user(text))
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=user(text), stream=True
        )
        streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    content = whole.choices[0].message.content
    assert whole.model == "gpt-4o-mini"
    assert whole.choices[0].finish_reason == "stop"
    for answer in (content, streamed):
        assert answer is not None
        assert "gpt-4o-mini" in answer
        assert text in answer
    assert streamed == content


async def test_serve_shipped_conf_with_openai_key(upstream: Upstream) -> None:
    text = "route me to the real provider"
    env = child_env(OPENAI_API_KEY=UPSTREAM_KEY, OPENAI_BASE_URL=upstream.base_url)
    async with aigw_process(env) as (_, port), client_for(port) as client:
        whole = await client.chat.completions.create(model="gpt-4o", messages=user(text))
    assert upstream.llm.chat_calls == 1
    first = upstream.llm.calls_of("chat")[0]
    assert first.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert first.body["model"] == "gpt-4o"
    content = whole.choices[0].message.content
    assert content is not None
    assert content.startswith("echo[gpt-4o]:")
    assert content == f"echo[gpt-4o]: {text}"
    assert "[mock" not in content


async def test_serve_with_two_workers_on_one_port() -> None:
    # --port 0: the parent resolves it once; each worker on a port of its own would leave
    # all but one of them unreachable.
    async with aigw_process(child_env(), "--workers", "2", servers=2) as (proc, port):
        async with client_for(port) as client:
            answers = await asyncio.gather(
                *(
                    client.chat.completions.create(model="gpt-4o", messages=user(f"q{i}"))
                    for i in range(20)
                )
            )
        workers = psutil_children(proc.pid)
    assert [a.choices[0].message.content for a in answers] == [
        f"[mock gpt-4o] You said: q{i}" for i in range(20)
    ]
    assert len(workers) == 2


def children_of(pid: int) -> list[int]:
    """The pids of ``pid``'s children, from /proc."""
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def psutil_children(pid: int) -> list[int]:
    """The pids of ``pid``'s worker processes (multiprocessing's resource tracker, also a
    child, is not a worker)."""
    return [c for c in children_of(pid) if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


async def test_a_plugin_that_cannot_start_exits_1_cleanly(tmp_path: Path) -> None:
    conf = fine_then(
        tmp_path,
        "Broken",
        "    @hookimpl\n"
        "    async def startup(self, gateway):\n"
        "        raise RuntimeError('the vector db said no')\n",
    )
    env = child_env(PYTHONPATH=str(tmp_path))
    proc = await spawn_aigw(conf, env)
    async with asyncio.timeout(TIMEOUT_S):
        _, err = await proc.communicate()
    text = err.decode()
    assert proc.returncode == 1
    assert "cannot start" in text and "the vector db said no" in text
    assert "Traceback" not in text
    assert "Fine was shut down" in text  # started before the failure: stopped in reverse


def test_workers_refuse_a_port_already_in_use(capsys: pytest.CaptureFixture[str]) -> None:
    # The workers bind with SO_REUSEPORT, which alone would share the port with whatever
    # listens there already.
    with socket.create_server(("127.0.0.1", 0), reuse_port=True) as taken:
        port = taken.getsockname()[1]
        rc, _, _ = run(["-c", str(SHIPPED), "--port", str(port), "--workers", "2"], capsys)
    assert rc == 1


def stall_workers(where: Path) -> None:
    """Have each ``--workers`` worker started with ``where`` on PYTHONPATH say so (and whether
    it ignores Ctrl-C) as its interpreter starts, before aigw's code is imported, then stay
    there."""
    # One write per line: the workers share the pipe, and print() writes its arguments
    # separately, so two workers' lines came out interleaved, as one.
    (where / "sitecustomize.py").write_text(
        "import os, signal, sys, time\n"
        "if '--multiprocessing-fork' in sys.orig_argv:\n"
        "    ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN\n"
        "    os.write(2, f'a worker is starting, Ctrl-C ignored: {ignored}\\n'.encode())\n"
        "    time.sleep(3600)\n",
        encoding="utf-8",
    )


async def test_the_port_is_held_until_the_workers_bind_it(tmp_path: Path) -> None:
    # Workers take a while to start: until they bind, the port --workers resolved and checked
    # is the parent's, or another server could take it meanwhile (and take the gateway's
    # clients, or make every worker fail).
    stall_workers(tmp_path)
    env = child_env(PYTHONPATH=str(tmp_path))
    proc = await spawn_aigw(SHIPPED, env, "--workers", "2", new_session=True)
    try:
        async with asyncio.timeout(TIMEOUT_S):
            held = await read_until(proc, re.compile(r"2 workers on http://127\.0\.0\.1:(\d+)"))
            for _ in range(2):
                await read_until(proc, re.compile("a worker is starting"))
        for reuse_address in (False, True):
            with socket.socket() as other:
                other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, reuse_address)
                with pytest.raises(OSError) as err:
                    other.bind(("127.0.0.1", int(held.group(1))))
                    other.listen()
            assert err.value.errno == errno.EADDRINUSE
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


async def read_port(proc: asyncio.subprocess.Process) -> int:
    """Read the process's stderr up to its "serving" line; the port it serves on."""
    assert proc.stderr is not None
    while line := (await proc.stderr.readline()).decode():
        if m := SERVING.search(line):
            return int(m.group(1))
    pytest.fail("aigw's output ended before it served")


async def read_until(proc: asyncio.subprocess.Process, pattern: re.Pattern[str]) -> re.Match[str]:
    """Read the process's stderr up to a line matching ``pattern``; fail if it ends first."""
    assert proc.stderr is not None
    while line := (await proc.stderr.readline()).decode():
        if m := pattern.search(line):
            return m
    pytest.fail(f"aigw's output ended before {pattern.pattern!r}")


# Some launchers leave SIGCHLD ignored, which survives exec: the kernel then reaps children
# itself, and a parent relying on waiting for them never saw the dead worker.
IGNORING_SIGCHLD = (
    sys.executable,
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGCHLD, signal.SIG_IGN); "
    "os.execv(sys.argv[1], sys.argv[1:])",
)


@pytest.mark.parametrize("launcher", [(), IGNORING_SIGCHLD], ids=["plain", "sigchld-ignored"])
async def test_a_worker_that_dies_stops_the_gateway_with_exit_1(launcher: tuple[str, ...]) -> None:
    proc = await spawn_aigw(SHIPPED, child_env(), "--workers", "2", launcher=launcher)
    try:
        async with asyncio.timeout(TIMEOUT_S):
            for _ in range(2):  # both workers serving
                await read_until(proc, SERVING)
            workers = psutil_children(proc.pid)
            os.kill(workers[0], signal.SIGKILL)
            await read_until(proc, re.compile("stopping the others"))
            assert await proc.wait() == 1
    finally:
        for pid in (proc.pid, *psutil_children_or_none(proc.pid)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# A new pid namespace, whose first process is pid 1; --kill-child takes it down with unshare.
UNSHARE_PID = ("unshare", "--pid", "--fork", "--kill-child")


def can_unshare_pid() -> bool:
    """Whether this machine lets us start a process in a new pid namespace (as its pid 1)."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run([*UNSHARE_PID, "true"], capture_output=True, timeout=10)
    return probe.returncode == 0


async def test_workers_serve_under_a_parent_that_is_pid_1() -> None:
    # A container's command runs as pid 1. Workers check that their parent is still there;
    # taking "my parent is pid 1" for "my parent died" stopped every worker at once.
    if not can_unshare_pid():
        pytest.skip("needs `unshare --pid` (root, or user namespaces)")
    proc = await spawn_aigw(SHIPPED, child_env(), "--workers", "2", launcher=UNSHARE_PID)
    try:
        async with asyncio.timeout(TIMEOUT_S):
            port = await read_port(proc)
            await read_until(proc, SERVING)
            async with client_for(port) as client:
                answer = await client.chat.completions.create(
                    model="gpt-4o", messages=user("from pid 1")
                )
            assert answer.choices[0].message.content == "[mock gpt-4o] You said: from pid 1"
            (parent,) = children_of(proc.pid)
            os.kill(parent, signal.SIGTERM)  # unshare exits with its child's status
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()  # --kill-child takes the namespace down with it
            await proc.wait()


def psutil_children_or_none(pid: int) -> list[int]:
    """The worker pids of ``pid``, or none if it is gone."""
    try:
        return psutil_children(pid)
    except OSError:
        return []


@pytest.mark.parametrize("workers", [1, 2])
async def test_shutdown_is_bounded_by_shutdown_timeout(tmp_path: Path, workers: int) -> None:
    # A plugin whose shutdown never ends: the process still exits, and a second SIGTERM does
    # not wait at all (exit 1, with workers too).
    (tmp_path / "stuck_plugins.py").write_text(
        "import asyncio\n"
        "from aigw import hookimpl\n"
        "class Stuck:\n"
        "    @hookimpl\n"
        "    async def shutdown(self):\n"
        "        await asyncio.sleep(3600)\n",
        encoding="utf-8",
    )
    conf = write_conf(
        tmp_path / "conf.d",
        {
            "00-gateway.yaml": {"gateway": {"shutdown_timeout_s": 1}},
            "10-stuck.yaml": {"plugin": "stuck_plugins:Stuck"},
            "90-p.yaml": MOCK_PROXY,
        },
    )
    args = ("--workers", str(workers))
    for signals in (1, 2):
        proc = await spawn_aigw(conf, child_env(PYTHONPATH=str(tmp_path)), *args)
        assert proc.stderr is not None
        try:
            async with asyncio.timeout(TIMEOUT_S):  # a hang would end here, failing the test
                for _ in range(workers):
                    await read_until(proc, SERVING)
                proc.send_signal(signal.SIGTERM)
                for _ in range(workers):
                    await read_until(proc, re.compile("shutting down"))
                if signals == 2:
                    proc.send_signal(signal.SIGTERM)
                rest = (await proc.stderr.read()).decode()
                rc = await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        if signals == 1:
            assert rc == 0 and "did not shut down in time" in rest
        else:
            # One process leaves at once itself; a parent kills its workers and exits 1.
            assert rc == 1 and ("exiting now" in rest or workers > 1)


async def ctrl_c_once(
    proc: asyncio.subprocess.Process, ready: Callable[[], Awaitable[None]]
) -> tuple[int, str]:
    """Once ``ready`` returns, Ctrl-C the job as a terminal does (SIGINT to its whole process
    group); its exit code and the output that followed."""
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(TIMEOUT_S):
            await ready()
            os.killpg(proc.pid, signal.SIGINT)
            rest = (await proc.stderr.read()).decode()
            return await proc.wait(), rest
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


@pytest.mark.parametrize("workers", [1, 2])
async def test_ctrl_c_during_start_up_stops_without_a_traceback(
    tmp_path: Path, workers: int
) -> None:
    # The terminal's Ctrl-C reaches every process of the job while they start. One process is
    # caught in a plugin's start-up that takes its time (a model loading, a backend slow to
    # answer); workers as the interpreter starts them, before any of aigw's code runs in them.
    conf = fine_then(
        tmp_path,
        "Slow",
        "    @hookimpl\n"
        "    async def startup(self, gateway):\n"
        "        logging.getLogger('aigw').warning('Slow is starting')\n"
        "        await asyncio.sleep(3600)\n",
    )
    args: tuple[str, ...] = ()
    starting = re.compile("Slow is starting")
    if workers > 1:
        args = ("--workers", "2")
        # Stalled as their interpreter starts: a Ctrl-C there once printed a KeyboardInterrupt
        # traceback per worker.
        stall_workers(tmp_path)
        # The parent's SIGTERM may end a worker before its own Ctrl-C would have: check the
        # disposition itself, not only the output.
        starting = re.compile("a worker is starting, Ctrl-C ignored: True")
    env = child_env(PYTHONPATH=str(tmp_path))
    proc = await spawn_aigw(conf, env, *args, new_session=True)

    async def started() -> None:
        for _ in range(workers):
            await read_until(proc, starting)

    rc, rest = await ctrl_c_once(proc, started)
    assert "Traceback" not in rest and "KeyboardInterrupt" not in rest, rest
    if workers == 1:
        assert rc == 130 and "interrupted during start-up" in rest
        assert "Fine was shut down" in rest  # what had started is stopped on the way out
    else:
        assert rc == 0  # the parent stopped its workers, as asked


def ignores_sigint(pid: int) -> bool:
    """Whether process ``pid`` ignores SIGINT (its SigIgn mask in /proc)."""
    status = Path(f"/proc/{pid}/status").read_text()
    mask = int(
        next(line for line in status.splitlines() if line.startswith("SigIgn:")).split()[1], 16
    )
    return bool(mask & (1 << (signal.SIGINT - 1)))


async def test_ctrl_c_stops_serving_workers_cleanly() -> None:
    # The terminal's Ctrl-C reaches every process of the job. Serving workers must leave it
    # to the parent, which stops them with SIGTERM: a worker that stopped on the Ctrl-C
    # itself took the parent's SIGTERM for a second signal and exited 1 ("exiting now").
    proc = await spawn_aigw(SHIPPED, child_env(), "--workers", "2", new_session=True)

    async def serving() -> None:
        for _ in range(2):
            await read_until(proc, SERVING)
        workers = psutil_children(proc.pid)
        assert len(workers) == 2 and all(ignores_sigint(w) for w in workers)

    rc, rest = await ctrl_c_once(proc, serving)
    assert rc == 0 and "exiting now" not in rest, rest


async def test_a_sigterm_to_the_whole_job_stops_workers_cleanly(tmp_path: Path) -> None:
    # A SIGTERM sent to the process group (systemd's stop, an init that forwards to the group)
    # reaches each worker from there and once more from the parent. That second one is no
    # second signal: workers took it for one and exited at once with 1 ("exiting now"),
    # cutting in-flight requests. Here the group's signal reaches the workers first and the
    # parent's comes while they are shutting down, which a plugin slow to stop makes last.
    conf = fine_then(
        tmp_path,
        "SlowToStop",
        "    @hookimpl\n"
        "    async def shutdown(self):\n"
        "        await asyncio.Event().wait()  # until its shutdown budget is over\n",
    )
    (conf / "00-gateway.yaml").write_text("gateway:\n  shutdown_timeout_s: 2\n")
    args = ("--workers", "2")
    proc = await spawn_aigw(conf, child_env(PYTHONPATH=str(tmp_path)), *args, new_session=True)
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(TIMEOUT_S):
            for _ in range(2):
                await read_until(proc, SERVING)
            for worker in psutil_children(proc.pid):
                os.kill(worker, signal.SIGTERM)
            for _ in range(2):
                await read_until(proc, re.compile("shutting down"))
            proc.send_signal(signal.SIGTERM)  # the parent passes it on to its workers
            rest = (await proc.stderr.read()).decode()
            rc = await proc.wait()
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    assert rc == 0 and "exiting now" not in rest, rest


async def test_in_flight_streams_get_half_the_shutdown_budget(tmp_path: Path) -> None:
    # A stream far longer than the budget: cut at half of it, so the write-backs and the
    # plugins still have the other half (it once ran on to the whole budget).
    budget = 4.0
    conf = write_conf(
        tmp_path / "conf.d",
        {
            "00-gateway.yaml": {"gateway": {"shutdown_timeout_s": budget}},
            "90-p.yaml": {
                "plugin": "provider-proxy",
                "config": {
                    "providers": [
                        {"name": "m", "type": "mock", "mock": {"chunks": 600, "chunk_delay_ms": 50}}
                    ]
                },
            },
        },
    )
    proc = await spawn_aigw(conf, child_env())
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(TIMEOUT_S):
            port = await read_port(proc)
            long_question = " ".join(["word"] * 600)  # the mock echoes it: 600 chunks
            body = {
                "model": "m",
                "stream": True,
                "messages": [{"role": "user", "content": long_question}],
            }
            async with aiohttp.ClientSession() as http:
                url = f"http://127.0.0.1:{port}/v1/chat/completions"
                async with http.post(url, json=body) as resp:
                    assert resp.status == 200
                    await resp.content.readline()  # the stream is under way
                    loop = asyncio.get_running_loop()
                    signalled = loop.time()
                    proc.send_signal(signal.SIGTERM)
                    with contextlib.suppress(aiohttp.ClientError):
                        while await resp.content.readline():
                            pass
                    cut_after = loop.time() - signalled
            rc = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert rc == 0
    assert budget / 2 - 0.5 < cut_after < budget / 2 + 1.2, cut_after
