"""Every doctor check over temporary trees: one working host, then one change per failure."""

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from gvtd import doctor
from gvtd.config import Settings
from gvtd.doctor import HostRoots

GPU = "0000:00:02.0"
UUID = "fff6f017-3417-4ad3-b05e-17ae3e1a4615"
GOOD_CMDLINE = ("BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro quiet i915.enable_gvt=1 "
                "kvm.ignore_msrs=1 intel_iommu=on i915.enable_guc=0")
TYPES = {"i915-GVTg_V5_8": 2, "i915-GVTg_V5_4": 1}


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


class Host:
    """A working GVT-g host as files: a Kaby Lake GPU with kvmgt loaded and every setting
    the guide asks for. Tests break one thing at a time."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.sys = tmp / "sys"
        self.proc = tmp / "proc"
        self.log = tmp / "kmsg.log"
        self.mdevctl = tmp / "mdevctl.d"
        self.dev = self.sys / "devices" / "pci0000:00" / GPU
        for name, text in (("vendor", "0x8086\n"), ("device", "0x5917\n"),
                           ("class", "0x030000\n")):
            write(self.dev / name, text)
        for type_id, n in TYPES.items():
            write(self.dev / "mdev_supported_types" / type_id / "available_instances", f"{n}\n")
            (self.dev / "mdev_supported_types" / type_id / "devices").mkdir()
        (self.dev / "drm" / "renderD128").mkdir(parents=True)
        (self.sys / "bus" / "pci" / "devices").mkdir(parents=True)
        os.symlink(f"../../../devices/pci0000:00/{GPU}", self.sys / "bus/pci/devices" / GPU)
        for module in ("i915", "kvm", "kvmgt", "mdev", "vfio", "vfio_iommu_type1"):
            (self.sys / "module" / module).mkdir(parents=True)
        write(self.sys / "module/i915/parameters/enable_gvt", "Y\n")
        write(self.sys / "module/i915/parameters/enable_guc", "0\n")
        (self.sys / "kernel" / "iommu_groups" / "0" / "devices").mkdir(parents=True)
        write(self.proc / "cmdline", GOOD_CMDLINE + "\n")
        write(self.proc / "sys/kernel/osrelease", "6.1.0-18-amd64\n")
        write(self.log, "DMAR: IOMMU enabled\ni915 0000:00:02.0: [drm] Initialized i915\n")
        self.mdevctl.mkdir()

    @property
    def roots(self) -> HostRoots:
        return HostRoots(sysfs=self.sys, procfs=self.proc, kernel_log=self.log,
                         mdevctl=self.mdevctl)

    def checks(self, uuids: tuple[str, ...] = (UUID,)) -> dict[str, doctor.Check]:
        found = doctor.diagnose(self.roots, uuids)
        ids = [c.id for c in found]
        assert len(ids) == len(set(ids)), ids
        return {c.id: c for c in found}

    def cmdline(self, text: str) -> None:
        write(self.proc / "cmdline", text + "\n")

    def log_lines(self, *lines: str) -> None:
        with open(self.log, "a") as f:
            f.write("".join(line + "\n" for line in lines))

    def rmtree(self, rel: str) -> None:
        import shutil

        shutil.rmtree(self.tmp / rel)


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return Host(tmp_path)


PASSING = ["platform", "cmdline.intel_iommu", "cmdline.enable_gvt", "cmdline.ignore_msrs",
           "cmdline.guc", "i915.enable_gvt", "i915.enable_guc", "module.kvmgt", "module.mdev",
           "module.vfio_iommu_type1", "iommu", "mdev_types", "capacity", "kernel",
           "render_node", "log", "mdevctl"]


def test_working_host_passes_every_check(host: Host) -> None:
    checks = host.checks()
    assert list(checks) == PASSING
    assert {c.id: c.severity for c in checks.values()} == {i: "pass" for i in PASSING}
    assert "Kaby Lake" in checks["platform"].message
    assert "renderD128" in checks["render_node"].message


def _set_device(device: int) -> Callable[[Host], None]:
    return lambda h: write(h.dev / "device", f"0x{device:04x}\n")


def _full(h: Host) -> None:
    for type_id in TYPES:
        write(h.dev / "mdev_supported_types" / type_id / "available_instances", "0\n")


def _mdevctl_auto(h: Host) -> None:
    write(h.mdevctl / GPU / UUID, json.dumps({"mdev_type": "i915-GVTg_V5_4", "start": "auto"}))


def _mdev_groups_only(h: Host) -> None:
    """IOMMU off, two vGPUs: the mdev core's emulated groups, one mdev in each."""
    h.rmtree("sys/kernel/iommu_groups/0")
    for group, uuid in enumerate((UUID, UUID.replace("0", "1"))):
        devices = h.sys / "kernel" / "iommu_groups" / str(group) / "devices"
        devices.mkdir(parents=True)
        os.symlink(f"../../../../devices/virtual/mtty/mtty/{uuid}", devices / uuid)


