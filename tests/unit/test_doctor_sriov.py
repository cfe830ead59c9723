"""Doctor on an SR-IOV host, over temporary trees holding the files a real kernel, DKMS and
the other tools have: one working Alder Lake laptop (the i915 SR-IOV module) and one Tiger
Lake on xe, then one change per failure."""

import lzma
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from gvtd import doctor, doctor_sriov
from gvtd.doctor import HostRoots
from test_doctor_checks import Host as GvtHost, expect_finding

PF = "0000:00:02.0"
KERNEL = "6.8.0-49-generic"
CMDLINE = (f"BOOT_IMAGE=/vmlinuz-{KERNEL} root=/dev/nvme0n1p2 ro quiet intel_iommu=on "
           "i915.enable_guc=3 i915.max_vfs=7 module_blacklist=xe")
XE_CMDLINE = (f"BOOT_IMAGE=/vmlinuz-{KERNEL} root=/dev/nvme0n1p2 ro quiet intel_iommu=on "
              "xe.force_probe=9a49 i915.force_probe=!9a49 xe.max_vfs=7")
SECURE_BOOT = "sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-e0cb4ee1f8c8"
MOK_LIST = "sys/firmware/efi/mok-variables/MokListRT"
CERT = b"0\x82\x03\x1d0\x82\x02\x05\xa0\x03 a DKMS signing certificate"
MODULE = f"root/lib/modules/{KERNEL}/updates/dkms/i915.ko"
DKMS_BUILD = f"root/var/lib/dkms/i915-sriov-dkms/2024.12.02/{KERNEL}/x86_64/module/i915.ko"
ELF = b"\x7fELF" + bytes(64)
VFIO_MODULE = "kernel/drivers/vfio/pci/vfio-pci.ko.zst"
# What the DKMS package installs, commented out: it sets nothing.
PACKAGE_TMPFILES = ("#Path Mode UID GID Age Argument\n"
                    "#w /sys/devices/pci0000:00/0000:00:02.0/sriov_numvfs - - - - 1\n")


def write(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data)


