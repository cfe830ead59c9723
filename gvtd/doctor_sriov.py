"""Doctor's checks for an SR-IOV host: an Intel GPU from Tiger Lake on, whose physical
function (PF) gvtd splits into virtual functions (VFs) bound to vfio-pci.

What such a host needs is the opposite of a GVT-g host in places (GuC submission on, not
off), so :func:`gvtd.doctor.diagnose` runs these checks instead of the GVT-g ones when the
GPU is an SR-IOV PF. The PF is driven either by i915 built from the out-of-tree SR-IOV
module (strongtz/i915-sriov-dkms: `i915.enable_guc=3 i915.max_vfs=7`; a stock i915 has no
max_vfs parameter and cannot make VFs) or by xe (`xe.max_vfs`; on Tiger Lake and Alder
Lake only with `xe.force_probe`). Every input is read under the roots doctor is given
(sysfs, procfs, the file-system root for /etc, /lib/modules and /var/lib/dkms), in the
worker thread doctor runs in; nothing is written.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import gzip
import io
import lzma
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gvtd import gvt, hostconf
from gvtd.doctor import (EDIT_BY_HAND, UNREADABLE_CMDLINE, Check, Gpu, HostRoots,
                         check_intel_iommu, check_iommu, cmdline_params, read_kernel_log)
from gvtd.hostconf import Line, under
from gvtd.mdev import list_dir, parse_int, read_attr

DRIVERS = ("i915", "xe")  # the host drivers that run an Intel PF (and grab VFs left to them)
VFIO = "vfio-pci"
# Generations whose GPU is an SR-IOV PF (i915-sriov-dkms; xe); Rocket Lake and Jasper Lake
# are Gen12/Gen11 without it. The PF's own sriov_totalvfs is the proof; the name is for a
# kernel that does not show the capability.
PLATFORMS = ("Tiger Lake", "Alder Lake", "Raptor Lake", "Meteor Lake", "Panther Lake")
XE_FORCE_PROBE = ("Tiger Lake", "Alder Lake", "Raptor Lake")  # xe's PF needs force_probe
DEFAULT_VFS = 7  # what an integrated Gen12 GPU offers
XE_UNLIMITED = 0xFFFFFFFF  # xe's max_vfs default (~0): as many as the PF has
DKMS_PACKAGE = "i915-sriov-dkms"
DKMS_TREE = "/var/lib/dkms"
DKMS_REPO = "github.com/strongtz/i915-sriov-dkms"
MODULE_DIRS = ("/lib/modules", "/usr/lib/modules")
# Where a DKMS (updates/dkms: Debian, Ubuntu, Arch) or akmods (extra: Fedora) build of i915
# goes for a kernel, relative to its modules directory; modprobe prefers both to kernel/.
MODULE_GLOBS = ("updates/dkms/i915.ko*", "updates/i915.ko*", "extra/**/i915.ko*")
EFI_GLOBAL = "8be4df61-93ca-11d2-aa0d-e0cb4ee1f8c8"
SHIM_GUID = "605dab50-e046-4300-abb6-3dd810dd8b23"
SECURE_BOOT = f"firmware/efi/efivars/SecureBoot-{EFI_GLOBAL}"  # under sysfs; last byte 1: on
# The enrolled Machine Owner Keys, as shim hands them to the kernel (mok-variables since
# Linux 5.12, the efivar before): X.509 certificates in EFI signature lists.
MOK_LISTS = (("firmware/efi/mok-variables", "MokListRT*"),
             ("firmware/efi/efivars", f"MokListRT*-{SHIM_GUID}"))
# The certificate DKMS signs modules with: dkms 3's own, then Ubuntu's shim-signed one;
# mok_certificate in framework.conf names another.
DKMS_CERTS = ("/var/lib/dkms/mok.pub", "/var/lib/shim-signed/mok/MOK.der")
DKMS_FRAMEWORK = ("/etc/dkms/framework.conf", "/etc/dkms/framework.conf.d")
SIGNATURE = b"~Module signature appended~\n"  # what ends a signed module (module_signature.h)
DECOMPRESSED_MAX = 1 << 28  # read no further into a compressed module than this
# What the kernel logs when it refuses a module: without a key, or any unsigned one under
# lockdown (which Secure Boot turns on).
_REFUSED = re.compile(r"Loading of (unsigned module|module with unavailable key) is rejected"
                      r"|Key was rejected by service|unsigned module loading is restricted")
_PCI_ADDRESS = re.compile(r"\b(?:([0-9a-f]{4}):)?([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])\b",
                          re.IGNORECASE)
# What sets a PF's VF count or a VF's driver: the PF's sriov_* files, driver_override,
# drivers_probe and a driver's bind/unbind.
_VF_CONTROL = re.compile(r"sriov_numvfs|sriov_drivers_autoprobe|driver_override|drivers_probe"
                         r"|/bind\b|/unbind\b")
# A line that names no PCI address is about the GPU when it names it some other way.
_GPU_WORDS = re.compile(r"i915|\bxe\b|\bdrm\b|\bcard\d", re.IGNORECASE)
_TAKE_OVER = "gvtd makes the VFs its definitions need, at boot too, and binds them to vfio-pci " \
    "itself (sriov_drivers_autoprobe=0 first, so no host driver touches them)."


@dataclass(frozen=True)
class Pf:
    """What every SR-IOV check needs to know about the GPU's PF, read once."""

    gpu: Gpu
    platform: str  # "Alder Lake", or "" when the id is not known
    total_vfs: int | None  # sriov_totalvfs; None when the kernel shows no SR-IOV capability
    driver: str | None  # the driver bound to it
    driver_can_sriov: bool  # that driver has a max_vfs parameter (SR-IOV capable)
    intended: str  # "i915" or "xe": the driver the checks are about
    params: dict[str, str]  # the kernel command line
    cmdline: str
    kernel: str | None  # the running kernel's release (uname -r)

    @property
    def address(self) -> str:
        return self.gpu.address

    @property
    def device_id(self) -> str:
        return f"{self.gpu.device:04x}"

    @property
    def vfs_wanted(self) -> int:
        return self.total_vfs or DEFAULT_VFS


