"""Process plumbing shared by the supervisor, the embedded nats-server and the services."""

from __future__ import annotations

import contextlib
import ctypes
import signal


def die_with_parent() -> None:
    """Linux: get SIGKILL when the parent process dies (PR_SET_PDEATHSIG), so no service,
    worker or embedded nats-server outlives whoever started it. Used by `volstream up`
    for its children, by EmbeddedNats, and by services for their worker pools.

    The signal follows the parent *thread* that forked: start children from a thread that
    lives as long as they should."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)
