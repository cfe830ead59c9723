"""The authorization gate: every method that changes the host asks polkit about its *caller*.

Put it on a mutating method in one line, between `@dbus_errors` and the function:

    @method()
    @dbus_errors
    @authorized(names.ACTION_DOMAIN, detail="domain")
    async def StartDomain(self, name: "s", options: "a{sv}") -> "o": ...

`detail` says what the method's leading arguments name, in order, and they go to polkit as
details so that a rule can grant one user one VM (`action.lookup("domain") == "win10"`):
`detail="vgpu"` for CreateVGPU(name), `detail=("domain", "vgpu")` for AttachVGPU(domain,
vgpu, ...), or a function of the arguments returning the details (Define takes the name
from its a{sv}). Reads stay open and are not decorated.

The gate runs before the method body, so a refused call never reaches the Host and writes
nothing. Decision order: root (GetConnectionUnixUser of the caller) is always allowed; else
polkit's CheckAuthorization with subject ("system-bus-name", caller's unique name), with
AllowUserInteraction when the call carries ALLOW_INTERACTIVE_AUTHORIZATION; if polkit is not
on the bus, nobody but root may change anything. Any other failure refuses (fail closed).

dbus-fast passes only the arguments to a method, never the message. `watch(bus)` (called
once per exported bus, see gvtd/bus/service.py) installs a message handler that runs for
every incoming message before dbus-fast dispatches it and records (gate, message) in a
context variable; dbus-fast then starts the method's task, which copies that context, so
each call sees its own message even when many are in flight. The gate also checks that the
recorded message is the call it is gating (member and interface), and refuses otherwise.

`root_only` gates the methods that exist for the libvirt hook (PrepareDomain,
ReleaseDomain), which runs as root inside libvirtd: any other uid is refused with
AccessDenied before polkit is asked, so no polkit rule or default can open them. The bus
policy refuses them too; this gate holds where that policy is not loaded.
"""
# No `from __future__ import annotations` in the bus modules: dbus-fast reads annotations.

import contextvars
import functools
import logging
from collections.abc import Callable
from typing import Any

from dbus_fast import DBusError, Message, MessageFlag, MessageType, Variant
from dbus_fast.aio import MessageBus

from gvtd import names

log = logging.getLogger(__name__)

POLKIT_NAME = "org.freedesktop.PolicyKit1"
POLKIT_PATH = "/org/freedesktop/PolicyKit1/Authority"
POLKIT_IFACE = "org.freedesktop.PolicyKit1.Authority"
POLKIT_ALLOW_USER_INTERACTION = 1
# polkit is not running and cannot be activated: the bus answers with one of these.
POLKIT_ABSENT = {"org.freedesktop.DBus.Error.ServiceUnknown",
                 "org.freedesktop.DBus.Error.NameHasNoOwner",
                 "org.freedesktop.DBus.Error.Spawn.ServiceNotFound"}

# What a refusal says the caller was trying to do, by action.
ACTION_TEXT = {
    names.ACTION_MANAGE: "change vGPU definitions",
    names.ACTION_VGPU: "create or remove vGPUs",
    names.ACTION_DOMAIN: "start, stop, attach or detach domains",
}

Details = str | tuple[str, ...] | Callable[..., dict[str, str]] | None

_current: contextvars.ContextVar[tuple["Gate", Message] | None] = contextvars.ContextVar(
    "gvtd_current_call", default=None)


def _denied(text: str) -> DBusError:
    return DBusError(names.ACCESS_DENIED, text)