def is_pf(gpu: Gpu) -> bool:
    """The kernel shows an SR-IOV capability on the GPU (whatever its driver can do)."""
    return (gpu.path / "sriov_totalvfs").exists()


def is_sriov_host(gpu: Gpu) -> bool:
    """An SR-IOV PF, or a generation that has one (the kernel may hide the capability)."""
    return is_pf(gpu) or gvt.platform(gpu.vendor, gpu.device)[0] in PLATFORMS


def _driver(device: Path) -> str | None:
    try:
        return os.path.basename(os.readlink(device / "driver"))
    except OSError:
        return None


def _param(sysfs: Path, module: str, name: str) -> str | None:
    text = read_attr(sysfs / "module" / module / "parameters" / name)
    return text.strip() if text is not None else None


def read_pf(roots: HostRoots, gpu: Gpu) -> Pf:
    text = (read_attr(roots.procfs / "cmdline") or "").strip()
    params = cmdline_params(text)
    driver = _driver(gpu.path)
    can = driver in DRIVERS and _param(roots.sysfs, driver, "max_vfs") is not None
    if driver in DRIVERS:
        intended = driver
    elif ("xe.force_probe" in params or "xe.max_vfs" in params
          or "max_vfs" in hostconf.modprobe_options(roots.root, "xe")
          or _blocked(roots, text, "i915")):
        intended = "xe"
    else:
        intended = "i915"
    release = read_attr(roots.procfs / "sys" / "kernel" / "osrelease")
    return Pf(gpu, gvt.platform(gpu.vendor, gpu.device)[0],
              parse_int(read_attr(gpu.path / "sriov_totalvfs")), driver, can, intended,
              params, text, release.strip() if release else None)


# -- checks ---------------------------------------------------------------------------------

def check_platform(pf: Pf) -> Check:
    model = f"{pf.gpu.vendor:04x}:{pf.device_id}"
    name = f"{pf.platform} GPU" if pf.platform else "Intel GPU"
    if pf.total_vfs is None:
        return Check("platform", "fail", f"{name} ({model}) at {pf.address} has no GVT-g, and "
                     "the kernel shows no SR-IOV capability on it (no sriov_totalvfs), so it "
                     "cannot make virtual functions either.",
                     "Use a kernel built with CONFIG_PCI_IOV=y (every distribution kernel is), "
                     "and turn on VT-d and SR-IOV in the firmware setup where it has them.")
    return Check("platform", "pass", f"{name} ({model}) at {pf.address} has no GVT-g; it is an "
                 f"SR-IOV physical function (sriov_totalvfs: {pf.total_vfs}): gvtd gives VMs "
                 "its virtual functions (gvt-client define NAME --type vf).")


def _xe_instead(pf: Pf) -> str:
    if pf.platform not in XE_FORCE_PROBE:
        return f"or let xe drive it (xe.max_vfs={pf.vfs_wanted})"
    return (f"or, from Linux 6.18 on, let xe drive it: xe.force_probe={pf.device_id} "
            f"i915.force_probe=!{pf.device_id} xe.max_vfs={pf.vfs_wanted}")


def _install_dkms(pf: Pf) -> str:
    return (f"Install the i915 SR-IOV module ({DKMS_REPO}, a DKMS package) and put "
            f"i915.enable_guc=3 i915.max_vfs={pf.vfs_wanted} on the kernel command line, "
            f"{_xe_instead(pf)}; then reboot.")


