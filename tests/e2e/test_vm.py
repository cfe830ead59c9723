"""gvtd on a real kernel: a Debian 13 VM with the kernel's sample mdev drivers (mtty, mdpy,
mbochs), an SR-IOV PCI device (QEMU's NVMe controller) behind a VT-d IOMMU, real udev,
systemd as PID 1, the system bus and polkitd, across a real reboot.

One VM run (tests/e2e/vm.py) serves the whole module; the guest only records what it sees
(tests/e2e/guest/scenario.py) and each test here asserts one step of it. The console log,
the guest's journal and the raw results stay in .cache/e2e/last-run/ after every run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from gvtd import names

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vm  # noqa: E402

# A cold cache builds for up to 15 min and a loaded 2-core machine stretches the TCG boots
# to 14 min (measured with load averages of 6 to 9): limits for a hung guest, not a budget.
pytestmark = pytest.mark.timeout(2400)
ROOT = Path(__file__).resolve().parents[2]


class Results:
    def __init__(self, run: vm.Run) -> None:
        self.run = run

    def step(self, phase: int, name: str) -> dict[str, Any]:
        found = [r for r in self.run.results if r["phase"] == phase and r["step"] == name]
        where = self.run.log_paths()
        assert found, f"the guest reported no step {name!r} in boot {phase} ({where})"
        assert "error" not in found[-1], f"{name}: {found[-1]['error']} ({where})"
        return found[-1]


@pytest.fixture(scope="module")
def guest() -> Results:
    run = vm.run(timeout=1200)
    print(f"e2e run kept in {run.dir}")
    assert run.returncode is not None, f"the VM did not power off in time ({run.log_paths()})"
    return Results(run)


def test_gvtd_service_is_active_with_its_status(guest: Results) -> None:
    s = guest.step(1, "service")
    assert s["active"] == "active"
    assert s["show"]["Type"] == "notify" and s["show"]["NRestarts"] == "0"
    assert s["show"]["StatusText"]
    assert f"Status: \"{s['show']['StatusText']}\"" in s["status"]


def test_auto_definitions_on_virtual_parents_are_created(guest: Results) -> None:
    d = guest.step(1, "define")
    assert [r["rc"] for r in d["results"]] == [0, 0], d["results"]
    assert d["sysfs"] == {"tty0": {"type": "mtty-2", "parent": "mtty"},
                          "fb0": {"type": "mbochs-small", "parent": "mbochs"}}
    # the samples are virtual devices, not PCI functions
    assert d["parents"] == {p: f"/sys/devices/virtual/{p}/{p}" for p in ("mtty", "mdpy", "mbochs")}


def test_client_reads_as_root_and_as_an_unprivileged_user(guest: Results) -> None:
    r = guest.step(1, "reads")
    assert r["root"] == r["alice"]
    parents = r["alice"]["parents"]
    assert [(p["address"], p["registered"]) for p in parents] == \
        [("mbochs", True), ("mdpy", True), ("mtty", True)]
    types = {t["id"]: t for t in r["alice"]["types"]}
    assert {"mtty-1", "mtty-2", "mbochs-small", "mdpy-vga"} <= set(types)
    # mtty types have no description file; the others describe themselves
    assert r["mtty_description_files"] == {"mtty-1": False, "mtty-2": False}
    assert "description" not in types["mtty-1"] and "description" not in types["mtty-2"]
    assert types["mbochs-small"]["description"].startswith("virtual display")
    assert types["mtty-2"]["name"] == "Dual port serial"
    assert {v["name"]: (v["state"], v["managed"]) for v in r["alice"]["list"]} == \
        {"tty0": ("active", True), "fb0": ("active", True)}


def test_polkitd_refuses_define_and_a_rule_lets_create_through(guest: Results) -> None:
    p = guest.step(1, "polkit")
    assert p["alice_define"]["rc"] == 1
    assert "Not authorized" in p["alice_define"]["err"]
    assert "io.github.gvtd1.manage" in p["alice_define"]["err"]
    # 50-gvtd-e2e.rules grants alice io.github.gvtd1.vgpu, and nobody else
    assert p["alice_create"]["rc"] == 0, p["alice_create"]
    assert p["alice_created"] == {"type": "mtty-1", "parent": "mtty"}
    assert p["bob_create"]["rc"] == 1 and "io.github.gvtd1.vgpu" in p["bob_create"]["err"]
    assert p["bob_created"] is None
    assert p["alice_remove"]["rc"] == 0 and p["alice_removed"] is None
    calls = [v for v in p.values() if isinstance(v, dict) and "err" in v]
    assert calls and not [c for c in calls if "Traceback" in c["err"]]


def test_polkitd_decides_domains_by_the_documented_and_the_shipped_rules(
        guest: Results) -> None:
    d = guest.step(1, "domains")
    through = [names.ERROR_PREFIX + "LibvirtUnavailable", names.ACCESS_DENIED]
    # 50-gvtd-alice.rules (docs/security.md's example): alice, win10, and nothing else
    assert d["alice_win10"][0] == through[0], d["alice_win10"]
    assert d["alice_other"][0] == through[1], d["alice_other"]
    assert "io.github.gvtd1.domain" in d["alice_other"][1]
    # the shipped 50-io.github.gvtd1.rules: carol is in group libvirt, bob is not
    assert d["carol_win10"][0] == d["carol_other"][0] == through[0], d
    assert d["bob_win10"][0] == d["bob_other"][0] == through[1], d
    assert "Not authorized" in d["bob_win10"][1]
    # the hook's ReleaseDomain: the installed bus policy refuses carol, lets root through
    assert d["carol_release"][0] == names.ACCESS_DENIED, d["carol_release"]
    assert "Rejected send message" in d["carol_release"][1]  # the bus's words, not gvtd's
    assert d["root_release"] == ["", ""], d["root_release"]
    # gvt-client says the same
    assert d["alice_cli"]["rc"] == 1 and "Not authorized" not in d["alice_cli"]["err"]
    assert d["bob_cli"]["rc"] == 1 and "Not authorized" in d["bob_cli"]["err"]


def test_the_guests_alice_rule_is_the_documented_one() -> None:
    doc = (ROOT / "docs/security.md").read_text()
    block = doc.split("`/etc/polkit-1/rules.d/50-gvtd-alice.rules`:\n\n```js\n", 1)[1]
    assert (vm.GUEST / "50-gvtd-alice.rules").read_text() == block.split("```", 1)[0]


def test_mdev_removed_through_sysfs_is_recreated(guest: Results) -> None:
    s = guest.step(1, "sysfs_remove")
    assert s["written"] is None  # the kernel removed it
    assert s["event"], f"tty0 never became active again; states seen: {s['states']}"
    assert s["now"] == {"type": "mtty-2", "parent": "mtty"}
    assert [v["state"] for v in s["list"] if v["name"] == "tty0"] == ["active"]
    messages = [e["MESSAGE"] for e in guest.step(2, "journal")["entries"]]
    assert any("was removed outside gvtd; recreating it" in m for m in messages), messages


def test_mdev_created_by_hand_is_shown_with_its_type_and_forgotten(guest: Results) -> None:
    s = guest.step(1, "foreign")
    assert s["written"] is None and s["removed"] is None  # the kernel did both
    assert s["added"], "gvtd never showed the mdev created by hand"
    props = s["added"]["properties"]
    assert (props["Parent"], props["Type"], props["State"]) == ("mtty", "mtty-1", "active")
    assert s["gone"], "gvtd still shows the mdev removed by hand"


def test_rmmod_makes_vgpus_parent_missing_and_modprobe_brings_them_back(guest: Results) -> None:
    m = guest.step(1, "reload_module")
    assert m["rmmod"]["rc"] == 0 and m["mdev_during"] is None
    assert m["event"], f"tty0 never became parent-missing; states seen: {m['states']}"
    assert [v["state"] for v in m["list_during"] if v["name"] == "tty0"] == ["parent-missing"]
    assert m["modprobe"]["rc"] == 0 and m["wait_rc"] == 0
    assert m["event_after"], f"tty0 never became active again; states seen: {m['states']}"
    assert m["mdev_after"] == {"type": "mtty-2", "parent": "mtty"}


@pytest.mark.parametrize("parent,errno", [("mtty", "ENOSPC"), ("mbochs", "ENOSPC"),
                                          ("mdpy", "EUSERS")])
def test_create_beyond_available_instances_is_no_capacity(guest: Results, parent: str,
                                                          errno: str) -> None:
    f = guest.step(1, "errors")[parent]
    assert f["made"] > 0 and f["available"] == "0"
    assert f["errno"] == errno  # what the real kernel answers
    assert f["gvtd_error"][0] == "NoCapacity"  # gvtd's sysfs layer, on that errno
    assert "No room for another" in f["gvtd_error"][1]
    assert f["client_create"]["rc"] == 1 and "No room for another" in f["client_create"]["err"]
    assert f["bus_error"] == "io.github.gvtd1.Error.NoCapacity"  # CreateVGPU on the system bus


def test_duplicate_uuid_is_refused_ignoring_case(guest: Results) -> None:
    e = guest.step(1, "errors")
    assert e["upper_errno"] == "EEXIST"
    assert e["upper_define"]["rc"] == 1 and "lower-case" in e["upper_define"]["err"]
    assert e["upper_define_file"] is False
    assert e["duplicate_gvtd_error"][0] == "Busy"
    assert "already exists" in e["duplicate_gvtd_error"][1]


def test_vgpus_are_back_after_reboot_before_ready(guest: Results) -> None:
    a = guest.step(2, "after_reboot")
    assert a["boot_id"] != a["before"]["boot_id"]
    assert set(a["before"]["uuids"]) == {"tty0", "fb0"}
    assert a["sysfs"] == {"tty0": {"type": "mtty-2", "parent": "mtty"},
                          "fb0": {"type": "mbochs-small", "parent": "mbochs"}}
    # busctl prints "t USEC"; the entries' time is when gvtd sent them
    started = int(a["times"]["ExecMainStartTimestamp"].split()[1])
    ready = int(a["times"]["ActiveEnterTimestamp"].split()[1])  # READY=1 received
    created = {e["VGPU_NAME"]: int(e["_SOURCE_REALTIME_TIMESTAMP"]) for e in a["created"]}
    assert set(created) == {"tty0", "fb0", *VFS}, a["created"]
    assert all(started < t < ready for t in created.values()), (started, created, ready)
    assert a["show"]["StatusText"] == "4 vGPUs active on 3 parents"


def test_journal_entries_carry_structured_fields(guest: Results) -> None:
    uuid = guest.step(2, "after_reboot")["before"]["uuids"]["tty0"]
    entries = guest.step(2, "journal")["entries"]
    created = [e for e in entries if e["MESSAGE"].startswith("Created vGPU tty0")]
    assert created, entries
    for e in created:
        assert (e["VGPU_NAME"], e["VGPU_UUID"], e["PARENT"]) == ("tty0", uuid, "mtty")
        assert (e["PRIORITY"], e["SYSLOG_IDENTIFIER"], e["_SYSTEMD_UNIT"]) == \
            ("6", "gvtd", "gvtd.service")
        assert e["LOGGER"] == "gvtd.host" and e["CODE_FUNC"] == "create_target"


def test_stopping_gvtd_leaves_the_mdevs(guest: Results) -> None:
    s = guest.step(2, "stop")
    assert s["stop"]["rc"] == 0 and s["active"] == "inactive"
    assert s["sysfs"] == {"tty0": {"type": "mtty-2", "parent": "mtty"},
                          "fb0": {"type": "mbochs-small", "parent": "mbochs"}}
    guest.step(2, "done")
    assert guest.run.returncode == 0


def test_doctor_reads_the_real_host_from_inside_the_sandbox(guest: Results) -> None:
    d = guest.step(1, "doctor")
    assert d["result"]["rc"] == 1 and "checks failed" in d["result"]["err"]  # no Intel GPU
    assert "Traceback" not in d["result"]["err"]
    checks = {c["id"]: c for c in json.loads(d["checks"]["out"])}
    assert checks["platform"]["severity"] == "fail"
    assert checks["module.mdev"]["severity"] == "pass"
    assert checks["kernel"]["severity"] == "pass" and "sends mdev parent uevents" in \
        checks["kernel"]["message"]
    # /dev/kmsg readable through the unit's DeviceAllow= and CAP_SYSLOG
    assert checks["log"]["severity"] == "pass", checks["log"]
    # the VM's VT-d IOMMU (intel_iommu=on) puts its PCI devices in groups
    assert checks["iommu"]["severity"] == "pass", checks["iommu"]
    assert checks["cmdline.intel_iommu"]["severity"] == "pass", checks["cmdline.intel_iommu"]


def test_the_sandbox_refuses_writes_in_sys_outside_the_mdev_parents(guest: Results) -> None:
    """units/gvtd.service opens only the iGPU's directory (0000:00:02.0) in /sys, its own
    PCI files there excepted; the e2e drop-in adds /sys/devices/virtual for the sample
    parents. Writes are tried as root, with every capability, in gvtd's mount namespace."""
    s = guest.step(1, "sandbox")
    assert s["outside_from_host"] is None  # a root-writable file: the host may write it ...
    assert s["outside"] == "EROFS", s  # ... gvtd may not
    assert s["gpu"] is not None, "the VM has no PCI device at 0000:00:02.0 to check the unit on"
    assert (s["gpu_driver_override"], s["gpu_config"]) == ("EROFS", "EROFS"), s
    assert s["gpu_below"] and s["gpu_below"][1] == "ok", s  # the directory itself is open
    assert s["virtual"] == "ok", s  # the drop-in's


