"""Client connections: header and idle timeouts, the connection limit, and a body answered
before it was read (aigw.connections), against a real gateway over raw sockets."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.compression_utils import ZLibDecompressor

from aigw import connections
from aigw.app import RUNTIME
from aigw.connections import ConnectionPolicy
from tests.conftest import Gateway, GatewayFactory, Upstream, provider_file, write_conf
from tests.test_cli import MOCK_PROXY, TIMEOUT_S, child_env, read_port, read_until, spawn_aigw

# Long enough for anything the gateway should do at once, short against what it must not do.
PROMPT_S = 3.0
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


async def start(make_gateway: GatewayFactory, upstream: Upstream, **settings: Any) -> Gateway:
    return await make_gateway(
        {"00-gateway.yaml": {"gateway": settings}, "90-p.yaml": provider_file(upstream)}
    )


def policy(gateway: Gateway) -> ConnectionPolicy:
    return gateway.server.app[RUNTIME].connections


async def connect(gateway: Gateway) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    url = gateway.server.make_url("/")
    return await asyncio.open_connection(url.host, url.port)


async def read_reply(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One whole reply (it has a Content-Length), without waiting for the connection's end."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), PROMPT_S)
    status_line, *lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), PROMPT_S)
    return int(status_line.split()[1]), headers, body


async def closed(reader: asyncio.StreamReader, within: float) -> bool:
    """Whether the gateway ends the connection (EOF or reset) within ``within`` seconds, with
    nothing more sent."""
    try:
        rest = await asyncio.wait_for(reader.read(), within)
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    assert rest == b""
    return True


async def test_a_head_not_complete_in_time_gets_408_and_the_connection_closes(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await start(make_gateway, upstream, header_timeout_s=0.3)
    reader, writer = await connect(gw)
    began = time.monotonic()
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")  # and nothing more
    status, headers, body = await read_reply(reader)
    assert time.monotonic() - began >= 0.3
    assert status == 408 and headers["connection"] == "close" and headers["x-request-id"]
    err = orjson.loads(body)["error"]
    assert err["code"] == "request_timeout" and err["type"] == "invalid_request_error"
    assert await closed(reader, PROMPT_S)
    writer.close()
    assert policy(gw).counters.get("connections", "header_timeout") == 1
    assert upstream.llm.calls == []


async def test_a_connection_that_sends_nothing_is_closed_without_a_reply(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await start(make_gateway, upstream, header_timeout_s=0.3, idle_timeout_s=60)
    reader, writer = await connect(gw)
    assert await closed(reader, PROMPT_S)
    writer.close()


async def test_a_head_sent_slowly_is_timed_from_the_connection_opening(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    # A byte at a time, each well within the timeout: the head as a whole is not.
    gw = await start(make_gateway, upstream, header_timeout_s=0.5)
    reader, writer = await connect(gw)

    async def trickle() -> None:
        for byte in b"POST /v1/chat/completions HTTP/1.1\r\nHost: " + b"x" * 1000:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.05)  # the client's pace, not synchronisation

    began = time.monotonic()
    sending = asyncio.create_task(trickle())
    status, _, _ = await read_reply(reader)
    assert status == 408 and time.monotonic() - began < PROMPT_S
    assert not sending.done()  # the head was still coming
    sending.cancel()
    writer.close()


async def test_an_idle_kept_alive_connection_is_closed_after_the_idle_timeout(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await start(make_gateway, upstream, header_timeout_s=60, idle_timeout_s=0.3)
    reader, writer = await connect(gw)
    writer.write(HEALTHZ)
    status, headers, _ = await read_reply(reader)
    assert status == 200 and "close" not in headers.get("connection", "")
    assert await closed(reader, PROMPT_S)
    writer.close()


async def test_a_kept_alive_connection_serves_request_after_request(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    # The head timer is re-armed, not spent: requests on one connection, each within the
    # timeout, span several of it.
    gw = await start(make_gateway, upstream, header_timeout_s=0.2, idle_timeout_s=0.2)
    reader, writer = await connect(gw)
    began = time.monotonic()
    while time.monotonic() - began < 0.7:
        writer.write(HEALTHZ)
        status, _, _ = await read_reply(reader)
        assert status == 200
        await asyncio.sleep(0.05)  # the client's pace
    writer.close()
    assert policy(gw).counters.get("connections", "header_timeout") == 0


async def test_beyond_max_connections_a_new_connection_gets_503_and_is_closed(
    make_gateway: GatewayFactory,
    upstream: Upstream,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gw = await start(make_gateway, upstream, max_connections=2)
    limits = policy(gw)
    held = [await connect(gw) for _ in range(2)]
    for reader, writer in held:  # served: counted
        writer.write(HEALTHZ)
        assert (await read_reply(reader))[0] == 200
    with caplog.at_level(logging.INFO, "aigw.connections"):
        reader, writer = await connect(gw)
        status, headers, body = await read_reply(reader)
        assert status == 503 and headers["retry-after"] == "1"
        assert orjson.loads(body)["error"]["code"] == "too_many_connections"
        assert await closed(reader, PROMPT_S)
        writer.close()
        # One warning however many are refused.
        reader, writer = await connect(gw)
        assert (await read_reply(reader))[0] == 503
        writer.close()
        assert limits.counters.get("connections", "refused") == 2
        # The gateway sees connections go: the refused ones, then one it served.
        gone = asyncio.Event()
        count_closed = limits.closed

        def closed_one() -> None:
            count_closed()
            if limits.open == 1:
                gone.set()

        monkeypatch.setattr(limits, "closed", closed_one)
        held.pop()[1].close()
        async with asyncio.timeout(PROMPT_S):
            await gone.wait()
    warnings = [r for r in caplog.records if "connection limit reached" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert any("below the limit again" in r.getMessage() for r in caplog.records)
    # Served again: the held connection still works, and a new one does too.
    for reader, writer in [held[0], await connect(gw)]:
        writer.write(HEALTHZ)
        assert (await read_reply(reader))[0] == 200
        writer.close()


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    """256 MiB of zeros, gzip: 256 KB on the wire."""
    c = zlib.compressobj(1, zlib.DEFLATED, 31)
    zeros = b"\0" * (1 << 20)
    return b"".join([c.compress(zeros) for _ in range(256)] + [c.flush()])


async def test_a_compressed_body_over_the_limit_is_not_inflated_after_the_reply(
    make_gateway: GatewayFactory,
    upstream: Upstream,
    gzip_bomb: bytes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # aiohttp read the rest of a body the gateway had answered, through its parser: a gzip
    # bomb was inflated whole after its 413 (2.5 s of CPU per GB), and the connection lingered.
    inflated = 0
    decompress = ZLibDecompressor.decompress_sync

    def counted(self: ZLibDecompressor, data: bytes, *args: Any, **kwargs: Any) -> bytes:
        nonlocal inflated
        out: bytes = decompress(self, data, *args, **kwargs)
        inflated += len(out)
        return out

    monkeypatch.setattr(ZLibDecompressor, "decompress_sync", counted)
    gw = await start(make_gateway, upstream, max_body_bytes=1 << 20)
    reader, writer = await connect(gw)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(gzip_bomb)
    )
    writer.write(gzip_bomb)
    status, headers, body = await read_reply(reader)
    # 413 once the body inflated past the limit; aiohttp 3.13 refuses the chunk that would
    # inflate past its own bound first (400).
    assert status in (400, 413) and headers["connection"] == "close"
    assert orjson.loads(body)["error"]["type"] == "invalid_request_error"
    # The gateway half-closes at once, well before the linger ends.
    assert await closed(reader, connections.LINGER_S / 2)
    writer.close()
    # Up to the limit and a step past it (aiohttp 3.13 inflates up to 32 MiB in one step, then
    # refuses): not the 256 MiB.
    assert 0 < inflated <= 33 << 20
    assert upstream.llm.calls == []


async def test_a_reply_before_the_body_was_read_says_close_and_half_closes(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    # More is promised than sent: the 413 is decided from Content-Length, the rest never
    # comes, and the gateway does not wait for it.
    gw = await start(make_gateway, upstream, max_body_bytes=1000)
    reader, writer = await connect(gw)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 5000\r\n\r\n" + b"x" * 100
    )
    status, headers, _ = await read_reply(reader)
    assert status == 413 and headers["connection"] == "close"
    assert await closed(reader, connections.LINGER_S / 2)
    writer.close()


async def test_a_client_sending_a_large_body_reads_the_early_reply(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    # As Python's http.client does: the whole body first, then the reply. Dropping the rest
    # was cut off after max_body_bytes with a reset, and the client never saw its 413.
    gw = await start(make_gateway, upstream, max_body_bytes=1 << 20)
    reader, writer = await connect(gw)
    size = 20 << 20
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % size
    )
    chunk = b"x" * (1 << 20)
    for _ in range(size // len(chunk)):
        writer.write(chunk)
        await asyncio.wait_for(writer.drain(), PROMPT_S)
    status, headers, _ = await read_reply(reader)
    assert status == 413 and headers["connection"] == "close"
    writer.close()


async def test_a_pipelined_head_that_stalls_gets_408(make_gateway: GatewayFactory) -> None:
    # Its first bytes came while the request ahead of it was answered: they start its clock.
    # (Bytes that share a packet with the request ahead are bounded by idle_timeout_s.)
    slow = {"name": "m", "type": "mock", "mock": {"chunk_delay_ms": 100, "chunks": 3}}
    gw = await make_gateway(
        {
            "00-gateway.yaml": {"gateway": {"header_timeout_s": 0.3, "idle_timeout_s": 60}},
            "90-p.yaml": {"plugin": "provider-proxy", "config": {"providers": [slow]}},
        }
    )
    reader, writer = await connect(gw)
    body = orjson.dumps(
        {"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    )
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), PROMPT_S)  # the stream began
    writer.write(b"GET /healthz HTTP/1.1\r\nHo")
    rest = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), PROMPT_S)  # it ended
    assert b"[DONE]" in rest
    status, headers, _ = await read_reply(reader)
    assert status == 408 and headers["connection"] == "close"
    writer.close()


async def test_a_client_that_does_not_read_its_response_is_closed(
    make_gateway: GatewayFactory, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The mock provider repeats the question: a 4 MB answer, and a client that reads none of
    # it held the connection, and the answer's buffers, for ever.
    gw = await make_gateway(
        {
            "00-gateway.yaml": {"gateway": {"idle_timeout_s": 0.3}},
            "90-p.yaml": MOCK_PROXY,
        }
    )
    limits = policy(gw)
    stalled = asyncio.Event()
    count = limits.counters.inc

    def inc(source: str, event: str, n: int = 1) -> None:
        count(source, event, n)
        if event == "send_timeout":
            stalled.set()

    monkeypatch.setattr(limits.counters, "inc", inc)
    url = gw.server.make_url("/")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (url.host, url.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    question = "x" * (4 << 20)
    body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": question}]})
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    async with asyncio.timeout(PROMPT_S):
        await stalled.wait()
    # Closed: what the client reads now ends short of the answer.
    received = 0
    with contextlib.suppress(ConnectionResetError):
        while data := await asyncio.wait_for(reader.read(1 << 16), PROMPT_S):
            received += len(data)
    assert received < len(question)  # the answer repeats it, and more
    writer.close()


async def test_a_client_reading_a_large_answer_slowly_gets_all_of_it(
    make_gateway: GatewayFactory,
) -> None:
    # Writing resumes only once nearly all that waits is sent: a slow but steady reader of a
    # large answer stays held back longer than idle_timeout_s, and was cut off.
    gw = await make_gateway(
        {"00-gateway.yaml": {"gateway": {"idle_timeout_s": 0.2}}, "90-p.yaml": MOCK_PROXY}
    )
    url = gw.server.make_url("/")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (url.host, url.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    question = "x" * (6 << 20)
    body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": question}]})
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), PROMPT_S)
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    received = 0
    async with asyncio.timeout(30):
        while received < length:
            data = await reader.read(64 << 10)
            assert data, f"cut off after {received} of {length} bytes"
            received += len(data)
            await asyncio.sleep(0.02)  # the client's pace: at most 3.2 MB/s
    assert policy(gw).counters.get("connections", "send_timeout") == 0
    writer.close()


async def test_pipelined_requests_then_idle_are_not_answered_408(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    # aiohttp 3.14 pauses reading once 32 requests are queued and re-parses with no bytes when
    # it resumes, which looked like the first bytes of another head.
    gw = await start(make_gateway, upstream, header_timeout_s=0.3, idle_timeout_s=1)
    reader, writer = await connect(gw)
    writer.write(HEALTHZ * 32)
    for _ in range(32):
        assert (await read_reply(reader))[0] == 200
    assert await closed(reader, PROMPT_S)  # at the idle timeout, with nothing sent
    writer.close()


async def test_a_body_read_whole_keeps_the_connection(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await start(make_gateway, upstream)
    reader, writer = await connect(gw)
    body = b"{not json"
    for _ in range(2):
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        status, headers, _ = await read_reply(reader)
        assert status == 400 and headers.get("connection") != "close"
    writer.close()


# Runs the rest of its command line with a limit of 128 open files, soft and hard.
LOW_FD_LIMIT = (
    sys.executable,
    "-c",
    "import os, resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128)); "
    "os.execv(sys.argv[1], sys.argv[1:])",
)


async def hold_connections(port: int, n: int) -> list[socket.socket]:
    """``n`` connections to ``port``, opened in this process (which has descriptors to spare)."""
    loop = asyncio.get_running_loop()
    held = []
    for _ in range(n):
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        held.append(sock)
    return held


async def test_the_default_limit_follows_the_descriptors_and_refuses_with_503(
    tmp_path: Path,
) -> None:
    conf = write_conf(tmp_path / "conf.d", {"90-p.yaml": MOCK_PROXY})
    proc = await spawn_aigw(conf, child_env(), launcher=LOW_FD_LIMIT)
    held: list[socket.socket] = []
    try:
        async with asyncio.timeout(TIMEOUT_S):
            port = await read_port(proc)
            limit = int((await read_until(proc, re.compile(r"connections: at most (\d+)")))[1])
            assert limit == (128 - 64) // 2
            held = await hold_connections(port, limit)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            status, _, _ = await read_reply(reader)
            writer.close()
            assert status == 503
            await read_until(proc, re.compile(r"WARNING .*connection limit reached"))
    finally:
        for sock in held:
            sock.close()
        proc.kill()
        await proc.wait()


async def test_descriptors_running_out_are_logged_once(tmp_path: Path) -> None:
    # A limit above what the descriptors allow: the kernel runs out first, and uvloop (libuv)
    # resets connections it cannot accept without a word.
    conf = write_conf(
        tmp_path / "conf.d",
        {"00-gateway.yaml": {"gateway": {"max_connections": 1000}}, "90-p.yaml": MOCK_PROXY},
    )
    proc = await spawn_aigw(conf, child_env(), launcher=LOW_FD_LIMIT)
    held: list[socket.socket] = []
    try:
        async with asyncio.timeout(TIMEOUT_S):
            port = await read_port(proc)
            held = await hold_connections(port, 140)
            await read_until(proc, re.compile(r"WARNING .*file descriptors nearly exhausted"))
            # Served again once connections close.
            for sock in held[:40]:
                sock.close()
            async with aiohttp.ClientSession() as http:
                while True:
                    try:
                        async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                            assert resp.status == 200
                            break
                    except aiohttp.ClientConnectionError:
                        await asyncio.sleep(0.05)  # the gateway has not seen the closes yet
        proc.terminate()
        assert proc.stderr is not None
        rest = (await proc.stderr.read()).decode()
        assert "file descriptors nearly exhausted" not in rest.split("shutting down")[0]
    finally:
        for sock in held:
            sock.close()
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


ACCEPTING_SERVER = """
import asyncio, logging, resource, sys
from aigw.connections import install_accept_error_logging
logging.basicConfig(level="INFO", format="%(levelname)s %(name)s: %(message)s")
resource.setrlimit(resource.RLIMIT_NOFILE, (40, 40))
async def main():
    install_accept_error_logging(asyncio.get_running_loop())
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
"""


async def test_asyncio_accept_failures_are_one_warning_not_tracebacks() -> None:
    # asyncio's loop (the gateway's without the speed extra) reports a failed accept to its
    # exception handler, which logged an error with a traceback at every retry.
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        ACCEPTING_SERVER,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=child_env(),
    )
    held: list[socket.socket] = []
    try:
        assert proc.stdout is not None and proc.stderr is not None
        async with asyncio.timeout(TIMEOUT_S):
            port = int(await proc.stdout.readline())
            held = await hold_connections(port, 60)
            await read_until(proc, re.compile(r"WARNING aigw.connections.fds: accepting a conn"))
        # Nothing more for a while, though the loop retries the accept every second.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.5):
                extra = await proc.stderr.readline()
                assert b"Traceback" not in extra and b"accept" not in extra
    finally:
        for sock in held:
            sock.close()
        proc.kill()
        await proc.wait()
