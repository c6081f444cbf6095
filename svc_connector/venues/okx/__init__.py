"""OKX v5 adapter: inverse (coin-margined) options, opt-summary IVs, checksummed books."""

from __future__ import annotations

from svc_connector.venues.base import ConnectorConfig, EventSink, VenueAdapter, VenueConnector
from svc_connector.venues.okx import constants
from svc_connector.venues.okx.client import OkxConnector, OkxSettings, plan_channel_groups
from svc_connector.venues.okx.parse import parse_frame, parse_instruments
from svc_connector.venues.okx.session import OkxSession


def _make_connector(config: ConnectorConfig, sink: EventSink) -> VenueConnector:
    return OkxConnector(config, sink)


ADAPTER = VenueAdapter(
    name=constants.VENUE,
    endpoints=constants.ENDPOINTS,
    limits=constants.LIMITS,
    simulator_endpoints=constants.simulator_endpoints,
    new_session=OkxSession,
    parse_instruments=parse_instruments,
    make_connector=_make_connector,
)

__all__ = [
    "ADAPTER",
    "OkxConnector",
    "OkxSession",
    "OkxSettings",
    "parse_frame",
    "parse_instruments",
    "plan_channel_groups",
]
