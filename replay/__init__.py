"""Replay: market data from the MD stream through the production book, IV and surface stages
into a namespace of its own (``volstream replay``), and the comparison of two runs
(``volstream diff``). The stages run in one process with no NATS in between
(``volstream.bus.inprocess``), so the same input and settings give the same bytes.
"""
