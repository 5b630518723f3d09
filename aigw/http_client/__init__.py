"""A lean pooled HTTP/1.1 client for the gateway's calls to upstreams (LLM providers).

Why not aiohttp's ``ClientSession``: it builds a request object, URL, header multidicts,
payload, timer and trace context per call, and that was the largest part of the CPU a proxied
request took (``benchmarks/paired.py``, proxy-only at c=32: a request through this client took
0.56 of the CPU it took through ``ClientSession``, in two runs; see benchmarks/README.md). A
gateway pays it on every cache miss, so upstream calls go through this instead.
``Gateway.session`` (aiohttp) stays for plugins' other calls, and for providers reached
through an egress proxy, which this client does not do.

What it does: keep-alive connections pooled per origin (the most recently used first; idle
ones closed after ``keepalive_s`` by a timer); ``http`` and ``https`` (the system's CA store,
or ``SSL_CERT_FILE``; certificate and host name verified, SNI); addresses looked up once per
5 minutes and shared by concurrent connects, each new connection starting from the next
one (DNS round robin spreads the load), tried by happy eyeballs (RFC 8305: the next address
250 ms after the last, so a dead one is passed over); a request is one write (head
and body together); ``Host``, ``User-Agent``, ``Accept-Encoding: gzip, deflate`` and basic
auth from credentials in the URL unless the caller sets them, ``Content-Length`` always its
own; answers parsed by llhttp (``httptools``, the parser of uvicorn; aiohttp's is llhttp too),
framed by ``Content-Length``, ``chunked`` or the connection's end (a reset there ends only an
error answer; it cuts any other short), ``gzip`` (every member) and ``deflate`` (zlib or raw)
decoded, a trailing dot of the host name left out of SNI and ``Host``, informational (1xx)
answers skipped. Streamed bodies have back-pressure: reading from the socket, and decoding,
pause while more than 64 KiB wait unread. What it does not do: redirects (a 3xx reaches the
caller as it is), cookies, proxies, HTTP/2, ``Expect: 100-continue``, ``101`` upgrades.

Strict, as a shared connection must be (a byte read into the wrong answer would hand one
client's answer to another): what llhttp refuses (a malformed status line, header, chunk size,
a line end without CR, two ``Content-Length`` s, ``Content-Length`` with
``Transfer-Encoding``), a ``Transfer-Encoding`` other than one ``chunked``, an HTTP version
other than 1.0/1.1, a ``101``, a body on a 1xx, bytes while no answer is due, more than 64 KiB
of head or trailers, a compressed body cut short or followed by other bytes. Limits per origin
(:meth:`HTTPClient.origin`): ``max_body_bytes`` (what ``read()`` collects; 64 MiB) and
``max_decoded_bytes`` (what a compressed body decodes to; 64 MiB); no decoder call yields more
than 64 KiB at once.

Failures raise :class:`HTTPClientError`: :class:`ConnectError` (no connection, TLS refused),
:class:`ConnectTimeout` (TCP and TLS took longer than the connect timeout),
:class:`ReadTimeout` (no byte for the read timeout while an answer was due) and
:class:`ResponseError` (the connection closed or the answer was malformed). The timeouts are
``TimeoutError`` s too. A connection is reused only after an answer was read to its end
without ``Connection: close``; any failure (each of the above is a :class:`ResponseError`)
closes it.
"""

from .errors import (
    ConnectError,
    ConnectTimeout,
    HTTPClientError,
    ReadTimeout,
    ResponseError,
    StaleConnection,
)
from .pool import DEFAULT_MAX_BODY_BYTES, HTTPClient, Origin
from .response import Body, Response

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "Body",
    "ConnectError",
    "ConnectTimeout",
    "HTTPClient",
    "HTTPClientError",
    "Origin",
    "ReadTimeout",
    "Response",
    "ResponseError",
    "StaleConnection",
]
