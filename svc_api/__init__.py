"""svc_api: the gRPC SurfaceService and the dashboard."""
