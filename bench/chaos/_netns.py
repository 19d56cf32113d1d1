"""Network namespaces and nftables: real partitions and real packet loss.

The layout (``--net netns``; needs root, ``ip`` and ``nft``):

- a hub namespace ``cmchaos-<pid>-hub`` holding a bridge ``br0``;
- per node a namespace ``cmchaos-<pid>-<node>`` whose ``eth0`` is a veth to
  the bridge, with an address in a private /24 (``10.213.X.0/24``, X not
  used by any route of this host) and no default route, so nothing a node
  sends can leave the namespaces created here;
- one veth ``cmc<pid>`` from this (the harness's) namespace into the bridge,
  with ``.1``, so the harness reaches every node's API and nothing else.

A node listens and serves its API on its own address, so the addresses it
advertises (and the DHT spreads) are real, and the DHT can stay on.

Faults are one nftables table per node namespace (``inet clawmesh_chaos``,
an ``input`` hook), rewritten whole (``nft -f``, atomic) for each change:

- **partition**: ``ip saddr { the other half } drop``, in every node;
- **loss**: ``ip saddr <subnet> ip saddr != <harness> numgen random mod 100
  < P drop``: every packet between two nodes is dropped with probability
  P% on the way in (both directions of a link are lossy; the harness's own
  API traffic is not). This kernel has no netem; nftables is enough.

Teardown (:meth:`Lab.close`) deletes the namespaces (which deletes their
veths) and the harness's veth. It runs in a ``finally`` and at exit, so also
on Ctrl-C and on errors; a lab left by a harness that was ``kill -9``'d is
removed by the next one (:func:`clean_stale`: its pid is gone).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass, field

import trio

PREFIX = "cmchaos-"
TABLE = "clawmesh_chaos"
SUBNET_BASE = "10.213"
RUN_S = 20.0


class NetnsUnavailable(Exception):
    """Namespaces or nftables cannot be used here (the message says why)."""


def _run(*cmd: str, stdin: str | None = None, check: bool = True) -> str:
    r = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=RUN_S)
    if check and r.returncode != 0:
        raise NetnsUnavailable(f"{' '.join(cmd)}: {r.stderr.strip() or r.returncode}")
    return r.stdout


def unavailable() -> str | None:
    """Why netns mode cannot run here, or None if it can."""
    if os.geteuid() != 0:
        return "not root"
    for tool, hint in (("ip", "iproute2"), ("nft", "apt-get install -y nftables")):
        if shutil.which(tool) is None:
            return f"no `{tool}` command ({hint})"
    probe = f"{PREFIX}{os.getpid()}-probe"
    try:
        _run("ip", "netns", "add", probe)
        try:
            _run("ip", "netns", "exec", probe, "nft", "list", "ruleset")
        finally:
            _run("ip", "netns", "del", probe, check=False)
    except (NetnsUnavailable, OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot use a network namespace with nftables: {exc}"
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_inside(ns: str) -> None:
    """SIGKILL the processes left in one of our namespaces (only our peers can be
    there: nothing else is started in them), by pid."""
    for pid in _run("ip", "netns", "pids", ns, check=False).split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def clean_stale() -> list[str]:
    """Delete labs whose harness is gone (killed before it could clean up):
    their leftover processes (by pid, from ``ip netns pids``), namespaces and
    veth. Returns the namespaces removed."""
    removed = []
    for line in _run("ip", "netns", "list", check=False).splitlines():
        name = line.split()[0] if line.strip() else ""
        m = re.fullmatch(rf"{PREFIX}(\d+)-.+", name)
        if not m or _alive(int(m.group(1))):
            continue
        _kill_inside(name)
        _run("ip", "netns", "del", name, check=False)
        _run("ip", "link", "del", f"cmc{m.group(1)}", check=False)
        removed.append(name)
    return removed


def _free_subnet() -> str:
    used = _run("ip", "-4", "addr").split() + _run("ip", "-4", "route").split()
    start = os.getpid() % 250
    for k in range(250):
        third = 1 + (start + k) % 250
        net = f"{SUBNET_BASE}.{third}."
        if not any(word.startswith(net) for word in used):
            return net
    raise NetnsUnavailable(f"no free /24 in {SUBNET_BASE}.0.0/16")


@dataclass
class Lab:
    """The namespaces of one scenario's nodes; faults as nftables tables."""

    tag: str = field(default_factory=lambda: f"{PREFIX}{os.getpid()}")
    net: str = ""  # "10.213.X."
    addresses: dict[str, str] = field(default_factory=dict)  # node name -> address
    stats: dict[str, int] = field(default_factory=lambda: {"cuts": 0, "lossy": 0, "dropped": 0})
    _namespaces: list[str] = field(default_factory=list)

    @property
    def harness(self) -> str:
        return self.net + "1"

    @property
    def root_veth(self) -> str:
        return f"cmc{os.getpid()}"

    def namespace(self, node: str) -> str:
        return f"{self.tag}-{node}"

    def wrap(self, node: str) -> list[str]:
        """The command prefix that runs a program inside ``node``'s namespace."""
        return ["ip", "netns", "exec", self.namespace(node)]

    def open(self, nodes: list[str]) -> None:
        """Create the hub, the harness's veth and one namespace per node."""
        atexit.register(self.close)
        self.net = _free_subnet()
        hub = f"{self.tag}-hub"
        self._add_namespace(hub)
        _run("ip", "-n", hub, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", hub, "link", "set", "br0", "up")
        _run("ip", "link", "add", self.root_veth, "type", "veth", "peer", "name", "h0",
             "netns", hub)  # fmt: skip
        _run("ip", "-n", hub, "link", "set", "dev", "h0", "master", "br0", "up")
        _run("ip", "addr", "add", f"{self.harness}/24", "dev", self.root_veth)
        _run("ip", "link", "set", self.root_veth, "up")
        for i, node in enumerate(nodes):
            ns, address = self.namespace(node), f"{self.net}{i + 2}"
            self._add_namespace(ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            _run("ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"n{i}",
                 "netns", hub)  # fmt: skip
            _run("ip", "-n", hub, "link", "set", "dev", f"n{i}", "master", "br0", "up")
            _run("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            _run("ip", "-n", ns, "link", "set", "eth0", "up")
            _run("ip", "netns", "exec", ns, "nft", "-f", "-", stdin=self._table([]))
            self.addresses[node] = address

    def _add_namespace(self, ns: str) -> None:
        _run("ip", "netns", "add", ns)
        self._namespaces.append(ns)

    def close(self) -> None:
        """Delete everything :meth:`open` created (idempotent, never raises)."""
        while self._namespaces:
            ns = self._namespaces.pop()
            _kill_inside(ns)  # normally the peers are stopped already
            _run("ip", "netns", "del", ns, check=False)
        if self.net:
            _run("ip", "link", "del", self.root_veth, check=False)
            self.net = ""
        atexit.unregister(self.close)

    def _table(self, rules: list[str]) -> str:
        body = "\n".join(f"    {r}" for r in rules)
        return (
            f"table inet {TABLE}\ndelete table inet {TABLE}\n"
            f"table inet {TABLE} {{\n  chain input {{\n"
            f"    type filter hook input priority 0; policy accept;\n{body}\n  }}\n}}\n"
        )

    async def _apply(self, rules_for: dict[str, list[str]]) -> None:
        """Replace every node's table (in parallel); what the old rules dropped
        is added to ``stats["dropped"]`` first."""

        async def one(node: str, rules: list[str]) -> None:
            old = await trio.run_process([*self.wrap(node), "nft", "list", "table", "inet", TABLE],
                                         capture_stdout=True, check=False)  # fmt: skip
            self.stats["dropped"] += sum(int(x) for x in re.findall(rb"packets (\d+)", old.stdout))
            cmd = [*self.wrap(node), "nft", "-f", "-"]
            await trio.run_process(cmd, stdin=self._table(rules).encode(), capture_stdout=True,
                                   capture_stderr=True)  # fmt: skip

        async with trio.open_nursery() as nursery:
            for node, rules in rules_for.items():
                nursery.start_soon(one, node, rules)

    async def cut(self, side_a: set[str], side_b: set[str]) -> None:
        """Drop every packet between the two halves (each node drops the other's)."""

        def drop(others: set[str]) -> list[str]:
            addrs = ", ".join(sorted(self.addresses[n] for n in others))
            return [f"ip saddr {{ {addrs} }} counter drop"] if addrs else []

        self.stats["cuts"] += 1
        await self._apply({n: drop(side_b if n in side_a else side_a)
                           for n in self.addresses})  # fmt: skip

    async def lossy(self, percent: int) -> None:
        """Drop ``percent``% of the packets between any two nodes (0: none)."""
        rule = (f"ip saddr {self.net}0/24 ip saddr != {self.harness} "
                f"numgen random mod 100 < {percent} counter drop")  # fmt: skip
        self.stats["lossy"] += int(percent > 0)
        await self._apply({n: [rule] if percent > 0 else [] for n in self.addresses})

    async def heal(self) -> None:
        await self._apply({n: [] for n in self.addresses})
