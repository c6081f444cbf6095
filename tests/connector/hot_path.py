"""Shared by the hot-path equivalence tests (tests/connector/test_<venue>_hot_path.py)."""

from __future__ import annotations

from typing import Any

from svc_connector.venues.base import FrameResult


def frame_view(result: FrameResult) -> dict[str, Any]:
    """Everything a FrameResult carries, in comparable form (events as their wire bytes)."""
    return {
        "events": [(e.currency, e.kind, e.event.SerializeToString()) for e in result.events],
        "counts": dict(result.counts),
        "dead_letters": [(d.raw, d.reason) for d in result.dead_letters],
        "channel": result.channel,
        "replies": result.replies,
        "acks": result.acks,
        "subscribed": result.subscribed,
        "unsubscribed": result.unsubscribed,
        "venue_errors": result.venue_errors,
        "resubscribes": result.resubscribes,
        "instrument_states": result.instrument_states,
    }
