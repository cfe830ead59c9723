"""Host checks behind `gvt-client doctor`: why GVT-g (or SR-IOV) does not work here, and the
fix.

The GPU decides which checks run: a GVT-g generation (Broadwell to Comet Lake) gets the
GVT-g checks here, an SR-IOV physical function (Tiger Lake on) those of
:mod:`gvtd.doctor_sriov`, whose advice is in places the opposite (GuC submission), and a
GPU with neither says so and what to use instead. Every input comes through
:class:`HostRoots` (sysfs, procfs, the kernel log, mdevctl's configuration, the file-system
root other tools' files are under), so tests and the simulated host point the same checks
at their own trees.
Each check reads a few small files and returns :class:`Check` results; nothing is written
and nothing raises: an unreadable input is itself a finding.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import xml.etree.ElementTree as ET

from gvtd import gvt, kmsg, names
from gvtd.config import UUID_RE, Settings
from gvtd.mdev import list_dir, parse_int, read_attr, render_nodes

Severity = Literal["pass", "warn", "fail"]

PCI_DISPLAY_CLASS = 0x03
MIN_KERNEL = (5, 3)  # MDEV_STATE uevents on parent (un)registration
LOG_TAIL_BYTES = 1 << 20  # enough for a boot's worth of kernel messages
ACCESS_STORM = 20  # more invalid-access lines than this at vGPU init means trouble

# What the host must boot with (the guide's step 1); doctor checks it and `gvt-client setup`
# applies it. The kernel command line, in the guide's order: (the check, the parameter).
REQUIRED_CMDLINE = (("cmdline.enable_gvt", "i915.enable_gvt=1"),
                    ("cmdline.ignore_msrs", "kvm.ignore_msrs=1"),
                    ("cmdline.intel_iommu", "intel_iommu=on"),
                    ("cmdline.guc", "i915.enable_guc=0"))
GUC_OLD_SWITCHES = ("i915.enable_guc_submission", "i915.enable_guc_loading")


@dataclass(frozen=True)
class Module:
    """A module GVT-g needs loaded: the name to load, the names that count as loaded."""

    check_id: str
    load: str
    names: tuple[str, ...]
    why: str


# mdev is the mediated device core on every kernel; before 5.16 its VFIO half was vfio_mdev.
REQUIRED_MODULES = (
    Module("module.kvmgt", "kvmgt", ("kvmgt",),
           "GVT-g's KVM half: without it the GPU never registers as an mdev parent"),
    Module("module.mdev", "mdev", ("mdev", "vfio_mdev"), "the mediated device core"),
    Module("module.vfio_iommu_type1", "vfio_iommu_type1", ("vfio_iommu_type1",),
           "VFIO's IOMMU backend for VMs"),
)


@dataclass(frozen=True)
class Check:
    """One finding: a stable id, pass/warn/fail, what was seen, and what to do about it."""

    id: str
    severity: Severity
    message: str
    fix: str = ""

    def as_tuple(self) -> tuple[str, str, str, str]:
        return (self.id, self.severity, self.message, self.fix)


@dataclass(frozen=True)
class HostRoots:
    """Where the checks read from; production defaults, redirected by tests and simulation.

    `kernel_log` is a file (or /dev/kmsg, read without blocking); None skips the log check.
    """

    sysfs: Path = Path("/sys")
    procfs: Path = Path("/proc")
    kernel_log: Path | None = Path("/dev/kmsg")
    mdevctl: Path = Path("/etc/mdevctl.d")
    root: Path = Path("/")  # /etc, /run, /usr/lib, /lib/modules, /var/lib/dkms are under it

    @classmethod
    def from_settings(cls, settings: Settings) -> HostRoots:
        """From gvtd.toml: sysfs_root, procfs_root, kernel_log, mdevctl_dir and host_root."""
        return cls(sysfs=Path(settings.sysfs_root), procfs=Path(settings.procfs_root),
                   kernel_log=Path(settings.kernel_log) if settings.kernel_log else None,
                   mdevctl=Path(settings.mdevctl_dir), root=Path(settings.host_root))


@dataclass(frozen=True)
class Gpu:
    """The Intel display device the other checks are about."""

    address: str
    path: Path  # its sysfs directory, resolved
    vendor: int
    device: int


# -- reading ------------------------------------------------------------------------------

def find_gpu(sysfs: Path) -> Gpu | None:
    """The first Intel display-class PCI device (the iGPU is 0000:00:02.0 on every laptop)
    that is not an SR-IOV virtual function of another."""
    pci = sysfs / "bus" / "pci" / "devices"
    for name in list_dir(pci):
        if os.path.lexists(pci / name / "physfn"):
            continue
        vendor = parse_int(read_attr(pci / name / "vendor"), 16)
        cls = parse_int(read_attr(pci / name / "class"), 16)
        if vendor == gvt.INTEL_VENDOR and cls is not None and cls >> 16 == PCI_DISPLAY_CLASS:
            device = parse_int(read_attr(pci / name / "device"), 16) or 0
            return Gpu(name, Path(os.path.realpath(pci / name)), vendor, device)
    return None


def read_kernel_log(path: Path) -> str:
    """The kernel log's text: every record of /dev/kmsg (or the emulated one) without
    waiting for new ones, or the tail of a text file. OSError when it cannot be read
    (e.g. not root)."""
    records = read_kernel_records(path)
    if records is not None:
        return "\n".join(r.text for r in records)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > LOG_TAIL_BYTES:
            f.seek(size - LOG_TAIL_BYTES)
        return f.read().decode(errors="replace")


def read_kernel_records(path: Path) -> list[kmsg.Record] | None:
    """Every record in a /dev/kmsg ring now; None for a text file (whose first read is
    not a record). The ring is the kernel's, so the list is bounded by its size."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    records: list[kmsg.Record] = []
    try:
        chardev = stat.S_ISCHR(os.fstat(fd).st_mode)
        for data in kmsg.records(fd):
            record = kmsg.parse(data)
            if record is None and not (records or chardev):
                return None  # a text file
            if record is not None:
                records.append(record)
    finally:
        os.close(fd)
    return records


