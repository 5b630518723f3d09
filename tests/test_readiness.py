"""``/readyz``'s verdict from the plugins' ``check_ready`` results (aigw.readiness)."""

from __future__ import annotations

from aigw import Degraded
from aigw.readiness import verdict


def test_no_problem_is_ready() -> None:
    assert verdict([None, None]) == (200, {"status": "ready"})
    assert verdict([]) == (200, {"status": "ready"})


def test_only_degraded_reasons_stay_200() -> None:
    status, body = verdict([Degraded("exact-cache: redis down"), None])
    assert status == 200
    assert body == {"status": "degraded", "problems": ["exact-cache: redis down"]}
    assert type(body["problems"][0]) is str  # plain JSON strings, whatever the plugin returned


def test_a_plain_reason_or_a_raising_probe_is_not_ready() -> None:
    status, body = verdict([Degraded("cache down"), "auth server down", OSError("refused")])
    assert status == 503 and body["status"] == "not ready"
    assert body["problems"] == [
        "cache down",
        "auth server down",
        "probe failed: OSError('refused')",
    ]
