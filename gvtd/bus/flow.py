"""A full bus socket is back-pressure, not a lost bus.

dbus-fast (5.2 and before) writes with a non-blocking send() and treats every exception as
the end of the connection, EAGAIN included: when a burst of calls makes gvtd answer faster
than dbus-daemon reads, its socket buffer fills, and gvtd lost the bus and exited. With the
socket wrapped, a send that would block sends nothing; dbus-fast then keeps the rest of the
message and waits for the socket to be writable, as it does after a short send.
"""

from __future__ import annotations

import socket
from typing import Any

from dbus_fast.aio import MessageBus


class _Patient:
    """A socket whose send() returns 0 where the kernel says it would block."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def send(self, data: Any, *flags: int) -> int:
        try:
            return self._sock.send(data, *flags)
        except (BlockingIOError, InterruptedError):
            return 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def patient(bus: MessageBus) -> MessageBus:
    """Make a connected bus wait when its socket is full (gvtd sends no Unix fds, so
    dbus-fast never uses sendmsg, which this does not cover)."""
    writer = bus._writer  # noqa: SLF001 (the one place gvtd reaches into dbus-fast)
    if writer is not None and not isinstance(writer.sock, _Patient):
        writer.sock = _Patient(writer.sock)
    return bus
