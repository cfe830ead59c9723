"""In-memory model of the kernel's mdev core, its PCI SR-IOV core and their drivers (no I/O).

The emulated sysfs (:mod:`gvtd.sim.sysfs`) renders this model and turns writes into the
calls below; keeping the model pure lets the errno rules be tested without FUSE or umockdev.
Behaviour follows Linux 6.1 (``drivers/vfio/mdev/``, ``drivers/gpu/drm/i915/gvt/``, the
``samples/vfio-mdev`` drivers):

* ``create`` accepts 36 characters plus at most one more (the newline ``echo`` adds), parsed
  case-insensitively; the device is named in lower case.
* A UUID already used on *any* parent is EEXIST.
* Capacity is counted either by the mdev core (mdpy: EUSERS, nothing is created) or by the
  driver's probe (GVT-g, mtty, mbochs: ENOSPC, after the core already added the device, so
  the kernel emits ``add`` then ``remove`` for it; see :attr:`CreateError.probed`).

The PCI SR-IOV core follows Linux 6.1-6.12 (``drivers/pci/iov.c``, ``pci-driver.c``,
``pci-sysfs.c``, ``drivers/base/bus.c``, ``dd.c``) and the PF drivers (strongtz/i915-sriov-dkms,
xe):

* ``sriov_numvfs``: not a u16 (kstrtou16, base 0) is EINVAL; above ``sriov_totalvfs`` ERANGE;
  the current count is a no-op success (even with no driver); no driver bound, or a driver
  without ``sriov_configure`` (the stock i915), ENOENT; a non-zero count while VFs exist
  EBUSY.
* ``sriov_totalvfs`` is the driver's limit while one is bound (pci_sriov_set_totalvfs): the
  i915 SR-IOV module and xe lower it to their ``max_vfs`` (0 by default: every count above 0
  is then ERANGE); unbinding the driver gives the capability's TotalVFs back.
* A VF is probed when its PF has ``sriov_drivers_autoprobe`` 1 or it has a
  ``driver_override``; the override alone names the driver that may bind it. vfio-pci has no
  id table: it binds only by override, and only a device in an IOMMU group.
* ``drivers_probe`` succeeds whether or not a driver bound (only an unknown device is
  ENODEV); a driver's ``bind`` is ENODEV when it does not match or may not probe, EBUSY when
  the device has a driver; ``unbind`` is ENODEV unless that driver has the device.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

# GVT-g host reservations, as upstream (drivers/gpu/drm/i915/gvt/gvt.h HOST_LOW_GM_SIZE,
# HOST_HIGH_GM_SIZE, HOST_FENCE): with a 256 MB aperture the guests share 128 MB of low gm, so
# GVTg_V5_8 offers 2 and GVTg_V5_4 1, as real 256 MB laptops report. Profiles may override them.
HOST_LOW_GM_MB = 128
HOST_HIGH_GM_MB = 384
HOST_FENCE = 4

_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def _oserror(code: int, what: str) -> OSError:
    """An OSError carrying a kernel errno, as a failed sysfs write reports it."""
    return OSError(code, os.strerror(code), what)


class CreateError(OSError):
    """A failed create; ``probed`` is true when the core had already added the device."""

    probed: bool = False


@dataclass
class MdevType:
    """One ``mdev_supported_types/<id>`` directory."""

    id: str
    name: str
    cost: dict[str, int]
    description: str | None = None
    device_api: str = "vfio-pci"


@dataclass
class Parent:
    """An mdev parent device and the driver behind it."""

    name: str  # kernel device name: PCI address or e.g. "mtty"
    devpath: str  # under /sys, e.g. "/devices/pci0000:00/0000:00:02.0"
    kind: str  # "gvt" or "sample"
    subsystem: str  # /sys-relative target of the "subsystem" link
    driver: str | None  # /sys-relative target of the "driver" link
    mdev_driver: str  # the mdev bus driver its mdevs bind to (DRIVER= of "bind")
    types: dict[str, MdevType]
    capacity: dict[str, int]  # resources left for guests once the host took its share
    full_errno: int = errno.ENOSPC  # ENOSPC: driver counts; EUSERS: mdev core counts
    attrs: dict[str, str] = field(default_factory=dict)  # read-only files: vendor, device...
    uevent: dict[str, str] = field(default_factory=dict)
    registered: bool = True
    extra_uevent: dict[str, str] = field(default_factory=dict)  # only while sending


@dataclass
class Mdev:
    """A created mediated device; the flags follow the probe and teardown steps so that the
    emulated sysfs shows what the real one shows while each uevent goes out."""

    uuid: str
    parent: str
    type_id: str
    vfio: int  # N of vfio-dev/vfioN, unique for the kernel's lifetime
    bound: bool = False
    vfio_present: bool = False
    removing: bool = False
    typed: bool = False  # the mdev_type link: Linux adds it after the add and bind uevents
    vgpu_id: int = 0  # GVT-g's own id (intel_vgpu/vgpu_id), 0 for other drivers' mdevs


class WriteRecord(NamedTuple):
    """One write attempt through the emulated sysfs."""

    path: str
    data: str
    result: str  # "ok" or an errno name such as "ENOSPC"
    seconds: float = 0.0  # how long the emulated kernel took to answer it


class Kernel:
    """The mdev core plus drivers: parents, types, mdevs, capacity and errnos."""

    def __init__(self, parents: list[Parent]) -> None:
        self.parents: dict[str, Parent] = {p.name: p for p in parents}
        self.mdevs: dict[str, Mdev] = {}
        self.writes: list[WriteRecord] = []
        self._next_vfio = 0
        self.busy: dict[str, int] = {}  # uuid -> removes still to refuse (refuse_removes())
        self.pci: dict[str, PciDevice] = {}  # PCI functions the SR-IOV core manages (PFs, VFs)
        self.pci_drivers: dict[str, PciDriver] = {}
        self.iommu_groups: set[int] = set()  # groups in use; VFs take the lowest free one
        # The first IOMMU group number free for VFs: the machine's group count (0: no IOMMU,
        # so VFs get no group; gvtd.sim.machine sets it).
        self.iommu_first = 14
        self.pci_drivers[VFIO_PCI] = PciDriver(VFIO_PCI, "vfio_pci")
        # /sys/devices/system/cpu: each core's SMT siblings (the machine's facts set them)
        self.cpu_cores: tuple[tuple[int, ...], ...] = ()

    # -- queries -----------------------------------------------------------------------
    def parent(self, name: str) -> Parent:
        """The parent called ``name`` (KeyError if unknown)."""
        return self.parents[name]

    def mdevs_of(self, parent: str) -> list[Mdev]:
        """mdevs on ``parent`` in creation order."""
        return [m for m in self.mdevs.values() if m.parent == parent]

    def free(self, parent: str) -> dict[str, int]:
        """Resources still free on ``parent``; a device being torn down already gave its back."""
        p = self.parents[parent]
        left = dict(p.capacity)
        for m in self.mdevs_of(parent):
            if m.removing:
                continue
            for res, n in p.types[m.type_id].cost.items():
                left[res] -= n
        return left

    def available(self, parent: str, type_id: str) -> int:
        """``available_instances``: min over resources of free // cost."""
        left = self.free(parent)
        cost = self.parents[parent].types[type_id].cost
        return max(0, min(left[r] // n for r, n in cost.items()))

    # -- mutations -----------------------------------------------------------------------
    def create(self, parent: str, type_id: str, text: str) -> str:
        """``echo UUID > create``: the new mdev's lower-case UUID, or OSError with the errno."""
        raw = text[:36]
        if len(text) not in (36, 37) or not _UUID_RE.match(raw):
            raise _oserror(errno.EINVAL, text)
        uuid = raw.lower()
        p = self.parents[parent]
        if not p.registered:
            raise _oserror(errno.ENODEV, parent)
        if uuid in self.mdevs:
            raise _oserror(errno.EEXIST, uuid)
        if self.available(parent, type_id) < 1:
            err = CreateError(p.full_errno, os.strerror(p.full_errno), uuid)
            err.probed = p.full_errno == errno.ENOSPC
            raise err
        self.mdevs[uuid] = Mdev(uuid, parent, type_id, self._next_vfio,
                                vgpu_id=self._free_vgpu_id(parent) if p.kind == "gvt" else 0)
        self._next_vfio += 1
        return uuid

    def _free_vgpu_id(self, parent: str) -> int:
        """GVT-g's idr_alloc from 1 (0 is its idle vGPU): the lowest id free on that GPU,
        so ids are reused once a vGPU is gone."""
        used = {m.vgpu_id for m in self.mdevs_of(parent)}
        return next(n for n in range(1, len(used) + 2) if n not in used)

    def vgpu_id(self, uuid: str) -> int:
        """GVT-g's id of a vGPU; KeyError for an unknown mdev, ValueError for a non-GVT-g one."""
        m = self.mdevs[uuid.lower()]
        if not m.vgpu_id:
            raise ValueError(f"{uuid} is not a GVT-g vGPU (its parent is {m.parent})")
        return m.vgpu_id

    def remove(self, uuid: str, force: bool = False) -> Mdev:
        """Start tearing ``uuid`` down (ENOENT if gone, EBUSY while refused and not
        ``force``: a driver unloading takes its mdevs regardless); :meth:`drop` finishes it."""
        m = self.mdevs.get(uuid)
        if m is None or m.removing:
            raise _oserror(errno.ENOENT, uuid)
        if not force and self.busy.get(uuid, 0) > 0:
            self.busy[uuid] -= 1
            raise _oserror(errno.EBUSY, uuid)
        m.removing = True
        self.busy.pop(uuid, None)
        return m

    def refuse_removes(self, uuid: str, times: int) -> None:
        """The next ``times`` removes of ``uuid`` fail with EBUSY, as kvmgt answers while
        QEMU has the vGPU open (Linux before 5.x; later ones hold the remove instead)."""
        if uuid not in self.mdevs:
            raise _oserror(errno.ENOENT, uuid)
        self.busy[uuid] = times

    def drop(self, uuid: str) -> None:
        """Forget ``uuid`` once its remove events are out."""
        self.mdevs.pop(uuid, None)
        self.busy.pop(uuid, None)

    def forget(self) -> None:
        """A reboot: every mdev is gone."""
        self.mdevs.clear()
        self.busy.clear()
        self._next_vfio = 0

    def log_write(self, path: str, data: str, result: str, seconds: float = 0.0) -> None:
        """Record a write attempt for :meth:`EmulatedHost.write_log`."""
        self.writes.append(WriteRecord(path, data, result, seconds))

    # -- the PCI SR-IOV core -----------------------------------------------------------------
    def pci_device(self, name: str) -> PciDevice:
        """The PCI function called ``name``; ENODEV if there is none (as bus_find_device)."""
        dev = self.pci.get(sysfs_str(name))
        if dev is None:
            raise _oserror(errno.ENODEV, name)
        return dev

    def vfs_of(self, pf: str) -> list[PciDevice]:
        """The VFs of ``pf`` in VF index order."""
        return sorted((d for d in self.pci.values() if d.physfn == pf), key=lambda d: d.vf_index)

    def totalvfs(self, pf: PciDevice) -> int:
        """``sriov_totalvfs``: pci_sriov_get_totalvfs(), the bound driver's limit."""
        assert pf.sriov is not None
        return pf.sriov.driver_max

    def numvfs_request(self, pf: PciDevice, text: str) -> int | None:
        """The count a ``sriov_numvfs`` write asks for, checked as sriov_numvfs_store() does;
        None when it is the current count (a success that changes nothing)."""
        sriov = pf.sriov
        assert sriov is not None
        wanted = parse_u16(text)
        if wanted > self.totalvfs(pf):
            raise _oserror(errno.ERANGE, text)
        if wanted == sriov.num:
            return None
        if pf.driver is None:
            raise _oserror(errno.ENOENT, "no driver bound to device; cannot configure SR-IOV")
        if not self.pci_drivers[pf.driver].sriov_configure:
            raise _oserror(errno.ENOENT, "driver does not support SR-IOV configuration via sysfs")
        if wanted and sriov.num:
            raise _oserror(errno.EBUSY, f"{sriov.num} VFs already enabled. Disable before "
                                        f"enabling {wanted} VFs")
        return wanted

    def vf_address(self, pf: PciDevice, index: int) -> str:
        """The PCI address of VF ``index`` (0-based): the PF's routing id plus offset and
        stride, as pci_iov_virtfn_bus()/devfn() compute it."""
        assert pf.sriov is not None
        domain, bus, rest = pf.name.split(":")
        slot, fn = rest.split(".")
        rid = int(bus, 16) << 8 | int(slot, 16) << 3 | int(fn)
        vf = rid + pf.sriov.offset + pf.sriov.stride * index
        return f"{domain}:{vf >> 8:02x}:{(vf >> 3) & 0x1f:02x}.{vf & 7}"

    def add_vf(self, pf: PciDevice, index: int) -> PciDevice:
        """pci_iov_add_virtfn(): the VF's device, in an IOMMU group of its own when the
        machine has an IOMMU (iommu_first > 0), not yet linked to its PF."""
        assert pf.sriov is not None
        name = self.vf_address(pf, index)
        group = None
        if self.iommu_first:
            group = next(n for n in range(self.iommu_first, self.iommu_first + len(self.iommu_groups) + 1)
                         if n not in self.iommu_groups)
            self.iommu_groups.add(group)
        vf = PciDevice(name=name, devpath=f"{pf.devpath.rsplit('/', 1)[0]}/{name}",
                       vendor=pf.vendor, device=pf.sriov.vf_device, pci_class=pf.pci_class,
                       subsys=pf.subsys, physfn=pf.name, vf_index=index, iommu_group=group)
        self.pci[name] = vf
        return vf

    def drop_vf(self, vf: PciDevice) -> None:
        """The VF's device is gone: its IOMMU group number is free again."""
        self.pci.pop(vf.name, None)
        if vf.iommu_group is not None:
            self.iommu_groups.discard(vf.iommu_group)

    def may_probe(self, dev: PciDevice) -> bool:
        """pci_device_can_probe(): a VF is probed only with autoprobe on or an override."""
        if dev.physfn is None:
            return True
        pf = self.pci[dev.physfn]
        assert pf.sriov is not None
        return pf.sriov.autoprobe or dev.driver_override is not None

    def matches(self, driver: PciDriver, dev: PciDevice) -> bool:
        """pci_match_device(): an override names the one driver that may bind; otherwise the
        driver's id table (vfio-pci has none)."""
        if dev.driver_override is not None:
            return dev.driver_override == driver.name
        return dev.vendor == 0x8086 and dev.device in driver.ids

    def probe_failure(self, driver: PciDriver, dev: PciDevice) -> int:
        """The errno the driver's probe fails with, 0 when it binds: vfio-pci wants an IOMMU
        group (EINVAL without one) and refuses a PF with VFs (EBUSY)."""
        if driver.name == VFIO_PCI:
            if dev.iommu_group is None:
                return errno.EINVAL
            if dev.sriov is not None and dev.sriov.num:
                return errno.EBUSY
        return 0

    def probe(self, dev: PciDevice) -> str | None:
        """device_attach() for an unbound device: the driver that takes it, if any."""
        if dev.driver is not None or not self.may_probe(dev):
            return None
        for driver in self.pci_drivers.values():
            if self.matches(driver, dev) and not self.probe_failure(driver, dev):
                return driver.name
        return None

    def failing_probe(self, dev: PciDevice) -> str:
        """The driver that would take an unbound device but whose probe fails, or ""."""
        if dev.driver is not None or not self.may_probe(dev):
            return ""
        return next((d.name for d in self.pci_drivers.values()
                     if self.matches(d, dev) and self.probe_failure(d, dev)), "")

    def check_bind(self, driver: str, dev: PciDevice) -> None:
        """A write to ``drivers/<driver>/bind``: ENODEV unless the driver matches the device
        and may probe it, EBUSY when it has a driver, the probe's errno when that fails."""
        drv = self.pci_drivers[driver]
        if not self.matches(drv, dev) or not self.may_probe(dev):
            raise _oserror(errno.ENODEV, dev.name)
        if dev.driver is not None:
            raise _oserror(errno.EBUSY, dev.name)
        code = self.probe_failure(drv, dev)
        if code:
            raise _oserror(code, dev.name)

    def check_unbind(self, driver: str, dev: PciDevice) -> None:
        """A write to ``drivers/<driver>/unbind``: ENODEV unless that driver has the device."""
        if dev.driver != driver:
            raise _oserror(errno.ENODEV, dev.name)

    def bind(self, dev: PciDevice, driver: str) -> None:
        """The driver took the device: vfio-pci gives it a vfio-dev number, a PF driver
        sets its VF limit (max_vfs)."""
        drv = self.pci_drivers[driver]
        dev.driver = driver
        if driver == VFIO_PCI:
            self.vfio_attach(dev)
        if dev.sriov is not None and drv.max_vfs is not None:
            dev.sriov.driver_max = min(dev.sriov.total, drv.max_vfs)

    def vfio_attach(self, dev: PciDevice) -> None:
        """vfio-pci's probe: the device's group gets its vfio device and the device its
        vfio-dev/vfioN (numbers shared with mdevs, not reused while the kernel runs)."""
        if dev.vfio < 0:
            dev.vfio = self._next_vfio
            self._next_vfio += 1
        dev.vfio_group = dev.vfio_dev = True

    def vfio_groups(self) -> dict[int, list[PciDevice]]:
        """IOMMU groups that vfio has open (``/devices/virtual/vfio/<group>``), with their
        devices."""
        out: dict[int, list[PciDevice]] = {}
        for d in self.pci.values():
            if d.vfio_group and d.iommu_group is not None:
                out.setdefault(d.iommu_group, []).append(d)
        return out

    def unbind(self, dev: PciDevice) -> None:
        """The driver let go: pci_iov_remove() gives the PF its TotalVFs back."""
        dev.driver = None
        dev.vfio = -1
        dev.vfio_group = dev.vfio_dev = False
        if dev.sriov is not None:
            dev.sriov.driver_max = dev.sriov.total

    def load_driver(self, name: str) -> PciDriver:
        """modprobe: the driver called ``name`` (one that matches no device by id)."""
        if not name or "/" in name or name in (".", ".."):
            raise _oserror(errno.EINVAL, name)
        return self.pci_drivers.setdefault(name, PciDriver(name, name.replace("-", "_")))

    def set_override(self, dev: PciDevice, text: str) -> None:
        """driver_set_override(): up to the first newline; empty or "\\n" clears it."""
        if len(text) >= 4095:
            raise _oserror(errno.EINVAL, dev.name)
        value = text.split("\0", 1)[0].split("\n", 1)[0]
        dev.driver_override = value or None

    def set_autoprobe(self, pf: PciDevice, text: str) -> None:
        """``sriov_drivers_autoprobe``: kstrtobool (1/y/on, 0/n/off), else EINVAL."""
        assert pf.sriov is not None
        pf.sriov.autoprobe = parse_bool(text)

    def forget_vfs(self) -> list[PciDevice]:
        """A reboot: every VF is gone, autoprobe is back on, overrides are cleared, each
        PCI function is on its boot driver again (a PF's limit set anew). Returns the VFs
        that were there."""
        gone = [d for d in self.pci.values() if d.physfn is not None]
        for vf in gone:
            self.drop_vf(vf)
        for dev in self.pci.values():
            dev.driver_override = None
            if dev.sriov is not None:
                dev.sriov.num = 0
                dev.sriov.autoprobe = True
            self.unbind(dev)
            if dev.boot_driver is not None:
                self.bind(dev, dev.boot_driver)
        return gone


VFIO_PCI = "vfio-pci"


def sysfs_str(text: str) -> str:
    """A name written to a sysfs file as sysfs_streq() compares it: one trailing newline
    does not count."""
    return text[:-1] if text.endswith("\n") else text


def parse_u16(text: str) -> int:
    """kstrtou16(text, 0): decimal, 0x hex or 0 octal, one trailing newline; EINVAL else
    (sriov_numvfs_store() turns kstrtou16's ERANGE into EINVAL too)."""
    value = sysfs_str(text)
    if value.startswith("+"):
        value = value[1:]
    try:
        if re.fullmatch(r"0[xX][0-9a-fA-F]+", value):
            n = int(value, 16)
        elif re.fullmatch(r"0[0-7]*", value):
            n = int(value, 8)
        elif re.fullmatch(r"[1-9][0-9]*", value):
            n = int(value)
        else:
            raise ValueError(value)
    except ValueError:
        raise _oserror(errno.EINVAL, text) from None
    if n > 0xFFFF:
        raise _oserror(errno.EINVAL, text)
    return n


def parse_bool(text: str) -> bool:
    """kstrtobool(): the first character (y/Y/1, n/N/0) or on/off; EINVAL else."""
    if text[:1] in ("y", "Y", "1"):
        return True
    if text[:1] in ("n", "N", "0"):
        return False
    if text[:1] in ("o", "O") and text[1:2] in ("n", "N"):
        return True
    if text[:1] in ("o", "O") and text[1:2] in ("f", "F"):
        return False
    raise _oserror(errno.EINVAL, text)


@dataclass
class Sriov:
    """A PF's SR-IOV capability and its state (struct pci_sriov)."""

    total: int  # the capability's TotalVFs
    offset: int
    stride: int
    vf_device: int
    driver_max: int = -1  # pci_sriov_set_totalvfs(); the capability's TotalVFs when unset
    num: int = 0
    autoprobe: bool = True

    def __post_init__(self) -> None:
        if self.driver_max < 0:
            self.driver_max = self.total


@dataclass
class PciDriver:
    """A loaded PCI driver (``/sys/bus/pci/drivers/<name>``)."""

    name: str
    module: str
    ids: frozenset[int] = frozenset()  # Intel device ids its table matches
    sriov_configure: bool = False
    max_vfs: int | None = None  # the module's VF limit (i915 SR-IOV, xe: max_vfs)


@dataclass
class PciDevice:
    """A PCI function the SR-IOV core manages: a PF (``sriov`` set) or one of its VFs."""

    name: str
    devpath: str
    vendor: int
    device: int
    pci_class: int
    subsys: tuple[int, int]
    driver: str | None = None
    driver_override: str | None = None
    sriov: Sriov | None = None
    physfn: str | None = None  # a VF's PF
    vf_index: int = 0
    iommu_group: int | None = None
    linked: bool = False  # physfn and the PF's virtfnN: after the VF's add uevent
    vfio: int = -1  # N of vfio-dev/vfioN, given when vfio-pci probes it
    vfio_dev: bool = False  # vfio-dev/vfioN is there (vfio-pci bound, or binding)
    vfio_group: bool = False  # it holds its group's vfio device (/dev/vfio/<group>) open
    gone: bool = False  # being removed: off the bus's devices/ before its remove uevent
    boot_driver: str | None = None  # the driver that binds it at boot

    def uevent(self) -> dict[str, str]:
        """The ``uevent`` file: what pci_uevent() adds, DRIVER first while bound."""
        sv, sd = self.subsys
        return {**({"DRIVER": self.driver} if self.driver else {}),
                "PCI_CLASS": f"{self.pci_class:X}",
                "PCI_ID": f"{self.vendor:04X}:{self.device:04X}",
                "PCI_SUBSYS_ID": f"{sv:04X}:{sd:04X}",
                "PCI_SLOT_NAME": self.name,
                "MODALIAS": f"pci:v0000{self.vendor:04X}d0000{self.device:04X}sv0000{sv:04X}"
                            f"sd0000{sd:04X}bc{self.pci_class >> 16:02X}"
                            f"sc{(self.pci_class >> 8) & 0xff:02X}i{self.pci_class & 0xff:02X}"}


# -- profiles -------------------------------------------------------------------------------

GVT_TYPES: list[tuple[str, int, int, str, int]] = [
    # name, low gm MB, high gm MB, resolution, weight (fence is 4 for each)
    ("GVTg_V5_8", 64, 384, "1024x768", 2),
    ("GVTg_V5_4", 128, 512, "1920x1200", 4),
    ("GVTg_V5_2", 256, 1024, "1920x1200", 8),
    ("GVTg_V5_1", 512, 2048, "1920x1200", 16),
]


def gvt_parent(
    address: str = "0000:00:02.0",
    device_id: int = 0x5917,
    aperture_mb: int = 256,
    total_gm_mb: int = 4096,
    fences: int = 32,
    host_low_mb: int = HOST_LOW_GM_MB,
    host_high_mb: int = HOST_HIGH_GM_MB,
    host_fence: int = HOST_FENCE,
    registered: bool = True,
    subsys: tuple[int, int] = (0x17AA, 0x2279),
) -> Parent:
    """An i915 PCI function with GVT-g (kvmgt) and its four V5 types."""
    types = {}
    for name, low, high, res, weight in GVT_TYPES:
        desc = f"low_gm_size: {low}MB\nhigh_gm_size: {high}MB\nfence: 4\nresolution: {res}\nweight: {weight}\n"
        types[f"i915-{name}"] = MdevType(f"i915-{name}", name, {"low": low, "high": high, "fence": 4}, desc)
    slot = address
    pci_id = f"8086:{device_id:04X}"
    return Parent(
        name=address,
        devpath=f"/devices/pci{address[:7]}/{address}",
        kind="gvt",
        subsystem="/bus/pci",
        driver="/bus/pci/drivers/i915",
        mdev_driver="intel_vgpu_mdev",
        types=types,
        capacity={
            "low": aperture_mb - host_low_mb,
            "high": total_gm_mb - aperture_mb - host_high_mb,
            "fence": fences - host_fence,
        },
        attrs={
            "vendor": "0x8086\n",
            "device": f"0x{device_id:04x}\n",
            "class": "0x030000\n",
            "subsystem_vendor": f"0x{subsys[0]:04x}\n",
            "subsystem_device": f"0x{subsys[1]:04x}\n",
        },
        uevent={
            "DRIVER": "i915",
            "PCI_CLASS": "30000",
            "PCI_ID": pci_id,
            "PCI_SUBSYS_ID": f"{subsys[0]:04X}:{subsys[1]:04X}",
            "PCI_SLOT_NAME": slot,
            "MODALIAS": f"pci:v00008086d0000{device_id:04X}sv0000{subsys[0]:04X}sd0000{subsys[1]:04X}bc03sc00i00",
        },
        registered=registered,
    )


def mtty_parent(name: str = "mtty", ports: int = 4, major: int = 508) -> Parent:
    """The mtty sample driver: a virtual parent, ports counted by its probe, no description."""
    return Parent(
        name=name,
        devpath=f"/devices/virtual/mtty/{name}",
        kind="sample",
        subsystem="/class/mtty",
        driver=None,
        mdev_driver="mtty",
        types={
            "mtty-1": MdevType("mtty-1", "Single port serial", {"ports": 1}),
            "mtty-2": MdevType("mtty-2", "Dual port serial", {"ports": 2}),
        },
        capacity={"ports": ports},
        uevent={"MAJOR": str(major), "MINOR": "0", "DEVNAME": name},
    )


def mdpy_parent(max_instances: int = 4) -> Parent:
    """The mdpy sample driver: instances counted by the mdev core, so a full parent is EUSERS."""
    modes = [("mdpy-vga", "vga", "640x480"), ("mdpy-xga", "xga", "1024x768"), ("mdpy-hd", "hd", "1920x1080")]
    return Parent(
        name="mdpy",
        devpath="/devices/virtual/mdpy/mdpy",
        kind="sample",
        subsystem="/class/mdpy",
        driver=None,
        mdev_driver="mdpy",
        types={i: MdevType(i, n, {"instances": 1}, f"virtual display, {r}, 32 bpp\n") for i, n, r in modes},
        capacity={"instances": max_instances},
        full_errno=errno.EUSERS,
        uevent={"MAJOR": "507", "MINOR": "0", "DEVNAME": "mdpy"},
    )


# The i915 SR-IOV module (strongtz/i915-sriov-dkms) and xe: both have sriov_configure and
# lower the PF's sriov_totalvfs to max_vfs; the stock i915 has neither.
I915_SRIOV_IDS = frozenset({0x46A6, 0x4680, 0x4692, 0xA7A0, 0x9A49, 0x7D55})


def sriov_host(device_id: int, driver: str, max_vfs: int | None, sriov: bool = True,
               address: str = "0000:00:02.0", total: int = 7,
               subsys: tuple[int, int] = (0x17AA, 0x22E6)) -> Kernel:
    """A Gen12+ laptop: its GPU a PF with ``total`` VFs at offset 1, stride 1 (as every
    Gen12 iGPU: i915's GEN12_VF_OFFSET/STRIDE), bound to ``driver``; vfio-pci loaded."""
    k = Kernel([])
    k.iommu_groups.add(0)
    ids = I915_SRIOV_IDS | {device_id}
    k.pci_drivers[driver] = PciDriver(driver, driver, ids, sriov_configure=sriov,
                                      max_vfs=max_vfs if sriov else None)
    k.pci_drivers[VFIO_PCI] = PciDriver(VFIO_PCI, "vfio_pci")
    pf = PciDevice(name=address, devpath=f"/devices/pci{address[:7]}/{address}", vendor=0x8086,
                   device=device_id, pci_class=0x030000, subsys=subsys,
                   sriov=Sriov(total, 1, 1, device_id), iommu_group=0, boot_driver=driver)
    k.pci[address] = pf
    k.bind(pf, driver)
    return k


def _multi(n: int = 8, ports: int = 4) -> list[Parent]:
    return [gvt_parent()] + [mtty_parent(f"mtty{i}", ports, 400 + i) for i in range(n)]


PROFILES: dict[str, Callable[..., list[Parent] | Kernel]] = {
    # Kaby Lake laptop: HD Graphics 620 at 0000:00:02.0 with kvmgt loaded.
    "default": lambda: [gvt_parent()],
    "big-aperture": lambda: [gvt_parent(aperture_mb=512)],
    # Coffee Lake desktop: UHD Graphics 630 (8086:3E92) with the aperture set to 1 GB.
    "desktop": lambda: [gvt_parent(device_id=0x3E92, aperture_mb=1024, subsys=(0x1043, 0x8694))],
    # i915 bound but kvmgt not loaded: no mdev_supported_types until RegisterParent.
    "unregistered": lambda: [gvt_parent(registered=False)],
    "mtty": lambda: [gvt_parent(), mtty_parent()],
    "mdpy": lambda: [gvt_parent(), mdpy_parent()],
    # The i915 parent plus N mtty-like parents (mtty0..mttyN-1) for scale tests.
    "multi": _multi,
    # Hosts for `gvt-client doctor`: their non-kernel facts are in gvtd.sim.machine.
    "no-iommu": lambda: [gvt_parent()],
    "guc-enabled": lambda: [gvt_parent(registered=False)],  # GVT-g refused to load
    # A 7th generation Kaby Lake laptop (i7-7500U, HD 620 8086:5916): Windows 11 refuses
    # its CPU (gvtd.sim.machine).
    "kabylake-7th": lambda: [gvt_parent(device_id=0x5916)],
    # Ice Lake (Iris Plus G7, 8086:8A52): i915 has no GVT-g for it, so no mdev types.
    "icelake": lambda: [gvt_parent(device_id=0x8A52, registered=False)],
    # A 128 MB aperture: the host keeps all of it, no vGPU type fits.
    "small-aperture": lambda: [gvt_parent(aperture_mb=128)],
    # Alder Lake-P laptop (Iris Xe, 8086:46A6) with the i915 SR-IOV module, i915.max_vfs=7.
    "alderlake-sriov": lambda: sriov_host(0x46A6, "i915", max_vfs=7),
    # Tiger Lake laptop (Iris Xe, 8086:9A49) on xe (xe.force_probe=9a49 xe.max_vfs=7).
    "tigerlake-xe": lambda: sriov_host(0x9A49, "xe", max_vfs=7, subsys=(0x1028, 0x0A21)),
    # The Alder Lake laptop on the stock i915: no sriov_configure, sriov_numvfs is ENOENT.
    "alderlake-stock": lambda: sriov_host(0x46A6, "i915", max_vfs=None, sriov=False),
    # The i915 SR-IOV module without i915.max_vfs: its limit 0, every count is ERANGE.
    "alderlake-maxvfs0": lambda: sriov_host(0x46A6, "i915", max_vfs=0),
}

PROFILE_HELP: dict[str, str] = {
    "default": "Kaby Lake laptop (HD 620, 0000:00:02.0, 256 MB aperture): the usual GVT-g host",
    "big-aperture": "the Kaby Lake laptop with a 512 MB aperture: more and larger vGPUs fit",
    "desktop": "Coffee Lake desktop (UHD 630, 0000:00:02.0, 1 GB aperture): room for every type",
    "unregistered": "the Kaby Lake laptop with i915 bound but kvmgt not loaded: no mdev types yet",
    "mtty": "the Kaby Lake laptop plus the mtty sample parent: a non-PCI parent without descriptions",
    "mdpy": "the Kaby Lake laptop plus the mdpy sample parent: a full parent is EUSERS, not ENOSPC",
    "multi": "the Kaby Lake laptop plus mtty parents mtty0.. (multi:n=8,ports=4): for scale tests",
    "no-iommu": "the Kaby Lake laptop booted without intel_iommu=on: no IOMMU groups (doctor fails)",
    "guc-enabled": "the Kaby Lake laptop with i915.enable_guc=3 after enable_guc=0: GVT-g did not "
                   "load (doctor fails)",
    "kabylake-7th": "a 7th generation Kaby Lake laptop (i7-7500U, HD 620): GVT-g works, but "
                    "Windows 11 refuses its CPU (`gvt-client new` says so)",
    "icelake": "an Ice Lake laptop (Iris Plus, 8086:8A52): no GVT-g at all (doctor fails)",
    "small-aperture": "the Kaby Lake laptop with a 128 MB aperture: no vGPU type fits (doctor fails)",
    "alderlake-sriov": "Alder Lake laptop (Iris Xe 8086:46A6, 0000:00:02.0) with the i915 SR-IOV "
                       "module (i915.max_vfs=7): 7 VFs at 0000:00:02.1-7",
    "tigerlake-xe": "Tiger Lake laptop (Iris Xe 8086:9A49, 0000:00:02.0) on xe (xe.max_vfs=7, "
                    "xe.force_probe=9a49): 7 VFs",
    "alderlake-stock": "the Alder Lake laptop on the stock i915: no SR-IOV, sriov_numvfs says "
                       "ENOENT (doctor fails)",
    "alderlake-maxvfs0": "the Alder Lake laptop with the i915 SR-IOV module but no i915.max_vfs: "
                         "sriov_totalvfs 0, every count ERANGE (doctor fails)",
}


def describe() -> dict[str, str]:
    """A one-line description of each profile, in :data:`PROFILES` order."""
    return {name: PROFILE_HELP[name] for name in PROFILES}


def make_kernel(profile: str = "default", **params: int) -> Kernel:
    """A fresh kernel for ``profile``; ``params`` go to the profile (e.g. ``n=50`` for multi)."""
    try:
        factory = PROFILES[profile]
    except KeyError:
        raise ValueError(f"unknown profile {profile!r}; known: {', '.join(PROFILES)}") from None
    made = factory(**params)
    return made if isinstance(made, Kernel) else Kernel(made)
