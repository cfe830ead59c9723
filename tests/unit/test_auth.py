"""The gate fails closed: a method reached without its own message is refused, and the
details it would send polkit name what the call touches."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from dbus_fast import DBusError, Message, Variant

from gvtd import names
from gvtd.bus import auth


class FakeGate(auth.Gate):
    """Records what it would ask polkit; never touches a bus."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str, dict[str, str]]] = []

    async def check(self, msg: Message, action: str, details: dict[str, str]) -> None:
        self.asked.append((msg.member or "", action, details))


class Iface:
    name = names.MANAGER_IFACE

    @auth.authorized(names.ACTION_DOMAIN, detail=("domain", "vgpu"))
    async def AttachVGPU(self, domain: str, vgpu: str, options: dict[str, Any]) -> str:
        return "done"

    @auth.authorized(names.ACTION_MANAGE, detail=auth.define_details)
    async def Define(self, options: dict[str, Variant]) -> str:
        return "defined"


def call(member: str) -> Message:
    return Message(destination=names.BUS_NAME, path=names.ROOT_PATH,
                   interface=names.MANAGER_IFACE, member=member, sender=":1.7")


def run(gate: auth.Gate | None, msg: Message | None, coro_fn: Any, *args: Any) -> Any:
    async def go() -> Any:
        if gate is not None and msg is not None:
            gate.remember(msg)
        return await coro_fn(*args)

    return asyncio.run(go())


def test_no_recorded_message_is_refused() -> None:
    with pytest.raises(DBusError) as e:
        run(None, None, Iface().AttachVGPU, "win10", "a", {})
    assert e.value.type == names.ACCESS_DENIED


def test_another_calls_message_never_authorizes() -> None:
    gate = FakeGate()
    with pytest.raises(DBusError) as e:
        run(gate, call("Reload"), Iface().AttachVGPU, "win10", "a", {})
    assert e.value.type == names.ACCESS_DENIED and gate.asked == []


def test_details_name_the_domain_and_vgpu() -> None:
    gate = FakeGate()
    assert run(gate, call("AttachVGPU"), Iface().AttachVGPU, "win10", "a", {}) == "done"
    opts = {"name": Variant("s", "a"), "domain": Variant("s", "win10"),
            "type": Variant("u", 3)}
    assert run(gate, call("Define"), Iface().Define, opts) == "defined"
    assert run(gate, call("Define"), Iface().Define, {"name": Variant("u", 1)}) == "defined"
    assert gate.asked == [
        ("AttachVGPU", names.ACTION_DOMAIN, {"domain": "win10", "vgpu": "a"}),
        ("Define", names.ACTION_MANAGE, {"vgpu": "a", "domain": "win10"}),
        ("Define", names.ACTION_MANAGE, {}),
    ]
