"""The one place aigw uses aiohttp's private names, each for a measured gain, all guarded.

Everything else uses aiohttp's public API (DESIGN.md §8). What is here, and why:

- :func:`write_whole`: a response whose body is all there, written in one step instead of
  ``prepare`` then ``write_eof`` (15% of an exact-cache hit's CPU; see
  :mod:`aigw.whole_response`). Private: the head serialiser, the date and empty-body helpers,
  and the response's sent/keep-alive/length state, which must be left as ``write_eof`` leaves
  it for aiohttp's server to see the response as done.
- :func:`take_body`: a body that arrived with the headers, taken from the stream as it lies
  instead of through ``request.read()``'s two awaited reads and copy (4.6% of an exact-cache
  hit's CPU with ``benchmarks/paired.py``, 8 rounds from 1.016 to 1.084). Private: the
  request's cache of its body, which a later ``read()`` (a plugin's, say) must still find.
- :func:`dispatch`: the gateway's API routes served by a dict lookup of the raw request target
  instead of ``Application._handle`` (a loop lookup, the router's resolution, a match info
  built, and a coroutine frame more for every later step of the request to resume through):
  with ``benchmarks/paired.py`` (6 rounds) a shipped miss took 7% more CPU through aiohttp's
  path (ratio 0.931, 5 of 6 rounds below 1). Private: the app's request handler, replaced on
  the instance, and the request's match info, set as the router would.
- :func:`install`: the gateway's connection handler (:mod:`aigw.connections`: timeouts, the
  connection limit) with OpenAI-style replies for the errors aiohttp answers on its own (a
  request it cannot parse, a handler that raised). aiohttp has no hook for those replies but
  ``RequestHandler.handle_error`` (and, for the router's own 404 and 405 to targets it cannot
  route, such as ``OPTIONS *`` and ``CONNECT``'s, ``RequestHandler.finish_response``), and no
  public way to choose the ``RequestHandler`` class that a runner's (or a test server's) server
  makes: the app's server factory is wrapped.
- :func:`message_queue` and :func:`parse_error`: the connection handler sees each head parsed
  (its header timeout stops), and a request body whose chunked encoding breaks after its head
  was handed to the handler (a malformed chunk size) is failed, so that the handler reading it
  gets a 400 at once. aiohttp's C parser queues the error as a message of its own and never
  tells the body it was feeding: the handler waited on it until the client left (its
  pure-Python parser does fail the body). Private: the connection's queue of parsed messages,
  and the type of the error messages in it.

At import, :data:`PROBLEMS` lists what differs from what these need in the installed aiohttp
(a name gone, a signature changed, a private attribute that no longer means what it did: each
is tried on a throwaway object). :data:`FAST_PATHS_OK` is true when nothing does; otherwise
each function here does nothing (returns ``False`` or ``None``), its caller takes the public
path (``prepare`` and ``write_eof``; ``await request.read()``; aiohttp's plain-text error
replies) and :func:`install` logs one warning saying so at start-up. setup.cfg bounds aiohttp to
the versions CI tests (tox.ini's floor and ceiling environments); the check is for the rest.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Collection, Mapping, Sequence
from typing import Any, cast

import aiohttp
from aiohttp import hdrs, web
from aiohttp.http import SERVER_SOFTWARE, HttpVersion10, HttpVersion11
from multidict import CIMultiDict

try:
    from aiohttp.helpers import must_be_empty_body, rfc822_formatted_time
    from aiohttp.http_writer import _serialize_headers
    from aiohttp.web_protocol import _ErrInfo
    from aiohttp.web_urldispatcher import AbstractRoute, UrlMappingMatchInfo
except ImportError as err:  # nothing below may use them then: _check says why
    _IMPORT_ERROR: str | None = str(err)
else:
    _IMPORT_ERROR = None

log = logging.getLogger("aigw")

# What the server aiohttp makes for an app must hold for _Server to make its handlers.
_SERVER_STATE = ("_loop", "_kwargs")


def _check() -> list[str]:
    """What the installed aiohttp lacks of what this module uses; empty when all is there."""
    if _IMPORT_ERROR is not None:
        return [_IMPORT_ERROR]
    problems: list[str] = []
    if (
        _serialize_headers("HTTP/1.1 200 OK", CIMultiDict(a="b"))
        != b"HTTP/1.1 200 OK\r\na: b\r\n\r\n"
    ):
        problems.append("aiohttp.http_writer._serialize_headers writes another head")
    try:
        _serialize_headers("HTTP/1.1 200 OK", CIMultiDict(a="b\r\nc: d"))
        problems.append("aiohttp.http_writer._serialize_headers lets a line break through")
    except ValueError:
        pass
    if not (
        must_be_empty_body("HEAD", 200)
        and must_be_empty_body("GET", 304)
        and not must_be_empty_body("GET", 200)
    ):
        problems.append("aiohttp.helpers.must_be_empty_body decides otherwise")
    if not rfc822_formatted_time().endswith(" GMT"):
        problems.append("aiohttp.helpers.rfc822_formatted_time gives another format")
    problems += _check_response()
    params = list(inspect.signature(web.RequestHandler.handle_error).parameters)
    if params != ["self", "request", "status", "exc", "message"]:
        problems.append(f"RequestHandler.handle_error takes {params}")
    finish = web.RequestHandler.finish_response
    params = list(inspect.signature(finish).parameters)
    if params != ["self", "request", "resp", "start_time"] or not (
        inspect.iscoroutinefunction(finish)
    ):
        problems.append(f"RequestHandler.finish_response is not a coroutine taking {params}")
    params = list(inspect.signature(web.RequestHandler.__init__).parameters)
    if params[:2] != ["self", "manager"] or "loop" not in params:
        problems.append(f"RequestHandler() takes {params}")
    if not callable(getattr(web.Application, "_make_handler", None)):
        problems.append("web.Application has no _make_handler")
    if "_read_bytes" not in getattr(web.BaseRequest, "ATTRS", ()):
        problems.append("web.BaseRequest has no _read_bytes")
    problems += _check_dispatch()
    if "_messages" not in getattr(web.RequestHandler, "__slots__", ()):
        problems.append("web.RequestHandler has no _messages")
    if [a.name for a in getattr(_ErrInfo, "__attrs_attrs__", ())] != ["status", "exc", "message"]:
        problems.append("aiohttp.web_protocol._ErrInfo holds something else")
    return problems


def _check_dispatch() -> list[str]:
    """What :func:`dispatch` relies on: the app's per-request handler, the request's match
    info, and a match info built from a route as the router builds it."""
    problems = []
    params = list(inspect.signature(web.Application._handle).parameters)
    if params != ["self", "request"]:
        problems.append(f"Application._handle takes {params}")
    if "_match_info" not in getattr(web.Request, "ATTRS", ()):
        problems.append("web.Request has no _match_info")
    params = list(inspect.signature(UrlMappingMatchInfo.__init__).parameters)
    if params != ["self", "match_dict", "route"]:
        problems.append(f"UrlMappingMatchInfo() takes {params}")
    if not all(callable(getattr(UrlMappingMatchInfo, n, None)) for n in ("add_app", "freeze")):
        problems.append("UrlMappingMatchInfo has no add_app or freeze")
    return problems


def _check_response() -> list[str]:
    """Each private attribute of a response that :func:`write_whole` reads or sets, tried on a
    throwaway response: it must mean what the public API says it does."""
    resp = web.Response(body=b"x")
    names = ("_compression", "_chunked", "_cookies", "_keep_alive", "_eof_sent", "_body_length")
    missing = [name for name in names if not hasattr(resp, name)]
    if missing:
        return [f"web.Response has no {', '.join(missing)}"]
    problems = []
    if resp._compression or resp._chunked or resp._cookies or resp._keep_alive is not None:
        problems.append("a new web.Response is not plain")
    resp.enable_compression()
    resp.enable_chunked_encoding()
    resp.set_cookie("c", "v")
    if not (resp._compression and resp._chunked and resp._cookies):
        problems.append("web.Response keeps compression, chunking or cookies elsewhere")
    resp._keep_alive, resp._eof_sent, resp._body_length = False, True, 7
    if (resp.keep_alive, resp.prepared, resp.body_length) != (False, True, 7):
        problems.append("web.Response keeps its keep-alive, sent state or length elsewhere")
    return problems


PROBLEMS: tuple[str, ...] = tuple(_check())
FAST_PATHS_OK: bool = not PROBLEMS


def write_whole(response: web.Response, request: web.BaseRequest) -> bool:
    """Write ``response`` (status line, headers, body) in one transport write, leaving it as
    ``write_eof`` does; ``False`` (nothing written) unless it is the plain case.

    The plain case: the fast paths are on, the body is bytes, the response is not prepared,
    the request and status allow a body, and there is no compression, cookie, chunking,
    ``Content-Length`` or ``Transfer-Encoding`` set by the caller. The head is aiohttp's
    (``Content-Length``, a default ``Content-Type``, ``Date``, ``Server``, and ``Connection``
    where keep-alive needs saying), added to ``response.headers`` as aiohttp does. Raises
    ``ValueError`` for a header aiohttp refuses (a line break), before writing anything, and
    ``ConnectionResetError`` when the client has gone. The caller awaits the writer's drain.
    """
    body = response.body
    headers = response.headers  # added to below, as aiohttp does
    status = response.status
    if (
        not FAST_PATHS_OK
        or type(body) is not bytes
        or response.prepared
        or must_be_empty_body(request.method, status)
        or response._compression
        or response._cookies
        or response._chunked
        or hdrs.CONTENT_LENGTH in headers
        or hdrs.TRANSFER_ENCODING in headers
    ):
        return False
    keep_alive = response._keep_alive
    if keep_alive is None:
        keep_alive = request.keep_alive
    version = request.version
    headers[hdrs.CONTENT_LENGTH] = str(len(body))
    if body:
        headers.setdefault(hdrs.CONTENT_TYPE, "application/octet-stream")
    if hdrs.DATE not in headers:
        headers[hdrs.DATE] = rfc822_formatted_time()
    headers.setdefault(hdrs.SERVER, SERVER_SOFTWARE)
    if hdrs.CONNECTION not in headers:
        if keep_alive:
            if version == HttpVersion10:
                headers[hdrs.CONNECTION] = "keep-alive"
        elif version == HttpVersion11:
            headers[hdrs.CONNECTION] = "close"
    status_line = f"HTTP/{version.major}.{version.minor} {status} {response.reason}"
    data = _serialize_headers(status_line, headers) + body
    transport = request.transport
    if transport is None or transport.is_closing():
        raise ConnectionResetError("Cannot write to closing transport")
    transport.write(data)
    # What write_eof leaves: the response sent, its keep-alive decision kept for the server
    # (which reads it to keep the connection or close it), the bytes counted. The writer's
    # count is how aiohttp sees that a response went out, should the handler raise after
    # this: it then closes the connection instead of sending its 500 too.
    request.writer.output_size += len(data)
    response._keep_alive = keep_alive
    response._eof_sent = True
    response._body_length = len(data)
    return True


def take_body(request: web.BaseRequest) -> bytes | None:
    """The request's whole body if it has all arrived and was not read yet, else ``None``.

    Taken from the stream without waiting; ``request.read()`` returns it afterwards all the
    same. ``None`` also when the fast paths are off: the caller then awaits ``read()``. Raises
    what the stream holds for a body that could not be decoded, as ``read()`` would.
    """
    if not FAST_PATHS_OK or not request.content.is_eof() or request._read_bytes is not None:
        return None
    body = request._read_bytes = request.content.read_nowait()
    return body


def dispatch(app: web.Application, paths: Collection[str]) -> bool:
    """Serve the routes registered for ``paths`` by a dict lookup before the router; ``False``
    (the router serves them) when the fast paths are off or the app has no room for it.

    A path is taken over only when the router would pick one route for it whatever the method
    (the first resource registered for it has a single route for ``*``), so the result is the
    router's. Anything the lookup does not match exactly takes aiohttp's own path, unchanged:
    a query string or a percent-encoded path (the raw target differs), an ``Expect`` header
    (aiohttp answers ``100-continue`` before the handler), every request of an app given
    middlewares (they wrap the handler there). Call it once every route is added: a runner
    (or test server) reads the handler when it starts.
    """
    if not FAST_PATHS_OK:
        return False
    table: dict[str, AbstractRoute] = {}
    seen: set[str] = set()
    for resource in app.router.resources():
        path = resource.canonical
        if path not in paths or path in seen:
            continue
        seen.add(path)  # the router tries resources in order: the first one decides
        routes = list(resource)
        if len(routes) == 1 and routes[0].method == hdrs.METH_ANY:
            table[path] = routes[0]
    routed = app._handle

    # Not a coroutine function: it returns the handler's coroutine for aiohttp to await, so a
    # request runs one coroutine frame less deep (every suspension and resumption of the
    # handler passes through each frame).
    def handle(request: web.Request) -> Awaitable[web.StreamResponse]:
        route = table.get(request.raw_path)
        if route is None or hdrs.EXPECT in request.headers or app.middlewares:
            return routed(request)
        match_info = UrlMappingMatchInfo({}, route)
        match_info.add_app(app)
        match_info.freeze()
        request._match_info = match_info
        return route.handler(request)

    # Set on the instance with object.__setattr__, which aiohttp's debug mode would otherwise
    # flag as a custom attribute; an app without room for it (a slotted one) keeps the router.
    try:
        object.__setattr__(app, "_handle", handle)
    except AttributeError:
        return False
    return True


def message_queue(handler: web.RequestHandler) -> Sequence[tuple[Any, Any]]:
    """The queue of messages ``handler``'s parser has parsed and its loop not yet taken (an
    empty tuple, which never grows, when the fast paths are off). Made once per handler."""
    if not FAST_PATHS_OK:
        return ()
    return handler._messages


def parse_error(message: object) -> BaseException | None:
    """The error a message that ``handler``'s parser queued (:func:`message_queue`) stands
    for, when it is not a request (the parser failed), else ``None``."""
    if not FAST_PATHS_OK or not isinstance(message, _ErrInfo):
        return None
    return message.exc


class _Server(web.Server):
    """aiohttp's server, making connection handlers of :attr:`handler_class` with
    :attr:`handler_kwargs` (the server's own, with :func:`install`'s on top)."""

    handler_class: type[web.RequestHandler] = web.RequestHandler
    handler_kwargs: dict[str, Any] = {}

    def __call__(self) -> web.RequestHandler:
        return self.handler_class(self, loop=self._loop, **self.handler_kwargs)


def install(
    app: web.Application,
    handler_class: type[web.RequestHandler],
    handler_kwargs: Mapping[str, Any] | None = None,
) -> None:
    """At start-up: have the servers aiohttp makes for ``app`` (the CLI's runner, a test
    server) use ``handler_class`` for their connections, made with ``handler_kwargs`` on top
    of the server's own (``RequestHandler``'s public parameters, or the class's own); or,
    when the fast paths are off, log one warning that aigw takes aiohttp's public paths
    (plain-text error replies, and none of ``handler_class``'s behaviour)."""
    if not FAST_PATHS_OK:
        log.warning(
            "aiohttp %s is not as aigw expects (%s): aigw uses its public API only, which is "
            "slower, with aiohttp's own plain-text replies to requests it cannot parse and "
            "without the gateway's connection timeouts and limit (aiohttp's keep-alive only)",
            aiohttp.__version__,
            "; ".join(PROBLEMS),
        )
        return
    make = app._make_handler

    def make_handler(**kwargs: Any) -> web.Server:
        server = make(**kwargs)
        if type(server) is not web.Server or not all(hasattr(server, n) for n in _SERVER_STATE):
            _plain_errors(f"it makes another kind of server ({type(server).__name__})")
            return server
        # The server aiohttp built, made to build our handlers: its state stays as it is.
        server.__class__ = _Server
        ours = cast(_Server, server)
        ours.handler_class = handler_class
        ours.handler_kwargs = {**ours._kwargs, **(handler_kwargs or {})}
        return server

    # Set on the instance with object.__setattr__, which aiohttp's debug mode would otherwise
    # flag as a custom attribute; an app without room for it keeps aiohttp's own.
    try:
        object.__setattr__(app, "_make_handler", make_handler)
    except AttributeError:
        _plain_errors("its app takes no server factory of aigw's")


def _plain_errors(why: str) -> None:
    log.warning(
        "aiohttp %s is not as aigw expects (%s): aiohttp's own plain-text replies to "
        "requests it cannot parse, and none of the gateway's connection timeouts and limit",
        aiohttp.__version__,
        why,
    )
