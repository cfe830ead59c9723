"""The kernel's uevents waiting for Host, and the one task that follows them.

Events queue up while an operation holds the host lock (never lost); one pass takes all
that arrived. A pass that fails falls back to re-reading everything, and one that fails
even that is said in the log and in Problems until a later pass succeeds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from gvtd.backend import Uevent
from gvtd.observed import ProblemRow

log = logging.getLogger("gvtd.host")  # the lines Host logged before this moved out stay its own


class UeventQueue:
    def __init__(self, lock: asyncio.Lock, follow: Callable[[list[Uevent]], Awaitable[None]],
                 recover: Callable[[], Awaitable[None]], changed: Callable[[], None]) -> None:
        """Each pass runs `follow` under `lock`; `recover` (a full re-read) when it fails;
        `changed` (Host.publish) after a recovery, and when the queue's problem comes or
        goes."""
        self._lock = lock
        self._follow = follow
        self._recover = recover
        self._changed = changed
        self._pending: list[Uevent] = []
        self.drainer: asyncio.Task[None] | None = None
        self._problem: ProblemRow | None = None  # see _drained

    def problems(self) -> list[ProblemRow]:
        return [self._problem] if self._problem is not None else []

    def add(self, events: list[Uevent]) -> None:
        """Queue events; one pass handles all that arrived, once the lock is free."""
        self._pending += events
        if self.drainer is None or self.drainer.done():
            self.drainer = asyncio.get_running_loop().create_task(self._drain())
            self.drainer.add_done_callback(self._drained)

    def _drained(self, task: asyncio.Task[None]) -> None:
        """A pass over uevents that failed even to re-read everything: said in the log and
        Problems (until a later pass succeeds), never lost with its task."""
        if task.cancelled():
            return
        e = task.exception()
        if e is None:
            if self._problem is not None:
                self._problem = None
                self._changed()
            return
        log.error("Failed to follow the kernel's uevents: %s", e, exc_info=e)
        self._problem = (
            "host:uevents", "error",
            f"gvtd failed to follow the kernel's events ({type(e).__name__}: {e}); what it "
            "shows of vGPUs and parents may be out of date.",
            "Run `gvt-client reload` to re-read everything; if this stays, see the journal "
            "(journalctl -u gvtd).")
        self._changed()

    async def _drain(self) -> None:
        while self._pending:
            async with self._lock:
                events, self._pending = self._pending, []
                try:
                    await self._follow(events)
                except Exception:  # a bug must not stop gvtd from following the kernel
                    log.exception("Failed to handle uevents; re-reading everything")
                    await self._recover()
                    self._changed()
