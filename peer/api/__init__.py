"""The local HTTP API on loopback (Starlette on Hypercorn) and how it is served."""
