"""DhtNode (dht/_node.py): answering requests, lookups fed back into the
routing table, pings for full buckets, publication schedule, client mode."""

from __future__ import annotations

import random
from functools import partial

from dht import (
    AddProvider,
    Contact,
    DhtConfig,
    DhtNode,
    ErrorReply,
    FindNode,
    FindPeer,
    GetProviders,
    Mode,
    Nodes,
    Op,
    PeerFound,
    PeerLookup,
    Ping,
    Pong,
    Providers,
    PutPeer,
    RateLimiter,
    Reason,
    Relay,
    Stored,
    distance,
    sign_peer_record,
    sign_provider_record,
    topic_key,
    verify_peer_record,
)
from peer.wire._identity import Identity

from ._dht_harness import T0, SimNet

NOW = T0
CONFIG = DhtConfig(max_per_range_bucket=None, max_per_range_table=None)


def identity(i: int) -> Identity:
    return Identity.from_seed(i.to_bytes(32, "big"))


def contact_of(who: Identity, host: int = 1) -> Contact:
    return Contact.of_key(who.public_key, [f"ws://192.0.2.{host % 250 + 1}:7433"])


def server(i: int = 1, config: DhtConfig = CONFIG) -> DhtNode:
    return DhtNode(
        identity(i),
        rng=random.Random(i),
        now=NOW,
        config=config,
        addrs=[f"ws://192.0.2.{i % 250 + 1}:7433"],
    )


def test_requests_from_servers_fill_the_table_clients_do_not() -> None:
    node = server()
    a, b = identity(2), identity(3)
    assert node.handle_request(contact_of(a), Ping(1), NOW) == Pong(1)
    assert node.handle_request(contact_of(b), Ping(2, serving=False), NOW) == Pong(2)
    assert a.peer_id in node.table and b.peer_id not in node.table
    assert node.counters["requests_ping"] == 2


def test_find_node_reply() -> None:
    node = server()
    others = [identity(10 + i) for i in range(60)]
    for i, who in enumerate(others):
        node.add_contact(contact_of(who, i), NOW)
    asker = others[0]
    target = identity(99).peer_id
    node.ping_result(others[5].peer_id, False, NOW)  # one flaky contact
    reply = node.handle_request(contact_of(asker), FindNode(7, target), NOW)
    assert isinstance(reply, Nodes) and reply.rid == 7
    ids = [c.id for c in reply.nodes]
    assert len(ids) == CONFIG.k
    assert asker.peer_id not in ids and others[5].peer_id not in ids
    assert ids == sorted(ids, key=lambda i: distance(i, target))
    healthy = [c for c in node.table.contacts() if not c.failures and c.id != asker.peer_id]
    assert ids == [c.id for c in sorted(healthy, key=lambda c: distance(c.id, target))][: CONFIG.k]


def test_find_peer_answers_our_own_and_held_records() -> None:
    node = server()
    asker = contact_of(identity(2))
    own = node.handle_request(asker, FindPeer(1, node.id), NOW)
    assert isinstance(own, PeerFound) and own.record is not None
    rec = verify_peer_record(own.record, NOW, node_id=node.id)
    assert rec.addrs == node.addrs
    alice = identity(5)
    wire = sign_peer_record(alice, addrs=["ws://192.0.2.5:1"], seq=1, expires=int(NOW) + 600).wire
    assert node.handle_request(contact_of(alice), PutPeer(2, wire), NOW) == Stored(2, Op.PUT_PEER)
    held = node.handle_request(asker, FindPeer(3, alice.peer_id), NOW)
    assert isinstance(held, PeerFound) and held.record == wire
    unknown = node.handle_request(asker, FindPeer(4, identity(6).peer_id), NOW)
    assert isinstance(unknown, PeerFound) and unknown.record is None
    gone = node.handle_request(asker, FindPeer(5, alice.peer_id), NOW + 601)
    assert isinstance(gone, PeerFound) and gone.record is None  # expired on get


def test_get_providers_is_bounded_per_reply() -> None:
    node = server(
        config=DhtConfig(max_per_range_bucket=None, max_per_range_table=None, providers_per_reply=5)
    )
    key = topic_key("general")
    for i in range(12):
        who = identity(100 + i)
        wire = sign_provider_record(who, key=key, seq=1, expires=int(NOW) + 600 + i).wire
        assert isinstance(
            node.handle_request(contact_of(who, i), AddProvider(i, wire), NOW), Stored
        )
    reply = node.handle_request(contact_of(identity(2)), GetProviders(1, key), NOW)
    assert isinstance(reply, Providers) and len(reply.providers) == 5
    assert len(node.store.get_providers(key, NOW)) == 12