class Gate:
    """Asks the bus and polkit whether the sender of one message may do one action."""

    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus

    def remember(self, msg: Message) -> None:
        """Message handler: note the call being dispatched (returns None: not handled)."""
        if msg.message_type is MessageType.METHOD_CALL:
            _current.set((self, msg))

    async def _call(self, dest: str, path: str, iface: str, member: str, signature: str,
                    body: list[Any]) -> Message:
        reply = await self.bus.call(Message(destination=dest, path=path, interface=iface,
                                            member=member, signature=signature, body=body))
        assert reply is not None
        return reply

    async def caller_uid(self, sender: str) -> int:
        reply = await self._call("org.freedesktop.DBus", "/org/freedesktop/DBus",
                                 "org.freedesktop.DBus", "GetConnectionUnixUser", "s", [sender])
        if reply.message_type is MessageType.ERROR:
            raise _denied("gvtd cannot tell who is calling (the bus says: "
                          f"{reply.error_name}); nothing was changed.")
        return int(reply.body[0])

    async def check(self, msg: Message, action: str, details: dict[str, str]) -> None:
        """Return if the caller of msg may do action; raise AccessDenied otherwise."""
        sender = msg.sender
        what = ACTION_TEXT.get(action, action)
        if not sender:
            raise _denied(f"Not authorized to {what}: the call has no sender.")
        uid = await self.caller_uid(sender)
        if uid == 0:
            return
        flags = (POLKIT_ALLOW_USER_INTERACTION
                 if msg.flags & MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION else 0)
        subject = ["system-bus-name", {"name": Variant("s", sender)}]
        reply = await self._call(POLKIT_NAME, POLKIT_PATH, POLKIT_IFACE, "CheckAuthorization",
                                 "(sa{sv})sa{ss}us", [subject, action, details, flags, ""])
        if reply.message_type is MessageType.ERROR:
            if reply.error_name in POLKIT_ABSENT:
                raise _denied(f"Not authorized to {what}: polkit is not running on the system "
                              f"bus, so only root may change gvtd's vGPUs (you are uid {uid}). "
                              "Run the command as root, or install and start polkit.")
            log.warning("polkit failed to check %s for uid %d: %s %s", action, uid,
                        reply.error_name, reply.body[0] if reply.body else "")
            raise _denied(f"Not authorized to {what}: polkit could not decide "
                          f"({reply.error_name}); nothing was changed.")
        allowed, challenge, _ = reply.body[0]
        if allowed:
            return
        log.info("Refused %s.%s (%s) to uid %d", msg.interface, msg.member, action, uid)
        if challenge:
            raise _denied(f"Not authorized to {what} without authenticating (polkit action "
                          f"{action}): run the command from a desktop session or a terminal "
                          "with a polkit agent, which lets you authenticate, or as root.")
        raise _denied(f"Not authorized to {what} (polkit action {action} refused for uid "
                      f"{uid}). Run the command as root, or ask the administrator for a polkit "
                      "rule that grants it (see gvtd's docs/security.md).")


def watch(bus: MessageBus) -> Gate:
    """Let `authorized` methods exported on bus see the message they answer."""
    gate = Gate(bus)
    bus.add_message_handler(gate.remember)
    return gate


def _details(detail: Details, args: tuple[Any, ...]) -> dict[str, str]:
    if detail is None:
        return {}
    if callable(detail):
        return detail(*args)
    keys = (detail,) if isinstance(detail, str) else detail
    return {k: v for k, v in zip(keys, args) if isinstance(v, str)}


def _call_of(fn: Callable[..., Any], iface: str) -> tuple[Gate, Message]:
    """The gate and message of the call fn is answering; refuse when they are not known."""
    current = _current.get()
    if current is None:
        raise _denied("gvtd cannot tell who is calling; nothing was changed.")
    gate, msg = current
    if msg.member != fn.__name__ or msg.interface not in (None, iface):
        # Not the call this method answers: never authorize one call by another.
        log.error("Authorization saw %s.%s while answering %s; refusing",
                  msg.interface, msg.member, fn.__name__)
        raise _denied("gvtd cannot tell who is calling; nothing was changed.")
    return gate, msg


def authorized(action: str, detail: Details = None) -> Callable[[Callable[..., Any]], Any]:
    """Decorate a mutating D-Bus method: refuse it unless the caller may do action."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        async def wrapper(self: Any, *args: Any) -> Any:
            gate, msg = _call_of(fn, self.name)
            await gate.check(msg, action, _details(detail, args))
            return await fn(self, *args)

        wrapper.polkit_action = action  # type: ignore[attr-defined]  # for docs/dbus-api.md
        return wrapper

    return decorate


async def caller_uid() -> int:
    """The uid the bus reports for the caller of the method being answered: what a method
    derives the caller's own paths from (never from a path the caller names)."""
    current = _current.get()
    if current is None:
        raise _denied("gvtd cannot tell who is calling; nothing was changed.")
    gate, msg = current
    return await gate.caller_uid(msg.sender or "")


def root_only(why: str) -> Callable[[Callable[..., Any]], Any]:
    """Decorate a method that only root may call, whatever polkit would say; why ends the
    refusal's sentence (who the method is for and what to use instead)."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        async def wrapper(self: Any, *args: Any) -> Any:
            gate, msg = _call_of(fn, self.name)
            uid = await gate.caller_uid(msg.sender or "")
            if uid != 0:
                log.warning("Refused %s to uid %d: root only", fn.__name__, uid)
                raise _denied(f"Not authorized to call {fn.__name__} (you are uid {uid}): "
                              f"only root may, {why}")
            return await fn(self, *args)

        wrapper.root_only = True  # type: ignore[attr-defined]  # for docs/dbus-api.md
        return wrapper

    return decorate


def define_details(options: dict[str, Variant]) -> dict[str, str]:
    """Define's details: the vGPU's name and domain, when given as strings."""
    out = {}
    for key, detail in (("name", "vgpu"), ("domain", "domain")):
        v = options.get(key)
        if isinstance(v, Variant) and v.signature == "s":
            out[detail] = v.value
    return out
