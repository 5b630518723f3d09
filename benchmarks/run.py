"""Benchmark aigw against a bare aiohttp proxy and the upstream itself, in one run.

Starts the mock upstream and every selected target in its own process on a free loopback port
(`direct` is the upstream itself, `bare` the reference proxy, `aigw-*` gateway scenarios), checks
that each answers correctly, then measures them interleaved: per concurrency, each target is
warmed up and loaded with non-stream chat completions (req/s, p50, p99), and each target's
streamed time-to-first-byte is measured at concurrency 1. Prints one table, the ratios against
the bare proxy and whether aigw meets its targets.

    python -m benchmarks.run [--duration 5] [--warmup 1] [--ttfb-duration 2] [--rounds 1]
                             [--concurrency 1,16,64] [--only direct,bare,aigw-shipped,...]
                             [--generator auto|wrk|python] [--aigw CMD] [--json out.json]
                             [--list]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib.util
import json
import math
import os
import platform
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any, TypeVar

import aiohttp

from benchmarks._runtime import loop_name, new_event_loop
from benchmarks.loadgen import (
    Bodies,
    CellResult,
    Generator,
    PythonGenerator,
    TtfbResult,
    WrkGenerator,
    check_target,
    measure_ttfb,
)

_R = TypeVar("_R", CellResult, TtfbResult)

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
AIGW_HEALTH_TIMEOUT_S = 15.0
HELPER_HEALTH_TIMEOUT_S = 10.0

# The targets aigw is held to, against the bare proxy (see README.md).
SHIPPED = "aigw-shipped"
MIN_RPS_RATIO = 0.8
MAX_ADDED_P50_MS = 0.3
MAX_ADDED_TTFB_MS = 0.5
HIT_MEMORY = "aigw-exact-hit-memory"
HIT_REDIS = "aigw-exact-hit-redis"
MIN_HIT_MEMORY_RATIO = 2.5
MIN_HIT_REDIS_RATIO = 1.5
MAX_HIT_P50_MS = 1.0
# Above this much CPU (in cores) taken by other processes during a cell, its numbers are
# suspect. A quiet machine shows about 0.05 (kernel work charged to no process).
MAX_BACKGROUND_CORES = 0.2

# conf.d fragments. `${port}`, `${upstream}` (scheme://host:port of the mock upstream) and
# `${redis}` (the URL of the benchmark's own redis-server) are substituted when a scenario's
# files are written; nothing else in them may contain `$`.
GATEWAY_YAML = "gateway:\n  host: 127.0.0.1\n  port: ${port}\n"
SKIP_HEADER_YAML = "plugin: skip-header\n"
EXACT_MEMORY_YAML = "plugin: exact-cache\nconfig:\n  store: {type: memory}\n"
EXACT_REDIS_YAML = (
    "plugin: exact-cache\nconfig:\n  ttl_seconds: 120\n"
    "  store: {type: redis, url: '${redis}', key_prefix: 'aigw-bench:'}\n"
)
PROVIDER_YAML = """\
plugin: provider-proxy
config:
  providers:
    - name: bench
      type: openai
      base_url: ${upstream}/v1
      api_keys: [sk-bench]
      models: ["*"]