class Host:
    """An Alder Lake-P laptop (8086:46a6) with the i915 SR-IOV module built by DKMS for the
    running kernel and loaded with enable_guc=3 max_vfs=7, vfio-pci loaded, the IOMMU on."""

    def __init__(self, tmp: Path, device: int = 0x46A6, driver: str = "i915",
                 cmdline: str = CMDLINE) -> None:
        self.tmp, self.root, self.log = tmp, tmp / "root", tmp / "kmsg.log"
        self.sys, self.proc = tmp / "sys", tmp / "proc"
        self.dev = self.sys / "devices" / "pci0000:00" / PF
        for name, text in (("vendor", "0x8086"), ("device", f"0x{device:04x}"),
                           ("class", "0x030000"), ("sriov_totalvfs", "7"),
                           ("sriov_numvfs", "0"), ("sriov_offset", "1"), ("sriov_stride", "1"),
                           ("sriov_drivers_autoprobe", "1")):
            write(self.dev / name, text + "\n")
        (self.sys / "bus" / "pci" / "devices").mkdir(parents=True)
        os.symlink(f"../../../devices/pci0000:00/{PF}", self.sys / "bus/pci/devices" / PF)
        for d in ("i915", "xe", "vfio-pci"):
            (self.sys / "bus" / "pci" / "drivers" / d).mkdir(parents=True)
        self.bind(driver)
        (self.sys / "module" / "vfio_pci").mkdir(parents=True)
        write(self.root / f"lib/modules/{KERNEL}/{VFIO_MODULE}", ELF)
        if driver == "i915":
            write(self.sys / "module/i915/parameters/max_vfs", "7\n")
            write(self.sys / "module/i915/parameters/enable_guc", "3\n")
            write(self.tmp / MODULE, ELF + doctor_sriov.SIGNATURE)
            write(self.tmp / DKMS_BUILD, ELF + doctor_sriov.SIGNATURE)
            write(self.root / "etc/tmpfiles.d/i915-set-sriov-numvfs.conf", PACKAGE_TMPFILES)
        else:
            write(self.sys / "module/xe/parameters/max_vfs", "7\n")
        (self.sys / "kernel" / "iommu_groups" / "0" / "devices").mkdir(parents=True)
        write(self.proc / "cmdline", cmdline + "\n")
        write(self.proc / "sys/kernel/osrelease", KERNEL + "\n")
        write(self.log, "DMAR: IOMMU enabled\n")

    @property
    def roots(self) -> HostRoots:
        return HostRoots(sysfs=self.sys, procfs=self.proc, kernel_log=self.log,
                         mdevctl=self.tmp / "mdevctl.d", root=self.root)

    def checks(self) -> dict[str, doctor.Check]:
        found = doctor.diagnose(self.roots, ())
        ids = [c.id for c in found]
        assert len(ids) == len(set(ids)), ids
        return {c.id: c for c in found}

    def bind(self, driver: str | None) -> None:
        link = self.dev / "driver"
        if os.path.lexists(link):
            link.unlink()
        if driver is not None:
            os.symlink(f"../../../bus/pci/drivers/{driver}", link)

    def cmdline(self, text: str) -> None:
        write(self.proc / "cmdline", text + "\n")

    def stock_i915(self) -> None:
        """The stock i915 loaded instead (it has no max_vfs)."""
        (self.sys / "module/i915/parameters/max_vfs").unlink()

    def add_vfs(self, n: int, driver: str | None) -> None:
        for i in range(n):
            vf = self.sys / "devices" / "pci0000:00" / f"0000:00:02.{i + 1}"
            vf.mkdir()
            os.symlink(f"../{PF}", vf / "physfn")
            os.symlink(f"../0000:00:02.{i + 1}", self.dev / f"virtfn{i}")
            if driver is not None:
                os.symlink(f"../../../bus/pci/drivers/{driver}", vf / "driver")
        write(self.dev / "sriov_numvfs", f"{n}\n")

    def rmtree(self, rel: str) -> None:
        import shutil

        shutil.rmtree(self.tmp / rel)

    def secure_boot(self, on: bool = True) -> None:
        write(self.tmp / SECURE_BOOT, b"\x06\x00\x00\x00" + (b"\x01" if on else b"\x00"))


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return Host(tmp_path)


@pytest.fixture
def xe_host(tmp_path: Path) -> Host:
    return Host(tmp_path, device=0x9A49, driver="xe", cmdline=XE_CMDLINE)


PASSING = ["platform", "cmdline.intel_iommu", "sriov.blacklist", "sriov.driver", "sriov.dkms",
           "sriov.secure_boot", "sriov.guc", "sriov.max_vfs", "sriov.vfio", "iommu",
           "sriov.vf_drivers", "sriov.tmpfiles", "sriov.sysfsutils", "sriov.udev",
           "sriov.driverctl"]
XE_PASSING = ["platform", "cmdline.intel_iommu", "sriov.blacklist", "sriov.driver",
              "sriov.force_probe", "sriov.max_vfs", "sriov.vfio", "iommu", "sriov.vf_drivers",
              "sriov.tmpfiles", "sriov.sysfsutils", "sriov.udev", "sriov.driverctl"]
# What a GVT-g host is told, and an SR-IOV host must not be (and the other way round).
GVT_ADVICE = ("enable_guc=0", "enable_gvt", "kvmgt", "mdev", "gvt-client setup")


def test_working_alder_lake_passes_every_check(host: Host) -> None:
    checks = host.checks()
    assert list(checks) == PASSING
    assert {c.id: c.severity for c in checks.values()} == {i: "pass" for i in PASSING}
    assert "Alder Lake" in checks["platform"].message and "--type vf" in checks["platform"].message
    assert "i915-sriov-dkms" in checks["sriov.driver"].message
    assert "enable_guc=3 (i915.enable_guc=3 on the kernel command line)" \
        in checks["sriov.guc"].message
    assert "xe is blacklisted (module_blacklist=xe on the kernel command line)" \
        in checks["sriov.blacklist"].message


