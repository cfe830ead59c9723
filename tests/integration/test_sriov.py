"""SR-IOV VFs as vGPUs: the real daemon over the emulated Alder Lake / Tiger Lake hosts
(the emulated kernel plays Linux's PCI SR-IOV core), called as the stranger."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gvtd import names
from harness import CallError, DBusDaemon, Simulation
from test_faults import sysfs_on_loop
from test_suspend import changed, last, manager

PF = "0000:00:02.0"
ERR = names.ERROR_PREFIX


def _sim(dbus: DBusDaemon, profile: str) -> Iterator[Simulation]:
    s = Simulation(dbus, profile)
    yield s
    s.stop()


@pytest.fixture
def adl(dbus: DBusDaemon) -> Iterator[Simulation]:
    """The Alder Lake laptop with the i915 SR-IOV module: 7 VFs at 0000:00:02.1-7."""
    yield from _sim(dbus, "alderlake-sriov")


def writes(sim: Simulation) -> list[tuple[str, str, str]]:
    """The emulated kernel's log of gvtd's sysfs writes: (path, value, result)."""
    return sim.write_log()


def parent(sim: Simulation) -> dict[str, Any]:
    return sim.client.props(names.parent_path(PF), names.PARENT_IFACE)


def wait_state(sim: Simulation, name: str, state: str, after: Any) -> None:
    """Wait for the vGPU's State to become `state` by a signal after `after`."""
    path = names.vgpu_path(sim.client.vgpus()[name]["UUID"])
    sim.client.wait_for(lambda m: changed(m, path).get("State") == state, after=after)


def vf_driver(sim: Simulation, address: str) -> str:
    link = sim.root / "sys/bus/pci/devices" / address / "driver"
    return Path(link.readlink()).name if link.is_symlink() else ""


def test_a_vf_vgpu_is_a_vf_bound_to_vfio_pci(adl: Simulation) -> None:
    p = parent(adl)
    assert (p["Kind"], p["TotalVFs"], p["NumVFs"], p["Registered"], p["Driver"]) == \
        ("sriov", 7, 0, True, "i915")
    assert [t[0] for t in p["Types"]] == ["vf"]
    adl.client.define(name="win11", type="vf")
    v = adl.client.vgpus()["win11"]
    assert (v["State"], v["Backend"], v["Address"], v["Parent"], v["Type"]) == \
        ("active", "sriov", "0000:00:02.1", PF, "vf")
    assert vf_driver(adl, "0000:00:02.1") == "vfio-pci"
    assert parent(adl)["NumVFs"] == 1
    # a VF is an Intel display function too, and never a parent of its own
    assert [path for path, ifaces in adl.client.objects().items()
            if names.PARENT_IFACE in ifaces] == [names.parent_path(PF)]
    written = [(Path(w[0]).name, w[1], w[2]) for w in writes(adl)]
    # the kernel's order: autoprobe off, the count, then only vfio-pci may take the VF
    assert written == [("sriov_drivers_autoprobe", "0", "ok"), ("sriov_numvfs", "1", "ok"),
                       ("driver_override", "vfio-pci", "ok"),
                       ("drivers_probe", "0000:00:02.1", "ok")]


def test_reboot_makes_the_vfs_again_before_ready(adl: Simulation) -> None:
    """The kernel forgets its VFs at a reboot; gvtd makes them before READY=1 (Reboot
    returns when the new gvtd said READY), on the same VF."""
    adl.client.define(name="win11", type="vf")
    adl.client.define(name="other", type="vf")
    before = {n: v["Address"] for n, v in adl.client.vgpus().items()}
    assert before == {"win11": "0000:00:02.1", "other": "0000:00:02.2"}
    adl.sim_call("Reboot")
    after = adl.client.vgpus()
    assert {n: (v["State"], v["Address"]) for n, v in after.items()} == {
        "win11": ("active", "0000:00:02.1"), "other": ("active", "0000:00:02.2")}
    assert vf_driver(adl, "0000:00:02.2") == "vfio-pci" and parent(adl)["NumVFs"] == 2


