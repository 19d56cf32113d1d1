"""The wire format, pure: strict CBOR, one class per frame type, signed envelopes,
the handshake and link cipher, identities, limits, and the small pure helpers every
layer shares (the request matcher, statistics snapshots).

Rule: imports nothing of trio, lmdb, sockets or the other layers (enforced by
import-linter in ``make lint``); ``dht`` and ``store`` may import it. The public
names are re-exported by ``peer``.
"""
