"""Fast OpenAI-compatible mock upstream for the benchmarks.

Serves `POST /v1/chat/completions`:

* non-stream: one `chat.completion` JSON object in OpenAI's exact shape;
* `"stream": true`: OpenAI's SSE framing, each event a separate write: a role chunk, four
  content chunks, the finish chunk, a usage chunk when `stream_options.include_usage`, then
  `data: [DONE]`.

The answer is small and fixed apart from echoing the last user message, so distinct prompts get
distinct answers (which is what makes exact-cache hits checkable) while every answer costs the
same to produce. Everything that does not depend on the request is serialised once at import,
so this process stays far from being the bottleneck of a run.

    python -m benchmarks.upstream --port 9000
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Sequence
from typing import Any

import orjson
from aiohttp import web

from benchmarks._runtime import serve

ANSWER_PREFIX = "You said: "
ANSWER_SUFFIX = "."
ANSWER_FILLER = " This is a fixed-size answer from the aigw benchmark upstream."

_ids = itertools.count(1)


def _content_choices(piece: str) -> bytes:
    """The `choices` member of a content chunk carrying `piece`."""
    return (
        b'"choices":[{"index":0,"delta":{"content":'
        + orjson.dumps(piece)
        + b'},"logprobs":null,"finish_reason":null}]'
    )


_ROLE_CHOICES = (
    b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},'
    b'"logprobs":null,"finish_reason":null}]'
)
_PREFIX_CHOICES = _content_choices(ANSWER_PREFIX)
_SUFFIX_CHOICES = _content_choices(ANSWER_SUFFIX)
_FILLER_CHOICES = _content_choices(ANSWER_FILLER)
_FINISH_CHOICES = b'"choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]'
_DONE = b"data: [DONE]\n\n"
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


def last_user_text(messages: Any) -> str:
    """Text of the last `user` message; list content keeps only its text parts."""
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return "".join(
                str(part.get("text", ""))
                for part in content
                if isinstance(part, dict) and part.get("type") == "text"
            )
        return ""
    return ""


def _tokens(text: str) -> int:
    # About four characters a token: the benchmarks only need stable, plausible counts.
    return max(1, len(text) // 4)


def _usage(prompt: str, answer: str) -> dict[str, int]:
    prompt_tokens = _tokens(prompt)
    completion_tokens = _tokens(answer)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _error(status: int, message: str) -> web.Response:
    body = {
        "error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}
    }
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """Answer one chat completion, as JSON or as an SSE stream."""
    try:
        payload = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return _error(400, "request body is not valid JSON")
    if not isinstance(payload, dict):
        return _error(400, "request body must be a JSON object")
    model = payload.get("model")
    if not isinstance(model, str):
        return _error(400, "'model' is required")
    prompt = last_user_text(payload.get("messages"))
    answer = ANSWER_PREFIX + prompt + ANSWER_SUFFIX + ANSWER_FILLER
    completion_id = f"chatcmpl-bench-{next(_ids)}"
    created = int(time.time())

    if payload.get("stream") is not True:
        body = {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": _usage(prompt, answer),
        }
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    options = payload.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    head = b'data: {"id":"%s","object":"chat.completion.chunk","created":%d,"model":%s,' % (
        completion_id.encode(),
        created,
        orjson.dumps(model),
    )
    # OpenAI sends `"usage": null` on every chunk but the last when usage was asked for.
    tail = b',"usage":null}\n\n' if include_usage else b"}\n\n"
    response = web.StreamResponse(headers=_SSE_HEADERS)
    await response.prepare(request)
    for choices in (
        _ROLE_CHOICES,
        _PREFIX_CHOICES,
        _content_choices(prompt),
        _SUFFIX_CHOICES,
        _FILLER_CHOICES,
        _FINISH_CHOICES,
    ):
        await response.write(head + choices + tail)
    if include_usage:
        usage = orjson.dumps(_usage(prompt, answer))
        await response.write(head + b'"choices":[],"usage":' + usage + b"}\n\n")
    await response.write(_DONE)
    await response.write_eof()
    return response


def make_app() -> web.Application:
    """The mock upstream as an aiohttp application (usable in-process, e.g. in tests)."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat_completions)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point: serve the mock upstream until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args(argv)
    serve(make_app(), args.host, args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
