"""The counting sink's core: count measured records by their exact shape, check one in K fully.

Sans-IO (no Trio, no sockets): bytes in, events out. A fan-out sink must have
clearly more capacity than the hub it measures, so it does not parse every
record in Python. The harness tells it what a measured record looks like on
its connection (a :class:`Shape`: its exact length and the bytes it must carry
at fixed offsets: the WebSocket header with its length, NATS's ``MSG`` line,
Redis's RESP prefix, a trailing CRLF). :class:`RecordCounter` then walks the
stream:

* at a record boundary whose bytes start like a shape, it counts the longest
  run of consecutive records of that shape at once. Records are contiguous, so
  if the record at ``pos`` has a header that says ``length`` bytes, the next one
  starts at ``pos + length``; checking each mark byte of every record of the run
  is one strided slice per mark byte (C speed), and is exact: a run ends at the
  first record whose header differs in any byte;
* every ``check_every``-th measured record (the first of each connection
  included) is handed out whole as a ``CHECK`` event, to be checked fully
  (decrypted, decoded, its signature verified) by the protocol's code; the others
  come out as ``SKIP`` events (how many), which clawmesh needs to keep its
  link cipher's record counter in step;
* anything else (warm-up messages, which are deliberately of another size, pings,
  errors, gossip control frames) is cut at its boundary by the protocol's
  ``split`` function and handed out as an ``OTHER`` event for the general path.

A record of a measured shape that is not a measured message would be counted:
the shapes are exact lengths of bodies no control frame has, the sampled checks
catch a wrong shape, and the harness flags any connection that counts more
deliveries than were sent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

SKIP = 0  # (SKIP, n): n measured records counted without looking inside
CHECK = 1  # (CHECK, record): a measured record to check fully
OTHER = 2  # (OTHER, record): any other record, for the general path

Event = tuple[int, int | bytes]
# the length of the record that starts at pos (buffer, pos, end), or None if it has not all arrived
Splitter = Callable[[bytearray, int, int], int | None]


class CountError(Exception):
    """The stream broke its framing, or a buffer grew past its bound."""


@dataclass(frozen=True, slots=True)
class Shape:
    """Every measured record on one connection: ``length`` bytes, starting with
    ``head`` and ending with ``tail``."""

    length: int
    head: bytes
    tail: bytes = b""

    def __post_init__(self) -> None:
        if not self.head or len(self.head) + len(self.tail) > self.length:
            raise ValueError(f"impossible shape {self!r}")

    def marks(self) -> list[tuple[int, int]]:
        """(offset, byte) pairs every record of this shape has."""
        out = list(enumerate(self.head))
        start = self.length - len(self.tail)
        out += [(start + i, b) for i, b in enumerate(self.tail)]
        return out


def run_length(buf: bytearray, pos: int, end: int, shape: Shape) -> int:
    """How many whole records of ``shape`` follow each other from ``pos`` (0 if none)."""
    length = shape.length
    most = (end - pos) // length
    if most == 0:
        return 0
    span = (most - 1) * length + 1
    for offset, byte in shape.marks():
        column = bytes(buf[pos + offset : pos + offset + span : length])
        most = min(most, len(column) - len(column.lstrip(bytes((byte,)))))
        if most == 0:
            return 0
    return most


class RecordCounter:
    """One connection's stream: feed bytes, get events (see the module docstring)."""

    def __init__(self, split: Splitter, check_every: int, max_pending: int) -> None:
        if check_every < 1:
            raise ValueError("check_every must be at least 1")
        self._buf = bytearray()
        self._split = split
        self._every = check_every
        self._max = max_pending
        self._shapes: tuple[Shape, ...] = ()
        self.measured = 0  # measured records counted so far (checked ones included)
        self.checked = 0
        self.others = 0

    def expect(self, shapes: list[Shape]) -> None:
        """From now on, count records of these shapes as measured deliveries."""
        self._shapes = tuple(shapes)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Event]:
        buf = self._buf
        buf += data
        events: list[Event] = []
        pos = 0
        end = len(buf)
        while pos < end:
            step = self._measured_run(buf, pos, end, events)
            if step:
                pos += step
                continue
            size = self._split(buf, pos, end)
            if size is None:
                break
            if size <= 0:
                raise CountError("the framing gave an empty record")
            events.append((OTHER, bytes(buf[pos : pos + size])))
            self.others += 1
            pos += size
        if pos:
            del buf[:pos]
        if len(buf) > self._max:
            raise CountError(f"{len(buf)} bytes pending without a whole record")
        return events

    def _measured_run(self, buf: bytearray, pos: int, end: int, events: list[Event]) -> int:
        """Count a run of measured records at ``pos``; the bytes it took (0: none)."""
        for shape in self._shapes:
            if not buf.startswith(shape.head, pos):
                continue
            run = run_length(buf, pos, end, shape)
            if run:
                self._emit(buf, pos, run, shape.length, events)
                return run * shape.length
        return 0

    def _emit(self, buf: bytearray, pos: int, run: int, length: int,
              events: list[Event]) -> None:
        every = self._every
        first = self.measured
        index = first + (-first) % every  # the first index in this run that is checked
        done = first
        while index < first + run:
            if index > done:
                events.append((SKIP, index - done))
            at = pos + (index - first) * length
            events.append((CHECK, bytes(buf[at : at + length])))
            self.checked += 1
            done = index + 1
            index += every
        if first + run > done:
            events.append((SKIP, first + run - done))
        self.measured = first + run
