"""Identifiers for requests and replayed responses: unique across processes, cheap, not secret.

An id is a random per-process prefix plus a counter: no syscall and no random draw per
request. Several gateway instances (or workers) pick different prefixes, so their ids never
collide in shared logs.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping

_prefix = ""
_counter = itertools.count()


def _reseed() -> None:
    global _prefix, _counter
    _prefix = os.urandom(6).hex()
    _counter = itertools.count(1)


_reseed()
os.register_at_fork(after_in_child=_reseed)  # a forked child must not repeat its parent's ids


def new_id() -> str:
    """A 24-hex-digit id, unique across the processes of a deployment."""
    return f"{_prefix}{next(_counter):012x}"


def request_id(headers: Mapping[str, str]) -> str:
    """The client's ``x-request-id`` when it is a sane one (printable ASCII, at most 128
    characters: it goes into logs and headers), else a new id."""
    rid = headers.get("x-request-id", "")
    if 0 < len(rid) <= 128 and rid.isascii() and rid.isprintable():
        return rid
    return new_id()
