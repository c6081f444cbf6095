"""svc_api: the gRPC SurfaceService (volstream.v1) and the dashboard.

    handle = await serve(ApiConfig(port=50051, token=..., tls_cert=..., tls_key=...), nats_url)
    ...
    await handle.stop()

- Data: the latest surface per (venue, currency) and IV smile per expiry, followed from the
  SURFACE and IV streams (ordered consumers, last message per subject first). History
  (GetSurfaceAt) is read from the SURFACE stream with JetStream direct get.
- Streams: the first message is a snapshot of every matching surface (sent even when empty),
  then one message per wake-up with every surface that changed since the previous message,
  latest state only. At most one message per stream is in flight on the server.
- Errors: INVALID_ARGUMENT (unknown venue, malformed currency/expiry/time, bad filter),
  NOT_FOUND (no such surface/expiry/history, with what exists), UNAUTHENTICATED (token),
  UNAVAILABLE (history without NATS, shutting down), RESOURCE_EXHAUSTED (too many streams
  server-wide, or from one client address: ApiConfig.max_streams_per_client).
- Health (grpc.health.v1): "" and "volstream.v1.SurfaceService" for the whole API,
  "volstream.v1.SurfaceService/<venue>/<CCY>" per surface; SERVING while fresh.
  Health checks need no token. Server reflection (v1alpha) lists every service.
- Dead letters: unusable SURFACE/IV messages go to dlq.api.<venue> with a
  Volstream-Dlq-Reason header.
"""