_QEMU_USER_RE = re.compile(r'^\s*user\s*=\s*"([^"]*)"', re.MULTILINE)
# What libvirt runs QEMU as when qemu.conf does not say: its build default, libvirt-qemu on
# Debian and Ubuntu, qemu on Fedora and Arch.
BUILD_DEFAULT_USERS = ("libvirt-qemu", "qemu")


def qemu_user(qemu_conf: Path) -> str:
    """The user libvirt's system instance runs QEMU as: qemu.conf's `user` (a name, or
    +UID), else the distribution's build default."""
    try:
        found = _QEMU_USER_RE.findall(qemu_conf.read_text(errors="replace"))
    except OSError:
        found = []
    if found:
        user = found[-1]
        if user.startswith("+") and user[1:].isdigit():
            try:
                return pwd.getpwuid(int(user[1:])).pw_name
            except KeyError:
                return user
        return user
    for user in BUILD_DEFAULT_USERS:
        try:
            return pwd.getpwnam(user).pw_name
        except KeyError:
            continue
    return "root"


def check_x_access(display: str, user: str, domains: list[str]) -> Check:
    """gtk-gl: QEMU opens its window on the desktop's X display as `user`. Whether that X
    server lets the user in only the desktop session can see (gvt-client doctor looks when
    run there); the daemon says what is needed."""
    which = ", ".join(domains)
    return Check(f"{names.CHECK_X_ACCESS}{user}@{display}", "warn",
                 f"{which} open{'s' if len(domains) == 1 else ''} QEMU's own window (gtk-gl) "
                 f"on X display {display} as user {user}: unless that X server lets {user} "
                 "in, QEMU fails to start (\"cannot open display\"). Run `gvt-client doctor` "
                 "in the desktop session to check it.",
                 f"In the desktop session, run `xhost si:localuser:{user}` (after every login: "
                 "put it in the session's autostart). Never `xhost +`: it lets every user and "
                 "every host that reaches the display open windows on it and read what you "
                 "type.")


# -- checks ---------------------------------------------------------------------------------

