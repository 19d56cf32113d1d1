"""Getting links: dialling addresses, keeping bootstrap links up, the listener.

Rules kept here:

* ``dial_forever`` keeps one address linked: after a link ends or a dial
  fails it waits a jittered, growing delay (``store.Backoff``, the one
  backoff helper) and dials again. A link that came up starts the delays
  from the beginning, unless short links to the address flap (``Redial``),
  when the delays keep growing. An address that turns out to be our own is
  dropped.
* ``join`` resolves each bootstrap spec (retrying with the same backoff)
  and keeps a link to every peer it names.
* The listener refuses more than ``max_links_per_ip`` inbound connections
  from one remote address (loopback is exempt); a connection that fails
  its upgrade is counted and never ends the listener.
* Dials to contacts (``connect``) run in the dialler's own nursery (``run``);
  the listener's connections and bootstrap dials in the nursery the peer
  gives. Tasks are started from these async functions, never from a callback.
"""

from __future__ import annotations

import contextlib
import functools
import random
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import trio
import trio_websocket

from dht import Contact
from peer.wire._errors import ErrorCode
from peer.wire._wsupgrade import UpgradeRefused
from store import Backoff

from . import _websocket
from ._bootstrap import BootstrapError, BootstrapPeer, fetch_bootstrap, parse_peer_address
from ._link import HANDSHAKE_TIMEOUT
from ._linkhost import LinkManager
from ._options import PeerCounters, PeerOptions
from ._transport import WebSocketTransport
from ._websocket import describe_remote, dial_websocket, is_loopback, serve_own, serve_ws
from ._wsconn import OVER_LIMIT_LINGER, WsConnection, accept_upgrade, refuse_upgrade

BOOTSTRAP_BACKOFF = Backoff(base_ms=1_000, cap_ms=60_000)
FLAP_LIMIT = 5
FLAP_WINDOW = 60.0
STABLE = 10.0  # seconds a link must last for its end not to count as a flap
REJOIN_AFTER = 10.0  # seconds with no link at all before the peer bootstraps again
REJOIN_CONTACTS = 8  # DHT contacts dialled when it does
REJOIN_DIAL_TIMEOUT = 10.0


class Redial:
    """When to dial one address again, after each attempt (pure: times go in).

    Failed dials back off exponentially, jittered. A link that came up resets
    the backoff; a short one (under ``STABLE`` seconds) only while such short
    links do not flap: ``FLAP_LIMIT`` of them within ``FLAP_WINDOW`` seconds
    keep the delays growing until a link lasts.
    """

    def __init__(self, backoff: Backoff) -> None:
        self.backoff = backoff
        self.failures = 0
        self._short: deque[float] = deque(maxlen=FLAP_LIMIT)

    def ended(self, linked: bool, started: float, ended: float) -> None:
        """An attempt that began at ``started`` ended at ``ended``; ``linked``: a link came up."""
        if not linked:
            self.failures += 1
            return
        if ended - started >= STABLE:
            self._short.clear()
            self.failures = 0
            return
        self._short.append(ended)
        flapping = len(self._short) == FLAP_LIMIT and ended - self._short[0] < FLAP_WINDOW
        self.failures = self.failures + 1 if flapping else 0

    def delay(self, rng: random.Random) -> float:
        """Seconds to wait before the next dial: jittered, from one to two base delays
        after a reset, growing to the backoff's cap."""
        return self.backoff.delay_ms(self.failures + 1, rng) / 1000