"""


@dataclass(frozen=True)
class Scenario:
    """One aigw configuration to benchmark: its conf.d files and how its prompts vary.

    `unique_prompts=True` gives every request a prompt never seen before (an exact cache only
    misses, so the full proxy path is measured); False repeats one fixed prompt (all hits after
    the first). Scenarios with `default=False` run only when named in `--only`.
    """

    name: str
    description: str
    conf: Mapping[str, str]
    unique_prompts: bool = True
    default: bool = True
    # Names of the servers this scenario relies on: their CPU counts as the benchmark's, not as
    # background load. For "redis-server" the benchmark starts one of its own.
    services: tuple[str, ...] = ()


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        name=SHIPPED,
        description="shipped pipeline: skip-header + exact-cache(memory) + provider-proxy, misses",
        conf={
            "00-gateway.yaml": GATEWAY_YAML,
            "20-skip-header.yaml": SKIP_HEADER_YAML,
            "30-exact-cache.yaml": EXACT_MEMORY_YAML,
            "90-provider-proxy.yaml": PROVIDER_YAML,
        },
    ),
    Scenario(
        name="aigw-proxy-only",
        description="provider-proxy alone",
        conf={"00-gateway.yaml": GATEWAY_YAML, "90-provider-proxy.yaml": PROVIDER_YAML},
    ),
    Scenario(
        name="aigw-exact-hit-memory",
        description="shipped pipeline, one fixed prompt: memory exact-cache hits",
        conf={
            "00-gateway.yaml": GATEWAY_YAML,
            "20-skip-header.yaml": SKIP_HEADER_YAML,
            "30-exact-cache.yaml": EXACT_MEMORY_YAML,
            "90-provider-proxy.yaml": PROVIDER_YAML,
        },
        unique_prompts=False,
    ),
    Scenario(
        name="aigw-exact-hit-redis",
        description="skip-header + exact-cache(redis) + provider-proxy, fixed prompt: Redis hits",
        conf={
            "00-gateway.yaml": GATEWAY_YAML,
            "20-skip-header.yaml": SKIP_HEADER_YAML,
            "30-exact-cache.yaml": EXACT_REDIS_YAML,
            "90-provider-proxy.yaml": PROVIDER_YAML,
        },
        unique_prompts=False,
        services=("redis-server",),
    ),
)
BASE_TARGETS = {"direct": "the mock upstream, no proxy", "bare": "bare aiohttp pass-through proxy"}


def _median_cell(cells: list[CellResult]) -> CellResult:
    """Rounds of one cell: counts and CPU seconds add up, rates and latencies take the median."""
    return CellResult(
        concurrency=cells[0].concurrency,
        requests=sum(c.requests for c in cells),
        errors=sum(c.errors for c in cells),
        seconds=sum(c.seconds for c in cells),
        rps=statistics.median(c.rps for c in cells),
        p50_ms=statistics.median(c.p50_ms for c in cells),
        p99_ms=statistics.median(c.p99_ms for c in cells),
        generator_cpu_s=sum(c.generator_cpu_s for c in cells),
        target_cpu_s=sum(c.target_cpu_s for c in cells),
        upstream_cpu_s=sum(c.upstream_cpu_s for c in cells),
        other_cpu_s=sum(c.other_cpu_s for c in cells),
    )


@dataclass
class Target:
    """One thing to measure: its server while it runs, its results per round, or why skipped."""

    name: str
    scenario: Scenario | None  # None for `direct` and `bare`
    server: Server | None = None
    skipped: str | None = None
    rounds: dict[int, list[CellResult]] = field(default_factory=dict)
    ttfb_rounds: list[TtfbResult] = field(default_factory=list)

    @property
    def description(self) -> str:
        """One line saying what the target is."""
        return self.scenario.description if self.scenario else BASE_TARGETS[self.name]

    @property
    def unique_prompts(self) -> bool:
        """Whether every request carries a new prompt (else one fixed prompt)."""
        return self.scenario.unique_prompts if self.scenario else True

    def cell(self, concurrency: int) -> CellResult | None:
        """The measurement at `concurrency`, the median over rounds."""
        cells = self.rounds.get(concurrency)
        return _median_cell(cells) if cells else None

    def ttfb(self) -> TtfbResult | None:
        """The streamed time-to-first-byte, the median over rounds."""
        if not self.ttfb_rounds:
            return None
        return TtfbResult(
            requests=sum(t.requests for t in self.ttfb_rounds),
            errors=sum(t.errors for t in self.ttfb_rounds),
            p50_ms=statistics.median(t.p50_ms for t in self.ttfb_rounds),
            p99_ms=statistics.median(t.p99_ms for t in self.ttfb_rounds),
        )

    def to_json(self, concurrencies: list[int]) -> dict[str, object]:
        """Combined and per-round numbers, for --json."""
        combined = (self.cell(c) for c in concurrencies)
        ttfb = self.ttfb()
        return {
            "name": self.name,
            "description": self.description,
            "unique_prompts": self.unique_prompts,
            "skipped": self.skipped,
            "cells": [dataclasses.asdict(cell) for cell in combined if cell is not None],
            "ttfb": dataclasses.asdict(ttfb) if ttfb is not None else None,
            "rounds": {
                str(c): [dataclasses.asdict(cell) for cell in cells]
                for c, cells in self.rounds.items()
            },
            "ttfb_rounds": [dataclasses.asdict(t) for t in self.ttfb_rounds],
        }


@dataclass(frozen=True)
class Check:
    """One target verdict: `passed` is None when it could not be judged."""

    label: str
    value: str
    passed: bool | None


_PIN_LAUNCHER = (
    "import os, sys; os.sched_setaffinity(0, {%s}); os.execvp(sys.argv[1], sys.argv[1:])"
)


class Server:
    """A benchmark server subprocess on a loopback port, its output kept in a log file."""

    def __init__(
        self, name: str, command: list[str], port: int, logdir: Path, cpus: set[int] | None
    ) -> None:
        self.name = name
        self.port = port
        self.url = f"http://{HOST}:{port}"
        self.log_path = logdir / f"{name}.log"
        if cpus is not None:
            # Set the affinity in a tiny launcher that then execs the command, so the server,
            # its threads and any worker processes are confined from their first instruction.
            launcher = _PIN_LAUNCHER % ",".join(map(str, sorted(cpus)))
            command = [sys.executable, "-c", launcher, *command]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )

    def wait_healthy(self, path: str, accept: frozenset[int], timeout: float) -> str | None:
        """Poll `path` until it answers a status in `accept`; else say what went wrong."""
        # No proxy handler: an HTTP(S)_PROXY in the environment must not capture loopback calls.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                return f"exited with code {code}"
            try:
                with opener.open(self.url + path, timeout=1.0) as response:
                    status = response.status
            except urllib.error.HTTPError as exc:
                status = exc.code
            except OSError:  # not listening yet
                status = None
            if status in accept:
                return None
            time.sleep(0.05)
        return f"not healthy within {timeout:.0f} s"

    def cpu_s(self) -> float:
        """CPU seconds the process has used so far."""
        return process_cpu_s(self.process.pid)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the process's output, for a failure message."""
        text = self.log_path.read_text(errors="replace").rstrip().splitlines()
        return "\n".join("    | " + line for line in text[-lines:]) or "    | (no output)"

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within 5 s."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process `pid` has used so far, from /proc (Linux)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return math.nan
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def services_cpu_s(names: tuple[str, ...]) -> float:
    """CPU seconds used so far by all processes whose command name is in `names`."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
        except OSError:  # exited meanwhile
            continue
        if comm in names:
            total += process_cpu_s(int(entry.name))
    return total


def machine_cpu_s() -> float:
    """Busy CPU seconds of the whole machine so far, all cores, from /proc/stat (Linux)."""
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()
    except OSError:
        return math.nan
    # user nice system idle iowait irq softirq steal [guest guest_nice]: guest time is
    # already inside user/nice, idle and iowait are not busy.
    busy = sum(int(fields[i]) for i in (1, 2, 3, 6, 7, 8))
    return busy / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A free loopback port.

    The port is released before the server binds it; on an otherwise idle loopback nothing
    takes it in between, and a collision would show up as a failed health check.
    """
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def aigw_command(override: str | None) -> list[str] | None:
    """How to start aigw: --aigw, else the console script, else `python -m aigw`."""
    if override:
        return shlex.split(override)
    script = shutil.which("aigw") or shutil.which("aigw", path=str(Path(sys.executable).parent))
    if script:
        return [script]
    if importlib.util.find_spec("aigw") is not None:
        return [sys.executable, "-m", "aigw"]
    return None


