"""Load generators and probes used by `benchmarks.run`.

Two closed-loop generators measure non-stream chat completions, and every target of a run goes
through the same one:

* `WrkGenerator`: wrk (C, one thread) with a generated Lua script. It costs the shared 2 cores
  the least CPU per request, so it is preferred whenever `wrk` is on PATH.
* `PythonGenerator`: aiohttp on uvloop in this process, one coroutine per connection and a
  connector limited to the concurrency, with keep-alive. The fallback when wrk is missing.

Streaming time-to-first-byte and the correctness check are always measured with aiohttp, at
concurrency 1, where the client's own cost is the same constant for every target and cancels out
of the differences the targets are judged on.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import resource
import secrets
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import aiohttp
import orjson

CHAT_PATH = "/v1/chat/completions"
MODEL = "bench-model"
API_KEY = "sk-bench"
REQUEST_HEADERS = {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"}
# Generous, so a stalled target shows up as errors rather than a hung run.
REQUEST_TIMEOUT_S = 10.0
_MARKER = "\x00"


class Bodies:
    """Request bodies for one measurement: one fixed prompt, or a unique prompt per request.

    A body is `prefix + <request number> + suffix` for unique prompts and `prefix + suffix` for
    the fixed one, so the Python generator and wrk's Lua script build byte-identical requests.
    Unique prompts carry a random nonce, so they never repeat across cells or runs (an exact
    cache sees only misses); the fixed prompt is the same everywhere (all hits after the first).
    """

    def __init__(self, *, unique: bool, stream: bool) -> None:
        self.unique = unique
        head = f"bench {secrets.token_hex(6)} request #" if unique else "bench fixed prompt"
        payload: dict[str, object] = {
            "model": MODEL,
            "messages": [{"role": "user", "content": f"{head}{_MARKER}: answer briefly"}],
            "max_tokens": 64,
        }
        if stream:
            payload["stream"] = True
            payload["stream_options"] = {"include_usage": True}
        # orjson escapes the NUL marker as \u0000, which is what we split on.
        self.prefix, self.suffix = orjson.dumps(payload).split(b"\\u0000")

    def body(self, n: int) -> bytes:
        """The `n`-th request body."""
        if self.unique:
            return self.prefix + str(n).encode() + self.suffix
        return self.prefix + self.suffix

    def prompt(self, n: int) -> str:
        """The user prompt inside `body(n)`, which a correct answer echoes."""
        text: str = orjson.loads(self.body(n))["messages"][0]["content"]
        return text


@dataclass(frozen=True)
class CellResult:
    """One target measured at one concurrency for a fixed time."""

    concurrency: int
    requests: int
    errors: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    generator_cpu_s: float
    # Filled in by run.py, which knows the processes under test (CPU seconds in the window).
    target_cpu_s: float = math.nan
    upstream_cpu_s: float = math.nan
    # CPU the whole machine spent beyond the generator, target and upstream: other work
    # sharing the cores, plus kernel time (loopback softirq) charged to no process.
    other_cpu_s: float = math.nan


@dataclass(frozen=True)
class TtfbResult:
    """Streamed time to the first SSE data event, sequential requests (concurrency 1)."""

    requests: int
    errors: int
    p50_ms: float
    p99_ms: float


class Generator(Protocol):
    """A closed-loop load generator: `concurrency` connections, each one request at a time."""

    name: str
    description: str

    def run(self, url: str, bodies: Bodies, concurrency: int, seconds: int) -> CellResult:
        """Load `url` for `seconds` and return the counts and latencies."""
        ...


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list (nan when empty)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _lua_string(value: bytes) -> str:
    text = value.decode()
    if "]==]" in text:  # cannot happen with our ASCII JSON, but a silent bad script would
        raise ValueError("body fragment cannot be embedded in a Lua long string")
    return f"[==[{text}]==]"


_WRK_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH %.0f %.0f %.0f %.0f %.0f\\n", summary.duration,
    summary.requests, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


class WrkGenerator:
    """wrk with one thread and a generated Lua script; latencies come from wrk's histogram."""

    name = "wrk"

    def __init__(self, executable: str, workdir: Path) -> None:
        self.executable = executable
        self.workdir = workdir
        version = subprocess.run(
            [executable, "-v"], capture_output=True, text=True, check=False
        ).stdout.splitlines()
        # "wrk debian/4.1.0-3+b2 [epoll] Copyright ...": keep the name and version.
        name = " ".join(version[0].split()[:2]) if version else "wrk"
        self.description = f"{name} (1 thread)"

    def _script(self, bodies: Bodies) -> Path:
        lines = ['wrk.method = "POST"']
        lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in REQUEST_HEADERS.items()]
        if bodies.unique:
            # A request() function makes wrk build every request in Lua: only worth it when
            # each one must differ.
            lines += [
                f"local prefix = {_lua_string(bodies.prefix)}",
                f"local suffix = {_lua_string(bodies.suffix)}",
                "local n = 0",
                "request = function()",
                "  n = n + 1",
                "  return wrk.format(nil, nil, nil, prefix .. n .. suffix)",
                "end",
            ]
        else:
            lines.append(f"wrk.body = {_lua_string(bodies.prefix + bodies.suffix)}")
        script = self.workdir / "bench.lua"
        script.write_text("\n".join(lines) + "\n" + _WRK_DONE)
        return script

    def run(self, url: str, bodies: Bodies, concurrency: int, seconds: int) -> CellResult:
        """Run wrk once; one thread is plenty at these rates and leaves the core to the target."""
        command = [
            self.executable,
            "-t1",
            f"-c{concurrency}",
            f"-d{seconds}s",
            f"--timeout={REQUEST_TIMEOUT_S:.0f}s",
            "-s",
            str(self._script(bodies)),
            url + CHAT_PATH,
        ]
        cpu_before = _children_cpu_s()
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=seconds + 30, check=False
        )
        cpu = _children_cpu_s() - cpu_before
        line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH ")), None)
        if done.returncode != 0 or line is None:
            raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
        duration_us, total, errors, p50_us, p99_us = (float(x) for x in line.split()[1:])
        elapsed = duration_us / 1e6
        return CellResult(
            concurrency=concurrency,
            requests=int(total - errors),
            errors=int(errors),
            seconds=elapsed,
            rps=(total - errors) / elapsed,
            p50_ms=p50_us / 1000,
            p99_ms=p99_us / 1000,
            generator_cpu_s=cpu,
        )


