"""svc_connector: venue adapters normalising market data to protobuf; the exchange simulator."""
