"""The connector kit: the venue-independent pure pieces every venue adapter is built from (no I/O,
no clock: time is an argument). One module per concern; see docs/architecture.md."""
