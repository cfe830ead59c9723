"""The Simulator's PCI controls on `gvtd --simulate --simulate-profile alderlake-sriov`:
UnbindDriver/BindDriver (a PF's driver unloading and loading, a host driver grabbing a VF)
and Reboot forgetting the VFs, seen in the emulated sysfs and the uevents it sent."""

from __future__ import annotations

import os

import pytest

from gvtd import names
from harness import CallError, DBusDaemon, Simulation

PF = "0000:00:02.0"
DEVICES = "/devices/pci0000:00"


def uevents_since(sim: Simulation, count: int) -> list[tuple[str, str]]:
    return [(action, path.removeprefix("/sys" + DEVICES + "/"))
            for _, action, path in sim.sim_call("UeventLog")[0][count:]]


def test_pf_driver_unbind_bind_grab_and_reboot(dbus: DBusDaemon) -> None:
    sim = Simulation(dbus, "alderlake-sriov")
    try:
        sys = sim.root / "sys"
        pf = sys / DEVICES.lstrip("/") / PF
        (pf / "sriov_drivers_autoprobe").write_text("0\n")
        (pf / "sriov_numvfs").write_text("2\n")
        assert sorted(os.listdir(sys / "bus/pci/devices")) == [PF, "0000:00:02.1", "0000:00:02.2"]

        # A host driver grabbing a VF that autoprobe 0 left alone
        sent = len(sim.sim_call("UeventLog")[0])
        sim.sim_call("BindDriver", "ss", ["0000:00:02.1", "i915"])
        assert uevents_since(sim, sent) == [("bind", "0000:00:02.1")]
        assert os.readlink(pf.parent / "0000:00:02.1" / "driver").endswith("/drivers/i915")
        with pytest.raises(CallError) as busy:
            sim.sim_call("BindDriver", "ss", ["0000:00:02.1", "vfio-pci"])
        assert busy.value.name == names.ERROR_PREFIX + "Failed"
        with pytest.raises(CallError) as unknown:
            sim.sim_call("UnbindDriver", "s", ["0000:00:02.9"])
        assert unknown.value.name == names.ERROR_PREFIX + "InvalidArgument"
        assert PF in unknown.value.text

        # The PF's driver unloading: its VFs go first, then the PF's unbind
        sent = len(sim.sim_call("UeventLog")[0])
        sim.sim_call("UnbindDriver", "s", [PF])
        assert uevents_since(sim, sent) == [("unbind", "0000:00:02.1"), ("remove", "0000:00:02.1"),
                                            ("remove", "0000:00:02.2"), ("unbind", PF)]
        assert os.listdir(sys / "bus/pci/devices") == [PF]
        assert not os.path.lexists(pf / "driver")
        assert os.listdir(sys / "bus/pci/drivers/i915") == ["bind", "unbind", "uevent", "module"]
        sim.sim_call("BindDriver", "ss", [PF, "i915"])
        assert (pf / "sriov_totalvfs").read_text() == "7\n"  # max_vfs set again

        (pf / "sriov_numvfs").write_text("3\n")
        (pf.parent / "0000:00:02.3" / "driver_override").write_text("vfio-pci\n")
        (sys / "bus/pci/drivers_probe").write_text("0000:00:02.3\n")
        assert os.path.exists(sys / "devices/virtual/vfio/16")
        sim.sim_call("Reboot")
        assert (pf / "sriov_numvfs").read_text() == "0\n"
        assert (pf / "sriov_drivers_autoprobe").read_text() == "1\n"
        assert os.listdir(sys / "bus/pci/devices") == [PF]
        assert not os.path.exists(sys / "devices/virtual/vfio/16")
        assert not os.path.lexists(sys / "class/vfio/16")
    finally:
        sim.stop()