def test_guest_journal_is_kept_and_gvtd_never_failed(guest: Results) -> None:
    text = (guest.run.dir / "journal.txt").read_text(errors="replace")
    assert "Started gvtd.service" in text and "Created vGPU tty0" in text  # both boots read
    assert text.count("Started gvtd.service") == 2
    for bad in ("Traceback", "gvtd.service: Failed", "gvtd.service: Watchdog timeout"):
        assert bad not in text, f"{bad!r} in {guest.run.dir / 'journal.txt'}"


def test_the_kernels_gvt_message_reaches_the_vgpus_health(guest: Results) -> None:
    """On the real kernel: a record printed by the kernel (the test module's pr_err, in
    GVT-g's form) for the vgpu id the mdev shows in intel_vgpu/vgpu_id reaches gvtd through
    the real /dev/kmsg, and tty0 turns degraded; the same words written into /dev/kmsg by
    a process (facility user) never do."""
    h = guest.step(1, "health")
    assert (h["named"], h["vgpu_id"], h["injected"], h["said"]) == (None, "7", None, None)
    assert any(line.startswith("<11>") and "written by a process" in line for line in h["kmsg"])
    assert any(line.startswith("<3>") and "MMIO read" in line for line in h["kmsg"])
    event = h["event"]
    assert event is not None, "no Health change of tty0 within the deadline"
    assert event["properties"]["Health"] == "degraded"
    tty0 = next(v for v in h["list"] if v["name"] == "tty0")
    assert tty0["health"] == "degraded" and "fail to emulate MMIO read" in tty0["health_message"]
    assert "written by a process" not in tty0["health_message"]
    assert any(p["id"] == "health:tty0" for p in h["problems"]["problems"])


