"""Deribit adapter: JSON-RPC over websocket, inverse (coin) and USDC-linear options."""

from __future__ import annotations

from svc_connector.venues.base import ConnectorConfig, EventSink, VenueAdapter, VenueConnector
from svc_connector.venues.deribit import constants
from svc_connector.venues.deribit.client import DeribitConnector, DeribitSettings
from svc_connector.venues.deribit.parse import parse_frame, parse_instruments
from svc_connector.venues.deribit.session import DeribitSession


def _make_connector(config: ConnectorConfig, sink: EventSink) -> VenueConnector:
    return DeribitConnector(config, sink)


ADAPTER = VenueAdapter(
    name=constants.VENUE,
    endpoints=constants.ENDPOINTS,
    limits=constants.LIMITS,
    simulator_endpoints=constants.simulator_endpoints,
    new_session=DeribitSession,
    parse_instruments=parse_instruments,
    make_connector=_make_connector,
)

__all__ = [
    "ADAPTER",
    "DeribitConnector",
    "DeribitSession",
    "DeribitSettings",
    "parse_frame",
    "parse_instruments",
]