def test_working_tiger_lake_on_xe_passes_every_check(xe_host: Host) -> None:
    checks = xe_host.checks()
    assert list(checks) == XE_PASSING
    assert {c.severity for c in checks.values()} == {"pass"}
    assert "Tiger Lake" in checks["platform"].message


def test_no_gvt_advice_on_an_sriov_host(host: Host) -> None:
    """Everything broken that can be: still no GVT-g step among the fixes."""
    host.cmdline(CMDLINE.replace("i915.enable_guc=3", "i915.enable_guc=0")
                 .replace(" intel_iommu=on", ""))
    write(host.sys / "module/i915/parameters/enable_guc", "0\n")
    host.stock_i915()
    checks = host.checks()
    assert checks["sriov.guc"].severity == "fail"
    for c in checks.values():
        for advice in GVT_ADVICE:
            assert advice not in c.fix.replace("i915.enable_guc=0 left from a GVT-g", ""), c


def test_no_sriov_checks_on_a_gvt_host(tmp_path: Path) -> None:
    checks = GvtHost(tmp_path).checks()
    assert not [i for i in checks if i.startswith("sriov.")]
    assert not [c for c in checks.values() if "enable_guc=3" in c.fix]


def _module_blacklist_i915(h: Host) -> None:
    h.cmdline(CMDLINE + " module_blacklist=nouveau,i915")


def _modprobe_blacklist(h: Host) -> None:
    write(h.root / "etc/modprobe.d/no-intel.conf", "# keep it off\nblacklist i915\n")


def _no_driver(h: Host) -> None:
    h.bind(None)
    h.rmtree("sys/module/i915")


def _other_kernel(h: Host) -> None:
    """Booted a newer kernel the DKMS build does not cover; its stock i915 runs."""
    write(h.proc / "sys/kernel/osrelease", "6.12.0-1-amd64\n")
    h.stock_i915()


def _not_installed(h: Host) -> None:
    h.stock_i915()
    h.rmtree("root/lib/modules")
    h.rmtree("root/var/lib/dkms")


def _added_not_built(h: Host) -> None:
    _not_installed(h)
    (h.root / "var/lib/dkms/i915-sriov-dkms/2024.12.02/source").mkdir(parents=True)


def _refused_no_key(h: Host) -> None:
    """Secure Boot on, DKMS never made a key: the module is refused, no i915 runs."""
    h.secure_boot()
    write(h.tmp / MODULE, ELF)
    _no_driver(h)
    write(h.log, "Loading of unsigned module is rejected\n")


def _key_not_enrolled(h: Host) -> None:
    h.secure_boot()
    h.stock_i915()
    write(h.root / "var/lib/dkms/mok.pub", CERT)
    write(h.tmp / MOK_LIST, b"\xa1\x59\xc0\xa5 the distribution's certificate only")


def _unsigned(h: Host) -> None:
    _key_not_enrolled(h)
    write(h.tmp / MOK_LIST, b"\xa1\x59\xc0\xa5" + CERT)
    write(h.tmp / MODULE, ELF)


def _mok_unreadable(h: Host) -> None:
    _key_not_enrolled(h)
    (h.tmp / MOK_LIST).unlink()


def _vfs_on_i915(h: Host) -> None:
    h.add_vfs(2, "i915")


def _no_vfio_in_kernel(h: Host) -> None:
    h.rmtree("sys/module/vfio_pci")
    h.rmtree("sys/bus/pci/drivers/vfio-pci")
    (h.root / f"lib/modules/{KERNEL}/{VFIO_MODULE}").unlink()
    write(h.root / f"lib/modules/{KERNEL}/modules.builtin", "kernel/drivers/vfio/vfio.ko\n")


def _tmpfiles(h: Host) -> None:
    write(h.root / "etc/tmpfiles.d/gpu.conf",
          f"w /sys/devices/pci0000:00/{PF}/sriov_numvfs - - - - 7\n")


def _tmpfiles_package(h: Host) -> None:
    """A package's own file in /usr/lib, through the card's device link."""
    write(h.root / "usr/lib/tmpfiles.d/sriov.conf",
          "w /sys/class/drm/card0/device/sriov_numvfs - - - - 7\n")