def test_a_second_vf_goes_through_0_unless_a_domain_runs_on_one(adl: Simulation) -> None:
    """VFs exist: a count beyond them goes through 0 (the kernel wants that), and gvtd binds
    what 0 took away again; with a domain running on a VF, Busy names it, nothing written."""
    adl.client.define(name="win11", type="vf", domain="win10")
    adl.client.define(name="second", type="vf")
    v = adl.client.vgpus()
    assert [(v[n]["State"], v[n]["Address"]) for n in ("win11", "second")] == [
        ("active", "0000:00:02.1"), ("active", "0000:00:02.2")]
    counts = [w[1] for w in writes(adl) if w[0].endswith("/sriov_numvfs")]
    assert counts == ["1", "0", "2"]
    assert vf_driver(adl, "0000:00:02.1") == "vfio-pci"
    adl.client.call("StartDomain", "sa{sv}", ["win10", {}])
    seen = len(writes(adl))
    adl.client.define(name="third", type="vf")  # defined; its VF waits
    third = adl.client.vgpus()["third"]
    assert third["State"] == "failed" and "running domain win10" in third["LastError"]
    with pytest.raises(CallError) as e:
        adl.client.call("CreateVGPU", "s", ["third"])
    assert e.value.name == ERR + "Busy" and "running domain win10" in e.value.text, e.value
    assert "sriov_vfs" in e.value.text
    assert writes(adl)[seen:] == []
    assert vf_driver(adl, "0000:00:02.1") == "vfio-pci"
    adl.client.call("StopDomain", "sa{sv}", ["win10", {}])
    adl.client.call("CreateVGPU", "s", ["third"])
    assert adl.client.vgpus()["third"]["Address"] == "0000:00:02.3"


def test_a_vf_refused_while_a_domain_runs_is_made_when_it_stops(adl: Simulation) -> None:
    """Busy names the running domain; libvirt's event of its stop (no timer, no CreateVGPU)
    has gvtd make the VF then: the count through 0, the running domain's VF bound again."""
    adl.client.define(name="win11", type="vf", domain="win10")
    adl.client.call("AttachVGPU", "ssa{sv}", ["win10", "win11", {}])
    adl.client.call("StartDomain", "sa{sv}", ["win10", {}])
    adl.client.define(name="second", type="vf")
    v = adl.client.vgpus()["second"]
    assert v["State"] == "failed" and "running domain win10" in v["LastError"], v
    mark = last(adl)
    adl.client.call("StopDomain", "sa{sv}", ["win10", {}])
    wait_state(adl, "second", "active", mark)
    assert parent(adl)["NumVFs"] == 2
    assert [vf_driver(adl, a) for a in ("0000:00:02.1", "0000:00:02.2")] == ["vfio-pci"] * 2
    v = adl.client.vgpus()
    assert [(v[n]["State"], v[n]["LastError"]) for n in ("win11", "second")] == \
        [("active", "")] * 2
    assert [w[1] for w in writes(adl) if w[0].endswith("/sriov_numvfs")] == ["1", "0", "2"]


def test_an_undefined_vgpu_asks_for_no_vf(adl: Simulation) -> None:
    """make demo's steps: a definition refused Busy while win10 runs, undefined after it
    stopped. Its slot goes with it (durably), so after a reboot the PF has the one VF the
    definition left needs, and the next definition gets the freed VF."""
    adl.client.define(name="win11", type="vf", domain="win10")
    adl.client.call("StartDomain", "sa{sv}", ["win10", {}])
    adl.client.define(name="second", type="vf")
    assert adl.client.vgpus()["second"]["Address"] == "0000:00:02.2"
    adl.client.call("StopDomain", "sa{sv}", ["win10", {}])
    adl.client.call("Undefine", "s", ["second"])
    slots = json.loads((adl.state_dir / "vfslots.json").read_text())["slots"]
    assert list(slots) == [adl.client.vgpus()["win11"]["UUID"]]
    adl.sim_call("Reboot")
    assert parent(adl)["NumVFs"] == 1
    v = adl.client.vgpus()
    assert {n: (x["State"], x["Address"]) for n, x in v.items()} == {
        "win11": ("active", "0000:00:02.1")}
    adl.client.define(name="third", type="vf", start="on-demand")
    assert adl.client.vgpus()["third"]["Address"] == "0000:00:02.2"


