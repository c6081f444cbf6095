"""The shared websocket connection (svc_connector.runtime.WsConnection) against a real
websocket server: stopping it while its handshake is still in flight."""

from __future__ import annotations

import asyncio
import dataclasses

from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from svc_connector.runtime.connection import WsConnection
from svc_connector.runtime.pool import PooledConnector
from svc_connector.venues import registry
from svc_connector.venues.base import ConnectionState, ConnectorConfig, MemorySink


async def test_stop_during_the_handshake_ends_the_connection() -> None:
    """stop() while the venue has not yet answered the upgrade: once the handshake
    completes, the connection closes and run() returns, instead of serving forever
    (stop() found no socket to close, and nothing looked at the flag afterwards)."""
    handshake_seen = asyncio.Event()
    release = asyncio.Event()
    closed_by_client = asyncio.Event()

    async def hold(_: ServerConnection, __: Request) -> Response | None:
        handshake_seen.set()
        await release.wait()
        return None  # go on with the upgrade

    async def handler(ws: ServerConnection) -> None:
        async for _ in ws:
            pass
        closed_by_client.set()

    async with serve(handler, "127.0.0.1", 0, process_request=hold) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        sink = MemorySink()
        connector = registry.get("deribit").make_connector(ConnectorConfig(), sink)
        assert isinstance(connector, PooledConnector)
        plan = dataclasses.replace(
            connector.connection_plan(connector.route_of("")),
            url=f"ws://127.0.0.1:{port}/",
            opening=(),
            keepalive=None,
        )
        conn = WsConnection("t", connector.settings, plan, sink, connector.new_session())
        task = asyncio.create_task(conn.run())
        await asyncio.wait_for(handshake_seen.wait(), 10)
        assert conn.state == ConnectionState.CONNECTING
        await conn.stop()
        release.set()
        await asyncio.wait_for(task, 10)
        await asyncio.wait_for(closed_by_client.wait(), 10)
        assert conn.connects == 1
