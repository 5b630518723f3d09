"""Soak the memory store: does ``max_bytes`` bound the gateway's resident memory?

Starts aigw on a copy of the shipped ``conf.d`` (its offline ``mock`` provider answers, echoing
each question), with the memory store's ``max_bytes`` lowered (16 MiB by default) so that it
fills in seconds, then sends never-repeated questions of about 8 KB (every one a miss, so every
answer is stored and, once the store is full, evicts older ones). The gateway's resident memory
(VmRSS of the process and its children, from /proc) is sampled throughout. Prints the baseline
(after a short warm-up), the RSS once the store is full and at the end, the store's estimated
content and a verdict: PASS when, after the store is full, RSS never exceeds
baseline + 1.5 x ``max_bytes``.

    python -m benchmarks.soak [--max-bytes 16777216] [--question-bytes 8000] [--fills 4]
                              [--concurrency 8] [--max-seconds 180] [--aigw CMD]

Bounded: 127.0.0.1 only, at most ``--fills`` times the requests that fill the store (counted
from the answers' sizes) and at most ``--max-seconds``; each request has a 10 s timeout, and the
gateway is stopped (SIGTERM, then SIGKILL) at the end or on an interrupt. Exit code 0 on PASS,
1 on FAIL, 2 when the gateway could not start or answered errors.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson

from aigw.cache.stores import ENTRY_OVERHEAD
from benchmarks._runtime import new_event_loop
from benchmarks.loadgen import CHAT_PATH, REQUEST_HEADERS, REQUEST_TIMEOUT_S
from benchmarks.run import AIGW_HEALTH_TIMEOUT_S, HOST, REPO, Server, aigw_command, free_port
from benchmarks.run import progress as log

WARMUP_REQUESTS = 50
MAX_BYTES_LINE = re.compile(r"^(\s*max_bytes:\s*)\d+", re.MULTILINE)
MIB = 1024 * 1024


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and all its descendants (VmRSS from /proc, Linux)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:  # the thread ended meanwhile
            continue
        total += sum(rss_bytes(int(child)) for child in children)
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # exited meanwhile
        return total
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    return total + (int(match.group(1)) * 1024 if match else 0)


def shipped_conf(workdir: Path, max_bytes: int) -> Path:
    """A copy of the shipped conf.d with the memory store's ``max_bytes`` replaced."""
    conf = workdir / "conf.d"
    shutil.copytree(REPO / "conf.d", conf)
    cache = conf / "30-exact-cache.yaml"
    text, found = MAX_BYTES_LINE.subn(rf"\g<1>{max_bytes}", cache.read_text())
    if found != 1:
        raise SystemExit(f"{cache}: expected one max_bytes line, found {found}")
    cache.write_text(text)
    return conf


@dataclass
class Soak:
    """What the load saw: answers, their sizes, errors and the RSS samples."""

    max_bytes: int
    sent: int = 0
    errors: int = 0
    answer_bytes: int = 0  # of the stored answers, summed
    stored: list[int] = field(default_factory=list)  # each answer's weight in the store
    weight: int = 0  # of all the answers stored, summed
    full_at: int | None = None  # requests sent when the store was first full
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (s, requests, RSS)

    def weigh(self, body_len: int) -> None:
        """Count an answer the store keeps (about its body's length, plus the entry)."""
        self.answer_bytes += body_len
        self.stored.append(body_len + ENTRY_OVERHEAD)
        self.weight += body_len + ENTRY_OVERHEAD
        if self.full_at is None and self.weight >= self.max_bytes:
            self.full_at = self.sent

    def held(self) -> tuple[int, int]:
        """Entries and bytes the store holds by now: the latest answers that fit (estimated)."""
        entries = total = 0
        for weight in reversed(self.stored):
            if total + weight > self.max_bytes:
                break
            entries, total = entries + 1, total + weight
        return entries, total


def question(nonce: str, n: int, size: int) -> bytes:
    """A chat request whose question is about ``size`` bytes and never repeats."""
    head = f"soak {nonce} question #{n}: "
    text = head + "lorem ipsum dolor sit amet " * (max(0, size - len(head)) // 27 + 1)
    return orjson.dumps(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text[:size]}]}
    )


