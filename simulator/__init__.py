"""Exchange simulator: speaks the venues' real protocols from a known ground-truth surface.

Entry point: `await run_simulator(SimConfig(...))` -> `SimHandle` (see server.py), or
`python -m simulator`.
"""

from simulator.faults import FaultKind, FaultRequest
from simulator.server import SimConfig, SimHandle, run_simulator
from simulator.venue import VenueUrls

__all__ = ["FaultKind", "FaultRequest", "SimConfig", "SimHandle", "VenueUrls", "run_simulator"]
