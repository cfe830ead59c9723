"""What `gvt-client setup` writes on an SR-IOV host: doctor_sriov's command-line findings as
data, over the trees doctor's own SR-IOV tests build."""

import io
from pathlib import Path

import pytest

from gvtd import bootcfg, bootneeds, doctor, doctor_sriov
from gvtd.client import setup
from test_doctor_sriov import XE_CMDLINE, Host

GVT_LINE = "BOOT_IMAGE=/vmlinuz root=/dev/nvme0n1p2 ro quiet i915.enable_gvt=1 i915.enable_guc=0"


def needs(h: Host) -> bootneeds.Needs:
    return bootneeds.for_host(h.tmp, h.proc)


def test_the_dkms_i915_gets_guc_on_and_max_vfs(tmp_path: Path) -> None:
    h = Host(tmp_path, cmdline=GVT_LINE)
    n = needs(h)
    assert n.backend == "SR-IOV" and n.modules == (bootneeds.VFIO,)
    assert n.additions(GVT_LINE) == ["intel_iommu=on", "i915.enable_guc=3", "i915.max_vfs=7"]
    line = f"{GVT_LINE} {' '.join(n.additions(GVT_LINE))}"
    assert all(c.severity == "pass" for c in n.check(line)) and n.additions(line) == []
    assert not n.notes[:-1]  # the SR-IOV module runs: nothing to install


def test_xe_on_tiger_lake_gets_force_probe_and_max_vfs(tmp_path: Path) -> None:
    bare = XE_CMDLINE.split(" intel_iommu")[0]
    h = Host(tmp_path, device=0x9A49, driver="xe", cmdline=bare)
    h.bind(None)  # xe does not drive it yet: it needs force_probe
    h.cmdline(bare + " module_blacklist=i915")
    assert needs(h).additions(bare) == ["intel_iommu=on", "xe.max_vfs=7",
                                        "xe.force_probe=9a49", "i915.force_probe=!9a49"]
    assert needs(h).additions(XE_CMDLINE) == []


def test_modprobe_d_values_count_and_a_wrong_one_is_appended_over(tmp_path: Path) -> None:
    h = Host(tmp_path, cmdline=GVT_LINE)
    (h.tmp / "etc/modprobe.d").mkdir(parents=True)  # setup's root is the tree's top
    (h.tmp / "etc/modprobe.d/i915.conf").write_text("options i915 max_vfs=7 enable_guc=0\n")
    assert needs(h).additions(GVT_LINE) == ["intel_iommu=on", "i915.enable_guc=3"]


def test_the_drop_in_opens_the_root_bus_and_setup_shows_the_line(tmp_path: Path) -> None:
    h = Host(tmp_path, cmdline=GVT_LINE)
    out = io.StringIO()
    assert setup.setup(bootcfg.Root(h.tmp), dry_run=True, out=out, procfs=h.proc) == 1
    text = out.getvalue()
    assert ("reboot: intel_iommu=on i915.enable_guc=3 i915.max_vfs=7\n") in text
    assert f"i915.enable_gvt=1 in {h.proc}/cmdline: GVT-g's" in text
    assert "+ReadWritePaths=-/sys/devices/pci0000:00\n" in text and "+vfio-pci\n" in text
    assert not (h.tmp / "etc/systemd").exists()


def test_a_gvt_host_gets_the_gvt_needs(tmp_path: Path) -> None:
    assert bootneeds.for_host(tmp_path, tmp_path / "proc") is bootneeds.GVT


def test_a_line_that_still_fails_is_refused(tmp_path: Path) -> None:
    h = Host(tmp_path, cmdline=GVT_LINE)
    with pytest.raises(bootcfg.BootError, match="sriov.guc"):
        bootcfg._check_result(needs(h), GVT_LINE, "/etc/default/grub")
    assert doctor_sriov.GVT_LEFTOVERS == ("i915.enable_gvt",)


def test_a_host_booted_with_systemd_reloads_it_after_the_drop_in_and_its_revert(
        tmp_path: Path) -> None:
    h = Host(tmp_path, cmdline=GVT_LINE)
    gpu = doctor.find_gpu(h.sys)
    assert gpu is not None
    roots = doctor.HostRoots(sysfs=h.sys, procfs=h.proc, kernel_log=None, root=h.tmp)
    root = bootcfg.Root(h.tmp)
    p = bootcfg.plan(root, root.read, h.proc, lambda argv: "", bootneeds.sriov(roots, gpu, True))
    assert p.commands == p.revert_commands == [bootneeds.DAEMON_RELOAD]
    assert bootneeds.UNIT_DROPIN in [c.path for c in p.changes]
    assert not bootneeds.sriov(roots, gpu, False).commands  # another root: only a note