def write_conf(
    scenario: Scenario, workdir: Path, port: int, upstream: str, redis: str | None
) -> Path:
    """Write the scenario's conf.d files and return the directory."""
    conf_dir = workdir / scenario.name / "conf.d"
    conf_dir.mkdir(parents=True)
    for file_name, text in scenario.conf.items():
        content = Template(text).substitute(port=port, upstream=upstream, redis=redis or "")
        (conf_dir / file_name).write_text(content)
    return conf_dir


def progress(message: str) -> None:
    """Progress goes to stderr so stdout holds only the report."""
    print(message, file=sys.stderr, flush=True)


def start_upstream(workdir: Path, stack: ExitStack) -> Server | None:
    """The mock upstream on this process's (helper) CPUs, stopped with ``stack``; None (the
    reason is printed) when it does not come up."""
    port = free_port()
    upstream = Server(
        "upstream",
        [sys.executable, "-m", "benchmarks.upstream", "--host", HOST, "--port", str(port)],
        port,
        workdir,
        None,  # inherits this process's (helper) CPUs
    )
    stack.callback(upstream.stop)
    problem = upstream.wait_healthy("/", frozenset({200, 404}), HELPER_HEALTH_TIMEOUT_S)
    if problem is not None:
        progress(f"upstream {problem}:\n{upstream.log_tail()}")
        return None
    return upstream


