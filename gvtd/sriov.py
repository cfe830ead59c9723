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
import logging
import os
import re
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gvtd import gvt
from gvtd.backend import HostdevOptions, Instance, MdevType, Parent, Uevent
from gvtd.config import PCI_ADDRESS_RE, VF_TYPE
from gvtd.errors import (Busy, Failed, GvtdError, InvalidArgument, NoCapacity, NotFound,
                         ParentMissing)
from gvtd.vfslots import VfSlots
from gvtd.virt import domxml
from gvtd.virt.domxml import HOST_GPU_DRIVERS
from gvtd.mdev import (PCI_DISPLAY_CLASS, _link_name, _opened, _resolve, absent, list_dir,
                       parse_int, read_attr, write_once)

DRIVER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # a driver's directory name
VFIO_PCI = "vfio-pci"
VIRTFN = "virtfn"
# The kernel command line parameter that sets how many VFs a GPU driver offers.
MAX_VFS_PARAMETER = {"i915": "i915.max_vfs", "xe": "xe.max_vfs"}

log = logging.getLogger(__name__)


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
        """Bind VF `index` of a PF to vfio-pci and return its address: off a GPU driver
        first (i915 or xe took it before gvtd set autoprobe), then driver_override and
        drivers_probe, so that only vfio-pci can take it; the driver link read back says
        whether it did (drivers_probe succeeds even when no driver takes the device). A VF
        on any other driver is someone's (a NIC's VF in use): Busy, nothing written."""
        link, name = self._vf_link(pf, index)
        driver = _link_name(link / "driver")
        if driver == VFIO_PCI:
            return name
        if driver and driver not in HOST_GPU_DRIVERS:
            raise Busy(f"The VF {name} of {pf.name} is on the driver {driver}, which gvtd "
                       "did not bind it to: gvtd takes a VF only off i915 or xe. Unbind it "
                       "yourself if this vGPU is to have it, or name another PF.")
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
        return NoCapacity(f"The PF {pf.name} allows {pf.total_vfs} VFs, {count} needed "
                          f"(ERANGE): {fix}.")
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