def check_platform(gpu: Gpu | None) -> Check:
    """GVT-g exists from Broadwell to Comet Lake only; say which one this is. (An SR-IOV GPU
    gets doctor_sriov's platform check instead.)"""
    if gpu is None:
        return Check("platform", "fail", "No Intel GPU found: GVT-g needs an Intel integrated "
                     "GPU (Broadwell to Comet Lake).",
                     "Nothing to fix on this host; GVT-g cannot work here.")
    name, has_gvt = gvt.platform(gpu.vendor, gpu.device)
    model = f"{gpu.vendor:04x}:{gpu.device:04x}"
    if has_gvt:
        return Check("platform", "pass", f"{name} GPU ({model}) at {gpu.address} has GVT-g.")
    if not name:
        return Check("platform", "warn", f"Unknown Intel GPU {model} at {gpu.address}: gvtd "
                     "cannot tell whether it has GVT-g.",
                     "GVT-g exists on Broadwell to Comet Lake; check your CPU's generation.")
    return Check("platform", "fail", f"{name} GPU ({model}) at {gpu.address} has neither "
                 "GVT-g (Broadwell to Comet Lake) nor SR-IOV virtual functions (Tiger Lake, "
                 "Alder Lake and their successors): no Intel vGPU technology splits it, so "
                 "gvtd has nothing to manage here.",
                 "Give the VM a virtio-gpu display with 3D (libvirt: <model type='virtio'> "
                 "with <acceleration accel3d='yes'/> and SPICE with <gl enable='yes'/>), or a "
                 "dedicated GPU of its own (PCI passthrough); a laptop with Tiger Lake or "
                 "newer shares its GPU through SR-IOV, which gvtd manages.")


def cmdline_params(text: str) -> dict[str, str]:
    """Kernel command line to {name: value}; the last occurrence wins, as in the kernel.
    Module parameters match with '-' and '_' alike."""
    out: dict[str, str] = {}
    for word in text.split():
        key, sep, value = word.partition("=")
        if "." in key:
            module, _, param = key.partition(".")
            key = f"{module.replace('-', '_')}.{param.replace('-', '_')}"
        out[key] = value.strip('"') if sep else ""
    return out


def _truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() in ("1", "y", "yes", "on", "true")


# How to change the kernel command line by hand; `gvt-client setup` does it for GVT-g.
EDIT_BY_HAND = ("Add it to GRUB_CMDLINE_LINUX in /etc/default/grub, run update-grub "
                "(grub-mkconfig -o /boot/grub/grub.cfg) and reboot.")
UNREADABLE_CMDLINE = Check("cmdline", "warn", "Cannot read the kernel command line "
                           "(/proc/cmdline).", "Run gvtd with /proc mounted, or check "
                           "procfs_root in gvtd.toml.")


def check_intel_iommu(p: dict[str, str], edit: str) -> Check:
    """VFIO needs the IOMMU, for an mdev and a VF alike."""
    iommu = p.get("intel_iommu")
    if iommu is not None and "on" in iommu.split(","):
        return Check("cmdline.intel_iommu", "pass", "intel_iommu=on is set.")
    seen = f" (it has intel_iommu={iommu})" if iommu is not None else ""
    return Check("cmdline.intel_iommu", "fail", f"The kernel command line lacks intel_iommu=on"
                 f"{seen}: without the IOMMU, VFIO cannot give a VM a device.",
                 f"Set intel_iommu=on. {edit}")


def check_cmdline(text: str | None) -> list[Check]:
    """The kernel command line the guide requires: each parameter is its own finding."""
    if text is None:
        return [UNREADABLE_CMDLINE]
    p = cmdline_params(text)
    edit = "`sudo gvt-client setup` does it through this host's boot tooling. By hand: " \
        + EDIT_BY_HAND
    out = [check_intel_iommu(p, edit)]
    if _truthy(p.get("i915.enable_gvt")):
        out.append(Check("cmdline.enable_gvt", "pass", "i915.enable_gvt=1 is set."))
    else:
        out.append(Check("cmdline.enable_gvt", "fail",
                         "The kernel command line lacks i915.enable_gvt=1: i915 starts without "
                         "GVT-g.", f"Add i915.enable_gvt=1. {edit}"))
    if _truthy(p.get("kvm.ignore_msrs")):
        out.append(Check("cmdline.ignore_msrs", "pass", "kvm.ignore_msrs=1 is set."))
    else:
        out.append(Check("cmdline.ignore_msrs", "warn",
                         "The kernel command line lacks kvm.ignore_msrs=1: Windows guests touch "
                         "MSRs KVM does not emulate and crash.",
                         f"Add kvm.ignore_msrs=1 (or echo 1 > "
                         f"/sys/module/kvm/parameters/ignore_msrs for this boot). {edit}"))
    out.append(_guc_check(p, edit))
    return out


def _guc_enablers(p: dict[str, str]) -> list[str]:
    """The older kernels' GuC switches (enable_guc_submission, enable_guc_loading) set on."""
    return [k for k, v in p.items() if k in GUC_OLD_SWITCHES and v.strip() not in ("0", "")]


