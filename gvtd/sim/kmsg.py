"""The emulated kernel's /dev/kmsg: a FUSE file that a reader opens, seeks and polls exactly
like the real character device, so gvtd.kmsg reads it with the production code.

What it keeps of Linux's devkmsg (kernel/printk/printk.c):

* a bounded ring of records; each read(2) returns one whole record
  ``"PRIO,SEQ,USEC,FLAGS;TEXT\\n"`` plus its `` KEY=value`` dictionary lines;
* a new reader starts at the oldest record kept; a reader left behind by the ring gets
  EPIPE once, then the oldest record;
* nothing to read is EAGAIN (gvtd reads without blocking; a blocking reader gets EAGAIN
  too); poll(2) says readable exactly when a record waits for that reader.

Not emulated: seeking (gvtd never seeks: it reads from the oldest record and skips by
sequence number, see gvtd.kmsg). A reader's file offset counts the bytes it has read since
it opened; the ring's records keep their place in the stream of every byte ever written.
"""

from __future__ import annotations

import bisect
import ctypes
import errno
import os
import stat
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import mfusepy

from .sysfs import mount

RING_RECORDS = 4096  # records kept, like the kernel's log buffer (whose unit is bytes)
KERN = 0  # facility of the kernel's own records
USER = 1  # facility of what user space writes into /dev/kmsg
LOG_ERR = 3
LOG_INFO = 6


@dataclass(frozen=True)
class _Record:
    offset: int  # where it starts in the byte stream
    data: bytes


def format_record(seq: int, usec: int, text: str, level: int = LOG_ERR, facility: int = KERN,
                  fields: dict[str, str] | None = None) -> bytes:
    """One record as devkmsg_read renders it (non-printable bytes escaped as \\xNN)."""
    def escape(s: str) -> str:
        return "".join(c if c.isprintable() and c != "\\" else
                       "".join(f"\\x{b:02x}" for b in c.encode()) for c in s)

    head = f"{facility << 3 | level},{seq},{usec},-;{escape(text)}\n"
    dictionary = "".join(f" {k}={escape(v)}\n" for k, v in (fields or {}).items())
    return (head + dictionary).encode()


