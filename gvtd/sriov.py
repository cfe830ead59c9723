"""The kernel's PCI SR-IOV sysfs ABI: physical functions (PFs), their virtual functions (VFs),
and the few writes that make VFs and bind them to vfio-pci.

A PF is a PCI device with `sriov_totalvfs`; writing a count to its `sriov_numvfs` makes that
many VFs (synchronously: they exist when the write returns), each found through the PF's
`virtfnN` link. Only these are ever written: the PF's `sriov_drivers_autoprobe` and
`sriov_numvfs`, a VF's `driver_override`, /sys/bus/pci/drivers_probe, and
/sys/bus/pci/drivers/<driver>/unbind with a VF's name. Every path is built from names read
back from sysfs (the PF listed on the PCI bus, its virtfnN links, the VF's driver link),
never from caller input alone, as in gvtd.mdev, whose strict reads this shares.
"""

from __future__ import annotations

import dataclasses
import errno
import re
from dataclasses import dataclass, field
from pathlib import Path

from gvtd import gvt
from gvtd.config import PCI_ADDRESS_RE
from gvtd.errors import Busy, Failed, GvtdError, NoCapacity, ParentMissing
from gvtd.mdev import (PCI_DISPLAY_CLASS, _link_name, _opened, _resolve, absent, list_dir,
                       parse_int, read_attr, write_once)

DRIVER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # a driver's directory name
VFIO_PCI = "vfio-pci"
VIRTFN = "virtfn"
# The kernel command line parameter that sets how many VFs a GPU driver offers.
MAX_VFS_PARAMETER = {"i915": "i915.max_vfs", "xe": "xe.max_vfs"}


@dataclass(frozen=True)
class PhysFn:
    """A PCI device with an SR-IOV capability, as sysfs shows it. `vfs` holds the VF
    addresses by index, read from the virtfnN links (empty while num_vfs is 0)."""

    name: str
    syspath: str
    driver: str
    vendor: int | None
    device: int | None
    pci_class: int | None
    total_vfs: int
    num_vfs: int
    offset: int
    stride: int
    autoprobe: bool
    vfs: tuple[str, ...] = ()

    @property
    def intel_display(self) -> bool:
        """An Intel GPU: found without a definition naming it (see PciSriov.physfns)."""
        return self.vendor == gvt.INTEL_VENDOR and self.pci_class is not None \
            and self.pci_class >> 16 == PCI_DISPLAY_CLASS

    def vf_address(self, index: int) -> str:
        """The address VF `index` has (or will have once made): the link's when it exists,
        else the PF's routing id plus offset and stride (as the kernel computes it)."""
        if index < len(self.vfs):
            return self.vfs[index]
        return vf_address(self.name, self.offset, self.stride, index)


@dataclass(frozen=True)
class VirtFn:
    """A VF: its PF, the driver bound to it ("" for none) and its driver_override."""

    name: str
    physfn: str
    driver: str
    driver_override: str


def parse_address(address: str) -> tuple[int, int, int, int]:
    """(domain, bus, slot, function) of a PCI address such as 0000:00:02.0; ValueError else."""
    m = PCI_ADDRESS_RE.fullmatch(address)
    if m is None:
        raise ValueError(f"{address[:60]!r} is not a PCI address such as 0000:00:02.0")
    domain, bus, slot, fn = (int(g, 16) for g in m.groups())
    return domain, bus, slot, fn


def vf_address(pf: str, offset: int, stride: int, index: int) -> str:
    """VF `index` (0 for virtfn0) of the PF at `pf`: its routing id (bus << 8 | slot << 3 |
    function) plus offset + stride * index, as Linux's pci_iov_virtfn_bus/devfn compute it.
    ValueError when that lies beyond the last bus of the domain."""
    domain, bus, slot, fn = parse_address(pf)
    rid = (bus << 8 | slot << 3 | fn) + offset + stride * index
    if index < 0 or not 0 <= rid <= 0xffff:
        raise ValueError(f"VF {index} of {pf} (offset {offset}, stride {stride}) has no "
                         "address on its PCI domain")
    return f"{domain:04x}:{rid >> 8:02x}:{(rid >> 3) & 0x1f:02x}.{rid & 7}"


def _flag(text: str | None) -> bool:
    return parse_int(text) != 0


