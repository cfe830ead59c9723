"""gvtd's background tasks: kept until they end, a failure logged and shown as a Problem
until the same work succeeds again (gvtd/background.py, used by the daemon's start-up
steps, libvirt's re-reads and the release after a domain stops)."""

from __future__ import annotations

import asyncio
import gc

import pytest

from gvtd.background import Background, Problem
from gvtd.errors import Busy


def shown(e: BaseException) -> Problem:
    return ("start:libvirt", "error", f"Starting libvirt failed ({e})", "Restart gvtd.")


def test_a_failure_is_a_problem_until_the_same_work_succeeds(
        caplog: pytest.LogCaptureFixture) -> None:
    async def go() -> list[list[Problem]]:
        changes: list[list[Problem]] = []
        bg = Background(lambda: changes.append(bg.problems()))

        async def fails() -> None:
            raise RuntimeError("no event loop for libvirt")

        async def works() -> None:
            return None

        task = bg.spawn(fails(), "libvirt", shown)
        del task
        gc.collect()  # the loop holds tasks weakly: the Background must keep it
        while bg.tasks:
            await asyncio.wait(set(bg.tasks))
        bg.spawn(works(), "other", shown)  # another key's success clears nothing
        while bg.tasks:
            await asyncio.wait(set(bg.tasks))
        assert bg.problems() == [shown(RuntimeError("no event loop for libvirt"))]
        bg.spawn(works(), "libvirt", shown)
        while bg.tasks:
            await asyncio.wait(set(bg.tasks))
        return changes

    caplog.set_level("ERROR", logger="gvtd.background")
    changes = asyncio.run(go())
    assert changes == [[shown(RuntimeError("no event loop for libvirt"))], []]
    assert [r.getMessage() for r in caplog.records] == [
        "Starting libvirt failed (no event loop for libvirt)"]


def test_a_cancelled_task_leaves_no_problem_and_succeeded_clears_one() -> None:
    async def go() -> Background:
        bg = Background(lambda: None)
        never = asyncio.Event()
        task = bg.spawn(never.wait(), "suspend", shown)  # type: ignore[arg-type]
        task.cancel()
        await asyncio.wait({task})
        assert bg.problems() == [] and not bg.tasks

        async def busy() -> None:
            raise Busy("held")

        bg.spawn(busy(), "suspend", shown)
        while bg.tasks:
            await asyncio.wait(set(bg.tasks))
        assert len(bg.problems()) == 1
        bg.succeeded("suspend")  # the work went through another way (a reload)
        return bg

    assert asyncio.run(go()).problems() == []
