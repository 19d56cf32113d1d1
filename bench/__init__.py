"""clawmesh benchmark harness: ``python -m bench`` or ``make bench``.

Real ``python -m peer`` relays (signatures, link encryption on) against raw
WebSocket and TCP forwarders, NATS and Redis, all driven by one load generator
(``bench._gen``). ``bench/README.md`` says how to read the results.
"""
