"""``bulk_gc``: the young generation's threshold is raised while catch-up stores
pages, nested blocks share it, and what was there before comes back."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest

from peer import Identity
from peer.node import _bulkgc
from peer.node._bulkgc import BULK_THRESHOLD, bulk_gc
from peer.node._catchuphost import CatchUpService
from peer.protocols._catchupcore import CheckAndStore
from tests.test_inbox_refs import _fill


@pytest.fixture(autouse=True)
def _restore() -> Iterator[None]:
    before, enabled = gc.get_threshold(), gc.isenabled()
    yield
    gc.set_threshold(*before)
    if enabled:
        gc.enable()
    assert _bulkgc._State.depth == 0


def test_raised_inside_restored_after_nested() -> None:
    gc.set_threshold(700, 11, 12)
    with bulk_gc():
        assert gc.get_threshold() == (BULK_THRESHOLD, 11, 12)
        with bulk_gc():
            assert gc.get_threshold() == (BULK_THRESHOLD, 11, 12)
        assert gc.get_threshold() == (BULK_THRESHOLD, 11, 12)  # the outer block still runs
    assert gc.get_threshold() == (700, 11, 12)


def test_restored_after_an_error() -> None:
    gc.set_threshold(700, 10, 10)
    with pytest.raises(RuntimeError), bulk_gc():
        raise RuntimeError("boom")
    assert gc.get_threshold() == (700, 10, 10)


@pytest.mark.parametrize("threshold", [(0, 10, 10), (50_000, 10, 10)])
def test_a_collector_set_otherwise_is_left_alone(threshold: tuple[int, int, int]) -> None:
    gc.set_threshold(*threshold)
    with bulk_gc():
        assert gc.get_threshold() == threshold
    assert gc.get_threshold() == threshold


def test_a_disabled_collector_is_left_alone() -> None:
    gc.set_threshold(700, 10, 10)
    gc.disable()
    with bulk_gc():
        assert gc.get_threshold() == (700, 10, 10) and not gc.isenabled()


async def test_catch_up_stores_its_pages_in_bulk_mode(tmp_path: Path) -> None:
    """The shell's CheckAndStore runs inside ``bulk_gc``."""
    seen: list[tuple[int, int, int]] = []
    real = CatchUpService._check_and_store

    async def spy(self: CatchUpService, command: CheckAndStore) -> None:
        seen.append(gc.get_threshold())
        await real(self, command)

    gc.set_threshold(700, 10, 10)
    with mock.patch.object(CatchUpService, "_check_and_store", spy):
        await _fill(tmp_path, Identity.generate(), Identity.generate(), 5)  # b catches up
    assert seen and all(t[0] == BULK_THRESHOLD for t in seen)
    assert gc.get_threshold() == (700, 10, 10)
