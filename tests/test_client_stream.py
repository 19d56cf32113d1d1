"""``peer.client``'s stream against a stand-in ``GET /events`` (the contract), with no peer.

The SSE parser on its own; then the async and sync clients through dropped
connections and ``slow`` cuts: every message exactly once, in cursor order,
each reconnection carrying ``Last-Event-ID`` = the last cursor yielded.
"""

from __future__ import annotations

import pytest
import trio

from peer.client import (
    ApiError,
    AsyncClient,
    Client,
    Gap,
    InvalidRequest,
    Message,
    PeerUnreachable,
    SseEvent,
    SseParser,
    StatusChange,
    Unauthorised,
)
from peer.client._resume import Resume, StreamCut
from tests._procs import free_port
from tests._sse_server import TOKEN, FakeEvents


def _parse(text: str) -> list[SseEvent]:
    parser = SseParser()
    events = []
    for line in text.split("\n"):
        event = parser.feed(line)
        if event is not None:
            events.append(event)
    return events


def test_sse_parser_follows_the_event_stream_rules() -> None:
    events = _parse(
        ": ping\n\n"  # a comment: nothing
        "id: 7\nevent: message\ndata: {\"a\":\ndata:  1}\n\n"  # two data lines join with \n
        "event: status\ndata:x\n\n"  # no space after the colon; no id line
        "event: lonely\n\n"  # no data: not dispatched
        "data\n\n"  # a field with no colon: empty data
        "retry: 5\nunknown: y\ndata: z\n\n"
    )
    assert events == [
        SseEvent("message", '{"a":\n 1}', "7"),
        SseEvent("status", "x", None),
        SseEvent("message", "", None),
        SseEvent("message", "z", None),
    ]


async def _collect(fake: FakeEvents, after: int | None, want: int) -> list[Message]:
    got: list[Message] = []
    statuses: list[StatusChange] = []
    async with AsyncClient(fake.url, token=TOKEN) as mesh:
        with trio.fail_after(20):
            async with mesh.stream(after=after) as events:
                async for event in events:
                    if isinstance(event, StatusChange):
                        statuses.append(event)
                        continue
                    assert isinstance(event, Message)
                    got.append(event)
                    if len(got) == want:
                        break
    assert statuses and all(s.status == "delivered" for s in statuses)
    return got


@pytest.mark.parametrize("end_with", ["drop", "slow"])
async def test_async_stream_resumes_by_cursor_after_each_cut(end_with: str) -> None:
    fake = FakeEvents(total=10, cut_after=3, end_with=end_with)
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        got = await _collect(fake, after=0, want=10)
        nursery.cancel_scope.cancel()
    assert [m.cursor for m in got] == list(range(1, 11))
    assert [m.body for m in got] == [f"m{i}" for i in range(1, 11)]
    # the first request asked from 0, each reconnection from the last cursor it yielded
    assert fake.requests[0] == {"after": "0", "last": "0"}
    assert [r["last"] for r in fake.requests[1:4]] == ["3", "6", "9"]


async def test_async_stream_raises_api_errors_at_once() -> None:
    fake = FakeEvents()
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        async with AsyncClient(fake.url, token="wrong-token-0123456") as mesh:
            with pytest.raises(Unauthorised) as refused:
                async with mesh.stream(after=0) as events:
                    async for _ in events:
                        pass
        assert refused.value.code == "unauthorised" and refused.value.status == 401
        async with AsyncClient(fake.url, token=TOKEN) as mesh:
            with pytest.raises(InvalidRequest, match="not a channel"):
                async with mesh.stream(channel="bad name") as events:
                    async for _ in events:
                        pass
        nursery.cancel_scope.cancel()
    assert fake.requests == []  # neither got as far as a stream


async def test_async_stream_gives_up_when_nothing_answers() -> None:
    async with AsyncClient(f"127.0.0.1:{free_port()}", token=TOKEN) as mesh:
        with trio.fail_after(10), pytest.raises(PeerUnreachable):
            async with mesh.stream(after=0, give_up_after=0.5) as events:
                async for _ in events:
                    pass
        with trio.fail_after(10), pytest.raises(PeerUnreachable):
            async with mesh.stream(after=0, reconnect=False) as events:
                async for _ in events:
                    pass


async def test_sync_stream_resumes_by_cursor() -> None:
    fake = FakeEvents(total=7, cut_after=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)

        def run() -> list[int]:
            with Client(fake.url, token=TOKEN) as mesh:
                cursors = []
                for event in mesh.stream(after=2):
                    if isinstance(event, Message):
                        cursors.append(event.cursor)
                        if len(cursors) == 5:
                            return cursors
            return cursors

        with trio.fail_after(20):
            cursors = await trio.to_thread.run_sync(run)
        nursery.cancel_scope.cancel()
    assert cursors == [3, 4, 5, 6, 7]
    assert [r["last"] for r in fake.requests[:3]] == ["2", "4", "6"]


def test_resume_skips_repeats_moves_past_gaps_and_sorts_errors() -> None:
    resume = Resume(after=3, give_up_after=None)
    assert resume.headers() == {"Last-Event-ID": "3"}
    assert resume.event("message", {"cursor": 3, "body": "again"}, "3") is None  # seen
    fresh = resume.event("message", {"cursor": 4, "body": "new"}, "4")
    assert isinstance(fresh, Message) and fresh.body == "new" and resume.after == 4
    gap = resume.event("gap", {"after": 4, "next": 9, "lost": 4, "message": "gone"}, "8")
    assert gap == Gap(4, 9, 4, "gone") and resume.after == 8
    with pytest.raises(StreamCut):
        resume.event("error", {"error": {"code": "slow", "message": "too slow"}}, None)
    with pytest.raises(ApiError, match="busy"):
        resume.event("error", {"error": {"code": "busy", "message": "later"}}, None)
    assert resume.event("something-new", {"x": 1}, None) is None
    # backoff doubles to its bound, and gives up only when told to
    assert [resume.failed(t) for t in (0, 1, 2, 3, 4, 5, 6)] == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    bounded = Resume(after=None, give_up_after=2)
    assert bounded.failed(10) is not None and bounded.failed(11) is not None
    assert bounded.failed(13) is None
