"""The venue-independent async body of a connector (websockets, REST discovery).

Unlike the kit (svc_connector/kit/), which stays pure (no I/O, no clock), this package does
I/O: a venue client supplies a session, a channel plan, its REST discovery and a
ConnectionPlan per route (URL, keep-alive frame, maximum connection age), and gets
connection pooling, paced batched subscribes, reconnects with exponential backoff and
jitter, resubscription, a watchdog, instrument refresh with listings/delistings, and logged
+ counted state changes.

- ``settings``: :class:`RuntimeSettings` (config resolved against the venue's defaults),
  venue option readers, :class:`ConnectionPlan`;
- ``connection``: :class:`WsConnection`, one websocket and its frame handling;
- ``pool``: :class:`PooledConnector`, discovery and the pool of connections.
"""
