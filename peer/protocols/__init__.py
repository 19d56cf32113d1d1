"""The protocol decisions, sans-IO: the gossip router, presence, catch-up and DM
delivery. Each behaviour takes link-up, link-down, frame and timer events with
``now`` and returns typed commands, and says when it next needs the clock
(``next_deadline()`` / ``handle_timer(now)``).

Rule: imports only ``peer.wire`` (no trio, lmdb, sockets, store or shell).
"""
