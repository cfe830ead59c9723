"""The emulated machine around the emulated kernel: what `gvt-client doctor` reads.

The kernel model (:mod:`gvtd.sim.kernel`) covers the mdev ABI and the PCI SR-IOV core under
``/sys/devices`` and ``/sys/bus/pci``, and
the CPU topology `gvt-client tune` pins to (``/sys/devices/system/cpu``, in the same FUSE
tree); the rest of the host a doctor looks at (kernel command line and version, loaded
modules, i915 parameters, IOMMU groups, the GPU's render node, mdevctl's definitions) is
plain files: ``/sys/module``, ``/sys/kernel/iommu_groups`` and ``/sys/class/drm`` inside
the testbed (the preload shows them as ``/sys``), and a proc tree (with the boot id), an
mdevctl directory and a file-system root (for /etc and /lib/modules) in the simulation's
work directory, named in the gvtd.toml it writes
(umockdev does not redirect ``/proc``); beside them the machine's id, which gvtd derives
UUIDs from (the supervisor names it on gvtd's command line), and the kernel log: an
emulated /dev/kmsg (gvtd.sim.kmsg) that the daemon follows as it follows the real one. Each
simulation profile may change some of these facts.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
import uuid as uuidlib
from typing import TYPE_CHECKING

from .kmsg import LOG_ERR, LOG_INFO, KmsgOps

if TYPE_CHECKING:
    from .host import EmulatedHost

PROC_DIR = "proc"
KMSG_DIR = "kmsg"  # the emulated /dev/kmsg is KMSG_DIR/kmsg (gvtd.sim.kmsg, FUSE)
BOOT_ID = "sys/kernel/random/boot_id"  # under PROC_DIR: a new one at each Reboot
MDEVCTL_DIR = "mdevctl.d"
HOST_ROOT = "root"  # the file-system root doctor reads other tools' files under (/etc, ...)
MACHINE_ID_FILE = "machine-id"
# The emulated laptop's /etc/machine-id, the same in every simulation: the UUIDs gvtd derives
# for definitions written without one stay the same across its restarts, reboots and runs,
# and never depend on (or disclose) the machine the simulation runs on.
MACHINE_ID = "5c0ffee0d15ea5e5b0a710ad1e6a7e55"

GOOD_CMDLINE = ("BOOT_IMAGE=/boot/vmlinuz-6.1.0-18-amd64 root=UUID=5b0a3c6e-2d4f-4c1e-9a37-"
                "0f3c1d2e4b5a ro quiet i915.enable_gvt=1 kvm.ignore_msrs=1 intel_iommu=on "
                "i915.enable_guc=0")


@dataclass(frozen=True)
class HostFacts:
    """Everything outside the mdev ABI that a profile may get wrong."""

    cmdline: str = GOOD_CMDLINE
    osrelease: str = "6.1.0-18-amd64"
    modules: tuple[str, ...] = ("i915", "kvm", "kvm_intel", "kvmgt", "mdev", "vfio",
                                "vfio_iommu_type1", "vfio_pci")
    enable_gvt: str | None = "Y"  # None: this i915 has no enable_gvt (built without GVT-g)
    enable_guc: str = "0"
    # More module parameters, /sys/module/<module>/parameters/<name>: (module, name, value)
    params: tuple[tuple[str, str, str], ...] = ()
    iommu_groups: int = 14
    render_node: bool = True
    # Each core's SMT siblings, numbered as on a Kaby Lake laptop (i7-8550U: 4 cores,
    # 8 threads): the kernel lists every core's first thread, then the second ones.
    cpu_cores: tuple[tuple[int, ...], ...] = ((0, 4), (1, 5), (2, 6), (3, 7))
    # /proc/cpuinfo's identity of that CPU: Kaby Lake-R, which Windows 11 accepts
    cpu: tuple[str, int, int] = ("Intel(R) Core(TM) i7-8550U CPU @ 1.80GHz", 142, 10)
    kernel_log: tuple[str, ...] = field(default_factory=lambda: (
        "DMAR: IOMMU enabled",
        "i915 0000:00:02.0: [drm] Initialized i915 1.6.0 20201103 for 0000:00:02.0 on minor 0",
        "kvm [1820]: vcpu0, guest rIP: 0xfffff8034d5f2a11 ignored rdmsr: 0x1c9 data 0x0",
    ))


_DEFAULT = HostFacts()

# An Alder Lake laptop (i7-1260P: 4 P-cores with two threads, 8 E-cores with one) on Debian
# 13 with the i915 SR-IOV module (strongtz/i915-sriov-dkms) as its README sets it up.
SRIOV_CMDLINE = ("BOOT_IMAGE=/boot/vmlinuz-6.12.57+deb13-amd64 root=UUID=5b0a3c6e-2d4f-4c1e-"
                 "9a37-0f3c1d2e4b5a ro quiet intel_iommu=on iommu=pt i915.enable_guc=3 "
                 "i915.max_vfs=7")
SRIOV_MODULES = ("i915", "kvm", "kvm_intel", "vfio", "vfio_iommu_type1", "vfio_pci",
                 "vfio_pci_core")
_ADL_GPU = "i915 0000:00:02.0"
_ALDERLAKE = replace(
    _DEFAULT, cmdline=SRIOV_CMDLINE, osrelease="6.12.57+deb13-amd64", modules=SRIOV_MODULES,
    enable_gvt=None, enable_guc="3", params=(("i915", "max_vfs", "7"),),
    cpu_cores=((0, 1), (2, 3), (4, 5), (6, 7), (8,), (9,), (10,), (11,), (12,), (13,), (14,),
               (15,)),
    cpu=("12th Gen Intel(R) Core(TM) i7-1260P", 154, 3),
    kernel_log=(
        "DMAR: IOMMU enabled",
        "pci 0000:00:02.0: Adding to iommu group 0",
        f"{_ADL_GPU}: [drm] Running in SR-IOV PF mode",
        f"{_ADL_GPU}: [drm] GuC firmware i915/adlp_guc_70.bin version 70.36.0",
        f"{_ADL_GPU}: [drm] HuC firmware i915/tgl_huc.bin version 7.9.3",
        f"{_ADL_GPU}: [drm] GuC submission enabled",
        f"{_ADL_GPU}: [drm] GuC SLPC enabled",
        f"{_ADL_GPU}: 7 VFs could be associated with this PF",
        f"{_ADL_GPU}: [drm] Initialized i915 1.6.0 20230929 for 0000:00:02.0 on minor 0",
    ))

FACTS: dict[str, HostFacts] = {
    "no-iommu": replace(_DEFAULT, cmdline=GOOD_CMDLINE.replace(" intel_iommu=on", ""),
                        iommu_groups=0, kernel_log=_DEFAULT.kernel_log[1:]),
    # An enable_guc=3 after the guide's enable_guc=0 wins: GVT-g refuses to load, so kvmgt
    # never registers the GPU.
    "guc-enabled": replace(
        _DEFAULT, cmdline=GOOD_CMDLINE + " i915.enable_guc=3", enable_guc="3",
        kernel_log=_DEFAULT.kernel_log[:2] + (
            "i915 0000:00:02.0: [drm] *ERROR* i915 GVT-g loading failed due to Graphics "
            "virtualization is not yet supported with GuC submission",)),
    "unregistered": replace(_DEFAULT, modules=tuple(m for m in _DEFAULT.modules
                                                    if m != "kvmgt")),
    # The 7th generation (i7-7500U: 2 cores, 4 threads), whose CPU Windows 11 refuses.
    "kabylake-7th": replace(_DEFAULT, cpu_cores=((0, 2), (1, 3)),
                            cpu=("Intel(R) Core(TM) i7-7500U CPU @ 2.70GHz", 142, 9)),
    "icelake": replace(
        _DEFAULT, kernel_log=_DEFAULT.kernel_log + (
            "i915 0000:00:02.0: [drm] Unsupported device. GVT-g is disabled",)),
    "alderlake-sriov": _ALDERLAKE,
    # The same laptop on the stock i915, the README's command line kept: the module has
    # no max_vfs (the kernel says so) and no SR-IOV; it has GVT-g's parameter, unused.
    "alderlake-stock": replace(
        _ALDERLAKE, enable_gvt="N", params=(),
        kernel_log=("DMAR: IOMMU enabled", "i915: unknown parameter 'max_vfs' ignored",
                    "pci 0000:00:02.0: Adding to iommu group 0",
                    f"{_ADL_GPU}: [drm] GuC firmware i915/adlp_guc_70.bin version 70.36.0",
                    f"{_ADL_GPU}: [drm] GuC submission enabled",
                    f"{_ADL_GPU}: [drm] Initialized i915 1.6.0 20230929 for 0000:00:02.0 on "
                    "minor 0")),
    # The i915 SR-IOV module without i915.max_vfs on the command line: max_vfs is 0, the
    # module stays a plain (native) GPU driver and sets the VF limit to 0.
    "alderlake-maxvfs0": replace(
        _ALDERLAKE, cmdline=SRIOV_CMDLINE.replace(" i915.max_vfs=7", ""),
        params=(("i915", "max_vfs", "0"),),
        kernel_log=tuple(line.replace("7 VFs could be associated with this PF",
                                      "all VFs disabled")
                         for line in _ALDERLAKE.kernel_log if "SR-IOV PF mode" not in line)),
    # A Tiger Lake laptop (i7-1165G7) on xe, which drives Tiger Lake only when forced (and
    # i915 told to leave it), as a PF with xe.max_vfs.
    "tigerlake-xe": replace(
        _ALDERLAKE,
        cmdline=("BOOT_IMAGE=/boot/vmlinuz-6.18.1-amd64 root=UUID=5b0a3c6e-2d4f-4c1e-9a37-"
                 "0f3c1d2e4b5a ro quiet intel_iommu=on i915.force_probe=!9a49 "
                 "xe.force_probe=9a49 xe.max_vfs=7"),
        osrelease="6.18.1-amd64", modules=("xe",) + SRIOV_MODULES[1:], enable_gvt=None,
        params=(("xe", "max_vfs", "7"), ("xe", "force_probe", "9a49")),
        cpu_cores=((0, 4), (1, 5), (2, 6), (3, 7)),
        cpu=("11th Gen Intel(R) Core(TM) i7-1165G7 @ 2.80GHz", 140, 1),
        kernel_log=(
            "DMAR: IOMMU enabled",
            "pci 0000:00:02.0: Adding to iommu group 0",
            "xe 0000:00:02.0: [drm] Running in SR-IOV PF mode",
            "xe 0000:00:02.0: [drm] Found TIGERLAKE (device ID 9a49) integrated display "
            "version 12.00 stepping C0",
            "xe 0000:00:02.0: [drm] Using GuC firmware from i915/tgl_guc_70.bin version "
            "70.36.0",
            "xe 0000:00:02.0: [drm] Initialized xe 1.1.0 for 0000:00:02.0 on minor 0",
        )),
}


def facts_for(profile: str) -> HostFacts:
    """The profile's host facts; profiles that only change the GPU get the working host."""
    return FACTS.get(profile, _DEFAULT)


