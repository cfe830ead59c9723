"""Bursts of pipelined calls: every call answered (or refused with a named error), and gvtd
still the same process, responsive, and right about the host afterwards."""

from __future__ import annotations

from dbus_fast import Message, MessageType

from gvtd import names
from harness import Simulation, pipelined

GVTD_ERRORS = {names.ERROR_PREFIX + n for n in (
    "InvalidArgument", "NotFound", "NoCapacity", "ParentMissing", "Busy", "Failed")}
# dbus-daemon's own refusals when a connection exceeds its limits
BUS_ERRORS = {"org.freedesktop.DBus.Error.LimitsExceeded", "org.freedesktop.DBus.Error.NoMemory"}


def calls(n: int) -> list[Message]:
    """Mostly reads with large replies (the whole object tree), and creates and removes
    that write to the kernel and emit signals, and a call refused for an unknown vGPU."""
    def manager(member: str, arg: str) -> Message:
        return Message(destination=names.BUS_NAME, path=names.ROOT_PATH,
                       interface=names.MANAGER_IFACE, member=member, signature="s", body=[arg])

    out = []
    for i in range(n):
        if i % 20 == 0:
            out.append(manager("CreateVGPU" if i % 40 == 0 else "RemoveVGPU", "m"))
        elif i % 20 == 1:
            out.append(manager("CreateVGPU", "nosuch"))
        else:
            out.append(Message(destination=names.BUS_NAME, path=names.ROOT_PATH,
                               interface=names.OBJECT_MANAGER_IFACE, member="GetManagedObjects"))
    return out


def check(replies: list[Message]) -> None:
    kinds = {r.error_name or "ok" for r in replies}
    assert kinds <= {"ok"} | GVTD_ERRORS | BUS_ERRORS, kinds
    assert len(replies) == sum(r.message_type is MessageType.METHOD_RETURN for r in replies) \
        + sum(r.message_type is MessageType.ERROR for r in replies)


def test_3000_pipelined_calls_from_one_and_from_ten_clients(sim: Simulation) -> None:
    sim.client.define(name="m", type="i915-GVTg_V5_8", start="manual")
    pid = sim.sim_props()["DaemonPid"]
    for batches in ([calls(3000)], [calls(300) for _ in range(10)]):
        replies = pipelined(sim.bus.address, batches)
        for batch, answered in zip(batches, replies):
            assert len(answered) == len(batch)
            check(answered)
        # the daemon is the same process (it did not lose the bus and restart) ...
        assert sim.sim_props()["DaemonPid"] == pid
        # ... answers, and shows what the kernel has: one mdev or none, never two
        mdevs = list((sim.root / "sys/bus/mdev/devices").iterdir())
        assert len(mdevs) <= 1
        assert sim.client.vgpus()["m"]["State"] == ("active" if mdevs else "inactive")
        sim.client.call("RemoveVGPU", "s", ["m"])
        assert sim.client.vgpus()["m"]["State"] == "inactive"