def start_redis(workdir: Path, stack: ExitStack) -> str | None:
    """A redis-server of the benchmark's own: a free port, no persistence, on this process's
    CPUs (with the generator and the upstream), so the Redis target neither depends on nor
    disturbs a Redis someone else uses. Its URL, or None (the reason is printed)."""
    binary = shutil.which("redis-server")
    if binary is None:
        progress("redis-server is not installed (apt-get install redis-server)")
        return None
    port = free_port()
    command = [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"]
    server = Server("redis", [*command, "--dir", str(workdir)], port, workdir, None)
    stack.callback(server.stop)
    deadline = time.monotonic() + HELPER_HEALTH_TIMEOUT_S
    while time.monotonic() < deadline and server.process.poll() is None:
        try:
            with socket.create_connection((HOST, port), timeout=1.0) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return f"redis://{HOST}:{port}/0"
        except OSError:  # not listening yet
            pass
        time.sleep(0.05)
    progress(f"redis-server did not start:\n{server.log_tail()}")
    return None


def start_target(
    target: Target,
    upstream: Server,
    redis: str | None,
    args: argparse.Namespace,
    workdir: Path,
    stack: ExitStack,
    runner: asyncio.Runner,
) -> None:
    """Start the target's server, wait until healthy and check its answers.

    Sets `target.server`, or `target.skipped` with the reason (and prints the server's output).
    """
    scenario = target.scenario
    if target.name == "direct":
        server = upstream
    else:
        port = free_port()
        if scenario is None:
            command = [
                sys.executable,
                "-m",
                "benchmarks.bare_proxy",
                "--host",
                HOST,
                "--port",
                str(port),
                "--upstream",
                upstream.url,
            ]
            health, accept, timeout = "/", frozenset({200, 404}), HELPER_HEALTH_TIMEOUT_S
        else:
            base = aigw_command(args.aigw)
            if base is None:
                target.skipped = "aigw not found (no aigw script, no importable aigw package)"
                progress(f"skipped {target.name}: {target.skipped}")
                return
            if "redis-server" in scenario.services and redis is None:
                target.skipped = "no redis-server"
                progress(f"skipped {target.name}: {target.skipped}")
                return
            conf_dir = write_conf(scenario, workdir, port, upstream.url, redis)
            command = [
                *base,
                "-c",
                str(conf_dir),
                "--host",
                HOST,
                "--port",
                str(port),
                "--log-level",
                "warning",
            ]
            health, accept, timeout = "/healthz", frozenset({200}), AIGW_HEALTH_TIMEOUT_S
        try:
            server = Server(target.name, command, port, workdir, args.target_cpus)
        except OSError as exc:
            target.skipped = f"cannot start: {exc}"
            progress(f"skipped {target.name}: {target.skipped}\n    command: {shlex.join(command)}")
            return
        stack.callback(server.stop)
        problem = server.wait_healthy(health, accept, timeout)
        if problem is not None:
            server.stop()
            target.skipped = problem
            progress(
                f"skipped {target.name}: {problem}\n    command: {shlex.join(command)}\n"
                f"{server.log_tail()}"
            )
            return
    problem = runner.run(check_target(server.url, target.unique_prompts))
    if problem is not None:
        if server is not upstream:
            server.stop()
        target.skipped = f"wrong answer: {problem}"
        progress(f"skipped {target.name}: {target.skipped}")
        return
    target.server = server
    progress(f"started {target.name} on {server.url}: {target.description}")


def measure_cell(
    target: Target,
    server: Server,
    upstream: Server,
    generator: Generator,
    concurrency: int,
    args: argparse.Namespace,
) -> CellResult:
    """Warm up, then measure one target at one concurrency, with the servers' CPU use."""
    if args.warmup > 0:
        # Warm at the same concurrency so the target's upstream pool already holds as many
        # connections as the measurement needs.
        generator.run(
            server.url, Bodies(unique=target.unique_prompts, stream=False), concurrency, args.warmup
        )
    services = target.scenario.services if target.scenario else ()
    target_cpu, upstream_cpu = server.cpu_s(), upstream.cpu_s()
    machine_cpu, services_cpu = machine_cpu_s(), services_cpu_s(services)
    cell = generator.run(
        server.url, Bodies(unique=target.unique_prompts, stream=False), concurrency, args.duration
    )
    target_cpu = server.cpu_s() - target_cpu
    upstream_cpu = upstream.cpu_s() - upstream_cpu
    ours = cell.generator_cpu_s + upstream_cpu + (target_cpu if server is not upstream else 0.0)
    ours += services_cpu_s(services) - services_cpu
    return dataclasses.replace(
        cell,
        target_cpu_s=target_cpu,
        upstream_cpu_s=upstream_cpu,
        other_cpu_s=machine_cpu_s() - machine_cpu - ours,
    )


def _fmt(value: float, digits: int) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def _target_cpu_us_per_request(cell: CellResult) -> float:
    return cell.target_cpu_s / cell.requests * 1e6 if cell.requests else math.nan


def background_cores(target: Target) -> float:
    """The most CPU (in cores) other work took during one of the target's cells.

    Per concurrency the median over rounds, like the numbers reported, so one noisy round out
    of three does not condemn a result its median already ignores.
    """
    shares = [
        statistics.median(cell.other_cpu_s / cell.seconds for cell in cells)
        for cells in target.rounds.values()
    ]
    return max(shares, default=math.nan)


def report_table(results: list[Target], concurrencies: list[int]) -> str:
    """Side-by-side table: one row per target, a column group per concurrency."""
    top = max(concurrencies)
    name_width = max(len(r.name) for r in results) + 2
    groups = "".join(f"{'c=' + str(c):^26}" for c in concurrencies)
    head1 = f"{'':<{name_width}}{groups}  {'c=' + str(top):>11}  {'stream c=1':>10}  {'other':>6}"
    head2 = (
        f"{'target':<{name_width}}"
        + "".join(f"{'req/s':>9}{'p50 ms':>8}{'p99 ms':>9}" for _ in concurrencies)
        + f"  {'cpu us/req':>11}  {'ttfb p50':>10}  {'cores':>6}"
    )
    lines = [head1, head2, "-" * len(head2)]
    for result in results:
        if result.skipped is not None:
            lines.append(f"{result.name:<{name_width}}skipped: {result.skipped.splitlines()[0]}")
            continue
        row = f"{result.name:<{name_width}}"
        for concurrency in concurrencies:
            cell = result.cell(concurrency)
            flag = "!" if cell is not None and cell.errors else " "
            row += (
                f"{cell.rps:>8.0f}{flag}{cell.p50_ms:>8.3f}{cell.p99_ms:>9.3f}"
                if cell is not None
                else f"{'-':>9}{'-':>8}{'-':>9}"
            )
        top_cell = result.cell(top)
        cpu = _target_cpu_us_per_request(top_cell) if top_cell else math.nan
        ttfb_result = result.ttfb()
        ttfb = ttfb_result.p50_ms if ttfb_result is not None else math.nan
        other = background_cores(result)
        lines.append(row + f"  {_fmt(cpu, 0):>11}  {_fmt(ttfb, 3):>10}  {_fmt(other, 2):>6}")
    return "\n".join(lines)


def _paired(
    target: Sequence[_R] | None, bare: Sequence[_R] | None, value: Callable[[_R, _R], float]
) -> list[float]:
    """``value(target_cell, bare_cell)`` for every round in which both were measured."""
    return [value(t, b) for t, b in zip(target or [], bare or [], strict=False)]


def ratios(results: list[Target], concurrencies: list[int]) -> dict[str, dict[str, Any]]:
    """Per target, against the bare proxy: req/s ratio at the top concurrency, added p50 ms at
    the lowest, added stream TTFB p50 ms. Empty when the bare proxy was not measured.

    Each comparison is made within a round (target and bare measured minutes apart at most)
    and the median over rounds is reported: on a VM whose speed drifts by tens of per cent
    over minutes, a ratio of two medians taken over different stretches of time is noisier.
    ``rps_ratio_rounds`` keeps the per-round ratios.
    """
    by_name = {r.name: r for r in results if r.skipped is None}
    bare = by_name.get("bare")
    if bare is None:
        return {}
    low, top = min(concurrencies), max(concurrencies)

    def median(values: list[float]) -> float:
        return statistics.median(values) if values else math.nan

    out: dict[str, dict[str, Any]] = {}
    for result in by_name.values():
        if result is bare:
            continue
        per_round = _paired(
            result.rounds.get(top),
            bare.rounds.get(top),
            lambda t, b: t.rps / b.rps if b.rps > 0 else math.nan,
        )
        per_round = [r for r in per_round if not math.isnan(r)]
        added_p50 = _paired(
            result.rounds.get(low), bare.rounds.get(low), lambda t, b: t.p50_ms - b.p50_ms
        )
        added_ttfb = _paired(result.ttfb_rounds, bare.ttfb_rounds, lambda t, b: t.p50_ms - b.p50_ms)
        cell = result.cell(low)
        out[result.name] = {
            "rps_ratio": median(per_round),
            "rps_ratio_rounds": per_round,
            "added_p50_ms": median(added_p50),
            "added_ttfb_ms": median(added_ttfb),
            "p50_ms": cell.p50_ms if cell is not None else math.nan,
        }
    return out


def checks(
    vs_bare: dict[str, dict[str, Any]], concurrencies: list[int], measured: set[str]
) -> list[Check]:
    """aigw's targets: the shipped pipeline (all misses) and the exact-cache hit scenarios."""
    low, top = min(concurrencies), max(concurrencies)
    # (scenario, label, key in vs_bare, format, limit, True when the value must reach the limit)
    specs = (
        (
            SHIPPED,
            f"req/s at c={top} >= {MIN_RPS_RATIO}x bare",
            "rps_ratio",
            "{:.2f}x",
            MIN_RPS_RATIO,
            True,
        ),
        (
            SHIPPED,
            f"added p50 at c={low} <= {MAX_ADDED_P50_MS} ms",
            "added_p50_ms",
            "{:+.3f} ms",
            MAX_ADDED_P50_MS,
            False,
        ),
        (
            SHIPPED,
            f"added stream TTFB <= {MAX_ADDED_TTFB_MS} ms",
            "added_ttfb_ms",
            "{:+.3f} ms",
            MAX_ADDED_TTFB_MS,
            False,
        ),
        (
            HIT_MEMORY,
            f"req/s at c={top} >= {MIN_HIT_MEMORY_RATIO}x bare",
            "rps_ratio",
            "{:.2f}x",
            MIN_HIT_MEMORY_RATIO,
            True,
        ),
        (
            HIT_MEMORY,
            f"p50 at c={low} <= {MAX_HIT_P50_MS} ms",
            "p50_ms",
            "{:.3f} ms",
            MAX_HIT_P50_MS,
            False,
        ),
        (
            HIT_REDIS,
            f"req/s at c={top} >= {MIN_HIT_REDIS_RATIO}x bare",
            "rps_ratio",
            "{:.2f}x",
            MIN_HIT_REDIS_RATIO,
            True,
        ),
        (
            HIT_REDIS,
            f"p50 at c={low} <= {MAX_HIT_P50_MS} ms",
            "p50_ms",
            "{:.3f} ms",
            MAX_HIT_P50_MS,
            False,
        ),
    )
    out = []
    for scenario, label, key, fmt, limit, at_least in specs:
        value = vs_bare.get(scenario, {}).get(key, math.nan)
        label = f"{scenario}: {label}"
        if scenario not in measured or "bare" not in measured or math.isnan(value):
            missing = scenario if scenario not in measured else "bare"
            out.append(Check(label, f"{missing} not measured", None))
        else:
            passed = value >= limit if at_least else value <= limit
            out.append(Check(label, fmt.format(value), passed))
    return out


def print_report(
    meta: dict[str, object],
    results: list[Target],
    vs_bare: dict[str, dict[str, Any]],
    verdicts: list[Check],
    concurrencies: list[int],
) -> None:
    """Print the whole report to stdout."""
    low, top = min(concurrencies), max(concurrencies)
    print()
    print(
        f"load generator: {meta['generator']}; servers on {meta['event_loop']}; "
        f"{meta['duration_s']} s per cell after {meta['warmup_s']} s warm-up; "
        f"{meta['cpus']} CPUs, pinning: {meta['pinning']}"
    )
    print(
        "non-stream chat completions, closed loop; cpu us/req = the target process's CPU "
        "per request; ttfb = first SSE data event, ms;\nother cores = the most CPU used by "
        "anything but the benchmark's processes during one of the target's cells"
    )
    print()
    print(report_table(results, concurrencies))
    if any(c.errors for r in results for cells in r.rounds.values() for c in cells):
        print("! = some requests failed in that cell; see --json for counts")
    busy = [r.name for r in results if background_cores(r) > MAX_BACKGROUND_CORES]
    if busy:
        print(
            f"warning: other work took over {MAX_BACKGROUND_CORES} of a core while measuring "
            f"{', '.join(busy)}: those numbers are unreliable; rerun on a quiet machine, "
            "or with more --rounds (medians)"
        )
    print()
    if vs_bare:
        width = max(len(name) for name in vs_bare) + 2
        print(
            f"{'vs bare':<{width}}{'req/s ratio c=' + str(top):>18}"
            f"{'+p50 ms c=' + str(low):>14}{'+ttfb ms':>10}   req/s ratio per round"
        )
        for name, values in vs_bare.items():
            rounds = " ".join(f"{r:.2f}" for r in values["rps_ratio_rounds"])
            print(
                f"{name:<{width}}{_fmt(values['rps_ratio'], 2):>18}"
                f"{_fmt(values['added_p50_ms'], 3):>14}{_fmt(values['added_ttfb_ms'], 3):>10}"
                f"   {rounds}"
            )
        if any(len(v["rps_ratio_rounds"]) > 1 for v in vs_bare.values()):
            print("(each comparison is made within a round; the median over rounds is shown)")
    elif not any(r.name == "bare" and r.skipped is None for r in results):
        print("vs bare: not available (bare proxy not measured)")
    print()
    print("targets (against the bare proxy of the same run):")
    for check in verdicts:
        verdict = {True: "PASS", False: "FAIL", None: "NOT JUDGED"}[check.passed]
        print(f"  {check.label:<56}{check.value:>16}  {verdict}")
    print(f"\nwall time {meta['wall_time_s']:.0f} s")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command line options; --concurrency and --only are comma-separated lists."""
    known = [*BASE_TARGETS, *(s.name for s in SCENARIOS)]
    default_only = [*BASE_TARGETS, *(s.name for s in SCENARIOS if s.default)]
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Benchmark aigw against a bare aiohttp proxy and the upstream itself.",
        epilog="targets: " + ", ".join(known),
    )
    parser.add_argument("--duration", type=int, default=5, help="seconds per cell (default 5)")
    parser.add_argument(
        "--warmup", type=int, default=1, help="warm-up seconds before each cell (default 1)"
    )
    parser.add_argument(
        "--ttfb-duration",
        type=float,
        default=2.0,
        help="seconds of sequential streamed requests per target (default 2)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat the whole measurement, report medians (default 1)",
    )
    parser.add_argument(
        "--concurrency", default="1,16,64", help="comma-separated concurrencies (default 1,16,64)"
    )
    parser.add_argument(
        "--only",
        default=",".join(default_only),
        help=f"comma-separated targets (default {','.join(default_only)})",
    )
    parser.add_argument(
        "--generator",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="load generator: auto = wrk if on PATH, else python",
    )
    parser.add_argument(
        "--aigw",
        default=None,
        help="command that starts aigw (default: aigw script, or python -m aigw)",
    )
    parser.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="do not pin the load generator and upstream to one CPU and targets to the rest",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    parser.add_argument("--list", action="store_true", help="list the targets and exit")
    args = parser.parse_args(argv)
    try:
        args.concurrency = sorted({int(c) for c in args.concurrency.split(",") if c.strip()})
    except ValueError:
        parser.error("--concurrency takes comma-separated integers")
    if not args.concurrency or min(args.concurrency) < 1:
        parser.error("--concurrency needs at least one value >= 1")
    only = {name.strip() for name in args.only.split(",") if name.strip()}
    unknown = only - set(known)
    if unknown:
        parser.error(f"unknown target(s) {', '.join(sorted(unknown))}; known: {', '.join(known)}")
    # Always measure in the canonical order, so tables from different runs line up.
    args.only = [name for name in known if name in only]
    if args.duration < 1 or args.warmup < 0 or args.rounds < 1:
        parser.error("--duration and --rounds must be >= 1, --warmup >= 0 (whole seconds for wrk)")
    return args


def pin_cpus(pin: bool) -> tuple[set[int] | None, str]:
    """Confine this process (so the load generator and upstream it starts) to the first CPU.

    Returns the CPUs left for the targets (None: no pinning) and a description. Without it the
    scheduler sometimes puts a target on the load generator's core and sometimes not, which
    moves its concurrency-1 latency by a good part of the 0.3 ms being judged; pinned, every
    target gets the same layout: a core of its own, requests and upstream calls crossing cores.
    """
    available = sorted(os.sched_getaffinity(0))
    if not pin or len(available) < 2:
        return None, "off"
    helpers, targets = {available[0]}, set(available[1:])
    os.sched_setaffinity(0, helpers)
    return targets, f"generator+upstream on cpu {available[0]}, targets on cpu " + ",".join(
        map(str, sorted(targets))
    )


def pick_generator(choice: str, runner: asyncio.Runner, workdir: Path, loop: str) -> Generator:
    """wrk when asked or, for auto, when installed; the Python generator otherwise."""
    wrk = shutil.which("wrk")
    if choice == "wrk" and wrk is None:
        raise SystemExit("--generator wrk: wrk is not on PATH (apt-get install -y wrk)")
    if choice != "python" and wrk is not None:
        return WrkGenerator(wrk, workdir)
    return PythonGenerator(runner, loop)


def measure_all(
    live: list[tuple[Target, Server]],
    upstream: Server,
    generator: Generator,
    runner: asyncio.Runner,
    args: argparse.Namespace,
) -> None:
    """Measure every running target, interleaved.

    Cells of different targets alternate (all targets at c=1, then all at c=16, ...) and whole
    rounds repeat, so a burst of background load on the shared machine spreads over the targets
    instead of biasing the one that happened to run then.
    """
    for round_no in range(1, args.rounds + 1):
        tag = f"[{round_no}/{args.rounds}] " if args.rounds > 1 else ""
        for concurrency in args.concurrency:
            for target, server in live:
                cell = measure_cell(target, server, upstream, generator, concurrency, args)
                target.rounds.setdefault(concurrency, []).append(cell)
                progress(
                    f"{tag}{target.name:<24} c={concurrency:<3} {cell.rps:8.0f} req/s  "
                    f"p50 {cell.p50_ms:7.3f} ms  p99 {cell.p99_ms:7.3f} ms  errors {cell.errors}"
                )
        for target, server in live:
            ttfb = runner.run(
                measure_ttfb(
                    server.url,
                    Bodies(unique=target.unique_prompts, stream=True),
                    warmup=min(args.warmup, 1.0),
                    seconds=args.ttfb_duration,
                )
            )
            target.ttfb_rounds.append(ttfb)
            progress(
                f"{tag}{target.name:<24} stream ttfb p50 {ttfb.p50_ms:.3f} ms  errors {ttfb.errors}"
            )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the report; 1 when the upstream cannot start."""
    args = parse_args(argv)
    if args.list:
        for name, description in BASE_TARGETS.items():
            print(f"{name:<24}{description}")
        for scenario in SCENARIOS:
            extra = "" if scenario.default else " [only with --only]"
            print(f"{scenario.name:<24}{scenario.description}{extra}")
        return 0
    started = time.monotonic()
    args.target_cpus, pinning = pin_cpus(args.pin)
    loop = loop_name()
    scenarios = {s.name: s for s in SCENARIOS}
    targets = [Target(name, scenarios.get(name)) for name in args.only]
    with ExitStack() as stack, asyncio.Runner(loop_factory=new_event_loop) as runner:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="aigw-bench-")))
        generator = pick_generator(args.generator, runner, workdir, loop)
        progress(f"load generator: {generator.description}")
        upstream = start_upstream(workdir, stack)
        if upstream is None:
            return 1
        needs_redis = any(t.scenario and "redis-server" in t.scenario.services for t in targets)
        redis = start_redis(workdir, stack) if needs_redis else None
        # Every target runs for the whole measurement; an idle aiohttp server costs nothing.
        for target in targets:
            start_target(target, upstream, redis, args, workdir, stack, runner)
        live = [(t, t.server) for t in targets if t.server is not None]
        per_target = len(args.concurrency) * (args.warmup + args.duration)
        per_target += min(args.warmup, 1.0) + args.ttfb_duration
        progress(
            f"measuring {len(live)} target(s), about {per_target * len(live) * args.rounds:.0f} s"
        )
        measure_all(live, upstream, generator, runner, args)

    measured = {t.name for t, _ in live}
    vs_bare = ratios(targets, args.concurrency)
    verdicts = checks(vs_bare, args.concurrency, measured)
    meta: dict[str, object] = {
        "generator": generator.description,
        "generator_name": generator.name,
        "event_loop": loop,
        "pinning": pinning,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "ttfb_duration_s": args.ttfb_duration,
        "rounds": args.rounds,
        "concurrency": args.concurrency,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "wall_time_s": time.monotonic() - started,
    }
    print_report(meta, targets, vs_bare, verdicts, args.concurrency)
    if args.json is not None:
        document = {
            "meta": meta,
            "targets": [t.to_json(args.concurrency) for t in targets],
            "vs_bare": vs_bare,
            "checks": [dataclasses.asdict(c) for c in verdicts],
        }
        # NaN (an unmeasured value) becomes null so the file is strict JSON.
        args.json.write_text(json.dumps(_nan_to_none(document), indent=2) + "\n")
    return 0


def _nan_to_none(value: object) -> object:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value


if __name__ == "__main__":
    raise SystemExit(main())
