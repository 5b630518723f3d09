"""Through the gateway (issue #15): a hostile upstream cannot hand one client's request an
answer it hid inside the answer to another's (a response desync on a pooled connection)."""

from __future__ import annotations

import asyncio

import orjson

from tests.conftest import GatewayFactory

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def completion(content: str) -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 0,
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
    )


def answer(body: bytes) -> bytes:
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
    return f"{head}\r\n\r\n".encode() + body


async def read_request(reader: asyncio.StreamReader) -> bool:
    """One request (head and Content-Length body); False once the gateway closed."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return False
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return True


async def test_an_answer_hidden_behind_a_second_content_length_reaches_no_client(
    make_gateway: GatewayFactory,
) -> None:
    # The first answer has two Content-Lengths: by the first it ends after its JSON, by the
    # second it goes on with a whole answer, sent once the next request is on the connection.
    first = completion("for the first client")
    hidden = answer(completion("hidden, for whoever asks next"))
    head = (
        f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(first)}"
        f"\r\nContent-Length: {len(first) + len(hidden)}\r\n\r\n"
    )
    connections = 0

    async def hostile(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            if connections == 1 and await read_request(reader):
                writer.write(head.encode() + first)
                if await read_request(reader):  # the next request came on this connection
                    writer.write(hidden)
            while await read_request(reader):
                writer.write(answer(completion("own answer")))
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(hostile, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    provider = {
        "name": "hostile",
        "type": "openai",
        "base_url": f"http://127.0.0.1:{port}/v1",
        "api_keys": ["sk-upstream"],
        "models": ["*"],
        "max_retries": 0,
    }
    gw = await make_gateway(
        {"90-p.yaml": {"plugin": "provider-proxy", "config": {"providers": [provider]}}}
    )
    try:
        replies = []
        for _ in range(2):  # one after the other: the second would get the pooled connection
            async with gw.http.post(gw.url("/v1/chat/completions"), json=CHAT) as resp:
                replies.append((resp.status, await resp.read()))
    finally:
        server.close()
    assert all(b"hidden" not in body for _, body in replies)
    assert replies[0][0] == 502  # the first answer was refused: its framing is ambiguous
    status, body = replies[1]
    assert status == 200 and orjson.loads(body)["choices"][0]["message"]["content"] == "own answer"
    assert connections == 2
