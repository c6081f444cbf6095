"""svc_connector: venue adapters that normalise venue market data to protobuf, and the exchange simulator."""
