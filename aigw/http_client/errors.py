"""What the upstream client raises: transport failures, not HTTP error statuses."""

from __future__ import annotations


class HTTPClientError(Exception):
    """An upstream call failed in the transport (not an HTTP error status)."""


class ConnectError(HTTPClientError):
    """No connection could be made (refused, unresolvable, TLS handshake failed)."""


class ConnectTimeout(HTTPClientError, TimeoutError):
    """Connecting (TCP and TLS) took longer than the connect timeout."""


class ReadTimeout(HTTPClientError, TimeoutError):
    """No byte arrived for the read timeout while an answer was due."""


class ResponseError(HTTPClientError):
    """The connection closed before the answer was whole, or the answer was not HTTP/1.x."""
