"""``GET /metrics``: the peer's statistics in the Prometheus text format.

No second set of counters: a custom ``prometheus_client`` collector reads the
same frozen ``statistics()`` snapshots that ``GET /status`` shows, at scrape
time, and names them by Prometheus conventions (``clawmesh_`` prefix, base
units, ``_total`` for counters, labels instead of names for one quantity
split by kind). The one thing a snapshot cannot give without I/O, the store's
size, is read from LMDB (in a worker thread) just before the collector runs.
Every family is listed in README.md ("Metrics"); a test checks that.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.registry import Collector

from peer.node._node import Peer
from store import MessageStore, StoreError

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Metric = CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily | InfoMetricFamily

# gossip counters that mean "a message we got and did not take", by reason
_GOSSIP_REFUSALS = {
    "rejected": "invalid",
    "stale": "stale",
    "sender_limited": "sender-limited",
    "link_limited": "link-limited",
    "banned_refused": "banned",
}
# gossip counters of messages by direction: out (ours), in, relayed, delivered (to the agent)
_DIRECTIONS = {
    "published": "out", "received": "in", "forwarded": "relayed", "delivered": "delivered"
}


def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def labelled(
    kind: type[CounterMetricFamily] | type[GaugeMetricFamily],
    name: str,
    doc: str,
    label: str,
    values: Mapping[str, float],
) -> CounterMetricFamily | GaugeMetricFamily:
    family = kind(name, doc, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


def _histogram(name: str, doc: str, stats: Mapping[str, Any] | None) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=[])
    if stats is not None:
        buckets = [(le, float(n)) for le, n in stats["buckets"].items()]
        family.add_metric([], buckets, float(stats["sum"]))
    return family


class PeerCollector(Collector):
    """Turns one peer's statistics into metric families, at each scrape."""

    def __init__(self, peer: Peer, version: str) -> None:
        self.peer = peer
        self.version = version
        self.store_stats: Any = None  # the last StoreStats read, set by ``scrape``
        self.extra: list[Callable[[], Iterator[Metric]]] = []  # the API's own parts

    def collect(self) -> Iterator[Metric]:
        peer = self.peer
        stats = peer.statistics().to_json()
        info = InfoMetricFamily("clawmesh_peer", "this peer: version, id, mode")
        info.add_metric(
            [],
            {
                "version": self.version,
                "peer_id": peer.identity.peer_id_hex,
                "mode": "relay-only" if peer.options.relay_only else "agent",
            },
        )
        yield info
        yield gauge("clawmesh_uptime_seconds", "seconds since the peer started", peer.uptime)
        yield from self._links(stats["counters"])
        yield from self._messages(stats["counters"], stats["gossip"])
        yield from self._store(stats.get("store"), stats.get("commit_latency"))
        yield from self._dht(stats.get("dht"))
        yield from _circuits(stats.get("circuits"))
        for part in self.extra:
            yield from part()

    def _links(self, counters: Mapping[str, Any]) -> Iterator[Metric]:
        peer = self.peer
        yield gauge("clawmesh_links", "links open now", len(peer.links))
        yield counter("clawmesh_links_opened", "links opened", counters["links_opened"])
        yield counter("clawmesh_links_closed", "links closed", counters["links_closed"])
        yield counter(
            "clawmesh_handshakes_failed", "handshakes that failed", counters["handshakes_failed"]
        )
        yield counter(
            "clawmesh_checked_ahead",
            "messages whose signatures were checked in a worker thread (a burst)",
            counters["checked_ahead"],
        )
        yield counter(
            "clawmesh_checked_ahead_over_budget",
            "bursts routed on the event loop: the checks in flight were at their bound",
            counters["checked_ahead_over_budget"],
        )
        yield gauge("clawmesh_known_peers", "peers known", len(peer.known_peers()))
        yield gauge(
            "clawmesh_online_peers", "peers seen recently", len(peer.known_peers(online=True))
        )

    def _messages(
        self, counters: Mapping[str, Any], gossip: Mapping[str, Any]
    ) -> Iterator[Metric]:
        yield labelled(
            CounterMetricFamily,
            "clawmesh_messages",
            "messages by direction: out (ours), in, relayed, delivered (to the agent)",
            "direction",
            {d: gossip[k] for k, d in _DIRECTIONS.items()},
        )
        refused = CounterMetricFamily(
            "clawmesh_messages_refused",
            "messages and frames refused, by layer (gossip, link) and reason",
            labels=["layer", "reason"],
        )
        for key, reason in sorted(_GOSSIP_REFUSALS.items()):
            refused.add_metric(["gossip", reason], gossip[key])
        for reason, n in sorted(counters["refused"].items()):
            refused.add_metric(["link", reason], n)
        yield refused
        yield counter(
            "clawmesh_messages_duplicate", "messages received again", gossip["duplicates"]
        )
        yield counter("clawmesh_gossip_frames_received", "frames received", gossip["frames_in"])
        yield counter(
            "clawmesh_gossip_received_bytes", "bytes of frames received", gossip["bytes_in"]
        )
        yield gauge("clawmesh_subscriptions", "topics this peer carries", gossip["subscriptions"])

    def _store(
        self, store: Mapping[str, Any] | None, latency: Mapping[str, Any] | None
    ) -> Iterator[Metric]:
        yield _histogram(
            "clawmesh_store_commit_seconds", "seconds per store commit round", latency
        )
        if store is None:
            return
        yield counter("clawmesh_store_appended", "messages stored", store["stored"])
        yield counter("clawmesh_store_errors", "store writes that failed", store["errors"])
        yield gauge("clawmesh_outbox_messages", "DMs waiting for a receipt", store["outbox"])
        yield counter("clawmesh_dead_letters", "DMs never receipted", store["dead_letters"])
        yield gauge("clawmesh_order_held_messages", "held for order", store["order"]["held"])
        yield counter(
            "clawmesh_order_skipped", "gaps given up by ordering", store["order"]["skipped"]
        )
        mailbox = store["mailbox"]
        yield gauge("clawmesh_mailbox_held_messages", "sealed DMs held", mailbox["held"])
        yield gauge("clawmesh_mailbox_held_bytes", "bytes of DMs held", mailbox["held_bytes"])
        yield labelled(
            CounterMetricFamily,
            "clawmesh_mailbox_refused",
            "mailbox deposits refused, by reason",
            "reason",
            mailbox["refused"],
        )
        yield from _catchup(store["catchup"])
        yield from self._store_size()

    def _store_size(self) -> Iterator[Metric]:
        s = self.store_stats
        if s is None:
            return
        yield gauge("clawmesh_store_used_bytes", "bytes of the store in use", s.used_bytes)
        yield gauge("clawmesh_store_map_bytes", "the store's LMDB map size", s.map_size)
        yield gauge("clawmesh_store_messages", "messages in the store", s.messages)
        yield gauge("clawmesh_store_message_bytes", "bytes of stored messages", s.message_bytes)
        yield gauge("clawmesh_store_topics", "topics in the store", s.topics)

    def _dht(self, dht: Mapping[str, Any] | None) -> Iterator[Metric]:
        if dht is None:
            return
        yield gauge("clawmesh_dht_contacts", "contacts in the routing table", dht["contacts"])
        yield counter("clawmesh_dht_lookups", "lookups run", dht["lookups_run"])
        yield _histogram(
            "clawmesh_dht_lookup_seconds", "seconds per lookup", dht.get("lookup_latency")
        )
        requests = {k[len("requests_") :]: v for k, v in dht.items() if k.startswith("requests_")}
        yield labelled(
            CounterMetricFamily, "clawmesh_dht_requests", "requests served, by op", "op", requests
        )
        refused = {
            k.split("refused_", 1)[1]: v
            for k, v in dht.items()
            if k.startswith(("refused_", "table_refused_"))
        }
        yield labelled(
            CounterMetricFamily,
            "clawmesh_dht_refused",
            "DHT records and requests refused, by reason",
            "reason",
            refused,
        )
        yield labelled(
            GaugeMetricFamily,
            "clawmesh_dht_records",
            "records held, by kind",
            "kind",
            {
                "peer": dht.get("peer_records", 0),
                "provider": dht.get("provider_records", 0),
                "card": dht.get("card_records", 0),  # agent cards (dht.md section 14)
            },
        )