class PythonGenerator:
    """aiohttp on this process's loop: `concurrency` workers over a keep-alive pool of that size."""

    name = "python"

    def __init__(self, runner: asyncio.Runner, loop_name: str) -> None:
        self.runner = runner
        self.description = f"python aiohttp {aiohttp.__version__} on {loop_name}"

    def run(self, url: str, bodies: Bodies, concurrency: int, seconds: int) -> CellResult:
        """Run the workers until the deadline; requests in flight then still count when done."""
        cpu_before = _self_cpu_s()
        started = time.perf_counter()
        latencies, errors = self.runner.run(self._load(url, bodies, concurrency, seconds))
        elapsed = time.perf_counter() - started
        cpu = _self_cpu_s() - cpu_before
        latencies.sort()
        return CellResult(
            concurrency=concurrency,
            requests=len(latencies),
            errors=errors,
            seconds=elapsed,
            rps=len(latencies) / elapsed,
            p50_ms=percentile(latencies, 50) / 1e6,
            p99_ms=percentile(latencies, 99) / 1e6,
            generator_cpu_s=cpu,
        )

    @staticmethod
    async def _load(
        url: str, bodies: Bodies, concurrency: int, seconds: int
    ) -> tuple[list[float], int]:
        latencies: list[float] = []
        errors = 0
        counter = itertools.count()
        deadline = time.perf_counter() + seconds
        target = url + CHAT_PATH

        async def worker(session: aiohttp.ClientSession) -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                body = bodies.body(next(counter))
                started = time.perf_counter_ns()
                try:
                    async with session.post(target, data=body) as response:
                        await response.read()
                        ok = response.status == 200
                except (aiohttp.ClientError, TimeoutError):
                    ok = False
                if ok:
                    latencies.append(time.perf_counter_ns() - started)
                else:
                    errors += 1

        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency),
            headers=REQUEST_HEADERS,
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
            skip_auto_headers=("User-Agent",),
        ) as session:
            await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        return latencies, errors


async def measure_ttfb(url: str, bodies: Bodies, warmup: float, seconds: float) -> TtfbResult:
    """Sequential streamed requests: time from sending to the first chunk holding `data:`.

    Each stream is read to its end and must finish with `data: [DONE]`, else it is an error.
    """
    samples: list[float] = []
    errors = 0
    n = 0
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=1),
        headers=REQUEST_HEADERS,
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
    ) as session:
        for phase_seconds, record in ((warmup, False), (seconds, True)):
            deadline = time.perf_counter() + phase_seconds
            while time.perf_counter() < deadline:
                n += 1
                started = time.perf_counter_ns()
                first: int | None = None
                received = b""
                try:
                    async with session.post(url + CHAT_PATH, data=bodies.body(n)) as response:
                        async for chunk in response.content.iter_any():
                            if first is None and b"data:" in received + chunk:
                                first = time.perf_counter_ns()
                            received += chunk
                        ok = response.status == 200 and received.endswith(b"data: [DONE]\n\n")
                except (aiohttp.ClientError, TimeoutError):
                    ok = False
                if not record:
                    continue
                if ok and first is not None:
                    samples.append(first - started)
                else:
                    errors += 1
    samples.sort()
    return TtfbResult(
        requests=len(samples),
        errors=errors,
        p50_ms=percentile(samples, 50) / 1e6,
        p99_ms=percentile(samples, 99) / 1e6,
    )


async def check_target(url: str, unique: bool) -> str | None:
    """One JSON and one streamed request; None when both look like correct OpenAI answers.

    Catches a target that is fast only because it answers with errors (wrong config, auth).
    """
    json_bodies = Bodies(unique=unique, stream=False)
    stream_bodies = Bodies(unique=unique, stream=True)
    async with aiohttp.ClientSession(
        headers=REQUEST_HEADERS, timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    ) as session:
        try:
            async with session.post(url + CHAT_PATH, data=json_bodies.body(0)) as response:
                raw = await response.read()
                if response.status != 200:
                    return f"JSON request answered {response.status}: {raw[:300]!r}"
            answer = orjson.loads(raw)
            content = answer["choices"][0]["message"]["content"]
            if answer.get("object") != "chat.completion" or json_bodies.prompt(0) not in content:
                return f"JSON answer does not echo the prompt: {raw[:300]!r}"
            async with session.post(url + CHAT_PATH, data=stream_bodies.body(0)) as response:
                raw = await response.read()
                if response.status != 200 or not raw.endswith(b"data: [DONE]\n\n"):
                    return f"stream answered {response.status}: {raw[-300:]!r}"
        except (
            aiohttp.ClientError,
            TimeoutError,
            orjson.JSONDecodeError,
            LookupError,
            TypeError,
        ) as exc:
            return f"request failed: {exc!r}"
    return None