def cpuinfo(facts: HostFacts) -> str:
    """/proc/cpuinfo's lines that gvtd reads, for every thread."""
    name, model, stepping = facts.cpu
    threads = sorted(t for core in facts.cpu_cores for t in core)
    return "".join(f"processor\t: {t}\nvendor_id\t: GenuineIntel\ncpu family\t: 6\n"
                   f"model\t\t: {model}\nmodel name\t: {name}\nstepping\t: {stepping}\n\n"
                   for t in threads)


def settings_toml(workdir: Path) -> str:
    """The gvtd.toml lines that point the doctor's inputs at this machine's files."""
    return (f'procfs_root = "{workdir / PROC_DIR}"\n'
            f'kernel_log = "{workdir / KMSG_DIR / "kmsg"}"\n'
            f'mdevctl_dir = "{workdir / MDEVCTL_DIR}"\n'
            f'host_root = "{workdir / HOST_ROOT}"\n')


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def new_boot(kmsg: KmsgOps, workdir: Path, lines: tuple[str, ...] = ()) -> None:
    """A boot: a new boot id, and a kernel log that starts afresh with lines."""
    _write(workdir / PROC_DIR / BOOT_ID, str(uuidlib.uuid4()) + "\n")
    kmsg.reset()
    for line in lines:
        kmsg.emit(line, level=LOG_INFO if "*ERROR*" not in line else LOG_ERR)


