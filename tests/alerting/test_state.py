"""The alert state machine: pending for `for`, notify once, repeat on schedule, resolve once, silences."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from dbops.alerting.state import FIRING, INACTIVE, PENDING, AlertState, Silence, step

T0 = datetime(2026, 11, 22, 3, 0, tzinfo=timezone.utc)
EVERY = timedelta(minutes=5)
FOR = timedelta(minutes=10)
REPEAT = timedelta(hours=1)


def run(values: list[bool], for_: timedelta = FOR, repeat: timedelta = REPEAT, silenced=lambda i: False):
    """Evaluate a series of breach flags every five minutes; return (statuses, notifications)."""
    state, statuses, notes = None, [], []
    for i, breaching in enumerate(values):
        transition = step(state, breaching, T0 + i * EVERY, for_, repeat, silenced(i))
        state = transition.state
        statuses.append(state.status)
        notes.append(transition.notify)
    return statuses, notes


def test_breach_shorter_than_for_never_notifies():
    statuses, notes = run([True, True, False, True, False, True, True, False])
    assert FIRING not in statuses and set(notes) == {None}
    assert statuses[:3] == [PENDING, PENDING, INACTIVE]


def test_fires_once_after_for_then_resolves_once():
    statuses, notes = run([True, True, True, True, True, False, False])
    assert statuses == [PENDING, PENDING, FIRING, FIRING, FIRING, INACTIVE, INACTIVE]
    assert notes == [None, None, "firing", None, None, "resolved", None]


def test_still_firing_repeats_only_after_the_repeat_interval():
    _, notes = run([True] * 30)
    fired = [i for i, n in enumerate(notes) if n]
    assert notes[2] == "firing"
    assert fired == [2, 14, 26] and {notes[14], notes[26]} == {"repeat"}


def test_zero_for_fires_on_the_first_breach():
    statuses, notes = run([True, False], for_=timedelta(0))
    assert statuses == [FIRING, INACTIVE] and notes == ["firing", "resolved"]


def test_silenced_alert_keeps_state_but_is_not_notified_and_ends_quietly():
    statuses, notes = run([True] * 5 + [False], silenced=lambda i: True)
    assert statuses[2:5] == [FIRING] * 3 and set(notes) == {None}


def test_silence_expiring_mid_incident_notifies_then():
    _, notes = run([True] * 6, silenced=lambda i: i < 4)
    assert notes == [None, None, None, None, "firing", None]


def test_silence_matchers_and_expiry():
    silence = Silence({"rule": "long_running_queries", "database": "app.*"}, expires_at=T0 + REPEAT)
    labels = {"rule": "long_running_queries", "database": "appdb", "pid": "42"}
    assert silence.silences(labels, T0)
    assert not silence.silences({**labels, "database": "billing"}, T0)
    assert not silence.silences({"database": "appdb"}, T0)
    assert not silence.silences(labels, T0 + REPEAT)


def test_resolution_of_a_pending_alert_is_silent():
    state = AlertState(PENDING, active_since=T0)
    assert step(state, False, T0 + EVERY, FOR, REPEAT).notify is None
    assert step(state, False, T0 + EVERY, FOR, REPEAT).state.status == INACTIVE


@pytest.mark.parametrize(("for_", "repeat"), [(timedelta(minutes=-1), REPEAT), (FOR, timedelta(0))])
def test_bad_durations_are_rejected(for_, repeat):
    with pytest.raises(ValueError):
        step(None, True, T0, for_, repeat)


def test_a_silence_with_an_invalid_pattern_is_refused_naming_it():
    with pytest.raises(ValueError, match=r"matcher 'alertname': 'disk_\(full' is not a valid regular expression"):
        Silence({"severity": "critical", "alertname": "disk_(full"}, expires_at=T0)