class Dialer:
    """Dialling and listening for one peer's ``LinkManager``."""

    def __init__(
        self,
        links: LinkManager,
        options: PeerOptions,
        counters: PeerCounters,
        rng: random.Random,
        log: Any,
    ) -> None:
        self.links = links
        self.options = options
        self.counters = counters
        self.rng = rng
        self.log = log
        base_ms = max(1, int(options.backoff_initial * 500))  # the first redial: 0.5-1 s
        cap_ms = max(base_ms, int(options.backoff_max * 1000))
        self.backoff = Backoff(base_ms=base_ms, cap_ms=cap_ms)
        self._inbound_per_ip: dict[str, int] = {}
        self._dialing: dict[bytes, trio.Event] = {}
        self._forever: set[str] = set()  # addresses dial_forever keeps linked
        self._nursery: trio.Nursery | None = None
        self.rejoins = 0
        # the OCM gateway: serves a connection whose first message is text, dials
        # OCM peers found in bootstrap lists (set by the peer; None: no gateway)
        self.ocm_handler: Callable[[Any, str, str], Awaitable[None]] | None = None
        self.ocm_dial: Callable[[str], Awaitable[None]] | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the tasks of dials to contacts (``connect``) until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    async def connect(self, contact: Contact) -> bool:
        """Link to ``contact`` (dialling its addresses) unless linked; True once linked.

        One dial per peer at a time, never past ``max_links``; it runs in this
        dialler's nursery, so the link outlives the caller. Waits for the dial to
        succeed or fail; callers bound the wait with a cancel scope.
        """
        links = self.links.links
        if contact.id in links:
            return True
        if contact.id == self.links.peer_id or not contact.addrs or self._nursery is None:
            return False
        if len(links) >= self.options.max_links:
            return False  # no room: the DHT and gossip reach it through others
        attempt = self._dialing.get(contact.id)
        if attempt is None:
            attempt = self._dialing[contact.id] = trio.Event()
            self._nursery.start_soon(self._dial_contact, contact, attempt)
        while contact.id not in links and not attempt.is_set():
            await self.links.wait_changed()
        return contact.id in links

    async def _dial_contact(self, contact: Contact, attempt: trio.Event) -> None:
        try:
            for addr in contact.addrs[:2]:
                if await self._dial_and_serve(addr, contact.id, attempt):
                    return
        finally:
            attempt.set()
            self._dialing.pop(contact.id, None)
            self.links.wake()

    async def _dial_and_serve(self, addr: str, expect: bytes, attempt: trio.Event) -> bool:
        """Dial ``addr``; True if a link came up (it is served until it ends)."""
        try:
            parse_peer_address(addr)
        except BootstrapError:
            return False
        linked = await self.dial_once(addr, expect, on_up=attempt.set)
        return linked is not None

    async def dial_forever(self, url: str, expect: bytes | None = None) -> None:
        """Keep a link to ``url`` up, reconnecting with jittered exponential backoff."""
        if url in self._forever:
            return  # already kept up by another task
        self._forever.add(url)
        try:
            await self._keep_dialling(url, expect)
        finally:
            self._forever.discard(url)

    async def _keep_dialling(self, url: str, expect: bytes | None) -> None:
        log = self.log.bind(dial=url)
        policy = Redial(self.backoff)
        while True:
            started = trio.current_time()
            linked_to = await self.dial_once(url, expect)
            if url in self.links.self_urls:
                log.info("bootstrap address is this peer; not dialling it")
                return
            existing = self.links.links.get(linked_to) if linked_to is not None else None
            if existing is not None:
                # a duplicate: the other direction won; wait for it to end
                await existing.closed.wait()
            policy.ended(linked_to is not None, started, trio.current_time())
            delay = policy.delay(self.rng)
            log.debug("redial", after=round(delay, 2))
            await trio.sleep(delay)

    async def dial_once(
        self, url: str, expect: bytes | None = None, on_up: Callable[[], None] | None = None
    ) -> bytes | None:
        """One connection attempt to a ``ws://`` URL; returns the peer id linked, if any.

        The TCP stream is opened and closed by ``dial_websocket`` rather than by
        trio-websocket, which skips closing it when the other side closed first.
        """
        result = await dial_websocket(
            url,
            lambda transport: self.links.run_link(transport, True, expect, on_up),
            self.log,
            on_bug=self._count_bug,
        )
        return None if result is None else result.peer_id

    def _count_bug(self, exc: BaseException) -> None:
        self.counters.link_errors += 1

    async def join(self, specs: list[str], nursery: trio.Nursery) -> None:
        """Resolve every bootstrap spec (retrying failures) and keep links to what it names."""
        async with trio.open_nursery() as resolving:
            for spec in specs:
                resolving.start_soon(self._resolve_and_dial, spec, nursery)

    async def _resolve_and_dial(self, spec: str, nursery: trio.Nursery) -> None:
        attempts = 0
        while True:
            try:
                targets: list[BootstrapPeer] = await fetch_bootstrap(spec)
                break
            except BootstrapError as exc:
                delay = BOOTSTRAP_BACKOFF.delay_ms(attempts, self.rng) / 1000
                attempts += 1
                self.log.warning("bootstrap failed", spec=spec, error=str(exc), retry_in=delay)
                await trio.sleep(delay)
        self.log.info("bootstrap resolved", spec=spec, peers=len(targets))
        for target in targets:
            if target.ocm:
                if self.ocm_dial is not None and target.url not in self._forever:
                    self._forever.add(target.url)
                    nursery.start_soon(self.ocm_dial, target.url)
                continue
            if target.peer_id != self.links.peer_id and target.url not in self._forever:
                nursery.start_soon(self.dial_forever, target.url, target.peer_id)

    async def rejoin_when_alone(
        self,
        specs: list[str],
        nursery: trio.Nursery,
        contacts: Callable[[], list[Contact]],
    ) -> None:
        """Whenever the peer has had no link for ``REJOIN_AFTER`` seconds, bootstrap
        again: resolve the specs anew (a list may have changed) and dial what is new,
        and dial a few contacts the DHT remembers. At most once per ``REJOIN_AFTER``."""
        while True:
            while self.links.links:
                await self.links.wait_changed()
            with trio.move_on_after(REJOIN_AFTER):
                while not self.links.links:
                    await self.links.wait_changed()
            if self.links.links:
                continue
            self.rejoins += 1
            self.log.warning("no links: bootstrapping again", rejoins=self.rejoins)
            async with trio.open_nursery() as dialling:
                dialling.start_soon(self.join, specs, nursery)
                for contact in contacts()[:REJOIN_CONTACTS]:
                    dialling.start_soon(self._connect_within, contact)

    async def _connect_within(self, contact: Contact) -> None:
        with trio.move_on_after(REJOIN_DIAL_TIMEOUT):
            await self.connect(contact)

    async def _first_record(
        self, ws: trio_websocket.WebSocketConnection | WsConnection, remote: str
    ) -> bytes | None:
        """The first binary record of an inbound link; None if it was text (handed to
        the OCM gateway, which serves it) or never came (the connection is aborted)."""
        deadline = trio.current_time() + HANDSHAKE_TIMEOUT  # text ignored does not extend it
        while True:
            first = await _peek(ws, deadline)
            if isinstance(first, bytes):
                return first
            if isinstance(first, Exception):  # as the handshake counts and logs it
                self.counters.handshakes_failed += 1
                self.log.info("handshake did not finish", remote=remote, initiator=False,
                              reason=str(first) or type(first).__name__)
                if isinstance(ws, WsConnection):
                    await ws.abort()
                else:
                    await WebSocketTransport(ws, remote).abort()
                return None
            if self.ocm_handler is not None:
                await self.ocm_handler(ws, remote, first)
                return None
            # text and no OCM gateway: ignored, as text always was

    async def serve_websocket(self, host: str, port: int, nursery: trio.Nursery) -> int:
        """Accept WebSocket links on ``host:port``, handled in ``nursery``; returns the port."""
        if _websocket.OWN_WEBSOCKET:  # our own upgrade and connection (peer.node._wsconn)
            own = functools.partial(serve_own, reuse_port=self.options.reuse_port)
            port = await nursery.start(own, self._accept_stream, host, port, nursery)
            return port
        serve = functools.partial(serve_ws, reuse_port=self.options.reuse_port)
        bound: int = await nursery.start(serve, self._accept, host, port, nursery)
        return bound

    async def _accept_stream(self, stream: trio.SocketStream) -> None:
        """An inbound TCP connection: the upgrade, then a link or the OCM gateway."""
        try:
            remote = _peer_name(stream)
            ip = remote.rsplit(":", 1)[0]
            if not self._room_for(ip):
                refused = UpgradeRefused(503, "too many connections from your address")
                await refuse_upgrade(stream, refused, linger=OVER_LIMIT_LINGER)
                return
            self._inbound_per_ip[ip] = self._inbound_per_ip.get(ip, 0) + 1
            try:
                await self._upgrade_and_serve(stream, remote)
            finally:
                self._inbound_per_ip[ip] -= 1
                if not self._inbound_per_ip[ip]:
                    del self._inbound_per_ip[ip]
        except Exception as exc:  # a bug: never let one connection end the listener
            self.counters.link_errors += 1
            self.log.error("connection crashed", error=repr(exc), exc_info=exc)
        finally:
            await trio.aclose_forcefully(stream)

    async def _upgrade_and_serve(self, stream: trio.SocketStream, remote: str) -> None:
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                conn = await accept_upgrade(stream, remote)
        except (UpgradeRefused, trio.TooSlowError, OSError, *_STREAM_GONE) as exc:
            self.counters.upgrade_failures += 1  # a scanner, a client that went: not our bug
            self.log.info("websocket upgrade failed", remote=remote, error=repr(exc))
            return
        try:
            first = await self._first_record(conn, remote)
            if first is not None:
                conn.unread(first)
                await self.links.run_link(conn, False, None)
        except Exception as exc:  # never let one connection end the listener
            self.counters.link_errors += 1
            self.log.error("link crashed", remote=remote, error=repr(exc), exc_info=exc)

    def _room_for(self, ip: str) -> bool:
        """Whether one more inbound connection from ``ip`` is allowed (counted if not)."""
        limit = self.options.max_links_per_ip
        if limit and not is_loopback(ip) and self._inbound_per_ip.get(ip, 0) >= limit:
            self.counters.refuse(ErrorCode.TOO_LARGE)
            self.log.warning("too many connections from one address", remote=ip)
            return False
        return True

    async def _accept(self, request: trio_websocket.WebSocketRequest) -> None:
        remote = describe_remote(request)
        ip = remote.rsplit(":", 1)[0]
        limit = self.options.max_links_per_ip
        if limit and not is_loopback(ip) and self._inbound_per_ip.get(ip, 0) >= limit:
            self.counters.refuse(ErrorCode.TOO_LARGE)
            self.log.warning("too many connections from one address", remote=remote)
            with contextlib.suppress(Exception):
                await request.reject(503, body=b"too many connections from your address")
            return
        self._inbound_per_ip[ip] = self._inbound_per_ip.get(ip, 0) + 1
        try:
            try:
                ws = await request.accept()
            except Exception as exc:  # a scanner, a client that went: not our bug
                self.counters.upgrade_failures += 1
                self.log.info("websocket upgrade failed", remote=remote, error=repr(exc))
                return
            _drop_headers(request)
            first = await self._first_record(ws, remote)
            if first is not None:
                await self.links.run_link(WebSocketTransport(ws, remote, first), False, None)
        except Exception as exc:  # never let one connection end the listener
            self.counters.link_errors += 1
            self.log.error("link crashed", remote=remote, error=repr(exc), exc_info=exc)
        finally:
            self._inbound_per_ip[ip] -= 1
            if not self._inbound_per_ip[ip]:
                del self._inbound_per_ip[ip]