def _tmpfiles_bind(h: Host) -> None:
    write(h.root / "run/tmpfiles.d/vf.conf",
          "w /sys/bus/pci/drivers/vfio-pci/bind - - - - 0000:00:02.1\n")


def _sysfs_conf(h: Host) -> None:
    write(h.root / "etc/sysfs.conf", "# VFs\ndevices/pci0000:00/0000:00:02.0/sriov_numvfs = 7\n")


def _sysfs_d(h: Host) -> None:
    write(h.root / "etc/sysfs.d/vf.conf", "bus/pci/devices/0000:00:02.1/driver_override = "
          "vfio-pci\n")


def _udev(h: Host) -> None:
    write(h.root / "etc/udev/rules.d/99-igpu.rules",
          'ACTION=="add", SUBSYSTEM=="pci", KERNEL=="0000:00:02.0", \\\n'
          '  ATTR{vendor}=="0x8086", ATTR{sriov_numvfs}="7"\n')


def _driverctl(h: Host) -> None:
    write(h.root / "etc/driverctl.d/pci-0000:00:02.1", "vfio-pci\n")


# (what breaks, check id, expected severity, a word the message or fix must contain)
FAILURES: list[tuple[str, Callable[[Host], None], str, str, str]] = [
    ("Alder Lake without sriov_totalvfs", lambda h: (h.dev / "sriov_totalvfs").unlink(),
     "platform", "fail", "CONFIG_PCI_IOV"),
    ("no intel_iommu", lambda h: h.cmdline(CMDLINE.replace(" intel_iommu=on", "")),
     "cmdline.intel_iommu", "fail", "/etc/default/grub"),
    ("no IOMMU groups", lambda h: h.rmtree("sys/kernel/iommu_groups/0"), "iommu", "fail",
     "VT-d"),
    ("i915 in module_blacklist", _module_blacklist_i915, "sriov.blacklist", "fail",
     "module_blacklist=nouveau,i915 on the kernel command line"),
    ("i915 blacklisted in modprobe.d", _modprobe_blacklist, "sriov.blacklist", "fail",
     "`blacklist i915` in "),
    ("the stock i915", lambda h: h.stock_i915(), "sriov.driver", "fail", "strongtz/i915-sriov-dkms"),
    ("the stock i915 names xe's way", lambda h: h.stock_i915(), "sriov.driver", "fail",
     "xe.force_probe=46a6 i915.force_probe=!46a6"),
    ("no driver bound", _no_driver, "sriov.driver", "fail", "modprobe i915"),
    ("the PF held by vfio-pci", lambda h: h.bind("vfio-pci"), "sriov.driver", "fail",
     "/sys/bus/pci/drivers/vfio-pci/unbind"),
    ("module built, stock i915 from the initramfs", lambda h: h.stock_i915(), "sriov.dkms",
     "fail", "update-initramfs -u"),
    ("module built, /lib/modules hidden (the daemon's sandbox)", lambda h: (
        h.stock_i915(), h.rmtree("root/lib/modules")), "sriov.dkms", "fail",
     f"{DKMS_BUILD}), but the i915 that runs is the stock one"),
    ("module built for another kernel", _other_kernel, "sriov.dkms", "fail",
     "dkms autoinstall -k 6.12.0-1-amd64"),
    ("module not installed", _not_installed, "sriov.dkms", "fail", "dkms add ."),
    ("module added, not built", _added_not_built, "sriov.dkms", "fail",
     "dkms install -m i915-sriov-dkms -v 2024.12.02"),
    ("Secure Boot, no DKMS key", _refused_no_key, "sriov.secure_boot", "fail",
     "mokutil --import /var/lib/dkms/mok.pub"),
    ("Secure Boot refusal in the log", _refused_no_key, "sriov.secure_boot", "fail",
     "Loading of unsigned module is rejected"),
    ("Secure Boot, key not enrolled", _key_not_enrolled, "sriov.secure_boot", "fail",
     "root/var/lib/dkms/mok.pub, reboot, and choose Enroll MOK"),
    ("Secure Boot, unsigned module", _unsigned, "sriov.secure_boot", "fail", "is not signed"),
    ("Secure Boot, enrolled keys unreadable", _mok_unreadable, "sriov.secure_boot", "warn",
     "mokutil --test-key"),
    ("enable_guc=0 at run time (GVT-g's)", lambda h: write(
        h.sys / "module/i915/parameters/enable_guc", "0\n"), "sriov.guc", "fail",
     "Set i915.enable_guc=3"),
    ("enable_guc=0 on the command line", lambda h: (
        h.cmdline(CMDLINE.replace("i915.enable_guc=3", "i915.enable_guc=0")),
        write(h.sys / "module/i915/parameters/enable_guc", "0\n")), "sriov.guc", "fail",
     "i915.enable_guc=0 on the kernel command line"),
    ("enable_guc=-1", lambda h: write(h.sys / "module/i915/parameters/enable_guc", "-1\n"),
     "sriov.guc", "warn", "i915 decides"),
    ("enable_guc nowhere, i915 not loaded", lambda h: (
        _no_driver(h), h.cmdline(CMDLINE.replace(" i915.enable_guc=3", ""))), "sriov.guc",
     "warn", "not set"),
    ("max_vfs=0 at run time", lambda h: write(h.sys / "module/i915/parameters/max_vfs", "0\n"),
     "sriov.max_vfs", "fail", "i915.max_vfs=7"),
    ("max_vfs unset, i915 not loaded", lambda h: (
        _no_driver(h), h.cmdline(CMDLINE.replace(" i915.max_vfs=7", ""))), "sriov.max_vfs",
     "fail", "ERANGE"),
    ("vfio-pci not loaded", lambda h: (h.rmtree("sys/module/vfio_pci"),
                                       h.rmtree("sys/bus/pci/drivers/vfio-pci")),
     "sriov.vfio", "fail", "modprobe vfio-pci"),
    ("a kernel without vfio-pci", _no_vfio_in_kernel, "sriov.vfio", "fail", "CONFIG_VFIO_PCI"),
    ("VFs on i915", _vfs_on_i915, "sriov.vf_drivers", "fail",
     "0000:00:02.1 on i915, 0000:00:02.2 on i915"),
    ("a tmpfiles.d line", _tmpfiles, "sriov.tmpfiles", "fail", "gpu.conf:1: w /sys/devices"),
    ("a package's tmpfiles.d line", _tmpfiles_package, "sriov.tmpfiles", "fail",
     "usr/lib/tmpfiles.d/sriov.conf:1"),
    ("a tmpfiles.d bind of a VF", _tmpfiles_bind, "sriov.tmpfiles", "fail", "vfio-pci/bind"),
    ("/etc/sysfs.conf", _sysfs_conf, "sriov.sysfsutils", "fail", "etc/sysfs.conf:2"),
    ("/etc/sysfs.d", _sysfs_d, "sriov.sysfsutils", "fail", "driver_override = vfio-pci"),
    ("a udev rule", _udev, "sriov.udev", "fail", "99-igpu.rules:1"),
    ("a driverctl override", _driverctl, "sriov.driverctl", "fail",
     "driverctl unset-override 0000:00:02.1"),
]


