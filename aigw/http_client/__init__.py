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
own; responses framed by ``Content-Length``, ``chunked`` or the connection's end (a reset
there ends only an error answer; it cuts any other short), ``gzip``/``deflate`` (zlib or raw)
decoded, a trailing dot of the host name left out of SNI and ``Host``, informational (1xx)
answers skipped. Streamed bodies have back-pressure: reading from the socket pauses while more
than 64 KiB wait unread. What it does not do: redirects (a 3xx reaches the caller as it is),
cookies, proxies, HTTP/2, ``Expect: 100-continue``.

Failures raise :class:`HTTPClientError`: :class:`ConnectError` (no connection, TLS refused),
:class:`ConnectTimeout` (TCP and TLS took longer than the connect timeout),
:class:`ReadTimeout` (no byte for the read timeout while an answer was due) and
:class:`ResponseError` (the connection closed or the answer was malformed). The timeouts are
``TimeoutError`` s too. A connection is reused only after an answer was read to its end
without ``Connection: close``; any failure closes it.
"""

from .errors import ConnectError, ConnectTimeout, HTTPClientError, ReadTimeout, ResponseError
from .pool import HTTPClient, Origin
from .response import Body, Response

__all__ = [
    "Body",
    "ConnectError",
    "ConnectTimeout",
    "HTTPClient",
    "HTTPClientError",
    "Origin",
    "ReadTimeout",
    "Response",
    "ResponseError",
]