def cmdline_additions(text: str) -> list[str]:
    """What to append to a command line so that every check_cmdline finding passes, in the
    guide's order: the kernel (and modprobe, for a module's parameters) takes the last
    occurrence of a parameter, so an appended value overrides an earlier wrong one."""
    failing = {c.id for c in check_cmdline(text) if c.severity != "pass"}
    out = [param for check_id, param in REQUIRED_CMDLINE if check_id in failing]
    return out + [f"{k}=0" for k in _guc_enablers(cmdline_params(text))]


# i915.enable_guc is a bit mask: bit 0 GuC submission, bit 1 HuC loading. Only GuC
# submission stops GVT-g (drivers/gpu/drm/i915/intel_gvt.c refuses to load GVT-g when
# intel_uc_wants_guc_submission), so 2 (HuC firmware for the host's media engine) is fine.
GUC_SUBMISSION = 1


def _guc_submission(value: int | None) -> bool:
    return value is not None and value > 0 and bool(value & GUC_SUBMISSION)


def _guc_check(p: dict[str, str], edit: str) -> Check:
    """GuC submission makes GVT-g fail to load (and crashed i915 on older kernels)."""
    enabling = [f"{k}={p[k]}" for k in _guc_enablers(p)]
    guc = p.get("i915.enable_guc")
    value = parse_int(guc)
    if guc is not None and (_guc_submission(value) or value is None or value < 0):
        enabling.insert(0, f"i915.enable_guc={guc}")
    if enabling:
        return Check("cmdline.guc", "fail",
                     f"The kernel command line re-enables GuC ({', '.join(enabling)}): GVT-g "
                     "does not work with GuC submission and i915 fails or crashes.",
                     f"Remove {', '.join(enabling)} and set i915.enable_guc=0 (or 2, to load "
                     f"only the HuC firmware; the last occurrence wins). {edit}")
    if guc is None:
        return Check("cmdline.guc", "warn",
                     "The kernel command line does not set i915.enable_guc=0: a kernel whose "
                     "default enables GuC submission breaks GVT-g.",
                     f"Add i915.enable_guc=0. {edit}")
    if value:
        return Check("cmdline.guc", "pass", f"i915.enable_guc={guc} is set: HuC loading "
                     "only, no GuC submission, which GVT-g works with.")
    return Check("cmdline.guc", "pass", "i915.enable_guc=0 is set.")


def check_i915_params(sysfs: Path) -> list[Check]:
    """What the running i915 actually uses, whatever the command line says."""
    params = sysfs / "module" / "i915" / "parameters"
    if not (sysfs / "module" / "i915").is_dir():
        return [Check("i915.loaded", "fail", "The i915 module is not loaded: no Intel GPU driver.",
                      "modprobe i915, and check that nothing blacklists it "
                      "(grep -r i915 /etc/modprobe.d).")]
    out = []
    gvt_on = read_attr(params / "enable_gvt")
    if gvt_on is None:
        out.append(Check("i915.enable_gvt", "fail", "This i915 has no enable_gvt parameter: the "
                         "kernel was built without GVT-g (CONFIG_DRM_I915_GVT).",
                         "Use a distribution kernel with CONFIG_DRM_I915_GVT=y and "
                         "CONFIG_DRM_I915_GVT_KVMGT=m."))
    elif _truthy(gvt_on):
        out.append(Check("i915.enable_gvt", "pass", "i915 runs with enable_gvt=Y."))
    else:
        out.append(Check("i915.enable_gvt", "fail",
                         f"i915 runs with enable_gvt={gvt_on.strip()}: GVT-g is off.",
                         "Put i915.enable_gvt=1 on the kernel command line and reboot."))
    guc = read_attr(params / "enable_guc")
    value = parse_int(guc)
    if guc is None:
        out.append(Check("i915.enable_guc", "pass", "This i915 has no enable_guc parameter "
                         "(no GuC submission to turn off)."))
    elif value == 0:
        out.append(Check("i915.enable_guc", "pass", "i915 runs with enable_guc=0."))
    elif value == -1:
        out.append(Check("i915.enable_guc", "warn", "i915 runs with enable_guc=-1 (the kernel "
                         "decides): new kernels turn GuC submission on for newer GPUs, and "
                         "GVT-g does not work with it.",
                         "Set i915.enable_guc=0 on the kernel command line and reboot."))
    elif value is not None and value > 0 and not _guc_submission(value):
        out.append(Check("i915.enable_guc", "pass", f"i915 runs with enable_guc={value}: HuC "
                         "loading only, no GuC submission, which GVT-g works with."))
    else:
        out.append(Check("i915.enable_guc", "fail",
                         f"i915 runs with enable_guc={guc.strip()}: GuC submission is (or may "
                         "be) on, and GVT-g does not work with it.",
                         "Set i915.enable_guc=0 on the kernel command line, remove anything "
                         "that re-enables it (/etc/modprobe.d), and reboot."))
    return out