def cases(rows: list[tuple[str, Callable[[Host], None], str, str, str]]) -> list[object]:
    return [pytest.param(*row[1:], id=row[0]) for row in rows]


@pytest.mark.parametrize("break_it, check_id, severity, word", cases(FAILURES))
def test_each_sriov_check_fails(host: Host, break_it: Callable[[Host], None], check_id: str,
                                severity: str, word: str) -> None:
    break_it(host)
    expect_finding(host.checks(), check_id, severity, word)


def test_every_check_has_a_failing_case() -> None:
    assert set(PASSING) <= {f[2] for f in FAILURES}


PASSES: list[tuple[str, Callable[[Host], None], str]] = [
    ("the package's commented tmpfiles.d line", lambda h: None, "sriov.tmpfiles"),
    ("a NIC's VFs in tmpfiles.d", lambda h: write(
        h.root / "etc/tmpfiles.d/nic.conf",
        "w /sys/bus/pci/devices/0000:03:00.0/sriov_numvfs - - - - 4\n"), "sriov.tmpfiles"),
    ("a tmpfiles.d file masked in /etc", lambda h: (
        _tmpfiles_package(h), os.symlink("/dev/null", h.root / "etc/tmpfiles.d/sriov.conf")),
     "sriov.tmpfiles"),
    ("sysfsutils setting only the mode", lambda h: write(
        h.root / "etc/sysfs.conf", "mode devices/pci0000:00/0000:00:02.0/sriov_numvfs = 0600\n"),
     "sriov.sysfsutils"),
    ("a udev rule about something else", lambda h: write(
        h.root / "usr/lib/udev/rules.d/60-drm.rules",
        'ACTION=="add", SUBSYSTEM=="drm", TAG+="uaccess"\n'), "sriov.udev"),
    ("a driverctl override of another device", lambda h: write(
        h.root / "etc/driverctl.d/pci-0000:03:00.0", "vfio-pci\n"), "sriov.driverctl"),
    ("a modprobe.d blacklist masked in /etc", lambda h: (
        write(h.root / "usr/lib/modprobe.d/intel.conf", "blacklist i915\n"),
        (h.root / "etc/modprobe.d").mkdir(parents=True),
        os.symlink("/dev/null", h.root / "etc/modprobe.d/intel.conf")), "sriov.blacklist"),
    ("enable_guc=1 (GuC submission without HuC)", lambda h: write(
        h.sys / "module/i915/parameters/enable_guc", "1\n"), "sriov.guc"),
    ("VFs on vfio-pci", lambda h: h.add_vfs(3, "vfio-pci"), "sriov.vf_drivers"),
    ("VFs made, not bound yet", lambda h: h.add_vfs(2, None), "sriov.vf_drivers"),
    ("Secure Boot off", lambda h: h.secure_boot(False), "sriov.secure_boot"),
    ("Secure Boot on, the SR-IOV i915 runs", lambda h: h.secure_boot(), "sriov.secure_boot"),
    ("Secure Boot on, signed and enrolled", lambda h: (
        _key_not_enrolled(h), write(h.tmp / MOK_LIST, b"\xa1\x59\xc0\xa5" + CERT)),
     "sriov.secure_boot"),
    ("options in modprobe.d instead of the command line", lambda h: (
        _no_driver(h), h.cmdline(CMDLINE.replace(" i915.max_vfs=7", "")),
        write(h.root / "etc/modprobe.d/i915.conf", "options i915 enable_guc=3 max_vfs=7\n")),
     "sriov.max_vfs"),
]