def test_the_pf_driver_going_and_coming_back(adl: Simulation) -> None:
    """i915 unbinding takes the VFs with it: parent-missing, not removed behind gvtd's
    back; its bind event (no timer) brings the VF back."""
    adl.client.define(name="win11", type="vf")
    mark = last(adl)
    adl.sim_call("UnbindDriver", "s", [PF])
    wait_state(adl, "win11", "parent-missing", mark)
    assert parent(adl)["Registered"] is False
    v = adl.client.vgpus()["win11"]
    assert (v["State"], v["Backend"], v["Address"]) == \
        ("parent-missing", "sriov", "0000:00:02.1")  # where it will be again
    mark = last(adl)
    adl.sim_call("BindDriver", "ss", [PF, "i915"])
    wait_state(adl, "win11", "active", mark)
    assert vf_driver(adl, "0000:00:02.1") == "vfio-pci"


def test_a_vf_taken_off_vfio_pci_is_taken_back(adl: Simulation) -> None:
    """Someone unbinds the VF and a host driver may grab it (i915-sriov-dkms issue 279):
    gvtd takes it back, as it recreates an mdev removed behind its back."""
    adl.client.define(name="win11", type="vf")
    mark = last(adl)
    adl.sim_call("UnbindDriver", "s", ["0000:00:02.1"])
    try:
        adl.sim_call("BindDriver", "ss", ["0000:00:02.1", "i915"])
    except CallError as e:  # gvtd was quicker: the VF is on vfio-pci again already
        assert "bound to another driver" in e.text, e
    wait_state(adl, "win11", "active", mark)
    assert vf_driver(adl, "0000:00:02.1") == "vfio-pci"
    assert adl.client.vgpus()["win11"]["LastError"] == ""


def test_on_demand_vf_follows_its_domain(adl: Simulation) -> None:
    """StartDomain binds the VF, StopDomain releases it; with no VF bound any more the
    count goes back to 0 (the GPU's resources are the host's again)."""
    adl.client.define(name="win11", type="vf", start="on-demand", domain="win10")
    v = adl.client.vgpus()["win11"]
    # its slot is given at Define: it has the address to attach by before its VF exists
    assert (v["State"], v["Address"]) == ("inactive", "0000:00:02.1")
    assert parent(adl)["NumVFs"] == 0
    diff = adl.client.call("AttachVGPU", "ssa{sv}", ["win10", "win11", {}])[0]
    assert '<address domain="0x0000" bus="0x00" slot="0x02" function="0x1"/>' in diff, diff
    adl.client.call("StartDomain", "sa{sv}", ["win10", {}])
    assert adl.client.vgpus()["win11"]["State"] == "active"
    assert vf_driver(adl, "0000:00:02.1") == "vfio-pci"
    adl.client.call("StopDomain", "sa{sv}", ["win10", {}])
    v = adl.client.vgpus()["win11"]
    assert (v["State"], v["Address"]) == ("inactive", "0000:00:02.1")  # its slot's, kept
    assert parent(adl)["NumVFs"] == 0
    assert [w[1] for w in writes(adl) if w[0].endswith("/sriov_numvfs")] == ["1", "0"]


def test_the_xe_pf_of_tiger_lake(dbus: DBusDaemon) -> None:
    for sim in _sim(dbus, "tigerlake-xe"):
        assert (parent(sim)["Kind"], parent(sim)["Driver"]) == ("sriov", "xe")
        sim.client.define(name="win11", type="vf", parent=PF)
        assert sim.client.vgpus()["win11"]["Address"] == "0000:00:02.1"
        assert vf_driver(sim, "0000:00:02.1") == "vfio-pci"


def test_min_resolution_never_means_a_vf(adl: Simulation) -> None:
    with pytest.raises(CallError) as e:
        adl.client.define(name="win11", min_resolution="1920x1080", parent=PF)
    assert e.value.name == ERR + "InvalidArgument" and "VFs have no resolution" in e.value.text
    assert writes(adl) == [] and adl.client.vgpus() == {}