def install(facts: HostFacts, host: EmulatedHost, workdir: Path, kmsg: KmsgOps) -> None:
    """Write the facts into a started host's testbed and into workdir."""
    tb = host.tb
    root = Path(tb.real("/sys"))
    for module in facts.modules:
        tb.mkdir(f"/sys/module/{module}")
    params = root / "module" / "i915" / "parameters"
    if "i915" in facts.modules:
        if facts.enable_gvt is not None:
            _write(params / "enable_gvt", facts.enable_gvt + "\n")
        _write(params / "enable_guc", facts.enable_guc + "\n")
    for module, name, value in facts.params:
        _write(root / "module" / module / "parameters" / name, value + "\n")
    tb.mkdir("/sys/kernel/iommu_groups")
    kernel = host.kernel
    gpus = [(p.name, p.devpath) for p in kernel.parents.values() if p.kind == "gvt"]
    gpus += [(d.name, d.devpath) for d in kernel.pci.values()
             if d.sriov is not None and d.pci_class >> 16 == 0x03]
    for group in range(facts.iommu_groups):
        tb.mkdir(f"/sys/kernel/iommu_groups/{group}/devices")
    with host.model():  # VFs get their groups after the machine's own
        kernel.iommu_first = facts.iommu_groups
        for d in kernel.pci.values():
            if not facts.iommu_groups and d.iommu_group is not None:
                tb.unlink(f"/sys/kernel/iommu_groups/{d.iommu_group}/devices/{d.name}")
                d.iommu_group = None
    if facts.iommu_groups and gpus:
        tb.link(f"/sys/kernel/iommu_groups/0/devices/{gpus[0][0]}", "/sys" + gpus[0][1])
    if facts.render_node:
        for minor, (_, devpath) in enumerate(gpus):
            for node, number in ((f"card{minor}", minor), (f"renderD{128 + minor}", 128 + minor)):
                tb.mkdir(f"/sys/class/drm/{node}")
                _write(root / "class" / "drm" / node / "dev", f"226:{number}\n")
                tb.link(f"/sys/class/drm/{node}/device", "/sys" + devpath)
    host.kernel.cpu_cores = facts.cpu_cores  # /sys/devices is the kernel's (FUSE)
    proc = workdir / PROC_DIR
    _write(proc / "cmdline", facts.cmdline + "\n")
    _write(proc / "cpuinfo", cpuinfo(facts))
    _write(proc / "sys" / "kernel" / "osrelease", facts.osrelease + "\n")
    new_boot(kmsg, workdir, facts.kernel_log)
    (workdir / MDEVCTL_DIR).mkdir(exist_ok=True)
    (workdir / HOST_ROOT).mkdir(exist_ok=True)
    _write(workdir / MACHINE_ID_FILE, MACHINE_ID + "\n")