def _events(events: list[dict[str, Any]], subsystem: str | None = "pci"
            ) -> list[tuple[str, str, str, str | None]]:
    """The uevents (of one subsystem, or all): (action, subsystem, device, DRIVER)."""
    return [(e["action"], e["subsystem"], e["name"], e["driver"]) for e in events
            if subsystem is None or e.get("subsystem") == subsystem]


def _kernel_order(seen: dict[str, list[dict[str, Any]]]) -> list[tuple[str, str, str, str | None]]:
    """The kernel's uevents in the order it sent them, after checking that udev passed on
    the same ones (in its own order: it finishes them in parallel)."""
    # udev may pass one event on twice (same SEQNUM) on a loaded machine: counted once
    once = {e["seq"]: e for e in seen["udev"]}
    assert sorted(once.values(), key=lambda e: e["seq"]) == \
        [{k: v for k, v in e.items() if k != "keys"} for e in seen["kernel"]], seen
    return _events(seen["kernel"], None)


def _vf_address(pf: str, offset: int, stride: int, index: int) -> str:
    """The VF's address from the PF's routing id (bus << 8 | slot << 3 | function), as
    the PCI SR-IOV specification computes it."""
    domain, bus, slot_fn = pf.split(":")
    slot, fn = slot_fn.split(".")
    rid = int(bus, 16) << 8 | int(slot, 16) << 3 | int(fn)
    vf = rid + offset + stride * index
    return f"{int(domain, 16):04x}:{vf >> 8:02x}:{(vf >> 3) & 0x1f:02x}.{vf & 7}"