def check_driver(pf: Pf) -> Check:
    """Which driver runs the PF, and whether it can make VFs (a stock i915 cannot)."""
    a = pf.address
    if pf.driver is None:
        return Check("sriov.driver", "fail", f"No driver is bound to {a}: without i915 or xe "
                     "on the PF there are no VFs.",
                     f"modprobe {pf.intended}; if it does not bind, the sriov.blacklist, "
                     "sriov.dkms and sriov.secure_boot findings say why (and journalctl -k "
                     f"| grep -e i915 -e xe). {_install_dkms(pf)}")
    if pf.driver not in DRIVERS:
        return Check("sriov.driver", "fail", f"{a} is bound to {pf.driver}: the whole GPU is "
                     "held for one VM, so the host cannot make VFs of it.",
                     f"Remove what binds it to {pf.driver} (a driverctl override, vfio-pci.ids= "
                     "on the kernel command line or in /etc/modprobe.d), then give it back: "
                     f"echo {a} > /sys/bus/pci/drivers/{pf.driver}/unbind; "
                     f"echo {a} > /sys/bus/pci/drivers_probe.")
    if pf.driver_can_sriov:
        which = f"the i915 SR-IOV module ({DKMS_PACKAGE})" if pf.driver == "i915" else "xe"
        return Check("sriov.driver", "pass", f"{a} runs {which}, which makes VFs (it has a "
                     "max_vfs parameter).")
    if pf.driver == "i915":
        return Check("sriov.driver", "fail", f"{a} runs the stock i915, which cannot make VFs "
                     "(it has no max_vfs parameter): writing sriov_numvfs fails with ENOENT.",
                     _install_dkms(pf))
    return Check("sriov.driver", "fail", f"{a} runs an xe without SR-IOV PF support (it has no "
                 "max_vfs parameter), so it cannot make VFs.",
                 "Use Linux 6.18 or newer (xe's PF on Tiger Lake and Alder Lake), or the i915 "
                 f"SR-IOV module ({DKMS_REPO}) with module_blacklist=xe on the kernel command "
                 "line.")


def _quoted(line: Line) -> str:
    return f"`{line.text}` in {line.where}" if line.public else line.shown


def _cmdline_blacklists(text: str, module: str) -> list[str]:
    """modprobe.blacklist= (modprobe's, by alias) and module_blacklist= (the kernel's, any
    load) naming module, each occurrence."""
    out = []
    for word in text.split():
        key, _, value = word.partition("=")
        if key in ("modprobe.blacklist", "module_blacklist") and module in [
                v.strip().replace("-", "_") for v in value.strip('"').split(",")]:
            out.append(f"{word} on the kernel command line")
    return out


def _blacklists(roots: HostRoots, cmdline: str, module: str) -> list[str]:
    return _cmdline_blacklists(cmdline, module) + [
        _quoted(line) for line in hostconf.blocked_by_modprobe(roots.root, module)]


def _blocked(roots: HostRoots, cmdline: str, module: str) -> bool:
    return bool(_blacklists(roots, cmdline, module))


def check_blacklist(pf: Pf, roots: HostRoots) -> Check:
    """The PF's driver must load at boot; the other one may well be kept off the GPU."""
    mine = _blacklists(roots, pf.cmdline, pf.intended)
    other = "xe" if pf.intended == "i915" else "i915"
    if mine:
        return Check("sriov.blacklist", "fail", f"{pf.intended} is blacklisted ("
                     + "; ".join(mine) + f"): it does not load at boot, so {pf.address} has no "
                     "driver and no VFs.",
                     "Remove it: from the kernel command line (GRUB_CMDLINE_LINUX in "
                     "/etc/default/grub, then update-grub), or delete the line from its file and "
                     "run update-initramfs -u (the initramfs keeps a copy of /etc/modprobe.d); "
                     "then reboot."
                     + (" The i915 SR-IOV module asks to blacklist xe, not i915: "
                        "module_blacklist=xe." if pf.intended == "i915" else ""))
    theirs = _blacklists(roots, pf.cmdline, other)
    return Check("sriov.blacklist", "pass", f"Nothing blacklists {pf.intended}"
                 + (f"; {other} is blacklisted (" + "; ".join(theirs) + "), which keeps it off "
                    "the GPU" if theirs else "") + ".")


