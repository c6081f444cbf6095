"""svc_surface: arbitrage-free SVI surfaces and the views a vol desk uses."""
