"""Running a peer inside another Python program: ``open_peer``.

``open_peer`` does what ``python -m peer`` does, in the right order, and
hands the running ``Peer`` to the caller:

1. load the identity from the key directory, or create it there (mode 0600);
2. open the store in the data directory (unless ``store=False``);
3. start the mesh listener, so the peer knows the addresses it advertises;
4. start the DHT, the channels and the timers (``Peer.run``);
5. serve the local API if asked (its token is the key directory's);
6. join the mesh from the bootstrap specs, in the background.

Leaving the ``async with`` block stops the peer and everything it started.
Logs go to standard error (warnings and errors only) unless the program
configured structlog itself; nothing is printed to standard output.
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from peer.api._serve import serve_api
from peer.api._webhooks import WebhookService, load_or_create_secret
from peer.node._keystore import KeyStoreError, load_or_create_identity, load_or_create_token
from peer.node._node import Peer, PeerOptions
from peer.node._options import BenchOnly
from peer.wire._identity import Identity
from store import private_dir


class StartError(Exception):
    """The peer could not start: an address could not be bound, or the key directory
    is unusable. The message says which and why."""


def _host_port(text: str, what: str) -> tuple[str, int]:
    """``HOST:PORT`` with ASCII digits; an empty host is loopback, never every address."""
    host, sep, port = text.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise StartError(f"{what} wants HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _local_address() -> str:
    """A non-loopback address of this host, if it has one, to advertise."""
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            address = str(info[4][0])
            if not address.startswith("127."):
                return address
    except OSError:
        pass
    return "127.0.0.1"


def _only_error(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception in ``group`` besides cancellations, if there is exactly one."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        elif not isinstance(exc, trio.Cancelled):
            leaves.append(exc)
    return leaves[0] if len(leaves) == 1 else None


def _prepare(key_dir: str | Path, data_dir: str | Path | None) -> tuple[Identity, str, Path]:
    """The identity and API token from the key directory, and the data directory."""
    keys = Path(key_dir).expanduser()
    data = keys if data_dir is None else Path(data_dir).expanduser()
    try:
        identity, _ = load_or_create_identity(keys)
        token = load_or_create_token(keys)
        private_dir(data)
    except (OSError, KeyStoreError) as exc:
        raise StartError(f"key or data directory: {exc}") from exc
    return identity, token, data


@asynccontextmanager
async def open_peer(
    key_dir: str | Path,
    *,
    bootstrap: Sequence[str] = (),
    listen: str | None = "127.0.0.1:0",
    advertise: Sequence[str] = (),
    api: str | None = None,
    data_dir: str | Path | None = None,
    store: bool = True,
    options: PeerOptions | None = None,
    api_hosts: Sequence[str] = (),
) -> AsyncIterator[Peer]:
    """Run a peer for the duration of the block and yield it.

    ``key_dir`` holds the identity (created on first use). ``bootstrap`` lists
    specs to join from (``ws://host:port/#peerid``, an ``http(s)://`` or file
    ``bootstrap.json``); none starts a new mesh. ``listen`` is the mesh
    listener's ``HOST:PORT`` (port 0 picks one; None dials out only), and
    ``advertise`` the URLs others should dial instead of the bound address.
    ``api`` is ``HOST:PORT`` for the local HTTP API (None: no API; its URL is
    then ``peer.api_url``); it answers only requests whose ``Host`` and
    ``Origin`` name loopback, the address it is bound to, or ``api_hosts``.
    The store lives in ``data_dir/store`` (default: the key directory).
    ``options`` sets everything else (``channels``, ``relay_only``, ``dht``,
    limits); ``store_path`` is filled in from ``data_dir`` unless ``store``
    is False.
    """
    async with open_with(
        key_dir,
        bootstrap=bootstrap,
        listen=listen,
        advertise=advertise,
        api=api,
        data_dir=data_dir,
        store=store,
        options=options,
        api_hosts=api_hosts,
    ) as peer:
        yield peer


@asynccontextmanager
async def open_with(
    key_dir: str | Path,
    *,
    bootstrap: Sequence[str] = (),
    listen: str | None = "127.0.0.1:0",
    advertise: Sequence[str] = (),
    api: str | None = None,
    data_dir: str | Path | None = None,
    store: bool = True,
    options: PeerOptions | None = None,
    api_hosts: Sequence[str] = (),
    bench: BenchOnly | None = None,
    webhooks: WebhookSpec | None = None,
    compat: str | None = None,
) -> AsyncIterator[Peer]:
    """:func:`open_peer`, with the benchmark-only switches the CLI's hidden
    flags set (not part of the public API), outgoing ``webhooks`` and an API
    ``compat`` mode ("ocmesh")."""
    identity, token, data = _prepare(key_dir, data_dir)
    hooks = None
    if webhooks is not None and webhooks.urls:
        secret = webhooks.secret
        if secret is None:
            try:
                secret = load_or_create_secret(Path(key_dir).expanduser())  # noqa: ASYNC240
            except OSError as exc:
                raise StartError(f"webhook secret: {exc}") from exc
        try:
            hooks = _Hooks(webhooks.urls, secret, webhooks.retry_first)
        except ValueError as exc:
            raise StartError(str(exc)) from exc
    base = options or PeerOptions()
    store_path = str(data / "store") if store else None
    peer = Peer(identity, dataclasses.replace(base, store_path=store_path), bench=bench)

    async def services(nursery: trio.Nursery) -> None:
        if listen is not None:
            host, port = _host_port(listen, "listen")
            try:
                bound = await peer.serve_websocket(host, port)
            except OSError as exc:
                raise StartError(
                    f"cannot listen on {listen}: {exc.strerror or exc}"
                    " (is another peer running? pick another port)"
                ) from exc
            wildcard = host in ("0.0.0.0", "::")
            shown = await trio.to_thread.run_sync(_local_address) if wildcard else host
            peer.listen_urls[:] = list(advertise) or [f"ws://{shown}:{bound}/"]

    try:
        keys = Path(key_dir).expanduser()  # noqa: ASYNC240 (no I/O: a name)
        api_spec = _ApiSpec(api, api_hosts, compat, hooks, keys)
        async with _running(peer, services, api_spec, token, bootstrap) as running:
            yield running
    except BaseExceptionGroup as group:
        # One error (a StartError from inside the peer's nurseries, or the caller's
        # own from the block) comes out as itself, not wrapped by our nurseries.
        only = _only_error(group)
        if only is None:
            raise
        raise only from None


@dataclasses.dataclass(frozen=True)
class WebhookSpec:
    """Outgoing webhooks: their URLs, the signing secret (None: the key directory's
    ``webhook-secret``, created on first use) and the first retry's delay (s)."""

    urls: Sequence[str]
    secret: str | None = None
    retry_first: float = 1.0