def test_the_vm_has_an_sriov_pf_on_its_stock_driver(guest: Results) -> None:
    """QEMU's NVMe controller (1b36:0010) as tests/e2e/vm.py makes it: the guest's nvme
    driver supports the PCI core's sriov_numvfs, behind the VT-d IOMMU."""
    s = guest.step(1, "sriov_kernel")
    assert s["pf"] == "0000:01:00.0", s
    assert s["ids"] == ["0x1b36", "0x0010", "0x010802"] and s["driver"] == "nvme", s
    assert s["files"] == {"sriov_totalvfs": str(vm.SRIOV_MAX_VFS), "sriov_numvfs": "0",
                          "sriov_offset": "1", "sriov_stride": "1", "sriov_vf_device": "10",
                          "sriov_drivers_autoprobe": "1"}, s["files"]
    assert "intel_iommu=on" in s["cmdline"].split() and s["iommu_group"], s
    assert s["vfio_pci_loaded"], "vfio-pci is not loaded in the guest (modules-load.d)"


def test_the_real_sriov_core_refuses_counts_with_erange_and_ebusy(guest: Results) -> None:
    s = guest.step(1, "sriov_kernel")
    assert s["autoprobe_off"] is None
    assert s["over_total"] == "ERANGE"  # totalvfs + 1
    assert s["over_total_events"] == {"kernel": [], "udev": []}  # and nothing happened
    assert s["enable"] is None and s["numvfs_enabled"] == str(vm.SRIOV_MAX_VFS)
    assert s["other_count"] == "EBUSY"  # a different non-zero count while VFs exist
    assert s["same_count"] is None  # the count they have: accepted, nothing done
    assert s["busy_events"] == {"kernel": [], "udev": []}
    assert any(f"{vm.SRIOV_MAX_VFS} VFs already enabled. Disable before enabling 1 VFs" in line
               for line in s["kmsg"]), s["kmsg"]


