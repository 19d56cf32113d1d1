"""CLI flags that reach the peer's options."""

from __future__ import annotations

import pytest

from peer.cli._cli import _gossip_params, build_parser
from peer.wire._limits import GossipParams


def test_publishing_limits_come_from_the_flags() -> None:
    default = _gossip_params(build_parser().parse_args([]))
    assert default == GossipParams()
    lifted = _gossip_params(
        build_parser().parse_args(["--author-rate", "0", "--link-pub-rate", "0"])
    )
    assert (lifted.sender_rate, lifted.link_pub_rate) == (0, 0)
    strict = _gossip_params(
        build_parser().parse_args(["--author-rate", "50", "--author-burst", "200"])
    )
    assert (strict.sender_rate, strict.sender_burst) == (50, 200)
    with pytest.raises(SystemExit):
        _gossip_params(build_parser().parse_args(["--author-rate", "-1"]))
