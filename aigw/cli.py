"""The ``aigw`` command: serve a conf.d, or check it.

``aigw -c conf.d [--host H] [--port P] [--workers N] [--log-level L]`` serves;
``aigw check -c conf.d`` validates and prints the effective pipeline without serving;
``aigw eval -c conf.d PAIRS.tsv`` replays labelled question pairs through the semantic cache's
embedder and guard and prints hit and false-hit rates per threshold; ``aigw --version``. With
``--workers N`` the parent starts N processes that share the port
through SO_REUSEPORT; state that must be shared between them lives in Redis and the vector DB.
``--port 0`` listens on a free port (one for all the workers); every process logs the address
it serves on.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
from typing import Any

from aigw import __version__
from aigw.config import Config, GatewaySettings, load_config, validate
from aigw.errors import ConfigError

log = logging.getLogger("aigw")

# How a worker ends when it was told to stop: the parent's SIGTERM (or SIGKILL after a second
# signal), or a Ctrl-C that reached it before it started ignoring SIGINT.
_STOPPED = frozenset({-signal.SIGTERM, -signal.SIGKILL, -signal.SIGINT})


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aigw", description="OpenAI-compatible AI gateway.")
    parser.add_argument("--version", action="version", version=f"aigw {__version__}")
    parser.add_argument("-c", "--conf", default="conf.d", help="conf.d directory (default: conf.d)")
    parser.add_argument("--host", help="listen address (overrides gateway.host)")
    parser.add_argument("--port", type=int, help="listen port (overrides gateway.port)")
    parser.add_argument("--workers", type=int, help="worker processes (overrides gateway.workers)")
    parser.add_argument(
        "pairs",
        nargs="?",
        help="eval: a TSV of labelled pairs (cached, new, should_hit[, kind, lang])",
    )
    parser.add_argument(
        "--max-false-hits",
        type=float,
        default=0.05,
        help="eval: the false-hit rate the best threshold must keep within (default 0.05)",
    )
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="overrides gateway.log_level",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``aigw`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    command = "serve"
    if args and args[0] in {"check", "serve", "eval"}:
        command = args.pop(0)
    parser = _parser()
    opts = parser.parse_args(args)
    if opts.pairs in {"check", "serve", "eval"}:
        parser.error(f"the command comes first: aigw {opts.pairs} -c DIR ...")
    if (opts.pairs is None) == (command == "eval"):
        parser.error("a PAIRS file is what `aigw eval` takes, and only it")
    if not 0 <= opts.max_false_hits <= 1:
        parser.error("--max-false-hits is a rate, between 0 and 1")
    try:
        config = _load(opts)
        if command == "check":
            print(describe(config))
            return 0
        if command == "eval":
            print(evaluate(config, opts.pairs, opts.max_false_hits))
            return 0
        _setup_logging(config.gateway.log_level)
        return serve(config)
    except ConfigError as err:
        print(f"aigw: configuration error:\n{err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Ctrl-C before the stop handlers were installed (start-up takes about half a second):
        # what had started was shut down on the way out; the shell's code for an interrupt.
        print("aigw: interrupted during start-up", file=sys.stderr)
        return 130


def _load(opts: argparse.Namespace) -> Config:
    config = load_config(opts.conf)
    overrides: dict[str, Any] = {
        k: v
        for k, v in {
            "host": opts.host,
            "port": opts.port,
            "workers": opts.workers,
            "log_level": opts.log_level,
        }.items()
        if v is not None
    }
    if not overrides:
        return config
    merged = validate(GatewaySettings, {**config.gateway.model_dump(), **overrides}, "command line")
    return Config(gateway=merged, plugins=config.plugins, source=config.source)


def describe(config: Config) -> str:
    """The effective configuration: server, plugins in order with their hooks, providers."""
    from aigw.pipeline import Pipeline
    from aigw.plugins import load

    loaded = load(config)
    pipeline = Pipeline(loaded)  # the same checks serving does (hook options, reads_body)
    g = config.gateway
    lines = [
        f"aigw {__version__}: {config.source} is valid",
        f"listen: {g.host}:{g.port}  workers: {g.workers}  max body: {g.max_body_bytes} bytes",
        f"clients: a request head within {g.header_timeout_s:g}s, its body within "
        f"{g.body_timeout_s:g}s; idle connections closed after {g.idle_timeout_s:g}s",
        f"max connections per process: {g.max_connections or '(ulimit -n - 64) / 2'}",
        "pipeline (request order; responses run back in reverse):",
    ]
    for i, ((name, plugin), entry) in enumerate(zip(loaded.order, config.plugins, strict=True)):
        hooks = sorted(h.name for h in loaded.pm.get_hookcallers(plugin) or [])
        mark = "  [terminal]" if getattr(plugin, "terminal", False) else ""
        if name == pipeline.body_read_before:
            lines.append("  -- the request body is read and its model resolved --")
        lines.append(f"  {i + 1}. {name}{mark}  ({entry.file.name}; hooks: {', '.join(hooks)})")
        describe_plugin = None if mark else getattr(plugin, "describe", None)
        if describe_plugin is not None:
            lines.extend(f"       {line}" for line in describe_plugin())
    describe_terminal = getattr(loaded.terminal, "describe", None)
    if describe_terminal is not None:
        lines.append("providers:")
        lines.extend(f"  {line}" for line in describe_terminal())
    return "\n".join(lines)


def evaluate(config: Config, pairs_file: str, max_false_hits: float) -> str:
    """``aigw eval``: the semantic cache's hit and false-hit rates on a labelled file, per
    threshold, the best threshold within ``max_false_hits``, and the pairs decided wrongly at
    the configured threshold."""
    from aigw.plugins import load
    from aigw.semantic.evaluate import load_pairs, render

    loaded = load(config)
    plugin: Any = dict(loaded.order).get("semantic-cache")
    if plugin is None:
        raise ConfigError(f"{config.source}: no semantic-cache plugin to evaluate")
    try:
        pairs = load_pairs(pairs_file)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{pairs_file}: {err}") from None
    if not pairs:
        raise ConfigError(f"{pairs_file}: no pairs")
    report = asyncio.run(plugin.evaluate(pairs))
    threshold = plugin.config.threshold
    head = f"{config.source}: {plugin.embedder.model}, threshold {threshold:g}, {pairs_file}"
    return head + "\n" + render(report, threshold, max_false_hits)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s",
        stream=sys.stderr,
    )


def serve(config: Config) -> int:
    """Serve until SIGINT/SIGTERM, in one process or ``workers`` processes."""
    if config.gateway.workers == 1:
        _run_worker(config, parent=None)
        return 0
    g = config.gateway
    try:
        held = _hold_port(g.host, g.port)
    except OSError as err:
        log.error("aigw cannot start: %s:%d: %s", g.host, g.port, err.strerror or err)
        return 1
    with held:  # until the workers are gone
        port = held.getsockname()[1]
        log.info("starting %d workers on http://%s:%d", g.workers, g.host, port)
        workers_config = Config(
            gateway=g.model_copy(update={"port": port}),
            plugins=config.plugins,
            source=config.source,
        )
        return _supervise(workers_config)


def _hold_port(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (port 0: a free one), not listening, that the
    ``--workers`` can share the port with; ``OSError`` if something listens there already.

    The workers bind with SO_REUSEPORT, which alone would also share the port with an
    unrelated server already on it: this socket binds without it, so that fails first. Held
    bound while the workers run, it keeps the port from being taken before they bind it, and
    port 0 is resolved once, for all of them (each would get its own). Not listening, it gets
    no connections.
    """
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        # SO_REUSEADDR to bind as the workers will (past the last run's TIME_WAIT connections),
        # then cleared: held with it, the port would be open to any server also using it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:  # as asyncio binds the workers' sockets
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    except OSError:
        sock.close()
        raise
    return sock


