"""Binance options adapter: USDT-per-contract linear options, both stream APIs."""

from __future__ import annotations

from svc_connector.venues.base import ConnectorConfig, EventSink, VenueAdapter, VenueConnector
from svc_connector.venues.binance import constants
from svc_connector.venues.binance.client import (
    BinanceConnector,
    BinanceSettings,
    plan_channel_groups,
)
from svc_connector.venues.binance.parse import parse_depth_snapshot, parse_frame, parse_instruments
from svc_connector.venues.binance.session import BinanceSession


def _make_connector(config: ConnectorConfig, sink: EventSink) -> VenueConnector:
    return BinanceConnector(config, sink)


ADAPTER = VenueAdapter(
    name=constants.VENUE,
    endpoints=constants.ENDPOINTS,
    limits=constants.LIMITS,
    simulator_endpoints=constants.simulator_endpoints,
    new_session=BinanceSession,
    parse_instruments=parse_instruments,
    make_connector=_make_connector,
)

__all__ = [
    "ADAPTER",
    "BinanceConnector",
    "BinanceSession",
    "BinanceSettings",
    "parse_depth_snapshot",
    "parse_frame",
    "parse_instruments",
    "plan_channel_groups",
]
