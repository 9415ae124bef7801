"""The supervisors' restart policy: back-off per child, crash loop counted in lives, not wall-clock time."""

from __future__ import annotations

from gateway.child_processes import RestartPolicy


def test_five_quick_crashes_in_a_row_are_a_loop_however_far_apart() -> None:
    policy = RestartPolicy()
    delay = policy.first_delay_s
    delays = []
    for _ in range(4):  # children that take minutes to start still crash-loop
        next_delay = policy.crashed(ran_for=0.1, delay=delay)
        assert next_delay is not None
        delays.append(next_delay)
        delay = policy.next_delay(next_delay)
    assert delays == [1.0, 2.0, 4.0, 8.0]
    assert policy.crashed(ran_for=0.1, delay=delay) is None


def test_a_crash_after_a_stable_run_starts_afresh() -> None:
    policy = RestartPolicy()
    for _ in range(4):
        assert policy.crashed(ran_for=5, delay=8.0) == 8.0
    assert policy.crashed(ran_for=60, delay=16.0) == 1.0  # ran long enough: not part of a loop
    for _ in range(4):
        assert policy.crashed(ran_for=5, delay=1.0) is not None
    assert policy.crashed(ran_for=5, delay=1.0) is None