def _supervise(config: Config) -> int:
    """Run ``config.gateway.workers`` worker processes until SIGINT/SIGTERM or one dies."""
    g = config.gateway
    # A launcher may have left SIGCHLD ignored, which survives exec: the kernel would then reap
    # the workers itself, and a dead one would never be seen (the loop below spinning on its
    # closed sentinel).
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    mp = multiprocessing.get_context("spawn")
    # Ignored dispositions survive exec: the workers ignore the terminal's Ctrl-C from their
    # first instruction (a traceback otherwise, if it came while they started), and the parent
    # stops them itself. A Ctrl-C while they are being spawned is not acted on.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    procs = [
        mp.Process(target=_run_worker, args=(config, os.getpid()), name=f"aigw-worker-{i}")
        for i in range(g.workers)
    ]
    for proc in procs:
        proc.start()
    signals = 0

    def stop(signum: int, _frame: object) -> None:
        nonlocal signals
        signals += 1
        for proc in procs:
            if proc.is_alive() and signals == 1:
                proc.terminate()
            elif proc.is_alive():  # a second signal does not wait for a graceful shutdown
                proc.kill()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    crashed = False
    while alive := [p for p in procs if p.is_alive()]:
        # Checked against the same list the loop waits on: a worker found dead when the list
        # is made must be noticed now, or the loop would wait on the others alone, forever.
        if not signals and not crashed and len(alive) < len(procs):
            # One worker died on its own: the port is served at reduced capacity with nobody
            # told. Stop the others and exit 1, so the supervisor restarts the gateway whole.
            dead = next(p for p in procs if p not in alive)
            log.error("worker %s exited (code %s); stopping the others", dead.pid, dead.exitcode)
            crashed = True
            for proc in alive:
                proc.terminate()
        ready = multiprocessing.connection.wait([p.sentinel for p in alive])
        for proc in alive:
            if proc.sentinel in ready:
                # Its sentinel closes as it exits, a moment before it can be reaped: wait for
                # that, so the next list does not count it alive (and loop without waiting).
                proc.join()
    if crashed or signals > 1:
        return 1  # a second signal exits at once, with 1, as one process does
    # A worker ended by a signal the parent sent, or by the terminal's Ctrl-C, stopped as asked.
    codes = [abs(p.exitcode or 0) for p in procs if p.exitcode not in _STOPPED]
    return max(codes, default=0)


