"""A sink's Health: the transitions its log lines hang on, and the 0/1 gauge kept with them."""

from __future__ import annotations

from gateway.core.readiness import Health


def test_failing_and_recovering_report_each_change_and_say_which_call_changed_it() -> None:
    reported: list[float] = []
    health = Health(reported.append)
    assert (health.ready, health.reason, reported) == (True, "", [1])
    assert not health.recovered()  # already ready: nothing to log
    assert health.failing("inserts fail: timeout")  # the first failure: log it
    assert not health.failing("inserts fail: refused")  # still failing: the reason follows the latest
    assert (health.ready, health.reason) == (False, "inserts fail: refused")
    assert health.recovered()
    assert (health.ready, health.reason, reported) == (True, "", [1, 0, 0, 1])
