"""Process plumbing shared by the supervisor, the embedded nats-server and the services."""

from __future__ import annotations

import contextlib
import ctypes
import shutil
import signal
import sys


def pdeathsig_prefix() -> list[str]:
    """``setpriv --pdeathsig KILL --`` where util-linux has it (Linux), to put before a child's
    argv: the child gets SIGKILL when this process's forking thread dies, and no Python runs
    between fork and exec. (A ``preexec_fn`` runs the interpreter's and gRPC's fork handlers
    in the child; in a process serving gRPC that aborted the embedded nats-server.) Empty
    where setpriv is missing: use ``die_with_parent`` as ``preexec_fn`` there."""
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []


def die_with_parent() -> None:
    """Linux: get SIGKILL when the parent process dies (PR_SET_PDEATHSIG), so no service,
    worker or embedded nats-server outlives whoever started it. Used by `volstream up`
    for its children, by EmbeddedNats, and by services for their worker pools.

    The signal follows the parent *thread* that forked: start children from a thread that
    lives as long as they should."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)
