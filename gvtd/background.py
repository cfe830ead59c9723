"""Work gvtd runs beside its calls: a start-up step after READY, a re-read after a libvirt
event, the release after a domain stopped on its own.

The event loop holds tasks only weakly, and an exception nobody retrieves ends as "Task
exception was never retrieved". So each task is kept until it ends, and a failure is logged
and stays in Manager.Problems, under the key of its kind of work, until that work succeeds
again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)

Problem = tuple[str, str, str, str]  # (id, severity, message, fix)


class Background:
    """Background tasks of one owner, and the Problems their failures leave."""

    def __init__(self, changed: Callable[[], None]) -> None:
        self.changed = changed  # called when a Problem appears or goes
        self.tasks: set[asyncio.Task[None]] = set()
        self._failed: dict[str, Problem] = {}

    def spawn(self, coro: Coroutine[Any, Any, None], key: str,
              problem: Callable[[BaseException], Problem],
              loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Task[None]:
        """Run coro; if it fails, problem(exception) is what Problems shows under key."""
        task = (loop or asyncio.get_running_loop()).create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(lambda t: self._ended(t, key, problem))
        return task

    def _ended(self, task: asyncio.Task[None], key: str,
               problem: Callable[[BaseException], Problem]) -> None:
        self.tasks.discard(task)
        if task.cancelled():
            return
        e = task.exception()
        if e is None:
            self.succeeded(key)
            return
        self._failed[key] = shown = problem(e)
        log.error("%s", shown[2], exc_info=e)
        self.changed()

    def succeeded(self, key: str) -> None:
        """The work of key went through (here or elsewhere): its failure is past."""
        if self._failed.pop(key, None) is not None:
            self.changed()

    def forget(self) -> None:
        """Drop every Problem (the owner starts afresh, e.g. on a new libvirt URI)."""
        if self._failed:
            self._failed.clear()
            self.changed()

    def problems(self) -> list[Problem]:
        return list(self._failed.values())


def why(e: BaseException) -> str:
    """An exception as a sentence's part: a gvtd error's own message, else its type and text."""
    return getattr(e, "message", None) or f"{type(e).__name__}: {e}"