def _gvt_errors(h: Host) -> None:
    """GVT-g's errors since boot: vgpu 1 is the mdev UUID now (its intel_vgpu/vgpu_id)."""
    write(h.sys / "bus/mdev/devices" / UUID / "intel_vgpu/vgpu_id", "1\n")
    h.log_lines("gvt: guest page write error, gpa 1f2e3000",
                "gvt: guest page write error, gpa 1f2e4000",
                "Detected your guest driver doesn't support GVT-g.",
                "Now vgpu 1 will enter failsafe mode.",
                "gvt: vgpu 2: fail to emulate MMIO read 00064320")


def _storm(h: Host) -> None:
    h.log_lines(*[f"gvt: vgpu 1: invalid untracked MMIO 0x{r:x} len 4" for r in range(30)])


# (what breaks, check id, expected severity, a word the message or fix must contain)
FAILURES: list[tuple[str, Callable[[Host], None], str, str, str]] = [
    ("no Intel GPU", lambda h: write(h.dev / "vendor", "0x10de\n"), "platform", "fail",
     "No Intel GPU"),
    ("Ice Lake", _set_device(0x8A52), "platform", "fail", "virtio-gpu"),
    # a generation with SR-IOV, whose kernel shows no capability: the SR-IOV checks run
    ("Tiger Lake", _set_device(0x9A49), "platform", "fail", "sriov_totalvfs"),
    ("unknown Intel GPU", _set_device(0xFF00), "platform", "warn", "Unknown"),
    ("no intel_iommu", lambda h: h.cmdline(GOOD_CMDLINE.replace(" intel_iommu=on", "")),
     "cmdline.intel_iommu", "fail", "intel_iommu=on"),
    ("intel_iommu=off", lambda h: h.cmdline(GOOD_CMDLINE.replace("intel_iommu=on",
                                                                 "intel_iommu=off")),
     "cmdline.intel_iommu", "fail", "intel_iommu=off"),
    ("no enable_gvt", lambda h: h.cmdline(GOOD_CMDLINE.replace(" i915.enable_gvt=1", "")),
     "cmdline.enable_gvt", "fail", "i915.enable_gvt=1"),
    ("no ignore_msrs", lambda h: h.cmdline(GOOD_CMDLINE.replace(" kvm.ignore_msrs=1", "")),
     "cmdline.ignore_msrs", "warn", "kvm.ignore_msrs=1"),
    ("no enable_guc=0", lambda h: h.cmdline(GOOD_CMDLINE.replace(" i915.enable_guc=0", "")),
     "cmdline.guc", "warn", "i915.enable_guc=0"),
    ("GuC re-enabled later", lambda h: h.cmdline(GOOD_CMDLINE + " i915.enable_guc=3"),
     "cmdline.guc", "fail", "i915.enable_guc=3"),
    ("old GuC submission switch", lambda h: h.cmdline(GOOD_CMDLINE
                                                      + " i915.enable_guc_submission=1"),
     "cmdline.guc", "fail", "enable_guc_submission=1"),
    ("unreadable cmdline", lambda h: (h.proc / "cmdline").unlink(), "cmdline", "warn",
     "/proc/cmdline"),
    ("i915 not loaded", lambda h: h.rmtree("sys/module/i915"), "i915.loaded", "fail",
     "modprobe i915"),
    ("enable_gvt=N at run time", lambda h: write(h.sys / "module/i915/parameters/enable_gvt",
                                                 "N\n"), "i915.enable_gvt", "fail", "=N"),
    ("i915 without GVT-g", lambda h: (h.sys / "module/i915/parameters/enable_gvt").unlink(),
     "i915.enable_gvt", "fail", "CONFIG_DRM_I915_GVT"),
    ("enable_guc=3 at run time", lambda h: write(h.sys / "module/i915/parameters/enable_guc",
                                                 "3\n"), "i915.enable_guc", "fail", "=3"),
    ("enable_guc=-1 at run time", lambda h: write(h.sys / "module/i915/parameters/enable_guc",
                                                  "-1\n"), "i915.enable_guc", "warn", "=-1"),
    ("enable_guc=1 on the command line", lambda h: h.cmdline(GOOD_CMDLINE.replace(
        "i915.enable_guc=0", "i915.enable_guc=1")), "cmdline.guc", "fail", "enable_guc=1"),
    ("enable_guc=-1 on the command line", lambda h: h.cmdline(GOOD_CMDLINE.replace(
        "i915.enable_guc=0", "i915.enable_guc=-1")), "cmdline.guc", "fail", "enable_guc=-1"),
    ("kvmgt not loaded", lambda h: h.rmtree("sys/module/kvmgt"), "module.kvmgt", "fail",
     "modprobe kvmgt"),
    ("mdev not loaded", lambda h: h.rmtree("sys/module/mdev"), "module.mdev", "fail",
     "vfio_mdev"),
    ("vfio_iommu_type1 not loaded", lambda h: h.rmtree("sys/module/vfio_iommu_type1"),
     "module.vfio_iommu_type1", "fail", "modprobe vfio_iommu_type1"),
    ("no IOMMU groups", lambda h: h.rmtree("sys/kernel/iommu_groups/0"), "iommu", "fail",
     "VT-d"),
    ("only the groups of mdevs", _mdev_groups_only, "iommu", "fail", "VT-d"),
    ("no mdev_supported_types", lambda h: h.rmtree(
        "sys/devices/pci0000:00/0000:00:02.0/mdev_supported_types"), "mdev_types", "fail",
     "GVT-g is not working"),
    ("no room and no vGPU", _full, "capacity", "fail", "DVMT"),
    ("kernel 4.19", lambda h: write(h.proc / "sys/kernel/osrelease", "4.19.0-21-amd64\n"),
     "kernel", "fail", "5.3"),
    ("unknown kernel version", lambda h: (h.proc / "sys/kernel/osrelease").unlink(), "kernel",
     "warn", "osrelease"),
    ("no render node", lambda h: h.rmtree("sys/devices/pci0000:00/0000:00:02.0/drm"),
     "render_node", "warn", "SPICE"),
    ("unsupported device in the log", lambda h: h.log_lines(
        "i915 0000:00:02.0: [drm] Unsupported device. GVT-g is disabled"), "log.unsupported",
     "fail", "Broadwell to Comet Lake"),
    ("GuC refusal in the log", lambda h: h.log_lines(
        "i915 0000:00:02.0: [drm] *ERROR* i915 GVT-g loading failed due to Graphics "
        "virtualization is not yet supported with GuC submission"), "log.guc", "fail",
     "enable_guc=0"),
    ("unhandled MSRs in the log", lambda h: h.log_lines(
        "kvm [1820]: vcpu0, guest rIP: 0xfffff8034d5f2a11 unhandled rdmsr: 0x1c9"), "log.msrs",
     "warn", "ignore_msrs"),
    ("GVT-g errors since boot", _gvt_errors, "log.gvt", "fail",
     f"vgpu 1 (mdev {UUID}): 1 x failsafe.guest-driver; vgpu 2 (no mdev has it now): "
     "1 x unknown"),
    ("invalid-access storm in the log", _storm, "log.access", "warn", "30"),
    ("unreadable kernel log", lambda h: h.log.unlink(), "log", "warn", "Cannot read"),
    ("mdevctl auto-starts a gvtd vGPU", _mdevctl_auto, "mdevctl", "fail", "mdevctl undefine"),
]


