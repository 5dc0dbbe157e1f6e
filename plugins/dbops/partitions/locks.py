"""Bounded DDL: a statement that cannot get its lock within lock_timeout is retried with backoff, then
skipped with its reason (the caller goes on with the other steps and tables)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import psycopg

from dbops.partitions.policy import PartitionsPolicy

LOCK_NOT_AVAILABLE = "55P03"
T = TypeVar("T")
log = logging.getLogger(__name__)


class StepSkipped(Exception):
    """A step left undone on purpose (lock not granted after the retries, or a name in the way), with why."""


def with_lock_retries(what: str, policy: PartitionsPolicy, attempt: Callable[[], T]) -> T:
    """Run ``attempt`` (which opens its own transaction); on a lock timeout wait lock_retry_delay (doubling)
    and try again, ``lock_retries`` times; then raise :class:`StepSkipped` saying so."""
    delay = policy.lock_retry_delay
    for tries in range(policy.lock_retries + 1):
        try:
            return attempt()
        except psycopg.errors.LockNotAvailable as err:
            if tries == policy.lock_retries:
                raise StepSkipped(f"{what}: lock not granted within lock_timeout {policy.lock_timeout:g} s on "
                                  f"{tries + 1} tries ({' '.join(str(err).split())}); the next run tries again"
                                  ) from err
            log.warning("%s: lock not granted within %g s (try %d of %d); retrying in %g s", what,
                        policy.lock_timeout, tries + 1, policy.lock_retries + 1, delay)
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")