class KmsgOps(mfusepy.Operations):
    """One file, ``/kmsg``, behaving as /dev/kmsg (see the module's docstring)."""

    use_ns = True

    def __init__(self, ring: int = RING_RECORDS) -> None:
        self._lock = threading.Lock()
        self._ring: deque[_Record] = deque(maxlen=ring)
        self._starts: deque[int] = deque(maxlen=ring)  # the records' offsets, for bisect
        self._end = 0  # the byte stream's length
        self._seq = 0  # the next record's sequence number
        self._next_fh = 1
        self._skew: dict[int, int] = {}  # per reader: where the ring moved it (after EPIPE)
        self._pos: dict[int, int] = {}  # per reader: where its next read starts
        self._polls: dict[int, Any] = {}  # per reader: the poll handle to wake
        self.ready = threading.Event()

    # -- the kernel's side --------------------------------------------------------------
    def emit(self, text: str, level: int = LOG_ERR, facility: int = KERN,
             fields: dict[str, str] | None = None) -> int:
        """printk: append a record; the readers waiting in poll(2) wake. Its sequence
        number."""
        with self._lock:
            seq = self._seq
            usec = time.monotonic_ns() // 1000  # printk's clock (the emulator's boot: 0)
            data = format_record(seq, usec, text, level, facility, fields)
            self._ring.append(_Record(self._end, data))
            self._starts.append(self._end)
            self._end += len(data)
            self._seq += 1
            polls, self._polls = self._polls, {}
        for ph in polls.values():
            _libfuse.fuse_notify_poll(ph)
            _libfuse.fuse_pollhandle_destroy(ph)
        return seq

    def reset(self) -> None:
        """A new boot: the ring starts empty, sequence numbers from 0."""
        with self._lock:
            self._ring.clear()
            self._starts.clear()
            self._seq = 0

    # -- the file -----------------------------------------------------------------------
    def init_with_config(self, conn_info: Any, config_3: Any) -> None:
        # Every read reaches us (no page cache), and the size is asked anew at each seek.
        if config_3 is not None:
            cfg = getattr(config_3, "contents", config_3)
            cfg.direct_io = 1
            cfg.attr_timeout = cfg.entry_timeout = 0.0
        self.ready.set()

    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        if path == "/":
            return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2}
        if path != "/kmsg":
            raise mfusepy.FuseOSError(errno.ENOENT)
        return {"st_mode": stat.S_IFREG | 0o644, "st_nlink": 1, "st_size": self._end}

    def readdir(self, path: str, fh: Any) -> list[str]:
        return [".", "..", "kmsg"]

    def open(self, path: str, fi: Any) -> int:
        if path != "/kmsg":
            raise mfusepy.FuseOSError(errno.ENOENT)
        if fi.flags & os.O_ACCMODE != os.O_RDONLY:
            raise mfusepy.FuseOSError(errno.EACCES)  # writing is root's printk, not ours
        with self._lock:
            fh = self._next_fh
            self._next_fh += 1
            first = self._ring[0].offset if self._ring else self._end
            self._skew[fh] = first  # a new reader starts at the oldest record
            self._pos[fh] = first
        fi.fh = fh
        fi.direct_io = 1
        return 0

    def release(self, path: str, fi: Any) -> int:
        with self._lock:
            self._skew.pop(fi.fh, None)
            self._pos.pop(fi.fh, None)
            ph = self._polls.pop(fi.fh, None)
        if ph is not None:
            _libfuse.fuse_pollhandle_destroy(ph)
        return 0

    def read(self, path: str, size: int, offset: int, fi: Any) -> bytes:
        fh = fi.fh
        with self._lock:
            at = offset + self._skew[fh]
            if self._ring and at < self._ring[0].offset:
                # left behind by the ring: EPIPE once, then the oldest record
                self._skew[fh] = self._ring[0].offset - offset
                self._pos[fh] = self._ring[0].offset
                raise mfusepy.FuseOSError(errno.EPIPE)
            i = bisect.bisect_left(self._starts, at)
            if i >= len(self._ring) or self._starts[i] != at:
                self._pos[fh] = max(at, self._pos[fh])
                raise mfusepy.FuseOSError(errno.EAGAIN)
            record = self._ring[i]
            if len(record.data) > size:
                raise mfusepy.FuseOSError(errno.EINVAL)  # as devkmsg_read: buffer too small
            self._pos[fh] = at + len(record.data)
            return record.data

    def poll(self, path: str, fi: Any, ph: Any, reventsp: Any) -> int:
        fh = fi.fh
        with self._lock:
            ready = self._pos.get(fh, self._end) < self._end
            if ph:
                old = self._polls.pop(fh, None)
                if old is not None:
                    _libfuse.fuse_pollhandle_destroy(old)
                if ready:
                    _libfuse.fuse_pollhandle_destroy(ph)
                else:
                    self._polls[fh] = ph
        reventsp[0] = (_POLLIN | _POLLRDNORM) if ready else 0
        return 0


_POLLIN = 0x001
_POLLRDNORM = 0x040
_libfuse: Any = mfusepy._libfuse  # fuse_notify_poll: the FUSE file's readiness
_libfuse.fuse_notify_poll.argtypes = [ctypes.c_void_p]
_libfuse.fuse_pollhandle_destroy.argtypes = [ctypes.c_void_p]


def serve(ops: KmsgOps, mountpoint: str) -> threading.Thread:
    """Mount ``ops`` at ``mountpoint`` in a daemon thread; returns once the mount answers."""
    return mount(ops, mountpoint, "kmsg", raw_fi=True)
