"""gvtd.bounded: a lock per key lives only while used; a shared read runs once per change."""

from __future__ import annotations

import asyncio

import pytest

from gvtd.bounded import KeyedLock, Shared


def test_keyed_lock_forgets_every_key_once_its_calls_are_over() -> None:
    async def go() -> None:
        locks = KeyedLock()
        for i in range(1000):
            async with locks.hold(f"unknown-{i}"):
                assert len(locks) == 1
        assert len(locks) == 0

    asyncio.run(go())


def test_keyed_lock_serialises_one_key_and_keeps_it_while_a_waiter_waits() -> None:
    async def go() -> None:
        locks = KeyedLock()
        order: list[str] = []
        release = asyncio.Event()

        async def first() -> None:
            async with locks.hold("win10"):
                order.append("first in")
                await release.wait()
                order.append("first out")

        async def second() -> None:
            async with locks.hold("win10"):
                order.append("second in")

        a = asyncio.ensure_future(first())
        await asyncio.sleep(0)  # let first take the lock
        b = asyncio.ensure_future(second())
        await asyncio.sleep(0)  # second now waits on the same lock
        async with locks.hold("other"):  # another key is not held up
            order.append("other")
        assert len(locks) == 1
        release.set()
        await asyncio.gather(a, b)
        assert order == ["first in", "other", "first out", "second in"]
        assert len(locks) == 0

    asyncio.run(go())


def test_keyed_lock_drops_a_waiter_that_is_cancelled() -> None:
    async def go() -> None:
        locks = KeyedLock()
        release = asyncio.Event()

        async def holder() -> None:
            async with locks.hold("k"):
                await release.wait()

        async def waiter() -> None:
            async with locks.hold("k"):
                raise AssertionError("a cancelled waiter never gets the lock")

        h = asyncio.ensure_future(holder())
        await asyncio.sleep(0)
        w = asyncio.ensure_future(waiter())
        await asyncio.sleep(0)
        w.cancel()
        with pytest.raises(asyncio.CancelledError):
            await w
        release.set()
        await h
        assert len(locks) == 0

    asyncio.run(go())


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_shared_runs_once_for_concurrent_and_repeated_callers() -> None:
    async def go() -> None:
        runs = 0
        gate = asyncio.Event()

        async def compute() -> int:
            nonlocal runs
            runs += 1
            await gate.wait()
            return runs

        clock = Clock()
        shared = Shared(compute, ttl=5, clock=clock)
        callers = [asyncio.ensure_future(shared.get()) for _ in range(50)]
        await asyncio.sleep(0)
        gate.set()
        assert await asyncio.gather(*callers) == [1] * 50
        clock.now += 4.9
        assert await shared.get() == 1 and runs == 1
        clock.now += 0.2  # past its lifetime
        assert await shared.get() == 2 and runs == 2

    asyncio.run(go())


def test_shared_invalidate_drops_the_result_and_a_stale_flight() -> None:
    async def go() -> None:
        runs = 0
        gates = [asyncio.Event(), asyncio.Event()]

        async def compute() -> int:
            nonlocal runs
            runs += 1
            mine = runs
            await gates[mine - 1].wait()
            return mine

        shared = Shared(compute, ttl=60, clock=Clock())
        old = asyncio.ensure_future(shared.get())
        await asyncio.sleep(0)
        shared.invalidate()  # the state changed while the first ran
        new = asyncio.ensure_future(shared.get())  # must not join the stale one
        await asyncio.sleep(0)
        gates[0].set()
        assert await old == 1
        gates[1].set()
        assert await new == 2
        assert await shared.get() == 2 and runs == 2  # the fresh one is kept, not the stale
        shared.invalidate()
        gates[1].clear()
        gates.append(asyncio.Event())
        gates[2].set()
        assert await shared.get() == 3

    asyncio.run(go())


def test_shared_keeps_no_failure_and_survives_a_cancelled_caller() -> None:
    async def go() -> None:
        calls = 0
        gate = asyncio.Event()

        async def compute() -> str:
            nonlocal calls
            calls += 1
            await gate.wait()
            if calls == 1:
                raise OSError("unreadable")
            return "ok"

        shared = Shared(compute, ttl=60, clock=Clock())
        a = asyncio.ensure_future(shared.get())
        b = asyncio.ensure_future(shared.get())
        await asyncio.sleep(0)
        a.cancel()  # one caller gives up: the other still gets the shared answer
        gate.set()
        with pytest.raises(OSError):
            await b
        assert a.cancelled()
        assert await shared.get() == "ok" and calls == 2

    asyncio.run(go())
