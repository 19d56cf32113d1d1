"""``peer.cli._signals``: a stop signal cancels the peer; the close is bounded.

Each case runs ``run_until_signal`` in a child process (ending at once is
``os._exit``) around a ``main`` that reports when it is cancelled, and signals it
as a supervisor would.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

from tests._procs import REPO

_CHILD = textwrap.dedent(
    """
    import sys, trio
    from peer.cli._signals import run_until_signal

    async def main():
        print("running", flush=True)
        try:
            await trio.sleep_forever()
        finally:
            print("closing", flush=True)
            with trio.CancelScope(shield=True):  # a close that hangs (or not)
                await trio.sleep(float(sys.argv[1]))

    got = trio.run(run_until_signal, main, float(sys.argv[2]), float(sys.argv[3]))
    print("stopped by", got, flush=True)
    """
)


def _child(close_s: float, grace: float, same_stop: float) -> subprocess.Popen[str]:
    args = [sys.executable, "-c", _CHILD, str(close_s), str(grace), str(same_stop)]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline() == "running\n"
    return proc


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=30)
    return proc.returncode, out, err


def test_a_stop_signal_cancels_main_and_returns_the_signal() -> None:
    proc = _child(close_s=0.0, grace=30, same_stop=1.0)
    proc.send_signal(signal.SIGTERM)
    code, out, _ = _finish(proc)
    assert code == 0 and out == f"closing\nstopped by {int(signal.SIGTERM)}\n"


def test_the_same_stop_arriving_twice_does_not_cut_the_close_short() -> None:
    # a terminal's Ctrl-C reaches a seed's workers and their parent, which forwards
    # SIGTERM a moment later: one stop, not "stop now"
    proc = _child(close_s=0.5, grace=30, same_stop=60.0)
    proc.send_signal(signal.SIGINT)
    assert proc.stdout is not None and proc.stdout.readline() == "closing\n"
    proc.send_signal(signal.SIGTERM)
    code, out, err = _finish(proc)
    assert code == 0 and out == f"stopped by {int(signal.SIGINT)}\n", err
    assert "at once" not in err


def test_a_later_second_signal_stops_at_once() -> None:
    proc = _child(close_s=60.0, grace=60, same_stop=0.0)
    proc.send_signal(signal.SIGINT)
    assert proc.stdout is not None and proc.stdout.readline() == "closing\n"
    proc.send_signal(signal.SIGTERM)  # another signal: the same stop (a parent's)
    proc.send_signal(signal.SIGINT)  # the first one again: stop now
    code, out, err = _finish(proc)
    assert code == 128 + signal.SIGINT and "clawmesh: stopped at once" in err
    assert "stopped by" not in out


def test_a_close_that_hangs_is_ended_after_the_grace() -> None:
    proc = _child(close_s=60.0, grace=0.3, same_stop=1.0)
    proc.send_signal(signal.SIGTERM)
    code, out, err = _finish(proc)
    assert code == 128 + signal.SIGTERM and "the close took over 0.3 s" in err
    assert out == "closing\n"