@dataclasses.dataclass(frozen=True)
class _Hooks:
    urls: Sequence[str]
    secret: str
    retry_first: float

    def __post_init__(self) -> None:
        for url in self.urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"--webhook wants an http:// or https:// URL, not {url!r}")
        if self.retry_first <= 0:
            raise ValueError("--webhook-retry must be positive")


@dataclasses.dataclass(frozen=True)
class _ApiSpec:
    address: str | None
    hosts: Sequence[str]
    compat: str | None
    hooks: _Hooks | None
    key_dir: Path | None = None  # where the web page's login link is written


@asynccontextmanager
async def _running(
    peer: Peer,
    services: Callable[[trio.Nursery], Awaitable[None]],
    api_spec: _ApiSpec,
    token: str,
    bootstrap: Sequence[str],
) -> AsyncIterator[Peer]:
    api = api_spec.address
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: peer.run(extra=services, task_status=task_status))
        webhooks = None
        if api_spec.hooks is not None:
            h = api_spec.hooks
            webhooks = WebhookService(peer, h.urls, h.secret, retry_first=h.retry_first)
            await nursery.start(webhooks.run)
        if api is not None:
            host, port = _host_port(api, "api")
            try:
                peer.api_url = await serve_api(
                    peer,
                    host,
                    port,
                    token,
                    nursery,
                    allowed_hosts=api_spec.hosts,
                    compat=api_spec.compat,
                    webhooks=webhooks,
                    key_dir=api_spec.key_dir,
                )
            except (OSError, BaseExceptionGroup) as exc:
                # Hypercorn binds inside its own nursery: the OSError comes wrapped
                error = _only_error(exc) if isinstance(exc, BaseExceptionGroup) else exc
                if not isinstance(error, OSError):
                    raise
                raise StartError(
                    f"cannot serve the API on {api}: {error.strerror or error}"
                    " (is another peer running? pick another port with --api)"
                ) from error
        if bootstrap:
            nursery.start_soon(peer.join, list(bootstrap))
        try:
            yield peer
        finally:
            nursery.cancel_scope.cancel()
