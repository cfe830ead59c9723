"""What sysfs shows: the parents and instances (mdevs, VFs) as gvtd last read them through
the backends (gvtd.backend), and the reads that failed.

Every read runs in a worker thread, so a driver that hangs holds the one operation waiting
for it, never the loop. gvtd.host owns the decisions; this only keeps what was seen current,
whole (refresh) or for what an event or a request names (reread).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable

from gvtd.backend import Backends, Instance, Parent, Uevent
from gvtd.mdev import ReadFailed

log = logging.getLogger("gvtd.host")  # the lines Host logged before this moved out stay its own

ARRIVING_RETRIES = 14  # re-reads of an mdev still without its type link: 10 ms doubling,
ARRIVING_MAX_DELAY = 1.0  # at most 1 s apart (about 8 s in all: a loaded host links late)

ProblemRow = tuple[str, str, str, str]  # (id, severity, message, fix), as Manager.Problems


class Observed:
    def __init__(self, backends: Backends, settle: Callable[[list[Uevent]], None]) -> None:
        """`settle` takes the event that asks for an arriving mdev to be read again (see
        _read_again): Host.on_uevents, so the re-read is one more uevent pass."""
        self.backends = backends
        self._settle = settle
        self.parents: dict[str, Parent] = {}
        self.mdevs: dict[str, Instance] = {}  # every instance, by vGPU UUID
        self._arriving: dict[str, int] = {}  # mdev UUID -> re-reads so far (_read_again)
        self.unreadable: dict[str, ProblemRow] = {}  # see _unreadable

    async def refresh(self) -> None:
        """Re-read mdevs, then parents (see reread), in a worker thread: a full scan reads
        hundreds of files on a host with many, and a stuck driver must not stop the loop.
        A parent seen before stays known, unregistered. A read that fails other than for
        absence (EACCES, EIO) changes nothing: it is reported (see _unreadable)."""
        try:
            mdevs, found = await asyncio.to_thread(
                lambda: (self.backends.instances(), self.backends.parents()))
        except ReadFailed as e:
            self._unreadable("*", e)
            return
        self.unreadable.clear()  # everything read: no fault left to report
        self.mdevs = mdevs
        seen = {p.name: p for p in found}
        for name, old in self.parents.items():
            if name not in seen:
                seen[name] = dataclasses.replace(old, registered=False, types=())
        self.parents = dict(sorted(seen.items()))

    async def reread(self, parents: set[str], mdevs: set[str]) -> None:
        """Re-read only what events named: the cheap path of refresh().

        mdevs first: the kernel unlinks a parent from mdev_bus *before* it removes the
        parent's mdevs, so an mdev seen gone next to a parent seen registered afterwards
        really was removed by someone, not taken down with its parent.
        """
        await self.reread_mdevs(mdevs)
        await self.reread_parents(parents)

    def _unreadable(self, what: str, e: ReadFailed) -> None:
        """A sysfs read failed for another reason than absence: what gvtd knew of `what`
        (an mdev UUID, a parent, "*" for everything) stays as it was, and the file and errno
        go to the log and Problems until `what` reads again."""
        if what not in self.unreadable:
            log.error("%s", e.message, extra={"SYSFS_PATH": e.path})
        self.unreadable[what] = (
            f"sysfs:{e.path}", "error", e.message,
            "Check the file's permissions and the kernel log (journalctl -k); gvtd reads it "
            "again at the next event for it, or `gvt-client reload`.")

    def _read_mdevs(self, mdevs: set[str]) -> dict[str, tuple[Instance | None, bool] | ReadFailed]:
        """Each mdev, and whether one not there yet is arriving (see _read_again); in a
        worker thread."""
        out: dict[str, tuple[Instance | None, bool] | ReadFailed] = {}
        for uuid in mdevs:
            try:
                mdev = self.backends.instance(uuid)
                out[uuid] = (mdev, mdev is None and self.backends.arriving(uuid))
            except ReadFailed as e:
                out[uuid] = e
        return out

    async def reread_mdevs(self, mdevs: set[str]) -> None:
        """The mdevs, read in a worker thread: a read that hangs holds this operation only,
        never the loop."""
        if not mdevs:
            return
        for uuid, got in (await asyncio.to_thread(self._read_mdevs, mdevs)).items():
            if isinstance(got, ReadFailed):
                self._unreadable(uuid, got)
                continue
            self.unreadable.pop(uuid, None)
            mdev, arriving = got
            if mdev is None:
                self.mdevs.pop(uuid, None)
                if arriving:
                    self._read_again(uuid)
                    continue
            else:
                self.mdevs[uuid] = mdev
            self._arriving.pop(uuid, None)

    def _read_parents(self, parents: set[str]) -> dict[str, Parent | None | ReadFailed]:
        out: dict[str, Parent | None | ReadFailed] = {}
        for name in parents:
            try:
                out[name] = self.backends.parent(name)
            except ReadFailed as e:
                out[name] = e
        return out

    async def reread_parents(self, parents: set[str]) -> None:
        """The parents, read in a worker thread (see reread_mdevs)."""
        if not parents:
            return
        for name, parent in (await asyncio.to_thread(self._read_parents, parents)).items():
            if isinstance(parent, ReadFailed):
                self._unreadable(name, parent)
                continue
            self.unreadable.pop(name, None)
            if parent is not None and parent.registered:
                self.parents[name] = parent
            elif name in self.parents:
                self.parents[name] = dataclasses.replace(self.parents[name], registered=False,
                                                         types=())
            elif parent is not None:
                self.parents[name] = parent
        self.parents = dict(sorted(self.parents.items()))

    def _read_again(self, uuid: str) -> None:
        """No event follows the `mdev_type` link of a new mdev: read it again shortly, so
        that an mdev created by someone else is not missed for having been read too early."""
        tries = self._arriving.get(uuid, 0)
        if tries >= ARRIVING_RETRIES:
            del self._arriving[uuid]
            log.warning("mdev %s still has no mdev_type link; ignoring it until its next "
                        "event", uuid, extra={"VGPU_UUID": uuid})
            return
        self._arriving[uuid] = tries + 1
        asyncio.get_running_loop().call_later(
            min(0.01 * 2 ** tries, ARRIVING_MAX_DELAY), self._settle,
            [Uevent("settle", mdev=uuid)])