def test_vfs_appear_unbound_with_autoprobe_off_and_the_pci_uevents(guest: Results) -> None:
    s = guest.step(1, "sriov_kernel")
    vfs = [_vf_address(s["pf"], 1, 1, i) for i in range(vm.SRIOV_MAX_VFS)]
    assert s["virtfn"] == {str(i): vf for i, vf in enumerate(vfs)}
    groups = set()
    for vf in vfs:
        f = s["vfs"][vf]
        assert f["path"] == f"/sys/devices/pci0000:00/0000:00:03.0/{vf}", f
        assert f["physfn"] == s["pf"] and f["driver"] is None, f  # autoprobe 0: unbound
        assert f["driver_override"] == "(null)", f
        assert f["ids"] == ["0x1b36", "0x0010", "0x010802"], f
        assert f["group_devices"] == [vf], f  # its own IOMMU group
        groups.add(f["iommu_group"])
    assert len(groups) == len(vfs) and s["iommu_group"] not in groups
    # each VF's add and change (no DRIVER), then the PF's change (on its driver)
    assert _kernel_order(s["enable_events"]) == \
        [e for vf in vfs for e in (("add", "pci", vf, None), ("change", "pci", vf, None))] + \
        [("change", "pci", s["pf"], "nvme")]


def test_driver_override_and_drivers_probe_bind_vfs_to_vfio_pci(guest: Results) -> None:
    s = guest.step(1, "sriov_kernel")
    vfs = list(s["virtfn"].values())
    groups = [s["vfs"][vf]["iommu_group"] for vf in vfs]
    for vf in vfs:
        b = s["bind"][vf]
        assert (b["override"], b["probe"], b["driver"]) == (None, None, "vfio-pci"), b
        assert b["dev_wait"] == 0 and b["dev"], b  # /dev/vfio/<group>
    assert s["dev_vfio"] == sorted([*s["dev_vfio_before"], *groups])
    # per VF: its VFIO group's node, the VFIO device (vfioN), then the bind
    kernel = _kernel_order(s["bind_events"])
    assert [(a, sub) for a, sub, _, _ in kernel] == \
        [("add", "vfio"), ("add", "vfio-dev"), ("bind", "pci")] * len(vfs), kernel
    assert [e[2] for e in kernel if e[1] == "vfio"] == groups
    assert _events(s["bind_events"]["kernel"]) == [("bind", "pci", vf, "vfio-pci") for vf in vfs]


