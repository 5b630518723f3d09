"""Writing a response whose body is all there in one step, without aiohttp's general path.

aiohttp sends a :class:`~aiohttp.web.Response` in two awaited steps: ``prepare`` works out
compression, cookies, chunking and empty-body rules, sends the ``on_response_prepare``
signal and serialises the head; ``write_eof`` then writes it with the body. For the plain
case every gateway reply but a stream is (a body of bytes, a status that carries one, no
compression, no cookies) most of that decides nothing, and it was 14% of an exact-cache
hit's CPU. :meth:`WholeResponse.send` makes the same head (``Content-Length``, ``Date``,
``Server``, and ``Connection`` where keep-alive needs saying) with aiohttp's own serialiser,
so a header with a line break is refused the same way, and writes head and body at once.
With ``benchmarks/paired.py`` (6 rounds) an exact-cache hit took 15% less CPU: 62.6 to 53.8 µs.

That takes aiohttp's private names, so the write itself is
:func:`aigw.aiohttp_private.write_whole`, which declines when the installed aiohttp is not as
expected: the response then goes through ``prepare`` and ``write_eof``, the same bytes slower.
Either way the response is left as ``write_eof`` leaves it (sent, with its keep-alive
decision), so aiohttp's server, which prepares and ends every response a handler returns,
finds nothing left to do. The ``on_response_prepare`` signal is not sent by the one-step write:
the gateway's only receiver adds an ``x-request-id``, which the core sets on these responses
itself.
"""

from __future__ import annotations

from aiohttp import web

from aigw import aiohttp_private


class WholeResponse(web.Response):
    """A ``web.Response`` with a bytes body that :meth:`send` writes in one go.

    Anything but the plain case (a ``HEAD`` request, a 1xx, 204 or 304 status, compression,
    cookies, chunking, a ``Content-Length`` or ``Transfer-Encoding`` set by the caller, a
    body that is not bytes, a response already prepared), and everything when aiohttp is not
    as :mod:`aigw.aiohttp_private` expects, goes through aiohttp's ``prepare`` and
    ``write_eof`` unchanged.
    """

    async def send(self, request: web.BaseRequest) -> None:
        """Send the status line, headers and body: ``prepare`` then ``write_eof``.

        Raises ``ValueError`` for a header aiohttp would refuse (a line break in a name or
        value), before anything is written, and ``ConnectionResetError`` when the client has
        gone. As with aiohttp, the headers it adds stay on the response.
        """
        if aiohttp_private.write_whole(self, request):
            # Returns at once unless the client reads slower than we write.
            await request.writer.drain()
            return
        await self.prepare(request)
        await self.write_eof()
