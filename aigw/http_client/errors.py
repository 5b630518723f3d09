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
    """The connection closed before the answer was whole, or the answer was malformed,
    ambiguous or over a limit (see :mod:`aigw.http_client`); its connection is closed. The
    request was sent: the upstream may have processed it."""


class StaleConnection(ResponseError):
    """A pooled connection, reused for the request, closed before the answer's first byte:
    the upstream had closed it while it was idle (the race every keep-alive pool has), so it
    did not process the request, which can be sent again on a new connection."""
