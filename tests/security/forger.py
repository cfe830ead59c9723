"""Forged logind and bus-driver signals for the signal tests, run as root or (under setpriv)
as another uid. Each SIGNAL on the command line is sent as a broadcast (--broadcast) and/or
straight to each --to name, in order; then a round trip to the bus driver makes sure the
bus has routed them all before this exits. Prints its own unique name as JSON.

SIGNAL is `sleep` (PrepareForSleep(true), as logind emits it), `left=OWNER`
(NameOwnerChanged: logind's OWNER left), `handover=OWNER` (NameOwnerChanged: logind's
name passed from OWNER to this connection), `gvtd-gone=OWNER` (NameOwnerChanged: gvtd's
OWNER left) or `degraded` (gvtd's Manager.State changed to degraded)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from gvtd import names

LOGIND = "org.freedesktop.login1"
DBUS = "org.freedesktop.DBus"
DBUS_PATH = "/org/freedesktop/DBus"


def forged(spec: str, me: str, destination: str | None) -> Message:
    """The signal spec names, broadcast (destination None) or to one connection."""
    what, _, owner = spec.partition("=")
    if what == "sleep":
        return Message(message_type=MessageType.SIGNAL, destination=destination,
                       path="/org/freedesktop/login1", interface="org.freedesktop.login1.Manager",
                       member="PrepareForSleep", signature="b", body=[True])
    if what == "degraded":
        return Message(message_type=MessageType.SIGNAL, destination=destination,
                       path=names.ROOT_PATH, interface=names.PROPERTIES_IFACE,
                       member="PropertiesChanged", signature="sa{sv}as",
                       body=[names.MANAGER_IFACE, {"State": Variant("s", "degraded")}, []])
    name, new = {"left": (LOGIND, ""), "handover": (LOGIND, me),
                 "gvtd-gone": (names.BUS_NAME, "")}[what]
    return Message(message_type=MessageType.SIGNAL, destination=destination, path=DBUS_PATH,
                   interface=DBUS, member="NameOwnerChanged", signature="sss",
                   body=[name, owner, new])


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("address")
    p.add_argument("signals", nargs="+")
    p.add_argument("--to", action="append", default=[], help="a unique name to send to")
    p.add_argument("--broadcast", action="store_true")
    args = p.parse_args()
    bus = await MessageBus(bus_address=args.address).connect()
    me = bus.unique_name or ""
    for spec in args.signals:
        for destination in ([None] if args.broadcast else []) + args.to:
            await bus.send(forged(spec, me, destination))
    reply = await bus.call(Message(destination=DBUS, path=DBUS_PATH, interface=DBUS,
                                   member="GetId"))
    assert reply is not None and reply.message_type is MessageType.METHOD_RETURN, reply
    json.dump({"unique_name": me}, sys.stdout)
    bus.disconnect()


if __name__ == "__main__":
    asyncio.run(main())