@dataclass
class PciSriov:
    """Reads and writes the PCI SR-IOV ABI below `root` (normally /sys)."""

    root: Path = field(default_factory=lambda: Path("/sys"))

    @property
    def _pci(self) -> Path:
        return self.root / "bus" / "pci" / "devices"

    # -- reading --------------------------------------------------------------------------

    def physfns(self, named: frozenset[str] = frozenset()) -> list[PhysFn]:
        """Every Intel display function with an SR-IOV capability, plus the PCI devices
        `named` (the parents definitions name by address) that have one."""
        found = []
        for name in list_dir(self._pci, strict=True):
            pf = self.physfn(name, any_device=name in named)
            if pf is not None:
                found.append(pf)
        return found

    def physfn(self, name: str, any_device: bool = True) -> PhysFn | None:
        """One PF by address, or None when there is no such device or it has no SR-IOV
        capability (or, any_device False, is no Intel display function). Reads only its
        own files; strict: ReadFailed for a fault other than absence."""
        if not PCI_ADDRESS_RE.fullmatch(name):
            return None
        link = self._pci / name
        try:
            with _opened(link) as d:
                if not any_device:  # the class first: most devices stop there
                    cls = parse_int(read_attr("class", d, strict=True), 16)
                    if cls is None or cls >> 16 != PCI_DISPLAY_CLASS:
                        return None
                total = parse_int(read_attr("sriov_totalvfs", d, strict=True))
                if total is None:
                    return None
                pf = PhysFn(
                    name=name, syspath=_resolve(link), driver=_link_name("driver", d),
                    vendor=parse_int(read_attr("vendor", d, strict=True), 16),
                    device=parse_int(read_attr("device", d, strict=True), 16),
                    pci_class=parse_int(read_attr("class", d, strict=True), 16),
                    total_vfs=total,
                    num_vfs=parse_int(read_attr("sriov_numvfs", d, strict=True)) or 0,
                    offset=parse_int(read_attr("sriov_offset", d, strict=True)) or 0,
                    stride=parse_int(read_attr("sriov_stride", d, strict=True)) or 0,
                    autoprobe=_flag(read_attr("sriov_drivers_autoprobe", d, strict=True)),
                )
                vfs = self._virtfn_links(d, pf.num_vfs)
        except OSError as e:
            absent(e, link)
            return None  # gone since listed
        if not any_device and not pf.intel_display:
            return None
        return dataclasses.replace(pf, vfs=vfs)

    @staticmethod
    def _virtfn_links(d: int, count: int) -> tuple[str, ...]:
        """The VF addresses from virtfn0.. (the kernel numbers them densely from 0); stops
        at the first missing one (the kernel is adding or removing them)."""
        out = []
        for index in range(count):
            name = _link_name(f"{VIRTFN}{index}", d)
            if not name:
                break
            out.append(name)
        return tuple(out)

    def virtfn(self, name: str) -> VirtFn | None:
        """A VF by address, or None when it is gone or not a VF (no physfn link)."""
        if not PCI_ADDRESS_RE.fullmatch(name):
            return None
        link = self._pci / name
        try:
            with _opened(link) as d:
                physfn = _link_name("physfn", d)
                if not physfn:
                    return None
                override = read_attr("driver_override", d, strict=True) or ""
                return VirtFn(name=name, physfn=physfn, driver=_link_name("driver", d),
                              driver_override=override.strip().removeprefix("(null)"))
        except OSError as e:
            absent(e, link)
            return None

    def vf_at(self, pf: str, index: int) -> VirtFn | None:
        """VF `index` of the PF named `pf`, found through its virtfnN link (two readlinks
        and a read): None when the PF has no such VF (any more)."""
        if not PCI_ADDRESS_RE.fullmatch(pf):
            return None
        name = _link_name(self._pci / pf / f"{VIRTFN}{int(index)}")
        vf = self.virtfn(name) if name else None
        return vf if vf is not None and vf.physfn == pf else None

    def virtfns(self, pf: PhysFn) -> dict[str, VirtFn]:
        """The VFs of a PF read before, by address (those of its links still there)."""
        found = (self.virtfn(name) for name in pf.vfs)
        return {vf.name: vf for vf in found if vf is not None and vf.physfn == pf.name}

    # -- writing --------------------------------------------------------------------------

    def set_autoprobe(self, pf: PhysFn, on: bool) -> None:
        """Whether new VFs bind to a host driver by themselves: off before any count is
        written, so that no host driver ever touches a VF gvtd makes."""
        try:
            write_once(Path(pf.syspath) / "sriov_drivers_autoprobe", "1" if on else "0")
        except OSError as e:
            raise _write_error(e, pf.name, "sriov_drivers_autoprobe") from e

    def set_numvfs(self, pf: PhysFn, count: int) -> None:
        """Write the VF count; the kernel makes (or removes) the VFs before it returns.
        Each errno becomes the named error that says what to do (see numvfs_error)."""
        try:
            write_once(Path(pf.syspath) / "sriov_numvfs", str(int(count)))
        except OSError as e:
            raise numvfs_error(e, pf, count) from e

    def _vf_link(self, pf: PhysFn, index: int) -> tuple[Path, str]:
        """The link to VF `index` of a PF and the VF's name, read back from the kernel."""
        link = Path(pf.syspath) / f"{VIRTFN}{int(index)}"
        name = _link_name(link)
        if not name or not PCI_ADDRESS_RE.fullmatch(name):
            raise ParentMissing(f"The PF {pf.name} has no VF {index} (any more): its VFs "
                                "went away; gvtd makes them again when it can.")
        return link, name

    def bind_vfio(self, pf: PhysFn, index: int) -> str:
        """Bind VF `index` of a PF to vfio-pci and return its address: off a host driver
        first (one that took it before gvtd set autoprobe), then driver_override and
        drivers_probe, so that only vfio-pci can take it; the driver link read back says
        whether it did (drivers_probe succeeds even when no driver takes the device)."""
        link, name = self._vf_link(pf, index)
        driver = _link_name(link / "driver")
        if driver == VFIO_PCI:
            return name
        try:
            if driver:
                self._unbind(driver, name)
            write_once(link / "driver_override", VFIO_PCI)
            write_once(self.root / "bus" / "pci" / "drivers_probe", name)
        except OSError as e:
            raise _write_error(e, name, "its driver binding") from e
        now = _link_name(link / "driver")
        if now != VFIO_PCI:
            raise Failed(
                f"The VF {name} of {pf.name} did not bind to vfio-pci "
                f"({'it is on ' + now if now else 'no driver took it'}): load the vfio-pci "
                "module (modprobe vfio-pci; list it in /etc/modules-load.d to have it at "
                "boot) and check that the IOMMU is on (intel_iommu=on); gvtd binds it at the "
                "next create or domain start.")
        return name

    def unbind(self, pf: PhysFn, index: int) -> None:
        """Release VF `index` from its driver (vfio-pci, or a host driver that took it).
        driver_override stays, so no host driver takes it afterwards. The kernel holds an
        unbind from vfio-pci while a VM has the device open: call it in a worker thread."""
        link, name = self._vf_link(pf, index)
        driver = _link_name(link / "driver")
        if not driver:
            return
        try:
            self._unbind(driver, name)
        except OSError as e:
            if e.errno == errno.ENODEV:
                return  # unbound meanwhile
            raise _write_error(e, name, f"drivers/{driver}/unbind") from e

    def _unbind(self, driver: str, name: str) -> None:
        if not DRIVER_RE.fullmatch(driver):
            raise OSError(errno.EINVAL, f"unexpected driver name {driver[:60]!r}")
        write_once(self.root / "bus" / "pci" / "drivers" / driver / "unbind", name)