def expect_finding(checks: dict[str, doctor.Check], check_id: str, severity: str,
                   word: str) -> None:
    """The finding has the severity, word in its message or fix, and a fix unless it passes."""
    assert checks[check_id].severity == severity, checks[check_id]
    assert word in checks[check_id].message + checks[check_id].fix, checks[check_id]
    if severity != "pass":
        assert checks[check_id].fix, "a failure always says what to do"


@pytest.mark.parametrize("break_it, check_id, severity, word",
                         [f[1:] for f in FAILURES], ids=[f[0] for f in FAILURES])
def test_each_check_fails_when_its_input_is_wrong(host: Host, break_it: Callable[[Host], None],
                                                  check_id: str, severity: str,
                                                  word: str) -> None:
    break_it(host)
    expect_finding(host.checks(), check_id, severity, word)


def test_a_gpu_without_vgpus_gets_what_to_do_not_gvt_steps(host: Host) -> None:
    """Ice Lake has neither GVT-g nor SR-IOV: the GVT-g steps would lead nowhere."""
    _set_device(0x8A52)(host)
    checks = host.checks()
    assert list(checks) == ["platform", "log", "mdevctl"]
    assert "neither GVT-g" in checks["platform"].message
    assert "virtio-gpu" in checks["platform"].fix and "SR-IOV" in checks["platform"].fix


