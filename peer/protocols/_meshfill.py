"""Filling a topic's transit mesh, sans-IO (``GossipRouter`` inherits ``MeshFill``).

A relay grafts transit relays (links whose interest in the topic has hops >
0) into a topic's mesh while it is below ``mesh_low``: at each heartbeat,
and on every new ``pub`` of the topic, so that a topic's first messages need
not wait for the heartbeat to build its mesh. Rules kept here:

* ``_fill_mesh`` grafts, at random, well-scored transit relays not yet in the
  mesh, up to ``mesh_degree``.
* ``_fill_on_pub`` is what a ``pub`` calls, per message. Most topics on a seed
  have no transit relay at all (every carrier is a subscriber: hops 0); for
  those ``_fill_mesh`` would scan every carrier per message to graft nothing.
  A topic found with no transit relay is remembered in ``_no_transit`` and
  its ``pub`` skips the scan, until the interest of any link in the topic
  changes (``_interest_changed``, called by the router's ``sub`` handling;
  an ``unsub`` or a link going down cannot add a transit relay). The
  outcome is exactly ``_fill_mesh``'s: with no transit relay there is no
  candidate whatever the scores and the mesh, and no random number is drawn
  (``tests/test_meshfill.py`` compares them). The set is bounded
  (``NO_TRANSIT_MAX``, cleared when full: it is only a cache).
"""

from __future__ import annotations

import random

from peer.wire._frametypes import Graft
from peer.wire._limits import GossipParams

from ._gossiptypes import Action, GossipCounters, LinkState, Send

NO_TRANSIT_MAX = 4096  # topics remembered without a transit relay, at most


class MeshFill:
    """The mesh-filling half of ``GossipRouter`` (see the module header)."""

    params: GossipParams
    stats: GossipCounters
    _links: dict[bytes, LinkState]
    _carriers: dict[str, set[bytes]]
    _mesh: dict[str, set[bytes]]
    _rng: random.Random
    _no_transit: set[str]

    def _score_ok(self, peer: bytes, threshold: str, now: float) -> bool:
        raise NotImplementedError  # GossipRouter's

    def _interest_changed(self, topic: str) -> None:
        """A link's interest in ``topic`` was added or changed: it may be a transit relay."""
        self._no_transit.discard(topic)

    def _fill_on_pub(self, topic: str, now: float) -> list[Action]:
        """``_fill_mesh(topic, now)``, skipping the scan for a topic known to have no
        transit relay."""
        mesh = self._mesh.get(topic)
        if mesh is not None and len(mesh) >= self.params.mesh_low:
            return []  # full enough: ``_fill_mesh`` would do nothing (no scan either)
        if topic not in self._no_transit:
            links = self._links
            if any(links[p].interest[topic] > 0 for p in self._carriers.get(topic, ())):
                return self._fill_mesh(topic, now)
            if len(self._no_transit) >= NO_TRANSIT_MAX:
                self._no_transit.clear()
            self._no_transit.add(topic)
        self._mesh.setdefault(topic, set())  # as ``_fill_mesh`` leaves it
        return []

    def _transit_candidates(self, topic: str, now: float) -> list[bytes]:
        relays = (p for p in self._carriers.get(topic, ()) if self._links[p].interest[topic] > 0)
        return sorted(p for p in relays if self._score_ok(p, "prune", now))

    def _fill_mesh(self, topic: str, now: float) -> list[Action]:
        """Graft transit relays into ``topic``'s mesh while it is below ``mesh_low``."""
        p = self.params
        mesh = self._mesh.setdefault(topic, set())
        if len(mesh) >= p.mesh_low:
            return []
        candidates = [q for q in self._transit_candidates(topic, now) if q not in mesh]
        actions: list[Action] = []
        for q in self._rng.sample(candidates, min(len(candidates), p.mesh_degree - len(mesh))):
            mesh.add(q)
            self.stats.grafts += 1
            actions.append(Send(q, Graft(topic).encode()))
        return actions
