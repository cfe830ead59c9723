"""A 3,000-call burst on a system-type bus with the shipped policy and dbus-daemon's default
limits, from root (no polkit involved): the bus itself refuses what exceeds a connection's
limit of pending calls (LimitsExceeded); gvtd answers the rest and stays up."""

from __future__ import annotations

import pytest
from dbus_fast import Message, MessageType

from gvtd import names
from harness import Simulation, pipelined
from sysbus import SystemBus

ANSWERS = {"ok", "org.freedesktop.DBus.Error.LimitsExceeded",
           names.ERROR_PREFIX + "NotFound"}


def burst(n: int) -> list[Message]:
    out = []
    for i in range(n):
        if i % 20 == 0:
            out.append(Message(destination=names.BUS_NAME, path=names.ROOT_PATH,
                               interface=names.MANAGER_IFACE, member="CreateVGPU",
                               signature="s", body=["m" if i % 40 == 0 else "nosuch"]))
        else:
            out.append(Message(destination=names.BUS_NAME, path=names.ROOT_PATH,
                               interface=names.OBJECT_MANAGER_IFACE,
                               member="GetManagedObjects"))
    return out


def test_3000_call_burst_on_the_system_bus(monkeypatch: pytest.MonkeyPatch) -> None:
    bus = SystemBus()
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", bus.address)
    sim = None
    try:
        sim = Simulation(bus, extra=["--system"], polkit=False)  # type: ignore[arg-type]
        sim.root_client.define(name="m", type="i915-GVTg_V5_8", start="manual")  # as root
        pid = sim.sim_props()["DaemonPid"]
        (replies,) = pipelined(bus.address, [burst(3000)], timeout=40, uid=0)  # root
        kinds = {r.error_name or "ok" for r in replies}
        assert kinds <= ANSWERS, kinds
        assert "org.freedesktop.DBus.Error.LimitsExceeded" in kinds  # the bus's own limit
        assert sum(r.message_type is MessageType.METHOD_RETURN for r in replies) >= 100
        assert sim.sim_props()["DaemonPid"] == pid
        assert sim.client.vgpus()["m"]["State"] == "active"
    finally:
        if sim is not None:
            sim.stop()
        bus.stop()
