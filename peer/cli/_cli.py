"""``python -m peer``: flags and environment in, a running peer out.

With no bootstrap the peer starts the first node of a new mesh and prints the
command others run to join it. Flags win over environment variables
(``MESH_BOOTSTRAP_URL``, ``PORT``/``MESH_PEER_PORT``, ``MESH_KEY_DIR``,
``MESH_DATA_DIR``, ``MESH_API_PORT``), which win over the defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import structlog
import trio

from peer._embed import StartError, WebhookSpec, open_with
from peer.node._bootstrap import (
    MAX_BOOTSTRAP_BYTES,
    BootstrapError,
    bootstrap_entry,
    classify,
    parse_peer_address,
    parse_peer_list,
)
from peer.node._keystore import KeyStoreError, load_or_create_identity, load_or_create_token
from peer.node._logging import configure_logging
from peer.node._node import Peer, PeerOptions
from peer.node._options import DAY_MS, BenchOnly, default_keep_rules
from peer.protocols._mailbox import MailboxQuota
from peer.protocols._presence import (
    valid_name,
)
from peer.wire._frames import is_topic
from peer.wire._limits import GossipParams
from store import KeepRules, RetentionPolicy, private_dir

from ._cardfile import agent_card
from ._featureflags import add_feature_flags, megabytes, reply_allow, skills
from ._lock import DirectoryLocked, lock_directories
from ._names import COMMANDS
from ._signals import run_until_signal
from ._workerrun import run_seed_workers, run_worker
from ._workers import check_workers

DEFAULT_PEER_PORT = 7433
DEFAULT_API_PORT = 7432
DEFAULT_HOME = Path.home() / ".clawmesh"


def _env_port(*names: str, default: int) -> int:
    for name in names:
        value = os.environ.get(name)
        if value and value.isdigit():
            return int(value)
    return default


def build_parser() -> argparse.ArgumentParser:
    peer_port = _env_port("MESH_PEER_PORT", "PORT", default=DEFAULT_PEER_PORT)
    api_port = _env_port("MESH_API_PORT", default=DEFAULT_API_PORT)
    env_bootstrap = os.environ.get("MESH_BOOTSTRAP_URL", "")
    p = argparse.ArgumentParser(
        prog="python -m peer",
        description="Run a clawmesh peer. With no --bootstrap it starts a new mesh.",
        epilog="Commands for a running peer: " + ", ".join(sorted(COMMANDS))
        + " (python -m peer COMMAND --help).",
    )
    p.add_argument(
        "--bootstrap",
        "-b",
        action="append",
        default=None,
        metavar="SPEC",
        help="where to join: ws://host:port[#peerid], host:port, an http(s) URL or file of a "
        "bootstrap.json peer list; repeat or comma-separate for several (env MESH_BOOTSTRAP_URL)",
    )
    p.add_argument(
        "--listen",
        default=f"0.0.0.0:{peer_port}",
        metavar="HOST:PORT",
        help="mesh WebSocket listener (env MESH_PEER_PORT or PORT; default %(default)s)",
    )
    p.add_argument("--no-listen", action="store_true", help="accept no links (client behind NAT)")
    p.add_argument(
        "--advertise",
        action="append",
        default=None,
        metavar="WS_URL",
        help="address(es) other peers should dial, if not the listener's",
    )
    p.add_argument(
        "--api",
        default=f"127.0.0.1:{api_port}",
        metavar="HOST:PORT",
        help="local HTTP API (env MESH_API_PORT; default %(default)s)",
    )
    p.add_argument("--no-api", action="store_true", help="run without the local HTTP API")
    p.add_argument(
        "--compat",
        choices=["ocmesh"],
        default=None,
        help="ocmesh: its agents work unchanged: /status, /peers, /messages and /send "
        "answer loopback callers without the token, content over 4,096 characters is 413 "
        "(default: only /status, /bootstrap.json, /openapi.json, /metrics, /health, the "
        "agent cards, the web page and /login, /logout answer without the token)",
    )
    p.add_argument(
        "--name",
        default=os.environ.get("MESH_NAME", ""),
        metavar="NAME",
        help="a display name others see in /peers (signed in our presence; 1-64 printable "
        "characters; env MESH_NAME)",
    )
    p.add_argument(
        "--webhook",
        action="append",
        default=[],
        metavar="URL",
        help="POST every new message others send us to URL, signed, retried until 2xx, "
        "in order, resumed after a restart (repeatable; README: Webhooks)",
    )
    p.add_argument(
        "--webhook-secret",
        default=os.environ.get("MESH_WEBHOOK_SECRET"),
        metavar="SECRET",
        help="the HMAC-SHA256 key for X-Clawmesh-Signature (env MESH_WEBHOOK_SECRET; "
        "default: the key directory's webhook-secret file, created on first use)",
    )
    p.add_argument(
        "--webhook-retry",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="first retry of a failed webhook POST; later ones back off to 60 s "
        "(default %(default)s)",
    )
    p.add_argument(
        "--api-allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a host name besides loopback (and --api's own address) that the API accepts "
        "in Host and Origin headers (repeatable)",
    )
    p.add_argument(
        "--key-dir",
        type=Path,
        default=Path(os.environ.get("MESH_KEY_DIR", DEFAULT_HOME / "keys")),
        help="Ed25519 key and API token (env MESH_KEY_DIR; default %(default)s)",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("MESH_DATA_DIR", DEFAULT_HOME / "data")),
        help="runtime state: the message store (store/) and peer.json with this peer's "
        "addresses (env MESH_DATA_DIR; default %(default)s)",
    )
    p.add_argument(
        "--no-store",
        action="store_true",
        help="keep nothing on disk: no offline catch-up, no outbox, the inbox is lost "
        "on exit (benchmarks, throwaway peers)",
    )
    p.add_argument(
        "--keep-days",
        type=float,
        default=None,
        metavar="DAYS",
        help="how long stored messages are kept (default 30, relay-only seeds 7)",
    )
    p.add_argument(
        "--keep-mb",
        type=float,
        default=None,
        metavar="MB",
        help="stored bytes kept per topic (default 1024, relay-only seeds 256)",
    )
    p.add_argument(
        "--keep-topic",
        action="append",
        default=[],
        metavar="PREFIX",
        help="relay-only seeds: store only topics starting with PREFIX (repeatable; "
        "default: every topic relayed, channels, DMs and receipts)",
    )
    p.add_argument(
        "--dm-deadline",
        type=float,
        default=7 * 24 * 3600.0,
        metavar="SECONDS",
        help="how long an unreceipted DM is retried before it becomes a dead letter "
        "(default %(default)s)",
    )
    p.add_argument(
        "--outbox-retry",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="first retry of an unreceipted DM; later ones back off to 5 minutes "
        "(default %(default)s)",
    )
    p.add_argument(
        "--no-mailbox",
        action="store_true",
        help="hold no sealed DMs or receipts for other peers' offline recipients",
    )
    p.add_argument(
        "--mailbox-mb",
        type=float,
        default=64.0,
        metavar="MB",
        help="mailbox duty: bytes held for others in all (a sender gets 1/16 of it, a "
        "recipient 1/4; default %(default)s)",
    )
    p.add_argument(
        "--mailbox-days",
        type=float,
        default=7.0,
        metavar="DAYS",
        help="mailbox duty: how long a held DM or receipt is kept (default %(default)s)",
    )
    p.add_argument(
        "--relay-only",
        action="store_true",
        help="seed node: route for others, no local agent, no subscriptions",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="relay-only seeds: run as N worker processes sharing the listen port "
        "(SO_REUSEPORT), one seed to the outside (README: A seed on every core; default 1)",
    )
    # set by the parent of --workers N for each worker it starts (peer.cli._workers)
    p.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker-dir", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--no-relay", action="store_true", help="never forward others' messages")
    p.add_argument(
        "--no-dht",
        action="store_true",
        help="no Kademlia DHT: links only to bootstrap peers (fixed topologies, tests)",
    )
    p.add_argument("--max-links", type=int, default=128, help="links at most (default %(default)s)")
    p.add_argument(
        "--max-links-per-ip",
        type=int,
        default=8,
        metavar="N",
        help="inbound connections per remote address, 0 for no limit; loopback is "
        "exempt (default %(default)s)",
    )
    p.add_argument(
        "--channel",
        "-c",
        action="append",
        default=[],
        metavar="NAME",
        help="subscribe to a channel on start (repeatable)",
    )
    p.add_argument(
        "--print-bootstrap-entry",
        action="store_true",
        help="print this peer's bootstrap.json entry and exit",
    )
    p.add_argument(
        "--log-json",
        action="store_true",
        default=os.environ.get("MESH_LOG_JSON", "").lower() in ("1", "true", "yes"),
        help="log JSON lines instead of key=value (also MESH_LOG_JSON=1: deploy/ sets it)",
    )
    p.add_argument(
        "--log-level",
        default=os.environ.get("MESH_LOG_LEVEL", "info").lower(),
        choices=["debug", "info", "warning", "error"],
    )
    limits = GossipParams()
    p.add_argument(
        "--author-rate",
        type=float,
        default=limits.sender_rate,
        metavar="PER_S",
        help="new messages per second one author may publish through this peer, with "
        "--author-burst; over it they are dropped and the link that sent them loses "
        "score (gossip.md section 9; 0: no limit; default %(default)g)",
    )
    p.add_argument(
        "--author-burst", type=float, default=limits.sender_burst, metavar="N",
        help="messages an author may publish at once (default %(default)g)",
    )
    p.add_argument(
        "--link-pub-rate",
        type=float,
        default=limits.link_pub_rate,
        metavar="PER_S",
        help="messages per second one link may send, any author (0: no limit; "
        "default %(default)g)",
    )
    # For the benchmark harness only, unsafe, and so left out of --help: skip the
    # envelope signature checks (forged messages are relayed), and offer links
    # unencrypted (used only when the other side offers it too).
    p.add_argument("--bench-no-verify", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--bench-plaintext-links", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(env_bootstrap=env_bootstrap)
    add_feature_flags(p)
    return p


def _split_hostport(text: str, flag: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise SystemExit(f"{flag} wants HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _bootstrap_specs(args: argparse.Namespace) -> list[str]:
    raw = args.bootstrap if args.bootstrap is not None else [args.env_bootstrap]
    return [s.strip() for item in raw for s in item.split(",") if s.strip()]


def _banner(peer: Peer, args: argparse.Namespace, api_url: str | None, specs: list[str]) -> str:
    pid = peer.identity.peer_id_hex
    role = "relay-only seed" if args.relay_only else ("peer" if not args.no_relay else "leaf peer")
    lines = [f"clawmesh {role} {pid}"]
    if peer.listen_urls:
        lines.append(f"  mesh address: {peer.listen_urls[0]}   (listening on {args.listen})")
    if api_url:
        lines.append(f"  local API:    {api_url}   (token: {args.key_dir / 'api-token'})")
    join = peer.listen_urls[0] + "#" + pid if peer.listen_urls else None
    command = f"{run_command()} --bootstrap {shlex.quote(join or '')}"
    if specs:
        lines.append(f"  joining via:  {', '.join(specs)}")
        if join:
            lines.append(f"  others can also join through this peer:  {command}")
    elif join:
        lines.append("  This is the first node of a new mesh. Others join with:")
        lines.append(f"    {command}")
    entry = bootstrap_entry(peer.identity, peer.listen_urls, peer.caps)
    lines.append(f"  bootstrap.json entry: {json.dumps(entry)}")
    login = args.key_dir / "login-url"
    if api_url and login.exists():  # the web page's one-time sign-in (`python -m peer web`)
        lines.append(f"  web page (sign-in link, works once): {login.read_text().strip()}")
    return "\n".join(lines)


def run_command() -> str:
    """How to start a peer from any directory and shell: this interpreter's absolute
    path (a virtualenv's python works unactivated), then ``-m peer``."""
    return f"{shlex.quote(os.path.abspath(sys.executable))} -m peer"


def check_bootstrap(specs: list[str]) -> None:
    """Refuse a spec that can never work before anything starts: one that is not a peer
    address, or a list file that is missing or not a bootstrap list. (An http(s) list
    is fetched, and retried, when joining: the network may only be down for now.)"""
    for spec in specs:
        try:
            kind = classify(spec)
            if kind == "peer":
                parse_peer_address(spec)
            elif kind == "file":
                with open(spec, "rb") as f:
                    raw = f.read(MAX_BOOTSTRAP_BYTES + 1)
                if len(raw) > MAX_BOOTSTRAP_BYTES:
                    raise BootstrapError(f"{spec} is over {MAX_BOOTSTRAP_BYTES} bytes")
                try:
                    data = json.loads(raw)
                except ValueError as exc:
                    raise BootstrapError(f"{spec} is not JSON: {exc}") from None
                if not parse_peer_list(data):
                    raise BootstrapError(f"{spec} lists no peers")
        except BootstrapError as exc:
            raise SystemExit(f"clawmesh: --bootstrap: {exc}") from None
        except OSError as exc:
            raise SystemExit(
                f"clawmesh: --bootstrap: cannot read {spec}: {exc.strerror or exc}"
            ) from None


def _gossip_params(args: argparse.Namespace) -> GossipParams:
    if min(args.author_rate, args.author_burst, args.link_pub_rate) < 0:
        raise SystemExit("--author-rate, --author-burst and --link-pub-rate must be >= 0")
    return dataclasses.replace(
        GossipParams(),
        sender_rate=args.author_rate,
        sender_burst=args.author_burst,
        link_pub_rate=args.link_pub_rate,
    )


def _mailbox_quota(args: argparse.Namespace) -> MailboxQuota:
    if args.mailbox_mb <= 0 or args.mailbox_days <= 0:
        raise SystemExit("--mailbox-mb and --mailbox-days must be positive")
    total = max(16, int(args.mailbox_mb * (1 << 20)))
    return MailboxQuota(
        total_bytes=total,
        recipient_bytes=max(1, total // 4),
        sender_bytes=max(1, total // 16),
        ttl_ms=max(1, int(args.mailbox_days * DAY_MS)),
    )


def _keep_rules(args: argparse.Namespace) -> KeepRules:
    base = default_keep_rules(args.relay_only).default
    assert base is not None
    if args.keep_days is not None and args.keep_days <= 0:
        raise SystemExit("--keep-days must be positive")
    if args.keep_mb is not None and args.keep_mb <= 0:
        raise SystemExit("--keep-mb must be positive")
    if args.dm_deadline <= 0 or args.outbox_retry <= 0:
        raise SystemExit("--dm-deadline and --outbox-retry must be positive")
    policy = RetentionPolicy(
        max_age_ms=base.max_age_ms if args.keep_days is None else int(args.keep_days * DAY_MS),
        max_bytes=base.max_bytes if args.keep_mb is None else int(args.keep_mb * (1 << 20)),
    )
    if args.keep_topic:
        if not args.relay_only:
            raise SystemExit("--keep-topic is for --relay-only seeds (a peer keeps its channels)")
        return KeepRules(default=None, prefixes={prefix: policy for prefix in args.keep_topic})
    return KeepRules(default=policy)


async def run_peer(args: argparse.Namespace) -> None:
    worker = args.worker_index
    specs = _bootstrap_specs(args) if not worker else []  # only worker 0 dials out
    channels = tuple(c.lstrip("#") for c in args.channel)
    for channel in channels:
        if not is_topic(channel) or "/" in channel:
            raise SystemExit(f"--channel {channel!r} is not a channel name")
    options = PeerOptions(
        relay=not args.no_relay,
        relay_only=args.relay_only,
        channels=() if args.relay_only else channels,
        max_links=args.max_links,
        dht=not args.no_dht,
        max_links_per_ip=args.max_links_per_ip,
        keep_rules=_keep_rules(args),
        gossip=_gossip_params(args),
        dm_deadline=args.dm_deadline,
        outbox_retry_initial=args.outbox_retry,
        name=_name(args.name),
        mailbox=not args.no_mailbox,
        mailbox_quota=_mailbox_quota(args),
        card=None if args.relay_only else agent_card(
            args.card, skills(args.skill), args.name
        ),
        blob_max_bytes=megabytes(args.blob_max_mb, "--blob-max-mb"),
        blob_quota_bytes=megabytes(args.blob_quota_mb, "--blob-quota-mb"),
        ocm=not args.no_ocm,
        check_ahead=args.check_ahead == "on",
        ocm_bootstrap=tuple(args.ocm_bootstrap),
        skills=skills(args.skill),
        mesh_token=args.mesh_token,
        mesh_keys=args.mesh_keys,
        mesh_reply_allow=reply_allow(args.mesh_reply_allow),
        reuse_port=worker is not None,
    )
    _split_hostport(args.listen, "--listen")  # a clear error before anything starts
    _split_hostport(args.api, "--api")
    try:
        async with open_with(
            args.key_dir,
            data_dir=args.data_dir,
            bootstrap=specs,
            listen=None if args.no_listen else _wildcard_default(args.listen),
            advertise=args.advertise or (),
            api=None if args.no_api else args.api,
            store=not args.no_store,
            options=options,
            api_hosts=args.api_allow_host,
            bench=BenchOnly(args.bench_no_verify, args.bench_plaintext_links),
            webhooks=WebhookSpec(args.webhook, args.webhook_secret, args.webhook_retry),
            compat=args.compat,
        ) as peer:
            if worker is not None:  # one of a seed's workers: the parent says the rest

                def ready() -> None:
                    _write_peer_file(args.data_dir, peer, peer.api_url)
                    if worker == 0:
                        _write_api_url(args.key_dir, peer.api_url)

                await run_worker(peer, worker, args.workers, args.worker_dir, ready)
            _write_peer_file(args.data_dir, peer, peer.api_url)
            _write_api_url(args.key_dir, peer.api_url)
            print(_banner(peer, args, peer.api_url, specs), flush=True)
            await trio.sleep_forever()
    except StartError as exc:
        raise SystemExit(f"clawmesh: {exc}") from None


def _name(name: str) -> str:
    if name and not valid_name(name):
        raise SystemExit(f"clawmesh: --name wants 1 to 64 printable characters, got {name!r}")
    return name


def _wildcard_default(listen: str) -> str:
    """``--listen :PORT`` listens on every address, as it always has."""
    return "0.0.0.0" + listen if listen.startswith(":") else listen


def _write_peer_file(data_dir: Path, peer: Peer, api_url: str | None) -> None:
    info = {
        "peer_id": peer.identity.peer_id_hex,
        "ws_urls": peer.listen_urls,
        "api_url": api_url,
        "pid": os.getpid(),
    }
    (data_dir / "peer.json").write_text(json.dumps(info, indent=2) + "\n")


def _write_api_url(key_dir: Path, api_url: str | None) -> None:
    """``api-url`` in the key directory (0600), beside ``api-token``: how ``peer.client``
    and the CLI's commands find this peer's API; removed when there is no API."""
    path = key_dir / "api-url"
    if api_url is None:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name("api-url.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, api_url.encode() + b"\n")
    finally:
        os.close(fd)
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> None:
    """Run a peer (``peer.cli.main`` sends subcommands elsewhere first)."""
    args = build_parser().parse_args(argv)
    configure_logging(json=args.log_json, level=args.log_level)
    if args.print_bootstrap_entry:
        try:
            identity, _ = load_or_create_identity(args.key_dir)
        except (KeyStoreError, OSError) as exc:
            raise SystemExit(f"key directory {args.key_dir}: {exc}") from None
        urls = args.advertise or []
        caps = ("relay", "relay-only") if args.relay_only else (() if args.no_relay else ("relay",))
        print(json.dumps(bootstrap_entry(identity, urls, caps), indent=2))
        return
    check_bootstrap(_bootstrap_specs(args))
    check_workers(args.workers, args.relay_only, not args.no_listen)
    try:
        identity, created = load_or_create_identity(args.key_dir)
        load_or_create_token(args.key_dir)
        private_dir(args.data_dir)
        # a worker's parent holds the key directory's lock; the worker its own data's
        mine = (args.data_dir,) if args.worker_index is not None else (args.key_dir, args.data_dir)
        locks = lock_directories(*mine)
    except DirectoryLocked as exc:
        raise SystemExit(f"clawmesh: {exc}") from None
    except (KeyStoreError, OSError) as exc:
        raise SystemExit(f"key directory {args.key_dir}: {exc}") from None
    try:
        if args.workers > 1 and args.worker_index is None:
            run_seed_workers(args, list(sys.argv[1:] if argv is None else argv), identity)
        else:
            _run(args, identity.peer_id_hex, created)
    finally:
        for fd in locks:
            os.close(fd)


# The store's writer and trio's worker threads run some Python; when one holds the GIL
# as the event loop comes back from a syscall, the loop waits up to this long for it
# (CPython's default is 5 ms: a relayed message's latency would carry it at every hop).
GIL_SWITCH_S = 0.0005


def _run(args: argparse.Namespace, peer_id: str, created: bool) -> None:
    sys.setswitchinterval(GIL_SWITCH_S)
    if created:
        structlog.get_logger("clawmesh").info(
            "created a new identity", peer=peer_id[:16], key_dir=str(args.key_dir)
        )
    # What start-up made (modules, classes, tables) lives as long as the process: out
    # of the collector's way, full collections walk only what the peer made since
    # (measured: about half the collector's time on catch-up, bench/README.md)
    gc.freeze()
    try:
        if trio.run(run_until_signal, lambda: run_peer(args)) is not None:
            print("\nclawmesh: stopped", file=sys.stderr)
    except (KeyboardInterrupt, BaseExceptionGroup) as exc:
        leaf: BaseException = exc  # errors inside the peer's nurseries come in groups
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        if isinstance(leaf, KeyboardInterrupt):
            print("\nclawmesh: stopped", file=sys.stderr)
        elif isinstance(leaf, SystemExit):
            raise SystemExit(leaf.code) from None
        else:
            raise
