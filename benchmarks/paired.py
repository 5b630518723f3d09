"""Compare the CPU cost per request of several variants, loaded at the same time on one core.

`benchmarks.run` measures targets one after another; this VM's speed drifts by tens of per cent
over minutes, so two runs cannot tell a change worth a few per cent. Here every variant is
started pinned to the same CPU and all are loaded at once, each by its own wrk with its own
prompts: whatever the machine does during a round, it does to all of them. Per round, each
variant's CPU time (user + system, from /proc) is divided by the requests it completed, and the
ratio to the first variant is taken; the report gives the medians over rounds. Two copies of
the same build come out within about 1% of each other.

    python -m benchmarks.paired NAME=TARGET[:COMMAND] ... [--rounds 8] [--duration 4]
                                [--warmup 1] [--concurrency 32] [--aigw CMD] [--json out.json]

TARGET is `bare` or a scenario of `benchmarks.run` (`--list` there shows them); COMMAND starts
aigw for this variant instead of `--aigw` (another checkout's virtualenv, `env VAR=1 aigw`).
The absolute numbers are higher than `benchmarks.run`'s (the variants share a core and take
turns), so judge the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shlex
import shutil
import statistics
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks._runtime import new_event_loop
from benchmarks.loadgen import Bodies, CellResult, WrkGenerator, check_target
from benchmarks.run import (
    AIGW_HEALTH_TIMEOUT_S,
    HELPER_HEALTH_TIMEOUT_S,
    HOST,
    SCENARIOS,
    Scenario,
    Server,
    aigw_command,
    free_port,
    pin_cpus,
    progress,
    start_redis,
    start_upstream,
    write_conf,
)


@dataclass
class Variant:
    """One thing to compare: a target, how aigw is started for it, and its rounds."""

    name: str
    target: str
    command: list[str] | None  # None: the bare proxy
    scenario: Scenario | None
    cells: list[CellResult] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)

    @property
    def unique_prompts(self) -> bool:
        return self.scenario.unique_prompts if self.scenario else True


def parse_variant(spec: str, default_aigw: str | None) -> Variant:
    """``NAME=TARGET[:COMMAND]``."""
    name, sep, rest = spec.partition("=")
    target, _, command = rest.partition(":")
    scenarios = {s.name: s for s in SCENARIOS}
    if not sep or (target != "bare" and target not in scenarios):
        known = ", ".join(["bare", *scenarios])
        raise SystemExit(f"bad variant {spec!r}: want NAME=TARGET[:COMMAND], TARGET one of {known}")
    # The name names the variant's files (its log, its wrk script's folder) beside the
    # upstream's and Redis's.
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name in ("upstream", "redis"):
        raise SystemExit(f"bad variant name {name!r}: letters, digits, _ . - (not upstream, redis)")
    if target == "bare":
        return Variant(name, target, None, None)
    base = shlex.split(command) if command else aigw_command(default_aigw)
    if not base:
        raise SystemExit("aigw not found (no aigw script, no importable aigw package)")
    return Variant(name, target, base, scenarios[target])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.paired",
        description="CPU per request of several variants loaded at once on one core.",
    )
    parser.add_argument("variants", nargs="+", metavar="NAME=TARGET[:COMMAND]")
    parser.add_argument("--rounds", type=int, default=8, help="default 8")
    parser.add_argument("--duration", type=int, default=4, help="seconds per round, default 4")
    parser.add_argument("--warmup", type=int, default=1, help="seconds before each round")
    parser.add_argument("--concurrency", type=int, default=32, help="connections per variant")
    parser.add_argument("--aigw", help="command that starts aigw (default: the aigw script)")
    parser.add_argument("--json", type=Path, help="also write every round to this file")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.duration < 1 or args.warmup < 0 or args.concurrency < 1:
        parser.error("--rounds, --duration and --concurrency must be positive")
    return args


def start(
    variant: Variant,
    upstream: Server,
    redis: str | None,
    cpus: set[int] | None,
    workdir: Path,
    stack: ExitStack,
) -> Server:
    """Start the variant's server on ``cpus`` and check that it answers correctly."""
    port = free_port()
    if variant.scenario is None:
        command = [sys.executable, "-m", "benchmarks.bare_proxy", "--host", HOST]
        command += ["--port", str(port), "--upstream", upstream.url]
        health, accept, timeout = "/", frozenset({200, 404}), HELPER_HEALTH_TIMEOUT_S
    else:
        assert variant.command is not None
        if "redis-server" in variant.scenario.services and redis is None:
            raise SystemExit(f"{variant.name}: needs redis-server")
        conf = write_conf(variant.scenario, workdir / variant.name, port, upstream.url, redis)
        command = [*variant.command, "-c", str(conf), "--host", HOST, "--port", str(port)]
        command += ["--log-level", "warning"]
        health, accept, timeout = "/healthz", frozenset({200}), AIGW_HEALTH_TIMEOUT_S
    server = Server(variant.name, command, port, workdir, cpus)
    stack.callback(server.stop)
    problem = server.wait_healthy(health, accept, timeout)
    if problem is None:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            problem = runner.run(check_target(server.url, variant.unique_prompts))
    if problem is not None:
        raise SystemExit(f"{variant.name}: {problem}\n{server.log_tail()}")
    return server