def check_modules(sysfs: Path) -> list[Check]:
    """kvmgt registers the GPU as an mdev parent; the mdev core and VFIO's type1 IOMMU
    backend are what a VM opens it through."""
    module = sysfs / "module"
    out = []
    for m in REQUIRED_MODULES:
        loaded = next((n for n in m.names if (module / n).is_dir()), None)
        if loaded:
            out.append(Check(m.check_id, "pass", f"{loaded} is loaded."))
        else:
            out.append(Check(m.check_id, "fail",
                             f"{' or '.join(m.names)} is not loaded ({m.why}).",
                             f"modprobe {m.load}; to load it at every boot: sudo gvt-client "
                             f"setup (or echo {m.load} >> /etc/modules-load.d/gvt.conf)"))
    return out


def check_iommu(sysfs: Path) -> Check:
    """Groups of real devices only: the mdev core gives each mdev an emulated group of its
    own, which exists with the IOMMU off (seen on a real 6.12 kernel with the sample
    drivers), so a group holding nothing but mdevs proves nothing."""
    root = sysfs / "kernel" / "iommu_groups"
    groups = [g for g in list_dir(root)
              if not _only_mdevs(list_dir(root / g / "devices"))]
    if groups:
        return Check("iommu", "pass", f"The IOMMU is on ({len(groups)} IOMMU groups).")
    return Check("iommu", "fail", "No IOMMU groups: the IOMMU is off, so VFIO cannot give a VM "
                 "a device.",
                 "Enable VT-d in the firmware setup and put intel_iommu=on on the kernel "
                 "command line, then reboot.")


def _only_mdevs(devices: list[str]) -> bool:
    return bool(devices) and all(UUID_RE.fullmatch(d) for d in devices)


def check_mdev_types(gpu: Gpu | None) -> Check:
    """The guide's test: without mdev_supported_types on the GPU, GVT-g is not working."""
    if gpu is None:
        return Check("mdev_types", "fail", "No Intel GPU, so no mdev_supported_types.",
                     "GVT-g needs an Intel integrated GPU (Broadwell to Comet Lake).")
    types = list_dir(gpu.path / "mdev_supported_types")
    if types:
        return Check("mdev_types", "pass",
                     f"{gpu.address} offers {len(types)} vGPU types ({', '.join(types)}).")
    return Check("mdev_types", "fail",
                 f"{gpu.address} has no mdev_supported_types: GVT-g is not working.",
                 "Check the kernel command line, i915 and module findings above; the kernel log "
                 "(journalctl -k | grep -i gvt) says why i915 did not start GVT-g.")


def check_capacity(gpu: Gpu | None) -> Check:
    """Whether any vGPU fits at all: a small aperture (DVMT setting) leaves room for none."""
    if gpu is None:
        return Check("capacity", "fail", "No Intel GPU: no vGPU fits.", "")
    base = gpu.path / "mdev_supported_types"
    types = list_dir(base)
    if not types:
        return Check("capacity", "warn", f"Not checked: {gpu.address} offers no vGPU types.",
                     "See the mdev_types finding.")
    available = {t: parse_int(read_attr(base / t / "available_instances")) or 0 for t in types}
    existing = sum(len(list_dir(base / t / "devices")) for t in types)
    fitting = [t for t, n in available.items() if n > 0]
    if fitting:
        return Check("capacity", "pass", f"{gpu.address} has room for more vGPUs ("
                     + ", ".join(f"{t}: {available[t]}" for t in fitting) + ").")
    if existing:
        vgpus = "its vGPU uses" if existing == 1 else f"its {existing} vGPUs use"
        return Check("capacity", "pass", f"{gpu.address} is full: {vgpus} all of its "
                     "graphics memory.")
    return Check("capacity", "fail", f"No vGPU type fits on {gpu.address} even with no vGPU: "
                 "the graphics aperture is too small for any guest.",
                 "Raise the aperture size / DVMT pre-allocated memory in the firmware setup "
                 "(256 MB or more); i915 keeps 128 MB of it for the host.")