def _catchup(topics: Mapping[str, Mapping[str, Any]]) -> Iterator[Metric]:
    received = CounterMetricFamily(
        "clawmesh_catchup_received", "messages got by catch-up", labels=["topic"]
    )
    pages = CounterMetricFamily("clawmesh_catchup_pages", "catch-up pages got", labels=["topic"])
    missed = GaugeMetricFamily(
        "clawmesh_catchup_missed_messages", "messages no carrier had", labels=["topic"]
    )
    carriers = GaugeMetricFamily(
        "clawmesh_catchup_carriers", "carriers asked", labels=["topic"]
    )
    last = GaugeMetricFamily(
        "clawmesh_catchup_last_timestamp_seconds", "when catch-up last got a page",
        labels=["topic"],
    )
    for topic, t in sorted(topics.items()):
        received.add_metric([topic], t["received"])
        pages.add_metric([topic], t["pages"])
        missed.add_metric([topic], sum(t["missed"].values()))
        carriers.add_metric([topic], len(t["carriers"]))
        last.add_metric([topic], t["last"] / 1000)
    yield from (received, pages, missed, carriers, last)


def _circuits(circuits: Any) -> Iterator[Metric]:
    """Circuit breakers, where a peer reports them (``{name: state}``)."""
    if not isinstance(circuits, Mapping):
        return
    family = GaugeMetricFamily(
        "clawmesh_circuit_state", "1 for each circuit's current state", labels=["circuit", "state"]
    )
    for name, state in sorted(circuits.items()):
        value = state.get("state") if isinstance(state, Mapping) else state
        family.add_metric([str(name), str(value)], 1)
    yield family


class Metrics:
    """The registry behind ``GET /metrics`` for one peer."""

    def __init__(self, peer: Peer, version: str) -> None:
        self.peer = peer
        self.collector = PeerCollector(peer, version)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)

    async def scrape(self) -> bytes:
        storage = self.peer.storage
        if storage is not None:
            try:
                self.collector.store_stats = await storage.service.read(MessageStore.stats)
            except StoreError:
                self.collector.store_stats = None
        return generate_latest(self.registry)


__all__ = ["CONTENT_TYPE", "Metric", "Metrics", "PeerCollector", "counter", "gauge", "labelled"]
