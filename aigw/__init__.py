"""aigw: an OpenAI-compatible AI gateway with exact and semantic caching.

Plugins import :data:`hookimpl` from here to mark their hook implementations, and build
:class:`Reply` objects to answer a request locally; ``check_ready`` may return
:class:`Degraded` for a backend the plugin can serve without.
"""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

#: Marker for plugin hook implementations: ``@hookimpl async def on_request(self, ctx): ...``
hookimpl = pluggy.HookimplMarker("aigw")

from aigw.context import Reply, RequestContext, Target  # noqa: E402
from aigw.errors import ConfigError, GatewayError  # noqa: E402
from aigw.readiness import Degraded  # noqa: E402

__all__ = [
    "ConfigError",
    "Degraded",
    "GatewayError",
    "Reply",
    "RequestContext",
    "Target",
    "__version__",
    "hookimpl",
]