def _version(text: str) -> tuple[int, int] | None:
    m = re.match(r"(\d+)\.(\d+)", text.strip())
    return (int(m.group(1)), int(m.group(2))) if m else None


def check_kernel(procfs: Path) -> Check:
    release = read_attr(procfs / "sys" / "kernel" / "osrelease")
    version = _version(release) if release else None
    if version is None:
        return Check("kernel", "warn", "Cannot tell the kernel version "
                     "(/proc/sys/kernel/osrelease).", "Check procfs_root in gvtd.toml.")
    shown = release.strip() if release else ""
    if version >= MIN_KERNEL:
        return Check("kernel", "pass", f"Kernel {shown} sends mdev parent uevents (5.3+).")
    return Check("kernel", "fail", f"Kernel {shown} is older than 5.3: it does not announce mdev "
                 "parents registering, so gvtd cannot follow kvmgt loading.",
                 "Install a kernel of 5.3 or newer (Debian 12's 6.1 works).")


def check_render_node(sysfs: Path, gpu: Gpu | None) -> Check:
    """SPICE with GL needs the GPU's render node path (/dev/dri/renderD*)."""
    nodes = render_nodes(sysfs, gpu.path) if gpu is not None else []
    if nodes:
        return Check("render_node", "pass", f"{gpu.address if gpu else ''} has render node "
                     f"/dev/dri/{nodes[0]} (for SPICE GL: rendernode='/dev/dri/by-path/"
                     f"pci-{gpu.address if gpu else ''}-render').")
    return Check("render_node", "warn", "The GPU has no DRM render node: SPICE with GL "
                 "(accelerated display of the vGPU) will not work.",
                 "Check that i915 is bound to the GPU (lspci -k) and that /dev/dri exists.")


# (pattern, id, severity, message, fix); messages as i915, GVT-g and KVM print them
_LOG_PATTERNS: list[tuple[re.Pattern[str], str, Severity, str, str]] = [
    (re.compile(r"Unsupported device\. GVT-g is disabled"), "log.unsupported", "fail",
     "The kernel log says \"Unsupported device. GVT-g is disabled\": i915 has no GVT-g for "
     "this GPU.", "GVT-g covers Broadwell to Comet Lake only; see the platform finding."),
    (re.compile(r"not yet supported with GuC submission"), "log.guc", "fail",
     "The kernel log says GVT-g \"is not yet supported with GuC submission\": GVT-g did not "
     "load.", "Set i915.enable_guc=0 on the kernel command line and reboot."),
    (re.compile(r"(?<!ignoring )unhandled [rw]dmsr"), "log.msrs", "warn",
     "The kernel log shows KVM refusing unhandled MSRs: Windows guests crash on them.",
     "Set kvm.ignore_msrs=1 (kernel command line, or /sys/module/kvm/parameters/ignore_msrs)."),
]
_ACCESS_RE = re.compile(r"gvt: vgpu \d+: .*(invalid|untracked|failed to)", re.IGNORECASE)


def check_kernel_log(path: Path | None, sysfs: Path = Path("/sys")) -> list[Check]:
    """Lines the guide and the driver print when GVT-g fails, and GVT-g's errors since
    boot, per vGPU."""
    if path is None:
        return [Check("log", "pass", "Kernel log check is turned off (kernel_log = \"\").")]
    try:
        records = read_kernel_records(path)
        text = read_kernel_log(path) if records is None else \
            "\n".join(r.text for r in records)
    except OSError as e:
        return [Check("log", "warn", f"Cannot read the kernel log {path} ({e.strerror}): its "
                      "GVT-g messages are not checked.",
                      "Run gvtd as root (it is, as a system service), or set kernel_log in "
                      "gvtd.toml to a readable file.")]
    out = [Check(cid, sev, msg, fix) for pattern, cid, sev, msg, fix in _LOG_PATTERNS
           if pattern.search(text)]
    storm = sum(1 for line in text.splitlines() if _ACCESS_RE.search(line))
    # A text log has no facility or level: what it holds is taken as the kernel's errors.
    lines = [(r.text, r.level) for r in records if r.from_kernel] if records is not None \
        else [(line, gvt.LOG_ERR) for line in text.splitlines()]
    summary = check_gvt_messages(lines, sysfs)
    if summary is not None:
        out.append(summary)
    if storm > ACCESS_STORM:
        out.append(Check("log.access", "warn", f"The kernel log has {storm} GVT-g invalid-access "
                         "lines: a few at vGPU init are normal, this many mean the guest driver "
                         "and the vGPU disagree.",
                         "Update the guest's Intel graphics driver; power the VM off and start "
                         "it again (a reboot keeps the bad state); see journalctl -k."))
    if not out:
        out.append(Check("log", "pass", "The kernel log shows no GVT-g errors."))
    return out