def _follow_parent(parent: int) -> None:
    """Have Linux send this worker SIGTERM when its parent dies, however it dies (a SIGKILL
    from an orchestrator), so no orphaned worker keeps serving the port on its own."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the parent's own signal handling remains
        pass
    # The parent died before the request above took effect. (Not a comparison with pid 1:
    # the parent is pid 1 itself when it is a container's command.)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def _exit_now(sig: int) -> None:
    """A second stop signal during shutdown: leave without waiting for anything more."""
    log.warning("%s during shutdown: exiting now", signal.Signals(sig).name)
    logging.shutdown()
    os._exit(1)


def _tune_gc() -> None:
    """Keep the garbage collector off the hot path once the gateway is up.

    Under concurrency, in-flight requests' objects survive young collections and trigger full
    ones, which walk every object alive, most of them the modules and config loaded at
    start-up. Freezing those moves them out of the collector's sight, and a larger young
    generation makes collections rarer; measured at c=64: +39% and +12% req/s, p99 97 → 26 ms.
    Re-measured with ``benchmarks/paired.py`` (aigw-shipped, c=64, 6 rounds, all variants at
    once): CPU per request without either ratio 1.117 (6/6 rounds above), freeze alone 1.082,
    the threshold alone 0.992 (vs both). Their cost, memory that waits for a rare full collection,
    is what reference cycles hold: requests end without any (``aigw.errors.drop_tracebacks``;
    ``tests/test_request_memory.py``), and twenty 7 MB bad-JSON requests then twenty 9 MB
    chunked 413s leave RSS at 59 → 80 → 76 MB with these settings as without them (before the
    cycles were broken: 59 → 364 → 582 MB).
    """
    gc.freeze()
    gc.set_threshold(10_000, 50, 100)


def _run_worker(config: Config, parent: int | None) -> None:
    """Serve in this process; ``parent`` is the pid of the ``--workers`` parent, if any."""
    _setup_logging(config.gateway.log_level)
    try:
        import uvloop  # optional speed-up: the `speed` extra

        uvloop.install()
    except ImportError:
        pass
    if parent is not None:
        # SIGINT is ignored here (inherited from the parent, which stops the workers itself
        # with SIGTERM).
        _follow_parent(parent)
    try:
        asyncio.run(_serve(config, worker=parent is not None))
    except Exception as err:  # a plugin that cannot start, a port in use: say so, exit 1
        log.error("aigw cannot start: %s", err)
        raise SystemExit(1) from None


async def _serve(config: Config, worker: bool) -> None:
    from aiohttp import web

    from aigw.app import RUNTIME, create_app
    from aigw.connections import install_accept_error_logging, raise_fd_limit

    g = config.gateway
    soft, _ = raise_fd_limit()  # before the app derives its connection limit from it
    install_accept_error_logging(asyncio.get_running_loop())
    app = create_app(config)
    runner = web.AppRunner(
        app,
        handler_cancellation=True,  # a client that disconnects cancels its upstream call
        access_log=None,
        # aiohttp waits this long for in-flight requests to finish, then as
        # long again (failing only their request bodies) before it cancels them. Two quarters
        # give in-flight requests, streams included, half the budget; the write-backs and the
        # plugins' shutdown get what is left of it (Runtime.shutdown_left()).
        shutdown_timeout=g.shutdown_timeout_s / 4,
    )
    try:
        await runner.setup()  # inside: plugins started before a failing one are shut down
        # --workers share the port: SO_REUSEPORT (the parent checked that it was free).
        await web.TCPSite(runner, g.host, g.port, reuse_port=worker).start()
        _tune_gc()
        # Handlers first: a supervisor may signal as soon as it reads the "serving" line.
        # A --workers worker leaves SIGINT ignored: the terminal's Ctrl-C reaches it too, and
        # it is the parent's to act on (with SIGTERM, which would otherwise be a second
        # signal here, and exit the worker at once with 1).
        stop_signals = (signal.SIGTERM,) if worker else (signal.SIGTERM, signal.SIGINT)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in stop_signals:
            loop.add_signal_handler(sig, stop.set)
        for host, port, *_ in runner.addresses:
            log.info("aigw %s serving %s on http://%s:%d", __version__, config.source, host, port)
        log.info(
            "connections: at most %d (file descriptors: %d); a request head within %gs, its "
            "body within %gs; idle ones closed after %gs",
            app[RUNTIME].connections.max_connections,
            soft,
            g.header_timeout_s,
            g.body_timeout_s,
            g.idle_timeout_s,
        )
        await stop.wait()
        app[RUNTIME].shutdown_deadline = loop.time() + g.shutdown_timeout_s
        # A worker shares the parent's process group, so a signal sent to the whole group
        # (a Ctrl-C, systemd's stop, an init forwarding SIGTERM) reaches it once from there and
        # once more from the parent: not a second signal. The parent answers a real second
        # one by killing its workers.
        for sig in () if worker else stop_signals:
            loop.add_signal_handler(sig, _exit_now, sig)
        log.info(
            "shutting down (within %ss; a second signal exits at once): finishing in-flight "
            "requests and write-backs",
            g.shutdown_timeout_s,
        )
    finally:
        await runner.cleanup()