def test_the_stock_i915_cannot_make_vfs(dbus: DBusDaemon) -> None:
    """ENOENT from sriov_numvfs: the named error says which module to install."""
    for sim in _sim(dbus, "alderlake-stock"):
        sim.client.define(name="win11", type="vf")
        v = sim.client.vgpus()["win11"]
        assert v["State"] == "failed" and "i915 without SR-IOV" in v["LastError"]
        with pytest.raises(CallError) as e:
            sim.client.call("CreateVGPU", "s", ["win11"])
        assert e.value.name == ERR + "Failed"
        assert "strongtz/i915-sriov-dkms" in e.value.text and "xe" in e.value.text


def test_no_max_vfs_names_the_parameter(dbus: DBusDaemon) -> None:
    """The DKMS i915 without i915.max_vfs offers 0 VFs: Define says what to set, and
    writes nothing."""
    for sim in _sim(dbus, "alderlake-maxvfs0"):
        with pytest.raises(CallError) as e:
            sim.client.define(name="win11", type="vf")
        assert e.value.name == ERR + "NoCapacity" and "i915.max_vfs=" in e.value.text, e.value
        assert writes(sim) == []


def test_the_loop_never_touches_sysfs(adl: Simulation, tmp_path: Path) -> None:
    """Every SR-IOV read and write runs in a worker thread: strace follows the loop's thread
    alone (no -f) while a VF is made, a second one goes through 0, and the PF's driver goes
    and comes back, and sees none of the emulated sysfs's files."""
    if not manager(adl)["LibvirtConnected"]:  # libvirt's client starts up on the loop
        adl.client.wait_for(lambda m: changed(m).get("LibvirtConnected") is True)
    with sysfs_on_loop(adl, tmp_path) as on_loop:
        adl.client.define(name="win11", type="vf")
        adl.client.define(name="second", type="vf")
        mark = last(adl)
        adl.sim_call("UnbindDriver", "s", [PF])
        wait_state(adl, "win11", "parent-missing", mark)
        mark = last(adl)
        adl.sim_call("BindDriver", "ss", [PF, "i915"])
        wait_state(adl, "second", "active", mark)
    assert on_loop == []
    assert "sriov_numvfs" in "".join(w[0] for w in writes(adl))  # the threads did write


def test_a_count_set_in_gvtd_toml_never_changes(adl: Simulation) -> None:
    """sriov_vfs (applied by Reload): all VFs at the first, so a later definition needs no
    way through 0 and a running domain is never in the way; the VFs stay when none is
    bound."""
    with (adl.config_dir / "gvtd.toml").open("a") as f:
        f.write(f'sriov_vfs = {{ "{PF}" = 7 }}\n')
    adl.client.call("Reload")
    adl.client.define(name="win11", type="vf", domain="win10")
    adl.client.call("StartDomain", "sa{sv}", ["win10", {}])
    adl.client.define(name="second", type="vf")
    assert adl.client.vgpus()["second"]["Address"] == "0000:00:02.2"
    adl.client.call("RemoveVGPU", "s", ["second"])
    assert vf_driver(adl, "0000:00:02.2") == "" and parent(adl)["NumVFs"] == 7
    assert [w[1] for w in writes(adl) if w[0].endswith("/sriov_numvfs")] == ["7"]


def test_a_count_above_the_limit_takes_no_vf_away(adl: Simulation) -> None:
    """sriov_vfs above what the PF allows, with a VF made already: NoCapacity names the
    limit (the vGPU's LastError), and the VF that exists stays (no write of 0 before the kernel would refuse)."""
    adl.client.define(name="win11", type="vf")
    with (adl.config_dir / "gvtd.toml").open("a") as f:
        f.write(f'sriov_vfs = {{ "{PF}" = 9 }}\n')
    adl.client.call("Reload")
    adl.client.define(name="second", type="vf")
    second = adl.client.vgpus()["second"]
    assert second["State"] == "failed" and "allows 7 VFs, 9 needed" in second["LastError"], second
    assert vf_driver(adl, "0000:00:02.1") == "vfio-pci" and parent(adl)["NumVFs"] == 1
    assert [w[1] for w in writes(adl) if w[0].endswith("/sriov_numvfs")] == ["1"]