async def _peek(
    ws: trio_websocket.WebSocketConnection | WsConnection, deadline: float
) -> str | bytes | Exception:
    """The next message of a connection, before ``deadline`` (or why none came)."""
    with trio.move_on_at(deadline):
        try:
            message: str | bytes = await ws.get_message()
            return message
        except (trio_websocket.ConnectionClosed, trio.BrokenResourceError) as exc:
            return exc
    return trio.TooSlowError("no first record in time")


def _peer_name(stream: trio.SocketStream) -> str:
    try:
        name = stream.socket.getpeername()
    except OSError:
        return "unknown:0"
    return f"{name[0]}:{name[1]}" if isinstance(name, tuple) else str(name)


_STREAM_GONE = (trio.BrokenResourceError, trio.ClosedResourceError)


def _drop_headers(request: trio_websocket.WebSocketRequest) -> None:
    """Empty the upgrade request's headers, which trio-websocket keeps for the
    link's life although nothing reads them after ``accept()``.

    This relies on ``headers`` being trio-websocket 0.12's own mutable list. It
    saves 0.8 KiB per idle link: 27.44 -> 26.64 KiB in
    ``python -m bench --scenarios footprint --systems clawmesh,ws-trio``
    (100 idle links, medians of 3 interleaved runs; ws-trio 18.0). Where the
    headers are a copy or immutable, nothing is dropped and the link works the
    same (tests/test_internals.py runs that path).
    """
    headers = request.headers
    if isinstance(headers, list):
        headers.clear()
