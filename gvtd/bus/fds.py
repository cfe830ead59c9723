"""File descriptors that callers pass: only NewDomain takes any (the ISOs, opened by the
caller to prove it may read them), and every descriptor that arrives is closed once its
call is answered, so that no caller can fill gvtd's descriptor table.

dbus-fast hands received descriptors to a method as plain numbers and never closes them.
`watch(bus)` closes those of every call but a well-formed NewDomain at once (before
dbus-fast dispatches it: the method never sees them); NewDomain's own are closed by
`closing_fds` when the method ends, refused by the polkit gate or not.
"""
# No `from __future__ import annotations` in the bus modules: dbus-fast reads annotations.

import contextvars
import functools
import logging
import os
from collections.abc import Callable
from typing import Any

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

log = logging.getLogger(__name__)

# member -> the signature whose calls keep their descriptors until the method ends
TAKES_FDS = {"NewDomain": "shha{sv}"}

_received: contextvars.ContextVar[list[int]] = contextvars.ContextVar("gvtd_fds", default=[])


def _close(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _on_message(msg: Message) -> None:
    if not msg.unix_fds:
        return
    if msg.message_type is MessageType.METHOD_CALL and \
            TAKES_FDS.get(msg.member or "") == msg.signature:
        _received.set(list(msg.unix_fds))  # the method's task copies this context
        return
    log.debug("Closing %d descriptors sent with %s", len(msg.unix_fds), msg.member)
    _close(list(msg.unix_fds))
    msg.unix_fds.clear()


def watch(bus: MessageBus) -> None:
    bus.add_message_handler(_on_message)


def carried(*fds: object) -> bool:
    """Whether each of fds came with the call being answered. Without descriptors in the
    message dbus-fast leaves an `h` argument as the bare index, which would name one of
    gvtd's own open files."""
    received = _received.get()
    return all(isinstance(fd, int) and fd in received for fd in fds)


def closing_fds(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a method that takes descriptors: all of its call's are closed when it ends."""

    @functools.wraps(fn)
    async def wrapper(*args: Any) -> Any:
        try:
            return await fn(*args)
        finally:
            _close(_received.get())

    return wrapper
