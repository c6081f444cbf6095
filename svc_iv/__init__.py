"""svc_iv: vectorised Black-76 implied vols and greeks per expiry."""
