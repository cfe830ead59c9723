"""udev events on the asyncio loop, turned into what they mean for gvtd.

The monitor's socket is a reader on the one event loop: no thread and no polling. Events
only say *what* to re-read (a parent, an mdev); the state itself is always read back from
sysfs, so an event that arrives late, twice, or for a device already gone cannot mislead.
Which events matter is the backends' call (gvtd.backend.Backends.classify).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pyudev

from gvtd.backend import Uevent
from gvtd.mdev import classify  # the mdev backend's reading, as callers knew it here

__all__ = ["Uevent", "UdevWatcher", "classify"]

Classify = Callable[[str, str | None, str, dict[str, str]], Uevent | None]

log = logging.getLogger(__name__)


class UdevWatcher:
    """Delivers batches of relevant events; one batch per wake-up, so a burst of events is
    handled in one pass."""

    def __init__(self, on_events: Callable[[list[Uevent]], None], classify: Classify) -> None:
        self.on_events = on_events
        self.classify = classify
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
            event = self.classify(device.action or "", device.subsystem, device.sys_path,
                             dict(device.properties))
            if event is not None:
                log.debug("uevent %s", event)
                batch.append(event)
        if batch:
            self.on_events(batch)
