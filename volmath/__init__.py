"""Pure option and volatility maths shared by services: no I/O, no bus, no venue knowledge.

- `black76`: Black-76 prices, greeks and deltas on the forward (docs/quant.md sections 1-3).
- `svi`: raw SVI total variance, its derivatives, Durrleman's g and the JW parameters
  (docs/quant.md section 4).

Services import it; it imports only numpy and scipy (tests/test_architecture.py and the
import contracts in pyproject.toml keep it so).
"""