def check_force_probe(pf: Pf) -> Check | None:
    """xe drives Tiger Lake and Alder Lake only when xe.force_probe names the GPU."""
    if pf.intended != "xe":
        return None
    if pf.driver == "xe" or pf.platform not in XE_FORCE_PROBE:
        return Check("sriov.force_probe", "pass", f"xe drives {pf.address}"
                     + (" (no xe.force_probe needed)." if pf.driver != "xe" else "."))
    ident = pf.device_id
    wanted = [v.strip().lower() for v in pf.params.get("xe.force_probe", "").split(",")]
    if (ident in wanted or "*" in wanted) and f"!{ident}" not in wanted:
        return Check("sriov.force_probe", "pass", f"xe.force_probe={pf.params['xe.force_probe']}"
                     f" lets xe drive {pf.platform} {ident}.")
    return Check("sriov.force_probe", "fail", f"xe drives {pf.platform} only when told to: the "
                 f"kernel command line has no xe.force_probe={ident}.",
                 f"Set xe.force_probe={ident} i915.force_probe=!{ident} (the second keeps i915 "
                 f"off the GPU; Linux 6.18 or newer). {EDIT_BY_HAND}")


def dkms_builds(root: Path) -> dict[str, list[Path]]:
    """i915-sriov-dkms in the DKMS tree: {kernel release: its built modules}; a version
    added but never built shows as {"": []} so the finding can say so."""
    out: dict[str, list[Path]] = {}
    tree = under(root, DKMS_TREE) / DKMS_PACKAGE
    for version in list_dir(tree):
        if not (tree / version).is_dir() or (tree / version).is_symlink():
            continue  # kernel-* links point at a version's build
        kernels = [k for k in list_dir(tree / version) if k not in ("source", "build")]
        for kernel in kernels:
            out.setdefault(kernel, []).extend(sorted((tree / version / kernel).glob(
                "*/module/i915.ko*")))
        if not kernels:
            out.setdefault("", [])
    return out


def installed_modules(root: Path, kernel: str | None) -> list[Path]:
    """A DKMS or akmods i915 in the running kernel's modules directory."""
    if not kernel:
        return []
    return [p for d in MODULE_DIRS for g in MODULE_GLOBS
            for p in sorted(under(root, d).joinpath(kernel).glob(g))]


def modules_for(root: Path, kernel: str | None) -> list[Path]:
    """The SR-IOV i915 built for kernel: installed in its modules directory, then in the
    DKMS tree (gvtd.service's ProtectKernelModules hides /lib/modules from the daemon)."""
    return installed_modules(root, kernel) + (dkms_builds(root).get(kernel, []) if kernel
                                              else [])


def _running_sriov_i915(roots: HostRoots) -> bool:
    return _param(roots.sysfs, "i915", "max_vfs") is not None


def check_dkms(pf: Pf, roots: HostRoots) -> Check | None:
    """The i915 SR-IOV module, built and installed for the kernel that runs."""
    if pf.intended != "i915":
        return None
    kernel = pf.kernel or "the running kernel"
    installed = modules_for(roots.root, pf.kernel)
    if _running_sriov_i915(roots):
        return Check("sriov.dkms", "pass", "The i915 that runs is the SR-IOV module"
                     + (f" ({installed[0]})." if installed else "."))
    builds = dkms_builds(roots.root)
    loaded = "the stock one" if (roots.sysfs / "module" / "i915").is_dir() else "not loaded"
    if installed:
        return Check("sriov.dkms", "fail", f"The i915 SR-IOV module is built for {kernel} "
                     f"({installed[0]}), but the i915 that runs is {loaded}.",
                     "The initramfs still holds the stock i915, which loads first: sudo "
                     "update-initramfs -u (dracut --force on Fedora), then reboot; with Secure "
                     "Boot on, see sriov.secure_boot.")
    others = sorted(k for k in builds if k)
    if others:
        return Check("sriov.dkms", "fail", f"{DKMS_PACKAGE} is built for {', '.join(others)}, "
                     f"not for the running kernel {kernel}.",
                     f"sudo dkms autoinstall -k {kernel} (it needs that kernel's headers, "
                     f"linux-headers-{kernel} on Debian and Ubuntu); if DKMS skips it, the "
                     "module's BUILD_EXCLUSIVE_KERNEL (its dkms.conf) leaves this kernel out: "
                     "boot a kernel it supports or install a newer release of the module. "
                     "`dkms status` lists the builds.")
    if builds:
        versions = list_dir(under(roots.root, DKMS_TREE) / DKMS_PACKAGE)
        version = versions[-1] if versions else "VERSION"
        return Check("sriov.dkms", "fail", f"{DKMS_PACKAGE} is added to DKMS but not built.",
                     f"sudo dkms install -m {DKMS_PACKAGE} -v {version} -k {kernel}; the build "
                     "log it names says what failed (often the missing kernel headers).")
    return Check("sriov.dkms", "fail", f"The i915 SR-IOV module ({DKMS_PACKAGE}) is not "
                 f"installed for {kernel}.",
                 f"Install it from {DKMS_REPO}: its release .deb (sudo apt install "
                 f"./{DKMS_PACKAGE}_*.deb), the AUR package {DKMS_PACKAGE}, or from a clone "
                 f"`sudo dkms add .` and `sudo dkms install -m {DKMS_PACKAGE} -v VERSION`; it "
                 "builds against the kernel headers (linux-headers-$(uname -r)).")