def test_client_mode_serves_nothing_and_advertises_relays() -> None:
    relay = Relay(identity(50).peer_id, "ws://198.51.100.50:7433")
    client = DhtNode(
        identity(7),
        rng=random.Random(7),
        now=NOW,
        config=CONFIG,
        mode=Mode.CLIENT,
        addrs=["ws://10.0.0.7:1"],
        relays=[relay],
    )
    assert not client.serving and client.addrs == ()
    reply = client.handle_request(contact_of(identity(2)), FindNode(1, bytes(32)), NOW)
    assert isinstance(reply, ErrorReply) and reply.code == Reason.NOT_SERVING.value
    assert len(client.table) == 0
    assert client.ping_request().serving is False
    lookup = client.lookup_node(bytes(32), NOW)
    assert client.request_for(lookup).serving is False
    pubs = client.due_publications(NOW)
    assert [p.op for p in pubs] == [Op.PUT_PEER]
    rec = verify_peer_record(pubs[0].record, NOW)
    assert rec.addrs == () and rec.relays == (relay,)
    assert client.publish_request(pubs[0]).serving is False
    # a new relay is advertised at once, with a higher sequence number
    moved = Relay(identity(51).peer_id, "ws://198.51.100.51:7433")
    client.set_relays([moved], NOW + 1)
    again = client.due_publications(NOW + 1)
    rec2 = verify_peer_record(again[0].record, NOW + 1)
    assert rec2.relays == (moved,) and rec2.seq > rec.seq


def test_publication_schedule() -> None:
    node = server()
    node.start_providing("general", NOW)
    first = node.due_publications(NOW)
    assert sorted(p.op for p in first) == [Op.ADD_PROVIDER, Op.PUT_PEER]
    assert {p.key for p in first} == {node.id, topic_key("general")}
    assert node.store.provider_count == 1  # a server also holds its own provider record
    assert node.due_publications(NOW + 1) == []
    later = node.due_publications(NOW + CONFIG.republish_interval)
    assert len(later) == 2
    seqs = {p.op: verify_peer_record(p.record, NOW).seq for p in first if p.op is Op.PUT_PEER}
    assert (
        verify_peer_record(
            next(p for p in later if p.op is Op.PUT_PEER).record, NOW + CONFIG.republish_interval
        ).seq
        > seqs[Op.PUT_PEER]
    )
    node.stop_providing("general")
    assert [p.op for p in node.due_publications(NOW + 2 * CONFIG.republish_interval)] == [
        Op.PUT_PEER
    ]
    req = node.publish_request(later[0])
    assert isinstance(req, PutPeer | AddProvider) and req.record == later[0].record


def test_full_bucket_pings_flow_through_the_node() -> None:
    node = server()
    found = 0
    i = 0
    members: list[Contact] = []
    while found < CONFIG.k + 1:  # fill bucket 0, then one more
        c = contact_of(identity(1000 + i), i)
        i += 1
        if node.table.bucket_index(c.id) == 0:
            found += 1
            node.add_contact(c, NOW + found)
            members.append(c)
    pings = node.take_pings()
    assert [p.id for p in pings] == [members[0].id]
    assert node.take_pings() == []
    outcome = node.ping_result(members[0].id, False, NOW + 50)
    assert outcome.evicted is None
    assert [p.id for p in node.take_pings()] == [members[0].id]  # asked again
    outcome = node.ping_result(members[0].id, False, NOW + 60)
    assert outcome.evicted is not None and outcome.promoted is not None
    assert outcome.promoted.id == members[-1].id
    assert node.counters["evicted"] == 1


def test_lookup_replies_update_the_table() -> None:
    node = server()
    honest, liar, rude = identity(2), identity(3), identity(4)
    for i, who in enumerate((honest, liar, rude)):
        node.add_contact(contact_of(who, i + 10), NOW)
    lookup = node.lookup_node(identity(9).peer_id, NOW)
    sent = {c.id: c for c in node.step(lookup, NOW)}
    assert len(sent) == 3 and node.request_for(lookup).op is Op.FIND_NODE
    forged = Contact(identity(8).peer_id, identity(7).public_key, ("ws://192.0.2.99:1",))
    assert not node.on_reply(lookup, sent[liar.peer_id], Nodes(1, (forged,)), NOW + 0.1)
    assert liar.peer_id not in node.table and node.counters["liars"] == 1
    assert not node.on_reply(lookup, sent[rude.peer_id], ErrorReply(2, "rate"), NOW + 0.1)
    held = node.table.get(rude.peer_id)
    assert held is not None and held.failures == 0  # an error reply is not a missed reply
    newcomer = contact_of(identity(5), 40)
    assert node.on_reply(lookup, sent[honest.peer_id], Nodes(3, (newcomer,)), NOW + 0.2)
    assert newcomer.id not in node.table  # only peers that answer us are added
    nxt = node.step(lookup, NOW + 0.2)
    assert [c.id for c in nxt] == [newcomer.id]
    assert node.step(lookup, NOW + 0.2 + CONFIG.rpc_timeout) == []
    assert lookup.done
    # a reply of the wrong kind counts as a failure
    peer_lookup = node.lookup_peer(identity(9).peer_id, NOW)
    assert isinstance(peer_lookup, PeerLookup)
    first = node.step(peer_lookup, NOW)[0]
    assert not node.on_reply(peer_lookup, first, Nodes(1, ()), NOW)
    assert node.counters["wrong_reply"] == 1


