"""Exchange simulator: speaks the venues' real protocols from a known ground-truth surface.

Entry point: `await run_simulator(SimConfig(...))` -> `SimHandle` (see server.py), or
`python -m svc_connector.sim`.
"""

from svc_connector.sim.faults import FaultKind, FaultRequest
from svc_connector.sim.server import SimConfig, SimHandle, run_simulator
from svc_connector.sim.venue import VenueUrls

__all__ = ["FaultKind", "FaultRequest", "SimConfig", "SimHandle", "VenueUrls", "run_simulator"]
