"""NATS passwords of a `volstream up` run: generated fresh at every start, kept in
``<data-dir>/nats/credentials.json`` (mode 0600, beside the server's config, which holds them
too) for operators and tests; every service gets its own through its environment
(``VOLSTREAM_NATS_USER`` / ``VOLSTREAM_NATS_PASSWORD``), never through a URL or a log line.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable
from pathlib import Path

from volstream.bus.embedded import write_private

CREDENTIALS_FILE = "credentials.json"


def generate_passwords(users: Iterable[str]) -> dict[str, str]:
    """A random URL-safe password (32 bytes of entropy) per user name."""
    return {user: secrets.token_urlsafe(32) for user in users}


def write_credentials(path: Path, passwords: dict[str, str]) -> None:
    """``{"users": {name: password}}`` at ``path``, mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private(path, json.dumps({"users": passwords}, indent=2) + "\n")


def read_credentials(path: Path) -> dict[str, str]:
    """The passwords by user name that :func:`write_credentials` wrote."""
    users = json.loads(path.read_text())["users"]
    return {str(k): str(v) for k, v in users.items()}