def secure_boot(sysfs: Path) -> bool | None:
    """The SecureBoot efivar (4 attribute bytes, then 1 when on); None: not an EFI boot
    or unreadable."""
    data = hostconf.read_bytes(sysfs / SECURE_BOOT, 64)
    return data[-1] == 1 if data is not None and len(data) >= 5 else None


def _der(data: bytes) -> bytes:
    """A certificate file's DER bytes (PEM decoded)."""
    if not data.lstrip().startswith(b"-----BEGIN"):
        return data
    body = b"".join(line for line in data.splitlines()
                    if line.strip() and not line.startswith(b"-----"))
    try:
        return base64.b64decode(body)
    except (binascii.Error, ValueError):
        return data


def dkms_certificate(root: Path) -> Path | None:
    """The certificate DKMS signs modules with: framework.conf's mok_certificate, else the
    first of DKMS_CERTS that exists."""
    conf, drop_ins = DKMS_FRAMEWORK
    files = [under(root, conf)] + sorted(under(root, drop_ins).glob("*.conf"))
    named = None
    for line in hostconf.lines(files):
        key, sep, value = line.text.partition("=")
        if sep and key.strip() == "mok_certificate":
            named = value.strip().strip("\"'")
    for path in ([named] if named else []) + list(DKMS_CERTS):
        if under(root, path).is_file():
            return under(root, path)
    return None


def enrolled_keys(sysfs: Path) -> bytes | None:
    """Every enrolled Machine Owner Key list, concatenated; None when none can be read."""
    found = [hostconf.read_bytes(p, 1 << 20) for d, pattern in MOK_LISTS
             for p in sorted((sysfs / d).glob(pattern))]
    data = [d for d in found if d is not None]
    return b"".join(data) if data else None


@contextlib.contextmanager
def _open_module(path: Path) -> Iterator[io.BufferedIOBase | None]:
    """A module file's uncompressed bytes; None for a compression Python cannot read."""
    if path.suffix == ".ko":
        f: io.BufferedIOBase = open(path, "rb")
    elif path.suffix == ".xz":
        f = lzma.open(path, "rb")
    elif path.suffix == ".gz":
        f = gzip.open(path, "rb")
    else:
        yield None
        return
    with f:
        yield f


def module_signed(path: Path) -> bool | None:
    """Whether a module file ends with a signature (inside its compression: DKMS signs before
    it compresses); None when it cannot be told (zstd, which Python cannot read, or an
    unreadable file)."""
    tail, read = b"", 0
    try:
        with _open_module(path) as f:
            if f is None:
                return None
            while read < DECOMPRESSED_MAX:
                chunk = f.read(1 << 20)
                if not chunk:
                    break
                read += len(chunk)
                tail = (tail + chunk)[-len(SIGNATURE):]
    except (OSError, EOFError, lzma.LZMAError):
        return None
    return tail == SIGNATURE


def _refusal(log: str) -> str:
    lines = [line for line in log.splitlines() if _REFUSED.search(line)]
    return f" (the kernel log says \"{lines[-1].strip()}\")" if lines else ""


def _enroll(cert: Path | str) -> str:
    return (f"sudo mokutil --import {cert}, reboot, and choose Enroll MOK in the MokManager "
            "screen that follows (with the password you gave mokutil); or turn Secure Boot off "
            "in the firmware setup.")


