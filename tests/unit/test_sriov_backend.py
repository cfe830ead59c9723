"""The SR-IOV backend over a plain directory laid out as Linux's sysfs: parents, instances,
which events it reads (no I/O), which domain XML uses a VF, and how it sits beside the mdev
backend (gvtd.sriov.SriovBackend, gvtd.backend.Backends)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from test_sriov_read import GPU, NVME, _tree

from gvtd.backend import Backends, Uevent
from gvtd.mdev import Sysfs
from gvtd.sriov import PciSriov, SriovBackend
from gvtd.vfslots import VfSlots

A = "11111111-2222-4333-8444-555555555555"
B = "22222222-3333-4444-8555-666666666666"
PF = "0000:00:02.0"


def _backend(sys: Path, state: Path, defined: dict[str, str]) -> SriovBackend:
    slots = VfSlots(state)
    for uuid in defined:
        slots.assign(uuid, PF, set(defined), 7)
    return SriovBackend(PciSriov(sys), slots, lambda: defined, lambda uuid: None)


def test_a_pf_is_a_parent_and_a_slotted_vf_on_vfio_pci_an_instance(tmp_path: Path) -> None:
    sys = _tree(tmp_path)  # VF 0 on vfio-pci, VF 1 on i915
    backend = _backend(sys, tmp_path / "state", {A: "auto", B: PF})
    (gpu,) = backend.parents()
    assert (gpu.name, gpu.kind, gpu.registered, gpu.total_vfs, gpu.num_vfs, gpu.vf_offset,
            gpu.vf_stride, gpu.autoprobe) == (PF, "sriov", True, 7, 2, 1, 1, False)
    (vf,) = gpu.types
    assert (vf.id, vf.device_api, vf.available) == ("vf", "vfio-pci", 6)
    assert backend.instances() == {A: backend.instance(A)}
    i = backend.instance(A)
    assert i is not None and (i.parent, i.type_id, i.address, i.backend) == \
        (PF, "vf", "0000:00:02.1", "sriov")
    assert backend.instance(B) is None  # its VF is on i915: no vGPU a VM can use
    # where each lives, without I/O: attach and detach name it while no VF is bound
    assert (backend.address(A), backend.address(B), backend.address("x")) == \
        ("0000:00:02.1", "0000:00:02.2", "")
    (sys / GPU / "driver").unlink()
    (gpu,) = backend.parents()
    assert (gpu.registered, gpu.types) == (False, ())


def test_events_name_what_to_read_again_without_io(tmp_path: Path) -> None:
    sys = _tree(tmp_path)
    backend = _backend(sys, tmp_path / "state", {A: "auto"})
    backend.parents()
    pci = "/devices/pci0000:00"
    assert backend.classify("bind", "pci", f"{pci}/0000:00:02.1", {"DRIVER": "vfio-pci"}) == \
        Uevent("bind", frozenset({PF}), A)
    # a VF not made yet, of no definition: its PF's counts
    assert backend.classify("add", "pci", f"{pci}/0000:00:02.7", {}) == \
        Uevent("add", frozenset({PF}))
    assert backend.classify("unbind", "pci", f"{pci}/{PF}", {}) == \
        Uevent("unbind", frozenset({PF}))
    # another PCI device appearing may be a PF: read it as a parent; its driver is not ours
    assert backend.classify("add", "pci", f"{pci}/0000:00:1f.3", {}) == \
        Uevent("add", frozenset({"0000:00:1f.3"}))
    assert backend.classify("bind", "pci", f"{pci}/0000:00:1f.3", {}) is None
    assert backend.classify("add", "mdev", f"{pci}/{PF}/{A}", {}) is None


def test_a_domain_uses_the_vf_of_a_slot(tmp_path: Path) -> None:
    sys = _tree(tmp_path)
    backend = _backend(sys, tmp_path / "state", {A: "auto", B: PF})
    backend.parents()
    xml = ET.fromstring("""<domain><devices>
      <hostdev mode='subsystem' type='pci' managed='no'><source>
        <address domain='0x0000' bus='0x00' slot='0x02' function='0x2'/></source></hostdev>
      <hostdev mode='subsystem' type='pci' managed='yes'><source>
        <address domain='0x0000' bus='0x03' slot='0x00' function='0x0'/></source></hostdev>
    </devices></domain>""")
    assert backend.used_in(xml) == [B]
    assert _backend(sys, tmp_path / "other", {}).used_in(xml) == []  # undefined: not a vGPU


def test_beside_the_mdev_backend_a_pf_is_an_sriov_parent(tmp_path: Path) -> None:
    """The mdev backend shows an Intel GPU outside mdev_bus as one that may register
    later; a PF it is for sure, registered or not. A GPU VF's bind to i915 is a display
    device's bind for the mdev backend, and the instance's for the SR-IOV one: both."""
    sys = _tree(tmp_path)
    (sys / "bus/mdev/devices").mkdir(parents=True)
    (sys / "class/mdev_bus").mkdir(parents=True)
    sriov = _backend(sys, tmp_path / "state", {A: "auto"})
    both = Backends([Sysfs(sys), sriov])
    assert [(p.name, p.kind, p.registered) for p in both.parents()] == [(PF, "sriov", True)]
    (sys / GPU / "driver").unlink()
    assert [(p.name, p.kind, p.registered) for p in both.parents()] == [(PF, "sriov", False)]
    p = both.parent(PF)
    assert p is not None and p.kind == "sriov"
    vf = "/devices/pci0000:00/0000:00:02.1"
    assert both.classify("bind", "pci", vf, {"DRIVER": "i915", "PCI_CLASS": "30000"}) == \
        Uevent("bind", frozenset({"0000:00:02.1", PF}), A)


def test_a_pf_only_a_definition_names_is_found_at_its_define(tmp_path: Path) -> None:
    """QEMU's nvme PF (no GPU) is a parent because a definition names it: Define finds it
    and writes there at once (a plain directory binds nothing: the vGPU says so), instead
    of leaving the vGPU parent-missing until something else reads the PF."""
    import asyncio

    from gvtd.config import ConfigDir
    from gvtd.host import Host
    from gvtd.state import Ownership

    sys = _tree(tmp_path)
    for f in ("sriov_numvfs", "sriov_drivers_autoprobe"):
        (sys / NVME / f).write_text("")
    (sys / "bus/pci/drivers_probe").write_text("")
    host: Host | None = None
    slots = VfSlots(tmp_path / "state")
    sriov = SriovBackend(PciSriov(sys), slots, lambda: host.vf_parents() if host else {},
                         lambda uuid: None)
    host = Host(ConfigDir(tmp_path / "etc"), Backends([Sysfs(sys), sriov]),
                Ownership(tmp_path / "state"))

    async def go() -> None:
        await host.reconcile()
        assert "0000:01:00.0" not in host.parents
        await host.define("w", {"uuid": A, "parent": "0000:01:00.0", "type": "vf"})

    asyncio.run(go())
    v = host.views[A]
    assert (v.state, v.parent) == ("failed", "0000:01:00.0")
    assert "did not bind to vfio-pci" in v.last_error or "has no VF 0" in v.last_error
    assert (sys / NVME / "sriov_numvfs").read_text() == "1"
    assert slots.slot(A) == ("0000:01:00.0", 0)
    assert host.parents["0000:01:00.0"].kind == "sriov"