@pytest.mark.parametrize("change, check_id", [pytest.param(*p[1:], id=p[0]) for p in PASSES])
def test_sriov_variants_that_still_pass(host: Host, change: Callable[[Host], None],
                                        check_id: str) -> None:
    change(host)
    assert host.checks()[check_id].severity == "pass", host.checks()[check_id]


XE_FAILURES: list[tuple[str, Callable[[Host], None], str, str, str]] = [
    ("xe without PF support", lambda h: (h.sys / "module/xe/parameters/max_vfs").unlink(),
     "sriov.driver", "fail", "Linux 6.18"),
    ("xe.max_vfs=0", lambda h: write(h.sys / "module/xe/parameters/max_vfs", "0\n"),
     "sriov.max_vfs", "fail", "xe.max_vfs=7"),
    ("xe not bound, no force_probe", lambda h: (
        h.bind(None), h.cmdline(XE_CMDLINE.replace("xe.force_probe=9a49 ", ""))),
     "sriov.force_probe", "fail", "xe.force_probe=9a49 i915.force_probe=!9a49"),
    ("xe blacklisted", lambda h: (h.bind(None), h.cmdline(XE_CMDLINE + " modprobe.blacklist=xe")),
     "sriov.blacklist", "fail", "modprobe.blacklist=xe"),
]


