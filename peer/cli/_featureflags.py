"""The peer's flags for its optional parts: the agent card, blobs, and the gateways
(OpenClaw Messaging, MESH); split from ``_cli`` so that each file stays readable."""

from __future__ import annotations

import argparse
import os

from peer.protocols._meshenv import parse_networks
from peer.protocols._presence import MAX_SKILL_ID, MAX_SKILL_TEXT, MAX_SKILLS, valid_skill_id


def add_feature_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--card",
        metavar="FILE",
        help="our agent card, a JSON file (name, description, skills, ...): published in the "
        "DHT under its skills and tags while the peer runs (README: Agent directory)",
    )
    p.add_argument(
        "--skill",
        action="append",
        default=[],
        metavar="ID[=DESCRIPTION]",
        help="a skill this agent declares (repeat, 8 at most): added to the --card's skills "
        "and announced in its presence (A2A agent cards list it)",
    )
    p.add_argument(
        "--blob-max-mb",
        type=float,
        default=1024.0,
        metavar="MB",
        help="largest blob (attachment) accepted by POST /blobs (default %(default)s)",
    )
    p.add_argument(
        "--blob-quota-mb",
        type=float,
        default=4096.0,
        metavar="MB",
        help="disk all blob chunks may take, uploaded or fetched (default %(default)s)",
    )
    p.add_argument(
        "--check-ahead",
        choices=["on", "off"],
        default="on",
        help="check the signatures of a burst of messages from one link in a worker thread "
        "while the event loop goes on (a lone message never waits for a thread; "
        "default %(default)s)",
    )
    p.add_argument(
        "--no-ocm",
        action="store_true",
        help="no OpenClaw Messaging gateway: JSON text frames on the listener are ignored",
    )
    p.add_argument(
        "--mesh-token",
        default=os.environ.get("CLAWMESH_MESH_TOKEN", ""),
        metavar="TOKEN",
        help="a bearer token MESH senders may use for POST /hooks/<sender> and GET /inbox "
        "(besides the API token; env CLAWMESH_MESH_TOKEN)",
    )
    p.add_argument(
        "--mesh-keys",
        default=None,
        metavar="DIR",
        help="MESH's signing-keys directory: <sender>.key files; such senders must sign "
        "(HMAC-SHA256) with a nonce",
    )
    p.add_argument(
        "--mesh-reply-allow",
        action="append",
        default=[],
        metavar="CIDR",
        help="a non-public address or network MESH replyTo URLs may reach (repeatable; "
        "by default only public addresses: no loopback, private or link-local)",
    )
    p.add_argument(
        "--ocm-bootstrap",
        action="append",
        default=[],
        metavar="SPEC",
        help="an OpenClaw Messaging bootstrap.json (URL or file) or ws:// URL whose peers "
        "the OCM gateway dials (repeatable)",
    )


def megabytes(mb: float, flag: str) -> int:
    if not mb > 0:
        raise SystemExit(f"clawmesh: {flag} must be positive")
    return int(mb * (1 << 20))

def skills(specs: list[str]) -> tuple[tuple[str, str], ...]:
    skills = []
    for spec in specs:
        skill_id, _, text = spec.partition("=")
        skill_id, text = skill_id.strip(), text.strip()
        if not valid_skill_id(skill_id) or len(text) > MAX_SKILL_TEXT or not text.isprintable():
            raise SystemExit(f"clawmesh: --skill wants ID=DESCRIPTION (an id of 1 to "
                             f"{MAX_SKILL_ID} characters, no spaces; at most "
                             f"{MAX_SKILL_TEXT} characters of description), got {spec!r}")
        skills.append((skill_id, text))
    if len(skills) > MAX_SKILLS:
        raise SystemExit(f"clawmesh: at most {MAX_SKILLS} --skill")
    return tuple(skills)


def reply_allow(specs: list[str]) -> tuple[str, ...]:
    """``--mesh-reply-allow`` values, checked now: a clear error before anything starts."""
    try:
        return tuple(str(net) for net in parse_networks(specs))
    except ValueError as exc:
        raise SystemExit(f"clawmesh: --mesh-reply-allow: {exc}") from None
