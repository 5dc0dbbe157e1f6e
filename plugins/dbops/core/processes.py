"""Child processes of the client tools: a timeout on each, its process group killed on expiry or error.

Every tool runs in its own session (process group), so killing the group also stops the workers a
tool forks (``pg_dump --jobs``, ``pg_restore --jobs``). The group is killed when the timeout
expires and whenever the code using the child raises, so a failed consumer never leaves a tool
blocked on a pipe nobody reads. On Linux the tool is also killed when the task process dies (kill -9
included), so a killed task never leaves a pg_dump holding a snapshot on the server.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

DEFAULT_TIMEOUT = 6 * 3600.0  # seconds; operators pass their own execution_timeout instead

# Messages of pg_dump / pg_restore that mean "try again later" rather than "someone must fix something".
TRANSIENT_TOOL_ERRORS = ("server closed the connection", "terminating connection", "could not connect",
                         "connection to server", "Connection refused", "SSL SYSCALL",
                         "canceling statement due to conflict", "could not obtain lock",
                         "Query was: LOCK TABLE")  # the last: pg_dump's --lock-wait-timeout expired


class ToolError(Exception):
    """A client tool failed; ``transient`` says whether a retry may succeed."""

    def __init__(self, message: str, transient: bool):
        super().__init__(message)
        self.transient = transient


class ToolTimeout(TimeoutError):
    """A client tool ran past its timeout; its process group was killed."""


def tool_failed(name: str, returncode: int, stderr: str) -> ToolError:
    """The error for a tool that exited with ``returncode``, classified by its messages."""
    message = stderr.strip()[-2000:]
    return ToolError(f"{name} exited with {returncode}: {message}",
                     transient=any(text in message for text in TRANSIENT_TOOL_ERRORS))


_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True) if os.uname().sysname == "Linux" else None


def _die_with_parent() -> None:
    """In the child before exec: the kernel sends it SIGKILL when the process that started it dies."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group ``proc`` leads (the tool and any workers it forked)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@contextmanager
def supervised(args: list[str], timeout: float, **popen: Any) -> Iterator[subprocess.Popen]:
    """Run ``args`` in a new process group for the duration of the block.

    The group is killed when ``timeout`` seconds pass (then :class:`ToolTimeout` is raised on leaving
    the block) or when the block raises. On leaving, the child has exited and its pipes are closed.
    """
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        kill_group(proc)

    proc = subprocess.Popen(args, start_new_session=True, preexec_fn=_die_with_parent, **popen)
    watchdog = threading.Timer(timeout, expire)
    watchdog.daemon = True
    watchdog.start()
    try:
        with proc:  # closes the pipes and reaps the child on leaving
            try:
                yield proc
                proc.wait()  # still under the watchdog
            except BaseException as err:
                kill_group(proc)
                if expired.is_set():
                    raise _timeout(args, timeout) from err
                raise
    finally:
        watchdog.cancel()
    if expired.is_set():
        raise _timeout(args, timeout)


def run(args: list[str], timeout: float, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run ``args`` to completion under :func:`supervised`; stdout and stderr captured as text."""
    with supervised(args, timeout, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        stdout, stderr = proc.communicate()
    return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)


def _timeout(args: list[str], timeout: float) -> ToolTimeout:
    return ToolTimeout(f"{Path(args[0]).name} ran longer than {timeout:.0f} s and was killed (with its workers)")


def tool_timeout(execution_timeout: timedelta | None) -> float:
    """Seconds a client tool may run: the task's ``execution_timeout``, else :data:`DEFAULT_TIMEOUT`."""
    return execution_timeout.total_seconds() if execution_timeout else DEFAULT_TIMEOUT
