"""The ordinary test path goes through gvtd's authorization gate: the harness's Client and
gvt-client call as the stranger (nobody), never as root, and the harness's polkit decides.
Root is always allowed, so a suite calling as root would never see a refusal."""

from __future__ import annotations

import pytest
from dbus_fast import Message, Variant

from gvtd import names
from harness import GVTD_ACTIONS, STRANGER, STRANGER_GID, CallError, Monitor, Simulation, \
    plain, tree_snapshot

DBUS = {"dest": "org.freedesktop.DBus", "path": "/org/freedesktop/DBus",
        "iface": "org.freedesktop.DBus"}
KEPT = "kept"
# Mutating calls that a permitted caller could make here, with the action each needs.
CALLS = [
    ("Define", "a{sv}", [{"name": Variant("s", "new"), "type": Variant("s", "i915-GVTg_V5_8")}],
     names.ACTION_MANAGE),
    ("CreateVGPU", "s", [KEPT], names.ACTION_VGPU),
    ("StartDomain", "sa{sv}", ["win10", {}], names.ACTION_DOMAIN),
    ("Undefine", "s", [KEPT], names.ACTION_MANAGE),
]


def untouched(sim: Simulation) -> tuple[list[tuple[str, str, str]], dict[str, bytes]]:
    """What a call may have written: the emulated kernel's write log and /etc/gvtd."""
    return sim.write_log(), tree_snapshot(sim.config_dir)


def test_the_client_is_the_stranger_as_the_bus_sees_it(sim: Simulation) -> None:
    """Asked by root, a third party: the bus's own record of each connection."""
    assert sim.client.bus.unique_name is not None
    creds = plain(sim.root_client.call("GetConnectionCredentials", "s",
                                       [sim.client.bus.unique_name], **DBUS)[0])
    assert creds["UnixUserID"] == STRANGER
    assert creds["UnixGroupIDs"] == [STRANGER_GID]  # no group of root's came along
    assert sim.root_client.call("GetConnectionUnixUser", "s",
                                [sim.root_client.bus.unique_name], **DBUS)[0] == 0


def test_polkit_refusing_makes_ordinary_calls_access_denied_and_writes_nothing(
        sim: Simulation) -> None:
    assert sim.polkit is not None
    sim.client.define(name=KEPT, type="i915-GVTg_V5_8", start="manual", domain="win10")
    gvtd = sim.client.call("GetNameOwner", "s", [names.BUS_NAME], **DBUS)[0]
    monitor = Monitor(sim.bus.address, [
        "type='method_call',interface='org.freedesktop.PolicyKit1.Authority',"
        "member='CheckAuthorization'"])
    try:
        sim.polkit.allow([])
        before = untouched(sim)
        for member, signature, body, _ in CALLS:
            with pytest.raises(CallError) as refused:
                sim.client.call(member, signature, body)
            assert refused.value.name == names.ACCESS_DENIED, member
            assert "Not authorized" in refused.value.text and "polkit action" in refused.value.text
        cli = sim.gvt_client("create", KEPT)
        assert cli.returncode == 1 and "Not authorized to create or remove vGPUs" in cli.stderr
        assert untouched(sim) == before

        asked: list[Message] = monitor.wait_calls(len(CALLS) + 1)
        for msg, (member, _, _, action) in zip(asked, CALLS):
            subject, asked_action = msg.body[0], msg.body[1]
            assert msg.sender == gvtd, member  # gvtd asks, about its caller
            assert (subject[0], plain(subject[1])) == \
                ("system-bus-name", {"name": sim.client.bus.unique_name}), member
            assert asked_action == action, member
        cli_subject = plain(asked[len(CALLS)].body[0][1])["name"]
        assert cli_subject not in (sim.client.bus.unique_name, gvtd)
    finally:
        monitor.close()

    # The refusal was polkit's: granted one action, the stranger gets that one only.
    sim.polkit.allow([names.ACTION_VGPU])
    sim.client.call("CreateVGPU", "s", [KEPT])
    assert sim.client.vgpus()[KEPT]["State"] == "active"
    with pytest.raises(CallError) as refused:
        sim.client.call("Undefine", "s", [KEPT])
    assert refused.value.name == names.ACCESS_DENIED
    sim.polkit.allow(GVTD_ACTIONS)
    sim.client.call("Undefine", "s", [KEPT])
    assert KEPT not in sim.client.vgpus()