async def load(url: str, soak: Soak, args: argparse.Namespace, pid: int) -> int:
    """Send the questions; the baseline RSS after the warm-up."""
    nonce = secrets.token_hex(6)
    counter = iter(range(sys.maxsize))
    started = time.monotonic()
    deadline = started + args.max_seconds

    def done() -> bool:
        if time.monotonic() > deadline:
            return True
        return soak.full_at is not None and soak.sent >= args.fills * soak.full_at

    async def send(session: aiohttp.ClientSession, n: int) -> None:
        body = question(nonce, n, args.question_bytes)
        try:
            async with session.post(url + CHAT_PATH, data=body) as response:
                answer = await response.read()
                ok = response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            ok, answer = False, b""
        soak.sent += 1
        if ok:
            soak.weigh(len(answer))
        else:
            soak.errors += 1

    async def worker(session: aiohttp.ClientSession) -> None:
        while not done() and soak.errors == 0:
            await send(session, next(counter))

    async def sampler() -> None:
        while True:
            soak.samples.append((time.monotonic() - started, soak.sent, rss_bytes(pid)))
            await asyncio.sleep(0.5)  # a sampling period, not synchronisation

    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(
        headers=REQUEST_HEADERS, timeout=timeout, connector=connector
    ) as session:
        for _ in range(WARMUP_REQUESTS):  # the client pool, lazy imports, first allocations
            await send(session, next(counter))
        baseline = rss_bytes(pid)
        sampling = asyncio.create_task(sampler())
        try:
            await asyncio.gather(*(worker(session) for _ in range(args.concurrency)))
        finally:
            sampling.cancel()
        soak.samples.append((time.monotonic() - started, soak.sent, rss_bytes(pid)))
    return baseline


def report(soak: Soak, baseline: int, args: argparse.Namespace) -> bool:
    """Print the figures and the verdict; whether it passed."""
    limit = baseline + 1.5 * soak.max_bytes
    after_full = [s for s in soak.samples if soak.full_at is not None and s[1] >= soak.full_at]
    entries, held = soak.held()
    mean = soak.answer_bytes // len(soak.stored) if soak.stored else 0
    print(f"max_bytes           {soak.max_bytes / MIB:.1f} MiB")
    print(f"questions           {soak.sent} sent ({soak.errors} errors), ~{args.question_bytes} B")
    print(f"answers             {mean} B on average")
    print(f"store (estimated)   {entries} entries, {held / MIB:.1f} MiB counted")
    print(f"baseline RSS        {baseline / MIB:.1f} MiB (after {WARMUP_REQUESTS} requests)")
    if after_full:
        t, n, rss = after_full[0]
        print(f"RSS when full       {rss / MIB:.1f} MiB ({n} requests, {t:.1f} s)")
        t, n, rss = after_full[-1]
        print(f"RSS at the end      {rss / MIB:.1f} MiB ({n} requests, {t:.1f} s)")
        peak = max(s[2] for s in after_full)
        print(f"RSS peak after full {peak / MIB:.1f} MiB")
    else:
        peak = 0
        print("the store never filled (raise --max-seconds or lower --max-bytes)")
    passed = bool(after_full) and soak.errors == 0 and peak <= limit
    verdict = "PASS" if passed else "FAIL"
    print(f"{verdict}: RSS after full <= baseline + 1.5 x max_bytes = {limit / MIB:.1f} MiB")
    return passed


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-bytes", type=int, default=16 * MIB, help="the store's max_bytes")
    parser.add_argument("--question-bytes", type=int, default=8000, help="each question's size")
    parser.add_argument(
        "--fills", type=float, default=4.0, help="stop after this many times the filling requests"
    )
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    parser.add_argument("--max-seconds", type=float, default=180.0, help="stop after this long")
    parser.add_argument("--aigw", help="command that starts aigw (default: the aigw script)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the soak and print the report; 0 on PASS, 1 on FAIL, 2 when it could not run."""
    args = parse_args(argv)
    base = aigw_command(args.aigw)
    if base is None:
        log("aigw not found (no aigw script, no importable aigw package)")
        return 2
    # The shipped conf.d proxies to OpenAI when OPENAI_API_KEY is set: unset, only its offline
    # mock provider answers, and nothing leaves 127.0.0.1.
    os.environ.pop("OPENAI_API_KEY", None)
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="aigw-soak-")))
        conf = shipped_conf(workdir, args.max_bytes)
        port = free_port()
        command = [*base, "-c", str(conf), "--host", HOST, "--port", str(port)]
        gateway = Server("aigw", command, port, workdir, None)
        stack.callback(gateway.stop)
        problem = gateway.wait_healthy("/healthz", frozenset({200}), AIGW_HEALTH_TIMEOUT_S)
        if problem is not None:
            log(f"aigw {problem}\n    command: {shlex.join(command)}\n{gateway.log_tail()}")
            return 2
        log(f"soaking aigw on {gateway.url} (max_bytes {args.max_bytes})")
        soak = Soak(args.max_bytes)
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            baseline = runner.run(load(gateway.url, soak, args, gateway.process.pid))
        if soak.errors:
            log(f"the gateway answered errors:\n{gateway.log_tail()}")
        passed = report(soak, baseline, args)
    if soak.errors:
        return 2
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