def check_secure_boot(pf: Pf, roots: HostRoots, log: str) -> Check | None:
    """With Secure Boot on, the kernel loads only modules signed with a key it trusts: the
    DKMS module must be signed and DKMS's key enrolled as a Machine Owner Key (MOK)."""
    if pf.intended != "i915":
        return None
    if not secure_boot(roots.sysfs):
        return Check("sriov.secure_boot", "pass", "Secure Boot is off (or this is no EFI "
                     "boot): the kernel loads the unsigned i915 SR-IOV module.")
    if _running_sriov_i915(roots):
        return Check("sriov.secure_boot", "pass", "Secure Boot is on and the kernel accepted "
                     "the i915 SR-IOV module (signed with an enrolled key).")
    refused = _refusal(log)
    installed = modules_for(roots.root, pf.kernel)
    signed = module_signed(installed[0]) if installed else None
    cert = dkms_certificate(roots.root)
    sign = (f"let DKMS sign it (dkms 3 signs with /var/lib/dkms/mok.key and mok.pub, which it "
            "makes on its first build; mok_signing_key and mok_certificate in "
            "/etc/dkms/framework.conf name others): sudo dkms install --force -m "
            f"{DKMS_PACKAGE} -v VERSION -k {pf.kernel or '$(uname -r)'}")
    if signed is False:
        return Check("sriov.secure_boot", "fail", f"Secure Boot is on and {installed[0]} is not "
                     f"signed: the kernel refuses to load it{refused}.",
                     f"Sign it: {sign}; then enroll the key: "
                     + _enroll(cert or DKMS_CERTS[0]))
    if cert is None:
        return Check("sriov.secure_boot", "fail", "Secure Boot is on and DKMS has no signing "
                     f"key ({DKMS_CERTS[0]}): the kernel refuses the unsigned i915 SR-IOV "
                     f"module{refused}.",
                     f"Make the key and sign the module: {sign}; then enroll the key: "
                     + _enroll(DKMS_CERTS[0]))
    keys = enrolled_keys(roots.sysfs)
    if keys is None:
        return Check("sriov.secure_boot", "warn", "Secure Boot is on, and the enrolled Machine "
                     "Owner Keys cannot be read here (no MokListRT), so whether the kernel "
                     f"trusts DKMS's key {cert} is not known{refused}.",
                     f"mokutil --test-key {cert} says whether it is enrolled; if not: "
                     + _enroll(cert))
    if _der(hostconf.read_bytes(cert) or b"") not in keys:
        return Check("sriov.secure_boot", "fail", f"Secure Boot is on and the key DKMS signs "
                     f"with ({cert}) is not an enrolled Machine Owner Key: the kernel refuses "
                     f"the i915 SR-IOV module{refused}.", _enroll(cert))
    if refused:
        return Check("sriov.secure_boot", "fail", "Secure Boot is on and the kernel refused a "
                     f"module{refused}, although DKMS's key {cert} is enrolled.",
                     f"Rebuild and sign the module with that key: {sign}.")
    return Check("sriov.secure_boot", "pass", f"Secure Boot is on and DKMS's key {cert} is an "
                 "enrolled Machine Owner Key.")


def _source(pf: Pf, roots: HostRoots, key: str) -> str:
    """Where a module parameter's value comes from, in modprobe's order (the command line
    last, so it wins)."""
    module, _, name = key.partition(".")
    if key in pf.params:
        return f"{key}={pf.params[key]} on the kernel command line"
    option = hostconf.modprobe_options(roots.root, module).get(name)
    if option is not None:
        return _quoted(option[1])
    return f"{module}'s default"


def _configured(pf: Pf, roots: HostRoots, key: str) -> str | None:
    """A module parameter as the next load gets it: the command line, else modprobe.d."""
    module, _, name = key.partition(".")
    if key in pf.params:
        return pf.params[key]
    option = hostconf.modprobe_options(roots.root, module).get(name)
    return option[0] if option is not None else None


def check_guc(pf: Pf, roots: HostRoots) -> Check | None:
    """The i915 SR-IOV PF needs GuC submission (bit 0 of enable_guc): GVT-g's
    i915.enable_guc=0 turns it off."""
    if pf.intended != "i915":
        return None
    running = _param(roots.sysfs, "i915", "enable_guc")
    value_text = running if running is not None else _configured(pf, roots, "i915.enable_guc")
    seen = "i915 runs with" if running is not None else "i915 will load with"
    fix = ("Set i915.enable_guc=3 (GuC submission and HuC) and remove any i915.enable_guc=0 "
           "left from a GVT-g setup (the command line, /etc/modprobe.d). " + EDIT_BY_HAND)
    if value_text is None:
        return Check("sriov.guc", "warn", "i915.enable_guc is not set: i915 decides whether "
                     "GuC submission is on, and its SR-IOV PF needs it.", fix)
    value = parse_int(value_text)
    where = _source(pf, roots, "i915.enable_guc")
    if value is not None and value > 0 and value & 1:
        return Check("sriov.guc", "pass", f"{seen} enable_guc={value} ({where}): GuC "
                     "submission is on, as its SR-IOV PF needs.")
    if value == -1:
        return Check("sriov.guc", "warn", f"{seen} enable_guc=-1 ({where}): i915 decides "
                     "whether GuC submission is on, and its SR-IOV PF needs it.", fix)
    return Check("sriov.guc", "fail", f"{seen} enable_guc={value_text} ({where}): GuC "
                 "submission is off, and i915's SR-IOV PF needs it on (GVT-g wants it off: "
                 "the opposite).", fix)