def test_every_check_has_a_failing_case() -> None:
    """Each check a working host passes is also shown failing (or warning) above."""
    broken = {f[2] for f in FAILURES}
    assert set(PASSING) - {"log"} <= broken
    assert "log" in broken


# Inputs that look different from the working host's but are fine.
PASSES: list[tuple[str, Callable[[Host], None], str]] = [
    ("vfio_mdev instead of mdev (kernels before 5.16)",
     lambda h: (h.rmtree("sys/module/mdev"), (h.sys / "module/vfio_mdev").mkdir()), "module.mdev"),
    ("intel_iommu=on,igfx_off", lambda h: h.cmdline(GOOD_CMDLINE.replace(
        "intel_iommu=on", "intel_iommu=on,igfx_off")), "cmdline.intel_iommu"),
    ("module options spelled with dashes", lambda h: h.cmdline(GOOD_CMDLINE.replace(
        "i915.enable_gvt=1", "i915.enable-gvt=1")), "cmdline.enable_gvt"),
    ("GuC turned on, then off again", lambda h: h.cmdline(GOOD_CMDLINE.replace(
        "i915.enable_guc=0", "i915.enable_guc=3 i915.enable_guc=0")), "cmdline.guc"),
    ("an i915 without enable_guc", lambda h: (h.sys / "module/i915/parameters/enable_guc")
     .unlink(), "i915.enable_guc"),
    # enable_guc is a bit mask; only bit 0 (GuC submission) breaks GVT-g: 2 loads HuC only
    ("enable_guc=2 at run time (HuC only)", lambda h: write(
        h.sys / "module/i915/parameters/enable_guc", "2\n"), "i915.enable_guc"),
    ("enable_guc=2 on the command line (HuC only)", lambda h: h.cmdline(GOOD_CMDLINE.replace(
        "i915.enable_guc=0", "i915.enable_guc=2")), "cmdline.guc"),
    ("render node found through /sys/class/drm", lambda h: (
        h.rmtree("sys/devices/pci0000:00/0000:00:02.0/drm"),
        (h.sys / "class/drm/renderD129").mkdir(parents=True),
        os.symlink(f"../../../devices/pci0000:00/{GPU}", h.sys / "class/drm/renderD129/device")),
     "render_node"),
    ("full, because vGPUs exist", lambda h: (
        _full(h), (h.dev / "mdev_supported_types/i915-GVTg_V5_4/devices" / UUID).mkdir()),
     "capacity"),
    ("a few invalid accesses at vGPU init", lambda h: h.log_lines(
        *[f"gvt: vgpu 1: invalid untracked MMIO 0x{r:x} len 4" for r in range(5)]), "log"),
    ("KVM ignoring MSRs as told", lambda h: h.log_lines(
        "kvm [1820]: vcpu0, guest rIP: 0xfffff8034d5f2a11 ignored rdmsr: 0x1c9 data 0x0"), "log"),
    ("mdevctl defines the UUID without auto-start", lambda h: write(
        h.mdevctl / GPU / UUID, json.dumps({"mdev_type": "i915-GVTg_V5_4", "start": "manual"})),
     "mdevctl"),
    ("mdevctl auto-starts a UUID gvtd does not manage", lambda h: write(
        h.mdevctl / GPU / "11111111-2222-4333-8444-555555555555",
        json.dumps({"mdev_type": "i915-GVTg_V5_4", "start": "auto"})), "mdevctl"),
]


