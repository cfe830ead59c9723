"""A D-Bus client for the authorization tests, run as root or (under setpriv) as another
uid: it makes the named gvtd calls in order and prints its unique name and each outcome as
JSON, so the test can compare them with what gvtd and polkit saw."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from dbus_fast import Message, MessageFlag, MessageType, Variant
from dbus_fast.aio import MessageBus

from gvtd import names

DOMAIN = "win10"


def calls(vgpu: str) -> dict[str, tuple[str, list[Any]]]:
    """Every mutating Manager method with arguments that would succeed for a permitted caller."""
    return {
        "Define": ("a{sv}", [{"name": Variant("s", vgpu), "type": Variant("s", "i915-GVTg_V5_8"),
                              "start": Variant("s", "manual"), "domain": Variant("s", DOMAIN)}]),
        "CreateVGPU": ("s", [vgpu]),
        "StartDomain": ("sa{sv}", [DOMAIN, {}]),
        "StopDomain": ("sa{sv}", [DOMAIN, {}]),
        "PrepareDomain": ("sa{sv}", [DOMAIN, {}]),
        "ReleaseDomain": ("sa{sv}", [DOMAIN, {}]),
        "AttachVGPU": ("ssa{sv}", [DOMAIN, vgpu, {}]),
        "DetachVGPU": ("ss", [DOMAIN, vgpu]),
        "TuneDomain": ("sa{sv}", [DOMAIN, {"dry_run": Variant("b", True)}]),
        "RemoveVGPU": ("s", [vgpu]),
        "Reload": ("", []),
        "Undefine": ("s", [vgpu]),
        # No descriptors ride along: past the gate, gvtd refuses it (InvalidArgument)
        "NewDomain": ("shha{sv}", [vgpu, 0, 1, {"dry_run": Variant("b", True)}]),
    }


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("address")
    p.add_argument("vgpu")
    p.add_argument("members", nargs="+")
    p.add_argument("--interactive", action="store_true",
                   help="set ALLOW_INTERACTIVE_AUTHORIZATION on every call")
    args = p.parse_args()
    bus = await MessageBus(bus_address=args.address).connect()
    table = calls(args.vgpu)
    flags = MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION if args.interactive else MessageFlag.NONE
    results = []
    for member in args.members:
        signature, body = table[member]
        reply = await bus.call(Message(destination=names.BUS_NAME, path=names.ROOT_PATH,
                                       interface=names.MANAGER_IFACE, member=member,
                                       signature=signature, body=body, flags=flags))
        assert reply is not None
        if reply.message_type is MessageType.ERROR:
            results.append([member, reply.error_name, reply.body[0] if reply.body else ""])
        else:
            results.append([member, "", ""])
    json.dump({"unique_name": bus.unique_name, "results": results}, sys.stdout)
    bus.disconnect()


if __name__ == "__main__":
    asyncio.run(main())