def check_max_vfs(pf: Pf, roots: HostRoots) -> Check | None:
    """max_vfs defaults to 0 in the i915 SR-IOV module: no VFs until it is set."""
    key = f"{pf.intended}.max_vfs"
    n = pf.vfs_wanted
    fix = (f"Set {key}={n} (a count above max_vfs in sriov_numvfs fails with ERANGE). "
           f"{EDIT_BY_HAND} (`options {pf.intended} max_vfs={n}` in /etc/modprobe.d works too, "
           "then update-initramfs -u.)")
    running = _param(roots.sysfs, pf.intended, "max_vfs") if pf.driver == pf.intended else None
    if pf.driver == pf.intended and running is None:
        return None  # a driver without SR-IOV: sriov.driver says so
    text = running if running is not None else _configured(pf, roots, key)
    if text is None and pf.intended == "xe":
        text = str(XE_UNLIMITED)
    value = parse_int(text) if text is not None else None
    seen = f"{pf.intended} runs with" if running is not None else f"{pf.intended} will load with"
    if text is None:
        return Check("sriov.max_vfs", "fail", f"{key} is not set: the i915 SR-IOV module "
                     "then allows no VFs.", fix)
    shown = "unlimited" if value == XE_UNLIMITED else text
    where = _source(pf, roots, key)
    if value is None or value <= 0:
        return Check("sriov.max_vfs", "fail", f"{seen} max_vfs={shown} ({where}): it makes "
                     "no VFs.", fix)
    return Check("sriov.max_vfs", "pass", f"{seen} max_vfs={shown} ({where}).")


def _kernel_modules(root: Path, kernel: str | None) -> Path | None:
    for d in MODULE_DIRS:
        if kernel and under(root, d).joinpath(kernel).is_dir():
            return under(root, d).joinpath(kernel)
    return None


def check_vfio(roots: HostRoots, kernel: str | None) -> Check:
    """gvtd binds each VF with driver_override=vfio-pci and drivers_probe, which binds only a
    driver that is loaded (nothing loads vfio-pci for it)."""
    if (roots.sysfs / "module" / "vfio_pci").is_dir() or \
            (roots.sysfs / "bus" / "pci" / "drivers" / VFIO).is_dir():
        return Check("sriov.vfio", "pass", "vfio-pci is loaded: gvtd binds VFs to it.")
    modules = _kernel_modules(roots.root, kernel)
    builtin = hostconf.read_text(modules / "modules.builtin") if modules else None
    if modules is not None and not any(modules.glob("kernel/drivers/vfio/pci/vfio-pci.ko*")) \
            and "vfio-pci.ko" not in (builtin or ""):
        return Check("sriov.vfio", "fail", f"Kernel {kernel} has no vfio-pci module: a VF "
                     "cannot be given to a VM.",
                     "Boot a kernel built with CONFIG_VFIO_PCI (every distribution kernel is).")
    return Check("sriov.vfio", "fail", "vfio-pci is not loaded: a VF gvtd makes cannot bind to "
                 "it, so no VM can use it.",
                 "sudo modprobe vfio-pci; to load it at every boot: echo vfio-pci | sudo tee "
                 "/etc/modules-load.d/vfio-pci.conf")


def vfs(gpu: Gpu) -> list[tuple[str, str | None]]:
    """The PF's VFs now (its virtfnN links, in N's order): (address, driver or None)."""
    links = sorted((n for n in list_dir(gpu.path) if n.startswith("virtfn")),
                   key=lambda n: parse_int(n[len("virtfn"):]) or 0)
    out = []
    for link in links:
        vf = Path(os.path.realpath(gpu.path / link))
        out.append((vf.name, _driver(vf)))
    return out


def check_vf_drivers(pf: Pf) -> Check:
    """A VF on i915 or xe is the host's (host apps open it: i915-sriov-dkms issue 279), not
    a VM's."""
    found = vfs(pf.gpu)
    if not found:
        return Check("sriov.vf_drivers", "pass", f"{pf.address} has no VFs now (gvtd makes them "
                     "when a definition needs one).")
    on_host = [(a, d) for a, d in found if d in DRIVERS]
    if on_host:
        shown = ", ".join(f"{a} on {d}" for a, d in on_host)
        first, drv = on_host[0]
        return Check("sriov.vf_drivers", "fail", f"VFs of {pf.address} are bound to a host "
                     f"driver ({shown}): the host's programs may use them, and no VM can.",
                     "Something made them with sriov_drivers_autoprobe=1 (see the other sriov.* "
                     "findings for a tool that sets the VF count). `gvt-client create NAME` "
                     "moves a definition's VF to vfio-pci; to free one by hand: echo "
                     f"{first} > /sys/bus/pci/drivers/{drv}/unbind.")
    on_vfio = sum(d == VFIO for _, d in found)
    return Check("sriov.vf_drivers", "pass", f"{len(found)} VFs of {pf.address}, none on a host "
                 f"driver ({on_vfio} on vfio-pci).")