@pytest.mark.parametrize("change, check_id", [p[1:] for p in PASSES], ids=[p[0] for p in PASSES])
def test_variants_that_still_pass(host: Host, change: Callable[[Host], None],
                                  check_id: str) -> None:
    change(host)
    checks = host.checks()
    assert checks[check_id].severity == "pass", checks[check_id]


def test_log_check_can_be_turned_off(host: Host) -> None:
    host.log.unlink()
    roots = HostRoots(host.sys, host.proc, None, host.mdevctl)
    (log,) = [c for c in doctor.diagnose(roots, [UUID]) if c.id.startswith("log")]
    assert log.severity == "pass" and "turned off" in log.message


def test_roots_come_from_settings() -> None:
    assert HostRoots.from_settings(Settings()) == HostRoots()
    s = Settings(sysfs_root="/t/sys", procfs_root="/t/proc", kernel_log="", mdevctl_dir="/t/m")
    assert HostRoots.from_settings(s) == HostRoots(Path("/t/sys"), Path("/t/proc"), None,
                                                   Path("/t/m"))


def test_large_log_file_is_read_from_its_tail(host: Host) -> None:
    host.log_lines("i915 0000:00:02.0: [drm] Unsupported device. GVT-g is disabled")
    with open(host.log, "a") as f:
        f.write("x" * (doctor.LOG_TAIL_BYTES + 10) + "\n")
    assert "Unsupported" not in doctor.read_kernel_log(host.log)


def test_qemu_user_from_qemu_conf(tmp_path: Path) -> None:
    conf = tmp_path / "qemu.conf"
    conf.write_text('# user = "root"\n#user = "x"\nuser = "nobody"\ngroup = "kvm"\n')
    assert doctor.qemu_user(conf) == "nobody"
    conf.write_text('user = "+0"\n')
    assert doctor.qemu_user(conf) == "root"
    conf.write_text('#user = "nobody"\n')  # commented out: libvirt's build default
    assert doctor.qemu_user(conf) == "libvirt-qemu"  # Debian's, and this host's
    assert doctor.qemu_user(tmp_path / "missing") == "libvirt-qemu"


def test_x_access_names_the_user_and_the_exact_fix() -> None:
    check = doctor.check_x_access(":1", "nobody", ["win10", "win11"])
    assert check.id == "x-access:nobody@:1" and check.severity == "warn"
    assert check.message.startswith("win10, win11 open QEMU's own window (gtk-gl) on X "
                                    "display :1 as user nobody")
    assert "`xhost si:localuser:nobody`" in check.fix and "Never `xhost +`" in check.fix


DOMAIN_XML = ("<domain><name>win10</name><memory unit='GiB'>4</memory>{}"
              "<devices/></domain>")


def test_memlock_hard_limit_below_the_guests_memory(tmp_path: Path) -> None:
    xml = DOMAIN_XML.format("<memtune><hard_limit unit='MiB'>2048</hard_limit></memtune>")
    check = doctor.check_memlock(tmp_path, [("win10", xml)], tmp_path)
    assert check.severity == "fail" and "2048 MiB is below its memory 4096 MiB" in check.message
    assert "hard_limit" in check.fix


def test_memlock_of_a_running_qemu(tmp_path: Path) -> None:
    write(tmp_path / "run" / "win10.pid", "4242\n")
    limits = ("Limit                     Soft Limit           Hard Limit           Units\n"
              "Max locked memory         {0}             {0}             bytes\n")
    write(tmp_path / "4242" / "limits", limits.format(8 * 1024 * 1024))
    check = doctor.check_memlock(tmp_path, [("win10", DOMAIN_XML.format(""))], tmp_path / "run")
    assert check.severity == "fail" and "pid 4242" in check.message
    write(tmp_path / "4242" / "limits", limits.format(5 << 30))
    assert doctor.check_memlock(tmp_path, [("win10", DOMAIN_XML.format(""))],
                                tmp_path / "run").severity == "pass"
    write(tmp_path / "4242" / "limits", limits.format("unlimited"))
    assert doctor.check_memlock(tmp_path, [("win10", DOMAIN_XML.format(""))],
                                tmp_path / "run").severity == "pass"
