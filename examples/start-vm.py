#!/usr/bin/env python3
"""Start a libvirt domain through gvtd, with its vGPUs, and wait until it runs (dbus-fast).

    start-vm.py [--system | --session] [--wait SECONDS] DOMAIN

GVTD_BUS=system|session picks the bus when no option does (default: system; session is for
`gvtd --simulate`). Exit status: 0 running, 1 gvtd refused or the domain did not come up
(the message says why), 2 usage.

It listens before it asks: a match rule for the Domain objects' PropertiesChanged signals
(and for gvtd leaving the bus) is in place before StartDomain is called; then the domain's
State is read once, and if it is not running yet, the signals say when it is. Nothing polls.
It needs only dbus-fast (pip install dbus-fast), not gvtd.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

from dbus_fast import BusType, Message, MessageFlag, MessageType
from dbus_fast.aio import MessageBus

SERVICE = "io.github.gvtd1"
ROOT = "/io/github/gvtd1"
MANAGER = "io.github.gvtd1.Manager"
DOMAIN = "io.github.gvtd1.Domain"
BUS = ("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus")
STOPPED = {"shut-off", "crashed"}


class Failure(Exception):
    """What to tell the user before exiting with status 1."""


async def call(bus: MessageBus, destination: str, path: str, interface: str, member: str,
               signature: str = "", body: list[Any] | None = None) -> list[Any]:
    # A person at a terminal may answer a polkit password prompt.
    flags = MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION if sys.stdin.isatty() else 0
    reply = await bus.call(Message(destination=destination, path=path, interface=interface,
                                   member=member, signature=signature, body=body or [],
                                   flags=flags))
    assert reply is not None
    if reply.message_type == MessageType.ERROR:
        raise Failure(reply.body[0] if reply.body else reply.error_name)
    return reply.body


async def start(bus: MessageBus, domain: str, wait: float) -> str:
    """Start the domain; return once it runs, with what to print."""
    news: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def on_message(msg: Message) -> None:
        if msg.message_type != MessageType.SIGNAL:
            return
        if msg.member == "PropertiesChanged" and msg.body[0] == DOMAIN:
            state = msg.body[1].get("State")
            if state is not None:
                news.put_nowait((msg.path, state.value))
        elif msg.member == "NameOwnerChanged" and not msg.body[2]:
            news.put_nowait(("", None))  # gvtd left the bus

    bus.add_message_handler(on_message)
    for rule in (f"type='signal',sender='{SERVICE}',member='PropertiesChanged',arg0='{DOMAIN}'",
                 f"type='signal',sender='{BUS[0]}',member='NameOwnerChanged',arg0='{SERVICE}'"):
        await call(bus, *BUS, "AddMatch", "s", [rule])  # in place once the bus answers

    try:
        (path,) = await call(bus, SERVICE, ROOT, MANAGER, "StartDomain", "sa{sv}", [domain, {}])
    except Failure as e:
        raise Failure(f"cannot start {domain}: {e}") from None
    try:
        (state,) = await call(bus, SERVICE, path, "org.freedesktop.DBus.Properties", "Get",
                              "ss", [DOMAIN, "State"])
    except Failure:  # gvtd shows a Domain object only for a domain with a vGPU
        return f"{domain} started (it has no vGPU, so gvtd does not follow its state)"
    state = state.value

    async def running() -> None:
        nonlocal state
        while state != "running":
            if state in STOPPED:
                raise Failure(f"{domain} is {state}; `virsh domstate --reason {domain}` says why")
            print(f"{domain} is {state}; waiting for it to run...", flush=True)
            changed, new = await news.get()
            while changed not in (path, ""):
                changed, new = await news.get()
            if new is None:
                raise Failure(f"gvtd went away while starting {domain}")
            state = new

    try:
        await asyncio.wait_for(running(), wait)
    except asyncio.TimeoutError:
        raise Failure(f"{domain} is still {state} after {wait:.0f} s") from None
    return f"{domain} is running"


async def main_async(args: argparse.Namespace) -> None:
    bus_type = BusType.SESSION if args.bus == "session" else BusType.SYSTEM
    try:
        bus = await MessageBus(bus_type=bus_type).connect()
    except Exception as e:
        raise Failure(f"cannot connect to the {args.bus} bus: {e}") from None
    try:
        print(await start(bus, args.domain, args.wait))
    finally:
        bus.disconnect()


def main() -> int:
    default = os.environ.get("GVTD_BUS", "system")
    ap = argparse.ArgumentParser(description="Start a libvirt domain through gvtd and wait "
                                 "until it runs.")
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--system", dest="bus", action="store_const", const="system",
                       help="gvtd on the system bus (the default, unless GVTD_BUS says)")
    which.add_argument("--session", dest="bus", action="store_const", const="session",
                       help="gvtd on the session bus (gvtd --simulate)")
    ap.add_argument("--wait", type=float, default=120, metavar="SECONDS",
                    help="how long to wait for it to run (default 120)")
    ap.add_argument("domain", help="libvirt domain name")
    ap.set_defaults(bus=default)
    args = ap.parse_args()
    if args.bus not in ("system", "session"):
        ap.error(f"GVTD_BUS must be system or session, not {args.bus!r}")
    try:
        asyncio.run(main_async(args))
    except Failure as e:
        print(f"{ap.prog}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
