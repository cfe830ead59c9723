"""In-memory model of the kernel's mdev core and its parent drivers (no I/O).

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


def _multi(n: int = 8, ports: int = 4) -> list[Parent]:
    return [gvt_parent()] + [mtty_parent(f"mtty{i}", ports, 400 + i) for i in range(n)]


PROFILES: dict[str, Callable[..., list[Parent]]] = {
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
    return Kernel(factory(**params))
