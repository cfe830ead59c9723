"""The umockdev testbed: a fake ``/sys`` root for this process and its children, and uevents.

umockdev's preload library must already be loaded (start the owner under
``umockdev-wrapper``). After ``Testbed.new()`` every ``/sys`` path in this process is
redirected to ``<root>/sys``; children see the same tree when started with the inherited
``LD_PRELOAD`` and ``UMOCKDEV_DIR=<root>`` (which ``os.environ`` does not show, so
:meth:`Testbed.child_env` adds it).

``send`` makes umockdev read the device's ``uevent`` file and ``subsystem`` link as they are
at that moment, so callers shape the files first (see :mod:`gvtd.sim.host`).
"""

from __future__ import annotations

import collections
import os
import time

import gi

gi.require_version("UMockdev", "1.0")
from gi.repository import UMockdev  # noqa: E402

PRELOAD = "libumockdev-preload"


def preloaded() -> bool:
    """True when umockdev's preload library is active in this process."""
    return PRELOAD in os.environ.get("LD_PRELOAD", "")


class Testbed:
    """Owner of one umockdev testbed and the real (non-FUSE) part of its ``/sys``."""

    def __init__(self) -> None:
        if not preloaded():
            raise RuntimeError("the emulated host must run under umockdev-wrapper (LD_PRELOAD)")
        self.tb = UMockdev.Testbed.new()
        self.root: str = self.tb.get_root_dir()
        # (CLOCK_MONOTONIC at send, action, syspath) of recent uevents, for latency figures
        self.sent: collections.deque[tuple[float, str, str]] = collections.deque(maxlen=1000)

    def real(self, syspath: str) -> str:
        """The on-disk path of ``/sys/...`` (not redirected by the preload)."""
        return self.root + syspath

    def mkdir(self, syspath: str) -> None:
        os.makedirs(self.real(syspath), exist_ok=True)

    def link(self, syspath: str, target: str) -> None:
        """Make ``syspath`` a relative symlink to the /sys path ``target``, like sysfs does."""
        path = self.real(syspath)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        rel = os.path.relpath(target, os.path.dirname(syspath))
        if os.path.islink(path):
            if os.readlink(path) == rel:
                return
            os.unlink(path)
        os.symlink(rel, path)

    def unlink(self, syspath: str) -> None:
        try:
            os.unlink(self.real(syspath))
        except FileNotFoundError:
            pass

    def send(self, syspath: str, action: str) -> None:
        """Send ``action`` for ``syspath`` (``/sys/devices/...``) to netlink listeners."""
        self.sent.append((time.monotonic(), action, syspath))
        self.tb.uevent(syspath, action)

    def child_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for a child that must see this testbed's ``/sys`` and uevents."""
        env = dict(os.environ if base is None else base)
        env["UMOCKDEV_DIR"] = self.root
        env.setdefault("LD_PRELOAD", os.environ.get("LD_PRELOAD", ""))
        return env

    def close(self) -> None:
        """Drop the testbed; umockdev removes its root directory."""
        tb, self.tb = self.tb, None
        if tb is not None:
            tb.run_dispose()
            del tb