def test_writing_zero_unbinds_and_removes_every_vf(guest: Results) -> None:
    s = guest.step(1, "sriov_kernel")
    vfs = list(s["virtfn"].values())
    assert s["disable"] is None
    assert s["after"] == {"numvfs": "0", "virtfn": {}, "vfs_present": [],
                          "dev_vfio": s["dev_vfio_before"]}
    # per VF: the VFIO device and group go, then unbind and remove; no change on the PF
    kernel = _kernel_order(s["disable_events"])
    assert [(a, sub) for a, sub, _, _ in kernel] == \
        [("remove", "vfio-dev"), ("remove", "vfio"), ("unbind", "pci"),
         ("remove", "pci")] * len(vfs), kernel
    assert _events(s["disable_events"]["kernel"]) == \
        [e for vf in vfs for e in (("unbind", "pci", vf, None), ("remove", "pci", vf, None))]
    assert s["autoprobe_on"] is None


VFS = {"vf0": "0000:01:00.1", "vf1": "0000:01:00.2"}  # guest/scenario.py's, in slot order
PF = "0000:01:00.0"


def _vfs_on_vfio(kernel: dict[str, Any]) -> None:
    """Both VFs exist, are on vfio-pci through driver_override, and have their VFIO group."""
    assert kernel["numvfs"] == "2" and kernel["autoprobe"] == "0", kernel
    assert kernel["virtfn"] == {"0": VFS["vf0"], "1": VFS["vf1"]}, kernel
    for vf in VFS.values():
        f = kernel["vfs"][vf]
        assert (f["driver"], f["driver_override"]) == ("vfio-pci", "vfio-pci"), f
        assert f["iommu_group"] in kernel["dev_vfio"], kernel


