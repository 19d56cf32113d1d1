"""Two clawmesh peers in one Python program: Alice starts a mesh, Bob joins it,
and Alice sends Bob an end-to-end encrypted DM, which Bob reads as a stream.

    python examples/embed.py [WORK_DIR]

Each peer keeps its key and store in WORK_DIR (a temporary directory by
default), listens on a free loopback port, and logs only warnings, to standard
error. The program prints what Bob received and exits 0, or exits 1 if the DM
did not arrive within 30 seconds.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import trio

import peer


async def main(work: Path) -> int:
    async with peer.open_peer(work / "alice") as alice:
        # a peer with no bootstrap starts a new mesh; its address and id are how others join
        join = f"{alice.listen_urls[0]}#{alice.identity.peer_id_hex}"
        async with peer.open_peer(work / "bob", bootstrap=[join]) as bob:
            with trio.move_on_after(30) as timer:
                # Alice learns Bob's key when he links to her; then she can encrypt to him
                while alice.directory.get(bob.peer_id) is None:
                    await alice.wait_changed()
                inbox = bob.messages(peer=alice.peer_id)
                sent = await alice.send_direct(bob.peer_id, peer.Content("hello from Alice"))
                async for message in inbox:
                    print(f"bob got a DM from {message.sender.hex()[:16]}: {message.body!r}")
                    assert message.id == sent.id
                    break
            if timer.cancelled_caught:
                print("the DM did not arrive within 30 seconds", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1:
        sys.exit(trio.run(main, Path(sys.argv[1])))
    with tempfile.TemporaryDirectory() as tmp:
        sys.exit(trio.run(main, Path(tmp)))
