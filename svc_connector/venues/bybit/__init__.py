"""Bybit v5 adapter: USDC/USDT-linear options, orderbook.25 books and per-option tickers."""

from __future__ import annotations

from svc_connector.venues.base import ConnectorConfig, EventSink, VenueAdapter, VenueConnector
from svc_connector.venues.bybit import constants
from svc_connector.venues.bybit.client import BybitConnector, BybitSettings, plan_channel_groups
from svc_connector.venues.bybit.parse import parse_frame, parse_instruments, parse_instruments_page
from svc_connector.venues.bybit.session import BybitSession


def _make_connector(config: ConnectorConfig, sink: EventSink) -> VenueConnector:
    return BybitConnector(config, sink)


ADAPTER = VenueAdapter(
    name=constants.VENUE,
    endpoints=constants.ENDPOINTS,
    limits=constants.LIMITS,
    simulator_endpoints=constants.simulator_endpoints,
    new_session=BybitSession,
    parse_instruments=parse_instruments,
    make_connector=_make_connector,
)

__all__ = [
    "ADAPTER",
    "BybitConnector",
    "BybitSession",
    "BybitSettings",
    "parse_frame",
    "parse_instruments",
    "parse_instruments_page",
    "plan_channel_groups",
]