def test_the_real_kernels_erange_reaches_the_bus_as_no_capacity(guest: Results) -> None:
    """gvtd.toml's sriov_vfs above totalvfs: gvtd writes the count, the kernel refuses."""
    e = guest.step(1, "vf_erange")
    assert e["reload"]["rc"] == 0 and e["define"]["rc"] == 0, e
    assert e["create"]["rc"] == 1, e["create"]
    assert "allows 2 VFs, 3 needed (ERANGE)" in e["create"]["err"], e["create"]
    assert "Traceback" not in e["create"]["err"]
    assert e["bus_error"] == names.ERROR_PREFIX + "NoCapacity"
    assert e["after"]["numvfs"] == "0" and e["after"]["virtfn"] == {}, e["after"]  # nothing
    assert e["after"]["autoprobe"] == "0"  # set before the count, as it must be
    vf0 = [v for v in e["list"] if v["name"] == "vf0"]
    assert vf0 and vf0[0]["state"] != "active" and "ERANGE" in vf0[0]["last_error"], vf0
    assert e["reload_back"]["rc"] == 0 and e["undefine"]["rc"] == 0, e


def test_vf_definitions_get_their_vfs_on_vfio_pci_from_the_real_kernel(guest: Results) -> None:
    d = guest.step(1, "vf_define")
    assert [r["rc"] for r in d["defined"]] == [0, 0], d["defined"]
    assert d["event"], f"the VF vGPUs never became active; states seen: {d['states']}"
    vgpus = {v["name"]: v for v in d["list"]}
    for name, address in VFS.items():
        v = vgpus[name]
        assert (v["state"], v["backend"], v["address"], v["parent"]) == \
            ("active", "sriov", address, PF), v
    _vfs_on_vfio(d["kernel"])
    # the second definition needed a second VF: the count went from 1 to 2 through 0
    assert any("from 1 to 2 through 0" in line for line in d["journal"]), d["journal"]
    assert sum(line.startswith("Created vGPU vf") for line in d["journal"]) >= 2, d["journal"]
    pf = [p for p in d["parents"] if p["address"] == PF]
    assert pf and pf[0]["driver"] == "nvme", d["parents"]


def test_the_real_kernels_erange_and_ebusy_are_named_errors(guest: Results) -> None:
    """gvtd's own SR-IOV sysfs code against the real PCI core, and a third VF definition on
    a PF that allows two, on the bus; nothing of what exists changes."""
    e = guest.step(1, "vf_errors")
    assert e["erange"][0] == "NoCapacity" and "(ERANGE)" in e["erange"][1], e["erange"]
    assert e["ebusy"][0] == "Busy" and "(EBUSY)" in e["ebusy"][1], e["ebusy"]
    # Define refuses a third VF definition (no file is written, so there is none to create)
    assert e["third_define"]["rc"] == 1, e["third_define"]
    assert "All 2 VFs of the PF" in e["third_define"]["err"], e["third_define"]
    assert e["third_bus_error"] == names.ERROR_PREFIX + "NotFound"
    _vfs_on_vfio(e["kernel"])
    assert {v["name"]: v["state"] for v in e["list"] if v["name"] in VFS} == \
        {name: "active" for name in VFS}


def test_vfs_are_back_on_vfio_pci_after_reboot_and_stay_when_gvtd_stops(guest: Results) -> None:
    a = guest.step(2, "after_reboot")
    assert set(a["before"]["vfs"]) == set(VFS)
    _vfs_on_vfio(a["kernel"])
    vgpus = {v["name"]: v for v in a["list"]}
    assert {n: (vgpus[n]["state"], vgpus[n]["address"]) for n in VFS} == \
        {n: ("active", address) for n, address in VFS.items()}
    _vfs_on_vfio(guest.step(2, "stop")["kernel"])  # SIGTERM leaves the VFs in place