def load_all(
    live: list[tuple[Variant, Server, WrkGenerator]], concurrency: int, seconds: int
) -> list[tuple[CellResult, float]]:
    """Load every variant at once; each one's result and the CPU seconds it used meanwhile."""
    before = [server.cpu_s() for _, server, _ in live]
    with ThreadPoolExecutor(len(live)) as pool:
        futures = [
            # New bodies per load: a unique-prompt load must never repeat an earlier one.
            pool.submit(
                wrk.run,
                server.url,
                Bodies(unique=v.unique_prompts, stream=False),
                concurrency,
                seconds,
            )
            for v, server, wrk in live
        ]
        cells = [f.result() for f in futures]
    return [
        (cell, server.cpu_s() - cpu0)
        for cell, cpu0, (_, server, _) in zip(cells, before, live, strict=True)
    ]


def report(variants: list[Variant]) -> list[dict[str, object]]:
    """Print the medians and return them."""
    base = variants[0]
    rows: list[dict[str, object]] = []
    print(
        f"\n{'variant':<16}{'target':<24}{'cpu us/req':>11}{'req/s':>9}"
        f"{'ratio vs ' + base.name:>20}  per round"
    )
    for v in variants:
        ratios = [a / b for a, b in zip(v.cpu_us, base.cpu_us, strict=True)]
        above = sum(r > 1 for r in ratios)
        row = {
            "name": v.name,
            "target": v.target,
            "cpu_us_per_request": statistics.median(v.cpu_us),
            "rps": statistics.median(c.rps for c in v.cells),
            "errors": sum(c.errors for c in v.cells),
            "ratio": statistics.median(ratios),
            "ratios": ratios,
        }
        rows.append(row)
        print(
            f"{v.name:<16}{v.target:<24}{row['cpu_us_per_request']:>11.1f}{row['rps']:>9.0f}"
            f"{row['ratio']:>20.3f}  {' '.join(f'{r:.3f}' for r in ratios)}"
            + (f"  ({above}/{len(ratios)} above 1)" if v is not base else "")
            + (f"  ERRORS {row['errors']}" if row["errors"] else "")
        )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison and print the report."""
    args = parse_args(argv)
    variants = [parse_variant(spec, args.aigw) for spec in args.variants]
    if len({v.name for v in variants}) != len(variants):
        raise SystemExit("variant names must differ")
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk is not on PATH (apt-get install -y wrk)")
    targets, pinning = pin_cpus(True)
    # All variants on one core: they take turns on it, so they meet the same machine.
    cpus = {min(targets)} if targets else None
    progress(f"pinning: {pinning}; all variants on cpu {min(targets) if targets else 'any'}")
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="aigw-paired-")))
        upstream = start_upstream(workdir, stack)
        if upstream is None:
            return 1
        needs_redis = any(v.scenario and "redis-server" in v.scenario.services for v in variants)
        redis = start_redis(workdir, stack) if needs_redis else None
        live = []
        for v in variants:
            (workdir / f"wrk-{v.name}").mkdir()
            server = start(v, upstream, redis, cpus, workdir, stack)
            live.append((v, server, WrkGenerator(wrk, workdir / f"wrk-{v.name}")))
            how = shlex.join(v.command) if v.command else "benchmarks.bare_proxy"
            progress(f"started {v.name}: {v.target} ({how})")
        for round_no in range(1, args.rounds + 1):
            if args.warmup:
                load_all(live, args.concurrency, args.warmup)
            results = load_all(live, args.concurrency, args.duration)
            for (v, _, _), (cell, cpu_s) in zip(live, results, strict=True):
                v.cells.append(cell)
                v.cpu_us.append(cpu_s / cell.requests * 1e6 if cell.requests else float("inf"))
            progress(
                f"[{round_no}/{args.rounds}] "
                + "  ".join(f"{v.name} {v.cpu_us[-1]:.1f} us/req" for v in variants)
            )
    rows = report(variants)
    if args.json is not None:
        args.json.write_text(json.dumps({"args": sys.argv[1:], "variants": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
