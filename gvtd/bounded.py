"""What a caller can make gvtd keep is bounded by what exists, not by what callers send.

Every local user may call gvtd, and many methods take a name the caller chooses. A lock per
name kept forever would let a loop of calls with fresh names grow the daemon without bound;
a read that re-runs every host check would let a loop of calls keep a core busy. These two
helpers keep a lock only while it is used, and share one computation among callers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class _Entry:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0  # holders and waiters


class KeyedLock:
    """One asyncio lock per key, dropped when its last holder or waiter leaves: an
    unknown name costs a dict entry for the length of its call only."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    def __len__(self) -> int:
        """Keys held or waited for now."""
        return len(self._entries)

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        entry = self._entries.setdefault(key, _Entry())
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:  # also when cancelled while waiting
            entry.users -= 1
            if entry.users == 0:
                del self._entries[key]


class Shared(Generic[T]):
    """An expensive read shared by its callers: concurrent callers await one computation
    (single flight), and its result is reused for `ttl` seconds or until invalidate() says
    what it depends on changed. A computation that fails is not kept."""

    def __init__(self, compute: Callable[[], Awaitable[T]], ttl: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._compute = compute
        self.ttl = ttl
        self._clock = clock
        self._generation = 0
        self._value: tuple[int, float, T] | None = None  # generation, started at, result
        self._flight: tuple[int, asyncio.Task[T]] | None = None

    def invalidate(self) -> None:
        """What the result depends on changed: the next call computes afresh, and a
        computation already under way is not kept."""
        self._generation += 1
        self._value = None

    async def get(self) -> T:
        generation = self._generation
        if self._value is not None:
            gen, started, value = self._value
            if gen == generation and self._clock() - started < self.ttl:
                return value
        if self._flight is None or self._flight[0] != generation or self._flight[1].done():
            started = self._clock()
            task = asyncio.ensure_future(self._compute())
            task.add_done_callback(lambda t: self._keep(generation, started, t))
            self._flight = (generation, task)
        # shield: one caller giving up (its call cancelled) must not cancel the others'
        return await asyncio.shield(self._flight[1])

    def _keep(self, generation: int, started: float, task: asyncio.Task[T]) -> None:
        if self._flight is not None and self._flight[1] is task:
            self._flight = None
        if not task.cancelled() and task.exception() is None and generation == self._generation:
            self._value = (generation, started, task.result())