class SriovBackend:
    """vGPUs as PCI virtual functions bound to vfio-pci: the Backend of kind "sriov".

    Each SR-IOV definition has a VF slot (gvtd.vfslots) on its PF; its instance is the VF
    at that slot while it exists and is bound to vfio-pci. create() brings the PF to the VF
    count the slots need (through 0 when VFs exist: the kernel knows no other way), then
    binds the slot's VF; remove() releases it, and the PF's VFs go when none is bound any
    more. Everything but classify, hostdev and used_in blocks: Host calls it in worker
    threads."""

    kind = "sriov"

    def __init__(self, pci: PciSriov, slots: VfSlots,
                 definitions: Callable[[], Mapping[str, str]],
                 running_user: Callable[[str], str | None],
                 counts: Callable[[], Mapping[str, int]] = dict) -> None:
        """definitions: the parent ("auto" or an address) of each SR-IOV definition, by
        UUID (gvtd.host); running_user: the running domain that uses a vGPU
        (gvtd.domains); counts: the VF count gvtd.toml sets per PF (sriov_vfs)."""
        self.pci = pci
        self.slots = slots
        self._definitions = definitions
        self._running_user = running_user
        self._counts = counts
        self._pfs: frozenset[str] = frozenset()  # every PF read: classify knows them
        self._vfs: dict[str, tuple[str, int]] = {}  # VF address -> (PF, index), made or not
        self._kernel = threading.Lock()  # one count change or bind at a time (see remove)

    @property
    def root(self) -> Path:
        return self.pci.root

    # -- reading (worker threads) ----------------------------------------------------------

    def _named(self) -> frozenset[str]:
        """The PFs definitions name by address: any SR-IOV device, not only a GPU."""
        return frozenset(p for p in self._definitions().values() if p != "auto")

    def parents(self) -> list[Parent]:
        pfs = self.pci.physfns(self._named())
        vfs: dict[str, tuple[str, int]] = {}
        for pf in pfs:
            vfs.update(_addresses(pf))
        self._pfs, self._vfs = frozenset(pf.name for pf in pfs), vfs
        return [self._parent(pf) for pf in pfs]

    def parent(self, name: str) -> Parent | None:
        pf = self.pci.physfn(name, any_device=name in self._named())
        if pf is None:
            return None
        self._pfs = self._pfs | {name}
        self._vfs = {**self._vfs, **_addresses(pf)}
        return self._parent(pf)

    def _parent(self, pf: PhysFn) -> Parent:
        """A PF as a parent: registered while a driver is bound (only then can it make
        VFs), with the one type "vf", whose available count is what is not bound to
        vfio-pci for a definition."""
        types: tuple[MdevType, ...] = ()
        if pf.driver:
            active = sum(1 for i in self.slots.on(pf.name).values() if self._bound(pf.name, i))
            types = (MdevType(id=VF_TYPE, name="VF", description=None, device_api="vfio-pci",
                              available=max(0, pf.total_vfs - active)),)
        return Parent(name=pf.name, syspath=pf.syspath, driver=pf.driver, vendor=pf.vendor,
                      device=pf.device, registered=bool(pf.driver), types=types,
                      kind=self.kind, total_vfs=pf.total_vfs, num_vfs=pf.num_vfs,
                      vf_offset=pf.offset, vf_stride=pf.stride, autoprobe=pf.autoprobe)

    def _bound(self, pf: str, index: int) -> VirtFn | None:
        """VF `index` of `pf` when it is on vfio-pci."""
        vf = self.pci.vf_at(pf, index)
        return vf if vf is not None and vf.driver == VFIO_PCI else None

    def instances(self) -> dict[str, Instance]:
        found = (self.instance(u) for u in self._definitions())
        return {i.uuid: i for i in found if i is not None}

    def instance(self, uuid: str) -> Instance | None:
        """The definition's VF, while it exists and is on vfio-pci: a VF on no driver or a
        host driver is no vGPU a VM can use."""
        slot = self.slots.slot(uuid)
        if slot is None or uuid not in self._definitions():
            return None
        vf = self._bound(*slot)
        if vf is None:
            return None
        return Instance(uuid=uuid, parent=slot[0], type_id=VF_TYPE, address=vf.name,
                        backend=self.kind)

    def arriving(self, uuid: str) -> bool:
        return False  # a VF is whole when the write of the count returns

    def address(self, uuid: str) -> str:
        """The address of the definition's slot, made or not (attach and detach name it
        while the VF is unbound): from the PFs read last, no I/O."""
        slot = self.slots.slot(uuid)
        return next((a for a, where in self._vfs.items() if where == slot), "") if slot else ""

    def next_address(self, parent: Parent) -> str:
        """The VF address the next definition on the PF gets at Define (gvtd.newvm writes it
        into a new domain before defining its vGPU): no I/O, nothing recorded."""
        index = self.slots.lowest_free(parent.name, self._definitions(), parent.total_vfs)
        if index is None:
            return ""
        return next((a for a, where in self._vfs.items() if where == (parent.name, index)), "")

    # -- writing (worker threads) ----------------------------------------------------------

    def create(self, parent: Parent, type_id: str, uuid: str) -> Instance:
        """Give the definition its slot (recorded before any write), bring the PF to the
        count, bind the slot's VF to vfio-pci. Every write returns when the kernel has done
        it (the VFs exist, the bind is made), so its uevents follow, and none is awaited."""
        if type_id != VF_TYPE:
            raise InvalidArgument(f"{parent.name} is an SR-IOV PF: its one type is "
                                  f"{VF_TYPE!r}, not {type_id!r}.")
        with self._kernel:
            pf = self._pf(parent.name)
            index = self._slot(uuid, pf)
            want = max(self.slots.wanted(pf.name, self._definitions()),
                       self._counts().get(pf.name, 0))
            if pf.num_vfs < want:
                rebind = self._count(pf, want, uuid)
                pf = self._pf(parent.name)
                for other in rebind:  # what the way through 0 took from their definitions
                    self.pci.bind_vfio(pf, other)
            address = self.pci.bind_vfio(pf, index)
        return Instance(uuid=uuid, parent=pf.name, type_id=VF_TYPE, address=address,
                        backend=self.kind)

    def reserve(self, parent: Parent, type_id: str, uuid: str) -> None:
        """The definition's slot, recorded at Define: its VF's address is known before the
        VF is made (an on-demand vGPU is attached by it). NoCapacity when every VF is
        given to a definition already."""
        pf = self.pci.physfn(parent.name)
        if pf is not None and type_id == VF_TYPE:
            with self._kernel:
                self._slot(uuid, pf)

    def release(self, uuid: str) -> None:
        """The definition is gone (Undefine): its slot is given up, durably, so that its VF
        is the next definition's and the count no longer includes it."""
        with self._kernel:
            self.slots.release(uuid)

    def _pf(self, name: str) -> PhysFn:
        pf = self.pci.physfn(name)
        if pf is None:
            raise ParentMissing(f"The PF {name} is gone, or has no SR-IOV capability: its "
                                "VFs are made when it is back.")
        if not pf.driver:
            raise ParentMissing(f"No driver is bound to the PF {name}: its VFs are made as "
                                "soon as its driver binds.")
        return pf

    def _slot(self, uuid: str, pf: PhysFn) -> int:
        """The definition's VF index, recorded before any write; the slots of definitions
        gone are given up in the same write."""
        limit = pf.total_vfs or 1  # with none allowed, the kernel's ERANGE says what to set
        try:
            index = self.slots.assign(uuid, pf.name, set(self._definitions()), limit)
        except OSError as e:
            raise Failed(f"Cannot record the vGPU's VF in {self.slots.path}: {e.strerror}; "
                         "nothing was written to the kernel. Free space there.") from e
        if index is None:
            raise NoCapacity(self.no_capacity_message(pf.name, VF_TYPE))
        return index

    def _count(self, pf: PhysFn, want: int, uuid: str) -> list[int]:
        """Write the VF count, autoprobe off first: the kernel takes a new count only
        through 0 while VFs exist, so Busy names the running domain that would lose its VF;
        returns the other slots that were on vfio-pci (0 unbound them). While VFs exist, a
        count above the PF's limit is refused here, before the way through 0 would take them
        only to meet the kernel's ERANGE; with none, the kernel answers for itself."""
        if pf.num_vfs and want > pf.total_vfs:
            raise numvfs_error(OSError(errno.ERANGE, os.strerror(errno.ERANGE)), pf, want)
        ours = self.slots.on(pf.name)
        bound = sorted(i for u, i in ours.items() if u != uuid and self._bound(pf.name, i))
        mine = {pf.vf_address(i) for i in bound}  # on vfio-pci for a definition
        others = [vf for vf in self.pci.virtfns(pf).values() if vf.driver
                  and vf.driver not in HOST_GPU_DRIVERS and vf.name not in mine]
        if others:
            raise Busy(f"The PF {pf.name} has {pf.num_vfs} VFs and needs {want}, and the "
                       "kernel changes the count only through 0, which would take "
                       f"{others[0].name} from its driver {others[0].driver} (gvtd did not "
                       "bind it). Free that VF, or define fewer vGPUs on this PF.")
        for other, index in sorted(ours.items()):
            user = self._running_user(other) if index in bound else None
            if user is not None:
                raise Busy(f"The PF {pf.name} has {pf.num_vfs} VFs and needs {want}: the "
                           "kernel changes the count only through 0, which would take its "
                           f"VF from the running domain {user}. Stop {user} first, or set the "
                           f"count for {pf.name} in gvtd.toml (sriov_vfs) so that it never "
                           "has to change.", domain=user)
        if pf.autoprobe:
            self.pci.set_autoprobe(pf, False)
        if pf.num_vfs:
            log.info("Changing the VF count of %s from %d to %d through 0", pf.name,
                     pf.num_vfs, want, extra={"PARENT": pf.name})
            self.pci.set_numvfs(pf, 0)
        self.pci.set_numvfs(pf, want)
        return bound

    def remove(self, uuid: str) -> None:
        """Unbind the VF from vfio-pci (the kernel holds that while a VM has it open, and
        no lock is held meanwhile); then, when no VF of the PF is bound to any driver and
        gvtd.toml sets no count for it, set the count to 0: the VFs go."""
        slot = self.slots.slot(uuid)
        if slot is None or self._bound(*slot) is None:
            raise NotFound(f"The VF of vGPU {uuid} was already gone.")
        name, index = slot
        self.pci.unbind(self._pf(name), index)
        with self._kernel:
            pf = self.pci.physfn(name)
            if pf is None or not pf.num_vfs or self._counts().get(name) \
                    or any(vf.driver for vf in self.pci.virtfns(pf).values()):
                return
            self.pci.set_numvfs(pf, 0)

    def write_attr(self, uuid: str, name: str, value: str) -> None:
        raise InvalidArgument(f"A VF has no attributes to write ({name[:64]!r}): remove "
                              "`attrs` from the definition.")

    def no_capacity_message(self, parent: str, type_id: str) -> str:
        """Why no VF is left on a PF, and what to do (re-read from sysfs)."""
        pf = self.pci.physfn(parent)
        if pf is None:
            return f"The PF {parent} has no room for another VF."
        if pf.total_vfs == 0:
            return numvfs_error(OSError(errno.ERANGE, os.strerror(errno.ERANGE)), pf, 1).message
        parameter = MAX_VFS_PARAMETER.get(pf.driver)
        return (f"All {pf.total_vfs} VFs of the PF {parent} are given to vGPU definitions: "
                "undefine one you do not need"
                + (f", or raise {parameter} on the kernel command line" if parameter else "")
                + ".")

    # -- on the loop: no I/O ---------------------------------------------------------------

    def classify(self, action: str, subsystem: str | None, sys_path: str,
                 properties: dict[str, str]) -> Uevent | None:
        """A pci event on a VF of a known PF (made or not): re-read the PF, and the
        definition's VF when the slot is one's; on a known PF: re-read it; an add or
        remove of another PCI device may be a new PF: re-read it as a parent."""
        if subsystem != "pci":
            return None
        name = os.path.basename(sys_path)
        where = self._vfs.get(name)
        if where is not None:
            return Uevent(action, frozenset({where[0]}), self.slots.owner(*where))
        if name in self._pfs or action in ("add", "remove"):
            return Uevent(action, frozenset({name}))
        return None

    def hostdev(self, instance: Instance, options: HostdevOptions) -> ET.Element:
        return domxml.pci_hostdev(domxml.VfSpec(instance.address, options.rom,
                                                options.rom_bar))

    def used_in(self, root: ET.Element) -> list[str]:
        """The SR-IOV vGPUs whose slot's VF a domain's PCI hostdevs name."""
        by_address = {a: self.slots.owner(*where) for a, where in self._vfs.items()}
        defined = self._definitions()
        found = (by_address.get(a) for a in domxml.pci_addresses_in(root))
        return list(dict.fromkeys(u for u in found if u is not None and u in defined))


def _addresses(pf: PhysFn) -> dict[str, tuple[str, int]]:
    """Where each VF of a PF is or will be: address -> (PF, index)."""
    out: dict[str, tuple[str, int]] = {}
    for index in range(pf.total_vfs):
        try:
            out[pf.vf_address(index)] = (pf.name, index)
        except ValueError:
            break
    return out