def test_timeouts_count_as_missed_replies() -> None:
    node = server()
    silent = identity(2)
    node.add_contact(contact_of(silent), NOW)
    lookup = node.lookup_node(bytes(32), NOW)
    assert len(node.step(lookup, NOW)) == 1
    assert node.step(lookup, NOW + CONFIG.rpc_timeout) == []
    held = node.table.get(silent.peer_id)
    assert lookup.done and held is not None and held.failures == 1
    again = node.lookup_node(bytes(32), NOW + 10)
    node.step(again, NOW + 10)
    node.on_no_reply(again, silent.peer_id, NOW + 11)
    assert silent.peer_id not in node.table  # two in a row


def test_rate_limiter_is_bounded() -> None:
    limiter = RateLimiter(rate=1.0, burst=2.0, max_tracked=3)
    assert limiter.allow(b"a", 0.0) and limiter.allow(b"a", 0.0)
    assert not limiter.allow(b"a", 0.0)
    assert limiter.allow(b"a", 1.0)
    for peer in (b"b", b"c", b"d"):
        limiter.allow(peer, 1.0)
    assert len(limiter) == 3  # "a" was forgotten


def test_clients_use_the_dht_but_never_enter_tables() -> None:
    rng = random.Random(5)
    net = SimNet(rng, DhtConfig(rpc_timeout=1.0))
    servers = [net.add_node(i) for i in range(60)]
    relay = Relay(servers[0].id, servers[0].addrs[0])
    clients = [net.add_node(100 + i, Mode.CLIENT, (relay,)) for i in range(6)]
    seeds = servers[:3]
    for s in seeds:
        for o in seeds:
            if o is not s:
                s.add_contact(o.contact(), net.now)
    for i, node in enumerate(servers + clients):
        net.at(T0 + i * 0.5, partial(net.join, node, seeds))
    net.run()
    client_ids = {c.id for c in clients}
    for s in servers:
        assert not client_ids & {c.id for c in s.table.contacts()}
        assert s.counters["requests"] > 0
    for c in clients:
        assert c.counters["requests"] == 0  # nobody asks a client
        target = rng.getrandbits(256).to_bytes(32, "big")
        run = net.start_lookup(c, c.lookup_node(target, net.now))
        net.run()
        assert [x.id for x in run.lookup.result()] == net.true_closest(target, CONFIG.k)
    # a server finds a client's record, which says to go through the relay
    finder = servers[30]
    run = net.start_lookup(finder, finder.lookup_peer(clients[2].id, net.now))
    net.run()
    assert isinstance(run.lookup, PeerLookup) and run.lookup.record is not None
    assert run.lookup.record.addrs == () and run.lookup.record.relays == (relay,)


def test_the_upkeep_timer_publishes_pings_refreshes_and_sleeps_between() -> None:
    from dht._node import UPKEEP_INTERVAL, PingContact, Publish, Refresh

    node = server(1)
    node.start_providing("general", NOW)
    assert node.next_deadline() <= NOW  # our records are due at once
    first = node.handle_timer(NOW)
    assert [c.pub.op for c in first if isinstance(c, Publish)] == [Op.PUT_PEER, Op.ADD_PROVIDER]
    assert node.next_deadline() == NOW + UPKEEP_INTERVAL  # nothing due until the next round
    assert node.handle_timer(NOW + 1) == []
    # a full bucket queues a ping of its oldest contact: the timer is due at once
    for i in range(2, 200):
        node.add_contact(contact_of(identity(i), i), NOW + 1)
    assert node._pings
    assert node.next_deadline() <= NOW + 1
    pings = [c for c in node.handle_timer(NOW + 1) if isinstance(c, PingContact)]
    assert pings and node.next_deadline() == NOW + UPKEEP_INTERVAL
    # the next round refreshes buckets (with contacts, some are due) and expires records
    due = node.handle_timer(NOW + UPKEEP_INTERVAL)
    assert any(isinstance(c, Refresh) for c in due)
    assert node.next_deadline() == NOW + 2 * UPKEEP_INTERVAL
