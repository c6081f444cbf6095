"""Shared fixtures. Tests never mock the bus: they start their own nats-server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from volstream.bus.embedded import EmbeddedNats

REPO = Path(__file__).resolve().parent.parent
VENUE_FIXTURES = REPO / "tests" / "fixtures" / "venues"


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    """A fresh nats-server with JetStream on a free port and a temp store dir."""
    with EmbeddedNats(data_dir=tmp_path / "nats") as server:
        yield server


@pytest.fixture(scope="session")
def venue_fixtures() -> Path:
    """tests/fixtures/venues: real recorded venue messages (origins and licences in SOURCES.md)."""
    if not VENUE_FIXTURES.is_dir():
        pytest.fail(f"recorded venue fixtures not found at {VENUE_FIXTURES}")
    return VENUE_FIXTURES
