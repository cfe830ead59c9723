"""udev events on the asyncio loop, turned into what they mean for gvtd.

The monitor's socket is a reader on the one event loop: no thread and no polling. Events
only say *what* to re-read (a parent, an mdev); the state itself is always read back from
sysfs, so an event that arrives late, twice, or for a device already gone cannot mislead.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import pyudev

from gvtd.config import UUID_RE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Uevent:
    action: str
    parents: frozenset[str] = frozenset()  # parent device names to re-read
    mdev: str | None = None  # mdev UUID to re-read

    def __str__(self) -> str:
        what = self.mdev or ", ".join(sorted(self.parents))
        return f"{self.action} {what}"


def classify(action: str, subsystem: str | None, sys_path: str,
             properties: dict[str, str]) -> Uevent | None:
    """What one kernel event asks gvtd to re-read, or None for an unrelated event.

    mdev events carry no type or parent: both come from sysfs (the mdev's parent is the
    directory its device lives in). An mdev's driver binding after its add, or unbinding
    before its remove, changes nothing gvtd reads: re-reading for them only doubled the
    work of every create and remove.
    """
    name = os.path.basename(sys_path)
    if subsystem == "mdev":
        if not UUID_RE.fullmatch(name) or action in ("bind", "unbind"):
            return None
        parent = os.path.basename(os.path.dirname(sys_path))
        return Uevent(action, frozenset({parent}), name)
    if "MDEV_STATE" in properties:  # a parent (un)registering with the mdev core
        return Uevent(f"{action} {properties['MDEV_STATE']}", frozenset({name}))
    if subsystem == "pci" and action in ("bind", "unbind") and properties.get("DRIVER", "i915") == "i915" \
            and properties.get("PCI_CLASS", "").startswith("3"):
        return Uevent(action, frozenset({name}))  # i915 bound or unbound on a display device
    return None


class UdevWatcher:
    """Delivers batches of relevant events; one batch per wake-up, so a burst of events is
    handled in one pass."""

    def __init__(self, on_events: Callable[[list[Uevent]], None]) -> None:
        self.on_events = on_events
        self.context = pyudev.Context()
        self.monitor = pyudev.Monitor.from_netlink(self.context)
        try:
            self.monitor.set_receive_buffer_size(4 * 1024 * 1024)
        except (OSError, pyudev.DeviceNotFoundError, ValueError) as e:
            log.debug("Keeping the default udev receive buffer: %s", e)
        self.loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Subscribe. Call before the first read of sysfs, so no change can fall between."""
        self.monitor.start()
        self.loop = loop
        loop.add_reader(self.monitor.fileno(), self._readable)

    def stop(self) -> None:
        if self.loop is not None:
            self.loop.remove_reader(self.monitor.fileno())

    def _readable(self) -> None:
        batch = []
        while True:
            try:
                device = self.monitor.poll(timeout=0)
            except OSError as e:  # e.g. ENOBUFS after an overflowing burst
                log.warning("Lost udev events (%s); re-reading everything", e)
                batch.append(Uevent("overflow"))
                continue
            if device is None:
                break
            event = classify(device.action or "", device.subsystem, device.sys_path,
                             dict(device.properties))
            if event is not None:
                log.debug("uevent %s", event)
                batch.append(event)
        if batch:
            self.on_events(batch)
