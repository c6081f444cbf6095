"""volstream: real-time crypto options volatility surfaces (shared plumbing)."""
