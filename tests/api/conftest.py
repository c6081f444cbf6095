"""Fixtures of the API tests: a real nats-server with the SURFACE/IV streams, and surfaces."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import nats
import pytest

from svc_api.config import ApiConfig
from svc_api.server import ApiHandle, serve
from volstream.bus.embedded import EmbeddedNats
from volstream.v1 import common_pb2 as common_pb
from volstream.v1 import iv_pb2 as iv_pb
from volstream.v1 import surface_pb2 as surface_pb

DAY_NS = 86_400 * 1_000_000_000
# 2030-01-04 08:00 UTC and following Fridays: expiries far in the future.
FIRST_EXPIRY_NS = 1_893_744_000 * 1_000_000_000


def expiry_label(expiry_ns: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(expiry_ns // 1_000_000_000))


def make_surface(
    venue: str,
    currency: str,
    revision: int,
    *,
    publish_time_ns: int | None = None,
    expiries: int = 4,
    quotes_per_expiry: int = 20,
    atm_vol: float = 0.6,
) -> surface_pb.Surface:
    """A plausible surface: SVI-like slices with quotes, tenors with nodes."""
    now = time.time_ns() if publish_time_ns is None else publish_time_ns
    s = surface_pb.Surface(
        venue=venue,
        currency=currency,
        model=surface_pb.SURFACE_MODEL_SVI,
        index_price_usd=50_000.0 + revision,
        revision=revision,
        vol_index_30d=atm_vol + 0.01,
        delta_convention=common_pb.DELTA_CONVENTION_FORWARD,
    )
    s.header.event_time_ns = now
    s.header.publish_time_ns = now
    s.header.source = "test.surface"
    s.header.sequence = revision
    for i in range(expiries):
        expiry_ns = FIRST_EXPIRY_NS + 7 * i * DAY_NS
        t_years = (expiry_ns - now) / (365 * DAY_NS)
        sl = s.slices.add(
            expiry_time_ns=expiry_ns,
            expiry_label=expiry_label(expiry_ns),
            time_to_expiry_years=t_years,
            forward_usd=50_000.0 * (1 + 0.01 * i),
        )
        sl.raw.a, sl.raw.b, sl.raw.rho, sl.raw.m, sl.raw.sigma = 0.04, 0.1, -0.3, 0.0, 0.2
        sl.metrics.atm_vol = atm_vol + 0.01 * i
        sl.metrics.rr25 = -0.02
        sl.metrics.bf25 = 0.005
        sl.diagnostics.quotes_used = quotes_per_expiry
        sl.diagnostics.rmse_bp = 12.5
        sl.diagnostics.butterfly_arbitrage_free = True
        sl.diagnostics.calendar_arbitrage_free = True
        for j in range(quotes_per_expiry):
            strike = 30_000.0 + 2_000.0 * j
            k = math.log(strike / sl.forward_usd)
            sl.quotes.add(
                symbol=f"{currency}-{sl.expiry_label}-{int(strike)}-C",
                venue=venue,
                option_kind=common_pb.OPTION_KIND_CALL,
                strike_usd=strike,
                log_moneyness=k,
                bid_iv=atm_vol - 0.01,
                ask_iv=atm_vol + 0.01,
                mid_iv=atm_vol,
                fitted_iv=atm_vol + 0.0005,
                residual_bp=5.0,
                used=True,
                weight=1.0,
            )
    for days in (7, 30, 90):
        t = s.tenors.add(tenor_days=days, available=days <= 30, forward_usd=50_100.0)
        t.metrics.atm_vol = atm_vol
        t.metrics.rr25 = -0.02
        t.metrics.bf25 = 0.004
        t.nodes.add(label="25P", delta=-0.25, vol=atm_vol + 0.02)
        t.nodes.add(label="ATM", delta=0.5, vol=atm_vol)
    return s


def make_smile(venue: str, currency: str, expiry_ns: int, quotes: int = 5) -> iv_pb.Smile:
    now = time.time_ns()
    smile = iv_pb.Smile(
        venue=venue,
        currency=currency,
        expiry_time_ns=expiry_ns,
        expiry_label=expiry_label(expiry_ns),
        forward_usd=50_000.0,
        index_price_usd=49_900.0,
    )
    smile.header.event_time_ns = now
    smile.header.publish_time_ns = now
    for j in range(quotes):
        smile.quotes.add(
            symbol=f"{currency}-{expiry_label(expiry_ns)}-{30_000 + 2_000 * j}-C",
            strike_usd=30_000.0 + 2_000 * j,
            mid_iv=0.6,
            venue_mark_iv=0.61,
        )
    return smile


class Bus:
    """Plain nats-py JetStream publisher with the SURFACE and IV streams created."""

    def __init__(self, server: EmbeddedNats, nc: Any) -> None:
        self.server = server
        self.nc = nc
        self.js = nc.jetstream()

    async def publish_surface(self, surface: surface_pb.Surface, subject: str | None = None) -> int:
        subject = subject or f"surface.{surface.venue.lower()}.{surface.currency.lower()}"
        ack = await self.js.publish(subject, surface.SerializeToString())
        return int(ack.seq)

    async def publish_raw(self, subject: str, data: bytes) -> int:
        ack = await self.js.publish(subject, data)
        return int(ack.seq)


@pytest.fixture
async def bus(nats_server: EmbeddedNats) -> AsyncIterator[Bus]:
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await js.add_stream(name="SURFACE", subjects=["surface.>"], allow_direct=True)
    await js.add_stream(name="IV", subjects=["iv.>"], allow_direct=True, max_msgs_per_subject=1)
    yield Bus(nats_server, nc)
    await nc.close()


StartApi = Callable[..., Awaitable[ApiHandle]]


@pytest.fixture
async def start_api(nats_server: EmbeddedNats) -> AsyncIterator[StartApi]:
    """start_api(**ApiConfig fields, nats=True) -> a running API on a free port."""
    handles: list[ApiHandle] = []

    async def start(*, nats_url: str | bool | None = True, **fields: Any) -> ApiHandle:
        fields.setdefault("host", "127.0.0.1")
        fields.setdefault("port", 0)
        url = nats_server.url if nats_url is True else (nats_url or None)
        handle = await serve(ApiConfig(**fields), url)
        handles.append(handle)
        return handle

    yield start
    for handle in handles:
        await handle.stop(grace_s=0.5)