def _addresses(text: str) -> set[str]:
    return {f"{(m.group(1) or '0000').lower()}:{m.group(2).lower()}:{m.group(3).lower()}."
            f"{m.group(4)}" for m in _PCI_ADDRESS.finditer(text)}


def _about_gpu(text: str, pf: Pf, vf_addresses: set[str]) -> bool:
    """A line that sets VF counts or drivers, for this PF or its VFs: it names the PF, a VF
    or a function in the PF's slot (an iGPU's VFs sit there), or names no device but the
    GPU's driver, DRM or a card."""
    if not _VF_CONTROL.search(text):
        return False
    named = _addresses(text)
    if not named:
        return bool(_GPU_WORDS.search(text))
    slot = pf.address.rsplit(".", 1)[0]
    return any(a == pf.address or a in vf_addresses or a.rsplit(".", 1)[0] == slot
               for a in named)


_TOOLS = (  # (id, the tool, what it has, the fix)
    ("sriov.tmpfiles", "systemd-tmpfiles", "tmpfiles.d line",
     "Delete the line, or mask its file with a link to /dev/null of the same name in "
     "/etc/tmpfiles.d."),
    ("sriov.sysfsutils", "sysfsutils", "line in /etc/sysfs.conf or /etc/sysfs.d",
     "Delete the line (sysfsutils writes it at every boot)."),
    ("sriov.udev", "udev", "udev rule",
     "Delete the rule (or mask its file with a link to /dev/null of the same name in "
     "/etc/udev/rules.d), then sudo udevadm control --reload."),
)


def check_other_tools(pf: Pf, roots: HostRoots) -> list[Check]:
    """Other tools that set the VF count or the VFs' driver at boot: two owners race (the
    write that never takes effect, VFs bound to i915 before anyone sets their driver; EBUSY
    when the count changes while VFs exist). Reported as mdevctl's auto-starts are."""
    vf_addresses = {a for a, _ in vfs(pf.gpu)}
    found = (hostconf.tmpfiles_writes(roots.root), hostconf.sysfsutils_writes(roots.root),
             hostconf.udev_lines(roots.root))
    out = []
    for (check_id, tool, what, fix), lines in zip(_TOOLS, found):
        mine: list[Line] = [line for line in lines if _about_gpu(line.text, pf, vf_addresses)]
        if mine:
            out.append(Check(check_id, "fail", f"{tool} also sets the VFs of {pf.address} ("
                             + "; ".join(line.shown for line in mine)
                             + "): it and gvtd would both set them at boot.",
                             f"{fix} {_TAKE_OVER}"))
        else:
            out.append(Check(check_id, "pass", f"No {what} sets the VFs of {pf.address}."))
    slot = pf.address.rsplit(".", 1)[0]
    overrides = {a: v for a, v in hostconf.driverctl_overrides(roots.root).items()
                 if a in vf_addresses or a.rsplit(".", 1)[0] == slot}
    if overrides:
        out.append(Check("sriov.driverctl", "fail", "driverctl also sets the driver of "
                         + ", ".join(f"{a} ({line.shown})" for a, line in
                                     sorted(overrides.items()))
                         + f": it and gvtd would both bind the functions of {pf.address}.",
                         " ".join(f"sudo driverctl unset-override {a};" for a in
                                  sorted(overrides)) + f" {_TAKE_OVER}"))
    else:
        out.append(Check("sriov.driverctl", "pass", "No driverctl override names "
                         f"{pf.address} or its VFs."))
    return out


def diagnose(roots: HostRoots, gpu: Gpu) -> list[Check]:
    """Every SR-IOV check, in the order a person fixes them: hardware, boot, the PF's
    driver, the VFs, then the other tools."""
    pf = read_pf(roots, gpu)
    try:
        log = read_kernel_log(roots.kernel_log) if roots.kernel_log is not None else ""
    except OSError:
        log = ""
    out = [check_platform(pf)]
    out.append(check_intel_iommu(pf.params, EDIT_BY_HAND) if pf.cmdline
               else UNREADABLE_CMDLINE)
    out.append(check_blacklist(pf, roots))
    out.append(check_driver(pf))
    for check in (check_force_probe(pf), check_dkms(pf, roots),
                  check_secure_boot(pf, roots, log), check_guc(pf, roots),
                  check_max_vfs(pf, roots)):
        if check is not None:
            out.append(check)
    out.append(check_vfio(roots, pf.kernel))
    out.append(check_iommu(roots.sysfs))
    out.append(check_vf_drivers(pf))
    out += check_other_tools(pf, roots)
    return out