def check_gvt_messages(lines: list[tuple[str, int]], sysfs: Path) -> Check | None:
    """GVT-g's errors in the kernel log since boot, summed per vGPU (by its GVT-g id, named
    by the mdev that has it now), each kind once with its count; None without any."""
    from gvtd.health import vgpu_ids  # its GVT-g id map, shared with the daemon

    classifier = gvt.Classifier()
    counts: dict[str, dict[str, int]] = {}
    known: dict[str, gvt.KnownMessage] = {}
    for text, level in lines:
        msg = classifier.feed(text, level)
        if msg is None:
            continue
        who = "the host" if msg.vgpu_id is None else f"vgpu {msg.vgpu_id}"
        counts.setdefault(who, {}).setdefault(msg.known.id, 0)
        counts[who][msg.known.id] += 1
        known[msg.known.id] = msg.known
    if not counts:
        return None
    ids = vgpu_ids(sysfs, [u for u in list_dir(sysfs / "bus" / "mdev" / "devices")
                           if UUID_RE.fullmatch(u)])
    parts = []
    for who, kinds in sorted(counts.items()):
        n = int(who.split()[1]) if who.startswith("vgpu ") else None
        name = f"{who} (mdev {ids[n]})" if n in ids else \
            who + (" (no mdev has it now)" if n is not None else "")
        parts.append(name + ": " + ", ".join(f"{c} x {k}" for k, c in sorted(kinds.items())))
    failed = [k for k in known.values() if k.health == "failed"]
    worst = failed[0] if failed else known["unknown"]
    return Check("log.gvt", "fail" if failed else "warn",
                 "Since boot, GVT-g reported errors: " + "; ".join(parts) + ". "
                 + worst.cause, worst.fix)


LIBVIRT_QEMU_RUN = Path("/run/libvirt/qemu")  # NAME.pid of each running domain's QEMU
VFIO_SLACK_KIB = 1 << 20  # what libvirt adds to a VFIO guest's memory for its own limit
_UNITS = {"b": 1 / 1024, "bytes": 1 / 1024, "k": 1, "kib": 1, "kb": 1000 / 1024,
          "m": 1024, "mib": 1024, "mb": 1000 ** 2 / 1024, "g": 1 << 20, "gib": 1 << 20,
          "gb": 1000 ** 3 / 1024, "t": 1 << 30, "tib": 1 << 30}


def _kib(element: "ET.Element | None") -> int | None:
    if element is None or element.text is None:
        return None
    unit = _UNITS.get((element.get("unit") or "KiB").lower())
    value = parse_int(element.text.strip())
    return int(value * unit) if value is not None and unit is not None else None


def _memlock_kib(limits: str | None) -> int | None:
    """/proc/PID/limits' "Max locked memory" soft limit; -1 for unlimited."""
    for line in (limits or "").splitlines():
        if line.startswith("Max locked memory"):
            soft = line[len("Max locked memory"):].split()[0]
            return -1 if soft == "unlimited" else (parse_int(soft) or 0) // 1024
    return None


