"""The life of one alert (a rule and a set of labels): inactive → pending → firing → resolved.

Pure logic, so every rule of it is a unit test: a value must breach for ``for_`` before the alert
fires; a firing alert notifies once, then again only every ``repeat``; the end of a notified alert is
notified once; silences suppress notifications, never state. Time comes in as an argument: a run
evaluates "as of" its own time, never the wall clock.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

INACTIVE, PENDING, FIRING = "inactive", "pending", "firing"


@dataclass(frozen=True)
class AlertState:
    status: str = INACTIVE
    active_since: datetime | None = None  # when the breach began
    last_notified: datetime | None = None  # when people were last told it is firing


@dataclass(frozen=True)
class Transition:
    state: AlertState
    notify: str | None  # "firing", "repeat", "resolved" or None


@dataclass(frozen=True)
class Silence:
    """Matches alerts whose labels match every matcher (a full-match regular expression) until ``expires_at``.

    :raises ValueError: a matcher is not a valid regular expression (named with its pattern).
    """

    matchers: dict[str, str]
    expires_at: datetime

    def __post_init__(self) -> None:
        for name, pattern in self.matchers.items():
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"matcher {name!r}: {pattern!r} is not a valid regular expression ({err})") from err

    def silences(self, labels: dict[str, str], now: datetime) -> bool:
        if now >= self.expires_at:
            return False
        return all(re.fullmatch(pattern, labels.get(name, "")) for name, pattern in self.matchers.items())


def step(state: AlertState | None, breaching: bool, now: datetime, for_: timedelta, repeat: timedelta,
         silenced: bool = False) -> Transition:
    """The next state of an alert after one evaluation, and what (if anything) to notify."""
    if for_ < timedelta(0) or repeat <= timedelta(0):
        raise ValueError("for_ must be >= 0 and repeat > 0")
    state = state or AlertState()
    if not breaching:
        told = state.status == FIRING and state.last_notified is not None
        return Transition(AlertState(), "resolved" if told else None)
    if state.status == INACTIVE:
        state = AlertState(PENDING, active_since=now)
    if state.status == PENDING:
        if now - state.active_since < for_:
            return Transition(state, None)
        state = replace(state, status=FIRING)
    if silenced:
        return Transition(state, None)
    if state.last_notified is None:
        return Transition(replace(state, last_notified=now), "firing")
    if now - state.last_notified >= repeat:
        return Transition(replace(state, last_notified=now), "repeat")
    return Transition(state, None)
