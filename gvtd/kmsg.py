"""The kernel log, followed on the event loop through /dev/kmsg.

Why /dev/kmsg and not the journal: it is the kernel's own record, with the facility the
kernel gives each record (0 only for the kernel's printk: what user space writes there is
LOG_USER or above, kernel/printk/printk.c devkmsg_write), so gvtd can tell a GVT-g message
from one anybody logged; it needs no journald (containers, initrds, journald restarts), and
a non-blocking fd with loop.add_reader wakes gvtd for each record with no polling and no
thread. Each read(2) returns one record, "PRIO,SEQ,USEC,FLAGS;TEXT\\n" with " KEY=value"
dictionary lines (SUBSYSTEM=, DEVICE= from dev_printk).

Restart-safe: the cursor (boot id, last sequence number handled) is kept in
STATE_DIRECTORY. A gvtd started again in the same boot reads the ring from its oldest
record and skips what it handled; in a new boot (or the first time) it skips the history
(gvt-client doctor summarises that) and follows what comes next.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gvtd.config import atomic_write, on_disk

log = logging.getLogger(__name__)

CURSOR_FILE = "kmsg-cursor.json"
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
RECORD_MAX = 8192  # a record with its dictionary (the kernel's limit is 1 KiB of text)
BATCH = 256  # records read per wake-up before the loop turns again
KERN = 0  # the facility of the kernel's own records

_HEADER_RE = re.compile(rb"(\d+),(\d+),(\d+),[^;]*;")
_ESCAPE_RE = re.compile(r"\\x([0-9a-f]{2})")


@dataclass(frozen=True)
class Record:
    """One kernel log record."""

    facility: int
    level: int
    seq: int
    usec: int  # since boot
    text: str
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def from_kernel(self) -> bool:
        """Printed by the kernel itself, not written into /dev/kmsg by a process."""
        return self.facility == KERN


def _unescape(text: str) -> str:
    return _ESCAPE_RE.sub(lambda m: chr(int(m.group(1), 16)), text)


def parse(data: bytes) -> Record | None:
    """A record as /dev/kmsg returns it; None for anything else."""
    m = _HEADER_RE.match(data)
    if m is None:
        return None
    prio, seq, usec = (int(g) for g in m.groups())
    body = data[m.end():].decode(errors="replace")
    text, _, rest = body.partition("\n")
    fields = {}
    for line in rest.split("\n"):
        if line.startswith(" "):
            key, sep, value = line[1:].partition("=")
            if sep:
                fields[key] = _unescape(value)
    return Record(prio >> 3, prio & 7, seq, usec, _unescape(text), fields)


def boot_id(path: Path = BOOT_ID) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


class Cursor:
    """Where gvtd is in this boot's kernel log (STATE_DIRECTORY/kmsg-cursor.json)."""

    def __init__(self, state_dir: Path, boot: str) -> None:
        self.path = state_dir / CURSOR_FILE
        self.boot = boot
        self._saved = -1
        self._wanted = -1
        self._writing: asyncio.Task[None] | None = None

    def load(self) -> int | None:
        """The last sequence number handled in this boot, or None (a new boot, or none)."""
        try:
            data = json.loads(self.path.read_text())
            if data.get("boot") == self.boot and self.boot and isinstance(data.get("seq"), int):
                self._saved = self._wanted = data["seq"]
                return self._saved
        except (OSError, ValueError, AttributeError):
            pass
        return None

    def advance(self, seq: int) -> None:
        """Remember seq as handled: one atomic write at a time, off the loop; a later
        seq asked meanwhile is written after it (the newest wins)."""
        self._wanted = max(self._wanted, seq)
        if self._writing is None or self._writing.done():
            self._writing = asyncio.get_running_loop().create_task(self._write())

    async def _write(self) -> None:
        while self._saved < self._wanted:
            seq = self._wanted
            try:
                await on_disk(atomic_write, self.path,
                              json.dumps({"boot": self.boot, "seq": seq}) + "\n")
            except OSError as e:
                log.warning("Cannot record the kernel log position in %s (%s): after a "
                            "restart gvtd may show its last GVT-g messages again",
                            self.path, e.strerror)
                return
            self._saved = seq

    async def flushed(self) -> None:
        """Wait for the write under way (tests, and gvtd stopping)."""
        while self._writing is not None and not self._writing.done():
            await asyncio.wait({self._writing})


class KernelLog:
    """Follows /dev/kmsg (or the emulated one) on the loop; each record, once, to
    on_records in batches (the handler returns whether any record mattered, which is
    when the cursor is written)."""

    def __init__(self, path: Path, cursor: Cursor,
                 on_records: Callable[[list[Record]], bool]) -> None:
        self.path = path
        self.cursor = cursor
        self.on_records = on_records
        self.lost = 0  # records the ring overwrote before gvtd read them
        self._fd = -1
        self._skip_to = -1  # records up to this seq were handled (or are history)
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        """Open, find where to start (off the loop: it may read the whole ring), follow."""
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            resume = self.cursor.load()
            if resume is None:
                resume = await asyncio.to_thread(_last_seq, fd)
                log.info("Following the kernel log %s from record %d", self.path, resume + 1)
            else:
                log.info("Following the kernel log %s after record %d, the last handled "
                         "in this boot", self.path, resume)
        except BaseException:
            os.close(fd)
            raise
        loop = asyncio.get_running_loop()
        try:
            loop.add_reader(fd, self._readable)
        except PermissionError:  # epoll refuses regular files: a text log, for doctor alone
            os.close(fd)
            log.warning("kernel_log %s is a plain file, which gvtd cannot follow: no vGPU "
                        "health from it (doctor still scans it)", self.path)
            return
        self._fd, self._skip_to, self._loop = fd, resume, loop
        self._readable()  # what arrived meanwhile

    def stop(self) -> None:
        if self._fd >= 0 and self._loop is not None:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1

    def _readable(self) -> None:
        batch: list[Record] = []
        try:
            for data in itertools.islice(records(self._fd), BATCH):
                record = parse(data)
                if record is None or record.seq <= self._skip_to:
                    continue
                if record.seq > self._skip_to + 1 and self._skip_to >= 0:
                    gap = record.seq - self._skip_to - 1
                    self.lost += gap
                    log.warning("%d kernel log records were overwritten before gvtd read "
                                "them (records %d-%d); GVT-g messages among them are not "
                                "shown", gap, self._skip_to + 1, record.seq - 1)
                self._skip_to = record.seq
                batch.append(record)
        except OSError as e:
            log.error("Cannot read the kernel log %s (%s); no longer following it",
                      self.path, e.strerror)
            self.stop()
        if batch and self.on_records(batch):
            self.cursor.advance(batch[-1].seq)


def records(fd: int) -> Iterator[bytes]:
    """Each record the ring holds from where fd is, without waiting for more. A reader
    the ring left behind (EPIPE) goes on from the oldest record."""
    while True:
        try:
            data = os.read(fd, RECORD_MAX)
        except BlockingIOError:
            return
        except OSError as e:
            if e.errno == errno.EPIPE:
                continue
            raise
        if not data:
            return
        yield data


def _last_seq(fd: int) -> int:
    """The sequence number of the newest record now in the ring (-1 if none): where a
    gvtd that has handled nothing in this boot starts."""
    last = -1
    for data in records(fd):
        m = _HEADER_RE.match(data)
        if m:
            last = int(m.group(2))
    return last