def check_memlock(procfs: Path, domains: list[tuple[str, str]],
                  run_dir: Path = LIBVIRT_QEMU_RUN) -> Check:
    """VFIO pins all of a guest's memory, within its QEMU's locked-memory limit
    (intel/gvt-linux#106): libvirt sets that limit from <memtune><hard_limit>, or to the
    guest's memory plus 1 GiB without one. Checked for each domain with a vGPU: a
    hard_limit below its memory, and a running QEMU whose limit is below it."""
    import xml.etree.ElementTree as ET

    low = []
    for name, xml in domains:
        try:
            root = ET.fromstring(xml)
        except ET.ParseError:
            continue
        memory = _kib(root.find("memory"))
        if memory is None:
            continue
        hard = _kib(root.find("memtune/hard_limit"))
        if hard is not None and hard < memory:
            low.append(f"{name}: <hard_limit> {hard // 1024} MiB is below its memory "
                       f"{memory // 1024} MiB")
            continue
        pid = parse_int(read_attr(run_dir / f"{name}.pid"))
        limit = _memlock_kib(read_attr(procfs / str(pid) / "limits")) if pid else None
        if limit is not None and limit != -1 and limit < memory:
            low.append(f"{name}: its running QEMU (pid {pid}) may lock {limit // 1024} MiB, "
                       f"less than its memory {memory // 1024} MiB")
    if low:
        return Check("memlock", "fail", "The locked-memory limit is too low for VFIO to pin "
                     "the guest's memory, so the VM fails to start or its vGPU to map "
                     "(intel/gvt-linux#106): " + "; ".join(low) + ".",
                     "Remove <hard_limit> from <memtune> (libvirt then allows the guest's "
                     "memory plus 1 GiB) or raise it above the memory; for QEMU run by hand, "
                     "raise `ulimit -l` (LimitMEMLOCK= in a unit, memlock in "
                     "/etc/security/limits.conf).")
    return Check("memlock", "pass", "The locked-memory limit of each domain with a vGPU "
                 "covers its memory." if domains else "No domain uses a vGPU: no "
                 "locked-memory limit to check.")


def check_mdevctl(mdevctl: Path, uuids: Iterable[str]) -> Check:
    """mdevctl auto-starting the same UUID as gvtd: two owners of one device fight."""
    mine = set(uuids)
    clashes = []
    for parent in list_dir(mdevctl):
        for uuid in list_dir(mdevctl / parent):
            if uuid.lower() not in mine:
                continue
            try:
                data = json.loads((mdevctl / parent / uuid).read_text())
            except (OSError, ValueError):  # a file, not a sysfs attribute: any size
                continue
            if isinstance(data, dict) and data.get("start") == "auto":
                clashes.append(f"{mdevctl / parent / uuid}")
    if clashes:
        return Check("mdevctl", "fail", "mdevctl also starts a vGPU gvtd manages at boot ("
                     + ", ".join(clashes) + "): the two would fight over it.",
                     "Let one tool own it: mdevctl undefine --uuid UUID, or gvt-client undefine "
                     "NAME.")
    return Check("mdevctl", "pass", "No mdevctl definition auto-starts a vGPU gvtd manages.")


Backend = Literal["gvt", "sriov", "none"]


def host_backend(gpu: Gpu | None) -> Backend:
    """Which vGPU technology the host's GPU has: "sriov" for an SR-IOV PF (or a generation
    that has one), "none" for a known GPU with neither, else "gvt" (also with no or an
    unknown Intel GPU: GVT-g's checks then say why nothing works)."""
    from gvtd import doctor_sriov  # it builds on this module's checks

    if gpu is None:
        return "gvt"
    if doctor_sriov.is_sriov_host(gpu):
        return "sriov"
    name, has_gvt = gvt.platform(gpu.vendor, gpu.device)
    return "none" if name and not has_gvt else "gvt"


def diagnose(roots: HostRoots, uuids: Iterable[str] = ()) -> list[Check]:
    """Every check for this host's backend, in the order a person fixes them: hardware,
    boot, drivers, then use. A GPU with no vGPU technology gets only what says so."""
    gpu = find_gpu(roots.sysfs)
    backend = host_backend(gpu)
    if backend == "sriov" and gpu is not None:
        from gvtd import doctor_sriov

        return doctor_sriov.diagnose(roots, gpu)
    out = [check_platform(gpu)]
    if backend == "none":
        return out + check_kernel_log(roots.kernel_log, roots.sysfs) + [
            check_mdevctl(roots.mdevctl, uuids)]
    out += check_cmdline(read_attr(roots.procfs / "cmdline"))
    out += check_i915_params(roots.sysfs)
    out += check_modules(roots.sysfs)
    out.append(check_iommu(roots.sysfs))
    out.append(check_mdev_types(gpu))
    out.append(check_capacity(gpu))
    out.append(check_kernel(roots.procfs))
    out.append(check_render_node(roots.sysfs, gpu))
    out += check_kernel_log(roots.kernel_log, roots.sysfs)
    out.append(check_mdevctl(roots.mdevctl, uuids))
    return out