@pytest.mark.parametrize("break_it, check_id, severity, word", cases(XE_FAILURES))
def test_each_xe_check_fails(xe_host: Host, break_it: Callable[[Host], None], check_id: str,
                             severity: str, word: str) -> None:
    break_it(xe_host)
    expect_finding(xe_host.checks(), check_id, severity, word)


def test_xe_default_max_vfs_is_unlimited(xe_host: Host) -> None:
    write(xe_host.sys / "module/xe/parameters/max_vfs", f"{doctor_sriov.XE_UNLIMITED}\n")
    check = xe_host.checks()["sriov.max_vfs"]
    assert check.severity == "pass" and "max_vfs=unlimited" in check.message


def test_xe_unbound_with_force_probe_set(xe_host: Host) -> None:
    xe_host.bind(None)
    checks = xe_host.checks()
    assert checks["sriov.force_probe"].severity == "pass"
    assert checks["sriov.driver"].severity == "fail"
    assert "sriov.dkms" not in checks and "sriov.guc" not in checks


def test_signature_inside_a_compressed_module(tmp_path: Path) -> None:
    signed, unsigned = tmp_path / "i915.ko.xz", tmp_path / "other.ko.xz"
    signed.write_bytes(lzma.compress(ELF * 1000 + doctor_sriov.SIGNATURE))
    unsigned.write_bytes(lzma.compress(ELF * 1000))
    assert doctor_sriov.module_signed(signed) is True
    assert doctor_sriov.module_signed(unsigned) is False
    (tmp_path / "i915.ko.zst").write_bytes(b"(\xb5/\xfd")
    assert doctor_sriov.module_signed(tmp_path / "i915.ko.zst") is None


def test_pem_certificate_is_compared_as_der(host: Host) -> None:
    import base64

    _key_not_enrolled(host)
    write(host.tmp / MOK_LIST, b"\xa1\x59\xc0\xa5" + CERT)
    write(host.root / "var/lib/dkms/mok.pub", b"-----BEGIN CERTIFICATE-----\n"
          + base64.encodebytes(CERT) + b"-----END CERTIFICATE-----\n")
    assert host.checks()["sriov.secure_boot"].severity == "pass"


def test_framework_conf_names_the_certificate(host: Host) -> None:
    _key_not_enrolled(host)
    write(host.root / "etc/dkms/framework.conf", 'mok_certificate="/root/mok/signing.der"\n')
    write(host.root / "root/mok/signing.der", CERT)
    check = host.checks()["sriov.secure_boot"]
    assert check.severity == "fail" and "root/mok/signing.der" in check.fix


def test_a_root_only_file_is_named_not_quoted(host: Host) -> None:
    """Any local user may ask for the findings: they show no line they could not read."""
    _tmpfiles(host)
    (host.root / "etc/tmpfiles.d/gpu.conf").chmod(0o600)
    write(host.root / "etc/modprobe.d/private.conf", "blacklist i915\n")
    (host.root / "etc/modprobe.d/private.conf").chmod(0o640)
    checks = host.checks()
    assert checks["sriov.tmpfiles"].severity == "fail"
    assert "gpu.conf:1 (a file only root may read)" in checks["sriov.tmpfiles"].message
    assert "sriov_numvfs" not in checks["sriov.tmpfiles"].message
    assert checks["sriov.blacklist"].severity == "fail"
    assert "private.conf:1 (a file only root may read)" in checks["sriov.blacklist"].message
    assert "`blacklist i915`" not in checks["sriov.blacklist"].message


def test_setup_writes_no_gvt_command_line_on_an_sriov_host(host: Host) -> None:
    """`gvt-client setup` knows GVT-g's parameters only: it refuses here, before reading
    anything else or writing."""
    import io

    from gvtd import bootcfg
    from gvtd.client import setup

    before = sorted(host.tmp.rglob("*"))
    with pytest.raises(setup.SetupError, match=r"SR-IOV GPU .*i915.enable_guc=0.*sriov\.\*"):
        setup.setup(bootcfg.Root(host.tmp), dry_run=False, out=io.StringIO())
    assert sorted(host.tmp.rglob("*")) == before