def numvfs_error(e: OSError, pf: PhysFn, count: int) -> GvtdError:
    """What a refused write of `count` to a PF's sriov_numvfs means, with the fix."""
    code = e.errno
    if code == errno.ENOENT and not pf.driver:
        return ParentMissing(f"No driver is bound to the PF {pf.name}, so it cannot make VFs "
                             "(ENOENT): bind its driver (for an Intel GPU: load i915 or xe); "
                             "gvtd makes the VFs when it binds.")
    if code == errno.ENOENT and pf.driver == "i915":
        return Failed(f"The driver of PF {pf.name} (i915 without SR-IOV: the stock module) "
                      "cannot make VFs (ENOENT): install the i915 SR-IOV DKMS module "
                      "(strongtz/i915-sriov-dkms) with i915.enable_guc=3 i915.max_vfs=7 on "
                      "the kernel command line, or use xe where supported.")
    if code == errno.ENOENT:
        return Failed(f"The driver of PF {pf.name} ({pf.driver}) cannot make VFs through "
                      "sysfs (ENOENT: it has no SR-IOV configuration): use a driver that "
                      "does, or another device.")
    if code == errno.ERANGE:
        parameter = MAX_VFS_PARAMETER.get(pf.driver)
        fix = (f"set {parameter}={count} (or more) on the kernel command line and reboot"
               if parameter else f"define at most {pf.total_vfs} VFs on it")
        return NoCapacity(f"The PF {pf.name} allows {pf.total_vfs} VFs and {count} are "
                          f"needed (ERANGE): {fix}.")
    if code == errno.EBUSY:
        return Busy(f"The PF {pf.name} refused a new VF count (EBUSY): VFs exist already or "
                    "are in use, and the count changes only through 0. Another tool may set "
                    "it too (tmpfiles.d, /etc/sysfs.conf, driverctl, a udev rule: `gvt-client "
                    "doctor` looks); stop the VMs that use its VFs, then try again.")
    return _write_error(e, pf.name, "sriov_numvfs")


def _write_error(e: OSError, device: str, what: str) -> GvtdError:
    if e.errno == errno.EROFS:
        return Failed(f"gvtd may not write {what} of {device}: its service keeps that file "
                      "read-only. A VF's files appear after gvtd starts, so binding VFs "
                      "needs the drop-in in docs/security.md (SR-IOV: ReadWritePaths="
                      "-/sys/devices/pci0000:00), then `systemctl restart gvtd`.")
    if e.errno in (errno.EACCES, errno.EPERM):
        return Failed(f"gvtd may not write {what} of {device} ({e.strerror}); it must run as "
                      "root with that file writable (units/gvtd.service lists the paths).")
    return Failed(f"Writing {what} of {device} failed: {e.strerror} "
                  f"({errno.errorcode.get(e.errno or 0, e.errno)}).")
