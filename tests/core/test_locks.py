"""job_lock on the real ops database: one holder per target and job, a second one skips with who holds it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from airflow.sdk.exceptions import AirflowSkipException

from dbops.core.locks import JobBusy, JobBusyRetry, job_lock

OPS = "dbops_state"


def test_second_holder_waits_then_skips_naming_the_holder(pg_server):
    with job_lock(OPS, "lock_t1", "retention"):
        started = time.monotonic()
        with pytest.raises(JobBusy, match=r"retention of lock_t1 is already running .*pid \d+"):
            with job_lock(OPS, "lock_t1", "retention", wait_seconds=1):
                pytest.fail("the block must not run while another run holds the lock")
        assert time.monotonic() - started >= 1
        with job_lock(OPS, "lock_t1", "alerts", wait_seconds=0):  # another job of the target: independent
            pass
        with job_lock(OPS, "lock_t2", "retention", wait_seconds=0):  # another target: independent
            pass


def test_retry_when_busy_fails_the_try_instead_of_skipping(pg_server):
    with job_lock(OPS, "lock_t6", "anonymize"):
        with pytest.raises(JobBusyRetry, match=r"anonymize of lock_t6 is already running .*pid \d+.*nothing was done"
                                               r".*Airflow retries it") as busy:
            with job_lock(OPS, "lock_t6", "anonymize", wait_seconds=0, retry_when_busy=True):
                pytest.fail("the block must not run while another run holds the lock")
        assert not isinstance(busy.value, AirflowSkipException)


def test_shared_holders_go_together_and_keep_an_exclusive_one_out(pg_server):
    with job_lock(OPS, "lock_t7", "pitr_recovery", shared=True):
        with job_lock(OPS, "lock_t7", "pitr_recovery", wait_seconds=0, shared=True):  # a second recovery
            with pytest.raises(JobBusy, match="pitr_recovery of lock_t7 is already running"):
                with job_lock(OPS, "lock_t7", "pitr_recovery", wait_seconds=0):  # retention waits for both
                    pytest.fail("an exclusive holder must not run beside shared ones")
    with job_lock(OPS, "lock_t7", "pitr_recovery", wait_seconds=0):  # both released
        with pytest.raises(JobBusy):
            with job_lock(OPS, "lock_t7", "pitr_recovery", wait_seconds=0, shared=True):
                pytest.fail("a shared holder must not run beside an exclusive one")


def test_released_after_the_block_and_after_an_error(pg_server):
    with pytest.raises(RuntimeError):
        with job_lock(OPS, "lock_t3", "ddl"):
            raise RuntimeError("task failed")
    with job_lock(OPS, "lock_t3", "ddl", wait_seconds=0):
        pass


def test_waiter_gets_the_lock_once_the_holder_finishes(pg_server):
    import threading

    release = threading.Event()
    held = threading.Event()

    def hold() -> None:
        with job_lock(OPS, "lock_t4", "alerts"):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait(10)
    threading.Timer(1.0, release.set).start()
    with job_lock(OPS, "lock_t4", "alerts", wait_seconds=10):
        assert release.is_set()
    thread.join()


def test_killed_holder_releases_the_lock(pg_server):
    """kill -9 of the worker: the server ends its session and the next run gets the lock."""
    code = ("import sys, time; from dbops.core.locks import job_lock\n"
            "with job_lock('dbops_state', 'lock_t5', 'restore'):\n"
            "    print('held', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": "plugins"})
    try:
        assert "held\n" in iter(proc.stdout.readline, "")  # Airflow may log warnings first
        with pytest.raises(JobBusy):
            with job_lock(OPS, "lock_t5", "restore", wait_seconds=0):
                pass
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        with job_lock(OPS, "lock_t5", "restore", wait_seconds=10):
            pass
    finally:
        proc.kill()
