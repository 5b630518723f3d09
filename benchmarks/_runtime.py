"""Event-loop and serving helpers shared by the benchmark processes.

The upstream, the bare proxy and the load generator all run on uvloop when it is installed (the
`speed` extra), so the reference processes are as fast as the gateway can be made to be.
"""

from __future__ import annotations

import asyncio

from aiohttp import web


def new_event_loop() -> asyncio.AbstractEventLoop:
    """Return a uvloop loop when uvloop is importable, else a plain asyncio loop."""
    try:
        import uvloop
    except ImportError:  # plain asyncio still works, it is only slower
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def loop_name() -> str:
    """Name of the loop implementation `new_event_loop` picks, for the benchmark report."""
    loop = new_event_loop()
    try:
        return type(loop).__module__.split(".")[0]
    finally:
        loop.close()


def serve(app: web.Application, host: str, port: int) -> None:
    """Serve `app` until SIGINT/SIGTERM, without access log or banner.

    The access log is off because formatting a log line per request would be measured as
    proxy cost; the short shutdown timeout lets `run.py` stop a process quickly between targets.
    """
    web.run_app(
        app,
        host=host,
        port=port,
        access_log=None,
        print=None,
        shutdown_timeout=1.0,
        loop=new_event_loop(),
    )
