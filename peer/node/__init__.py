"""The Trio shell of a peer: ``Peer`` and its parts (links, the ``Swarm`` router,
the dialler, the DHT bridge, storage), which perform what the behaviours in
``peer.protocols`` decide and own every task. ``peer`` re-exports the public names.
"""
