"""The emulated host kernel: model + umockdev testbed + FUSE sysfs, behind one small API.

Layout of the testbed root (``host.root``; every ``/sys`` path below lives at
``<root>/sys/...`` and processes under the preload see it as ``/sys``)::

    sys/devices/                    FUSE (gvtd.sim.sysfs): rendered from gvtd.sim.kernel
      pci0000:00/0000:00:02.0/      i915 parent: vendor device class uevent driver subsystem
        mdev_supported_types/<t>/   while registered: create available_instances device_api
                                    name [description] devices/<uuid>
        <uuid>/                     uevent remove mdev_type subsystem driver vfio-dev/vfioN/
      virtual/mtty/mtty/            sample parents (profiles mtty, multi), same shape
      pci0000:00/0000:00:02.N/      a PCI function of the SR-IOV core (profiles alderlake-*,
                                    tigerlake-xe): vendor device class subsystem_* uevent
                                    driver_override driver subsystem iommu_group; a PF's
                                    sriov_{totalvfs,numvfs,offset,stride,vf_device,
                                    vf_total_msix,drivers_autoprobe} virtfnN; a VF's physfn
                                    and vfio-dev/vfioN while on vfio-pci
      virtual/vfio/<group>/         vfio's group device (/dev/vfio/<group>) while vfio-pci has
                                    a device of that group: uevent (DEVNAME) dev subsystem
    sys/bus/pci/                    FUSE too (gvtd.sim.sysfs): devices/<addr> links,
                                    drivers/<drv>/{bind,unbind,<addr>,module}, drivers_probe
    sys/kernel/iommu_groups/<N>/devices/<vf>   real links for each VF's own group
    sys/class/vfio/<group>
    sys/bus/mdev/devices/<uuid>      real symlinks, kept in step by this module
    sys/bus/mdev/drivers/<drv>/<uuid>
    sys/class/mdev_bus/<parent>     while the parent is registered
    sys/class/mtty/<name>, sys/class/vfio-dev/vfioN

The owner process must run under ``umockdev-wrapper``. Children (the daemon, udevadm,
tests) get ``child_env()``: the inherited ``LD_PRELOAD`` plus ``UMOCKDEV_DIR=<root>``.

Every change is synchronous and emits the uevents Linux 6.1 emits, in its order:
create: ``add`` mdev, then the ``mdev_type`` link (and the type's ``devices/`` entry) with no
event of its own, ``add`` vfio-dev/vfioN, ``bind`` mdev (DRIVER=<mdev driver>);
remove: ``remove`` vfioN, ``unbind`` mdev, ``remove`` mdev; a create that the driver's probe
refuses (ENOSPC): ``add`` then ``remove`` of the mdev; register/unregister: ``change`` on the
parent with ``MDEV_STATE=registered``/``unregistered`` (unregistering removes mdevs first).

The PCI SR-IOV core's, as Linux 6.1-6.12 sends them (drivers/pci/iov.c sriov_enable(),
pci_iov_add_virtfn(), pci_iov_sysfs_link(); seen on a 6.12 kernel with QEMU's nvme):
writing N to ``sriov_numvfs``: for each VF ``add`` (SUBSYSTEM=pci, no DRIVER; its
``physfn`` and the PF's ``virtfnN`` links come right after), ``change`` on the VF, and with
``sriov_drivers_autoprobe`` 1 its ``bind`` to the PF's driver (DRIVER=i915/xe); then
``change`` on the PF. Writing 0: for each VF its ``unbind`` (when bound) and ``remove``; no
event on the PF. A bind to vfio-pci: ``add`` of ``/devices/virtual/vfio/<group>``
(SUBSYSTEM=vfio, DEVNAME=vfio/<group>), ``add`` of the VF's ``vfio-dev/vfioN``, ``bind``
(DRIVER=vfio-pci); its unbind: ``remove`` vfioN, ``remove`` of the group device, ``unbind``
(no DRIVER). Another driver: ``bind``/``unbind`` alone. A PF's driver unbinding removes its
VFs first (i915's and xe's remove disable SR-IOV), then ``unbind`` on the PF.
"""

from __future__ import annotations

import atexit
import errno
import os
import re
import shutil
import threading
import uuid as uuidlib
from collections.abc import Callable
from typing import Any

from .kernel import VFIO_PCI, CreateError, Kernel, Mdev, Parent, PciDevice, WriteRecord, make_kernel
from .sysfs import Handlers, SysfsOps, Tree, serve, unmount
from .testbed import Testbed

_ULONG = re.compile(r"^\+?(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)$")
_SYNTH_ACTIONS = {"add", "remove", "change", "move", "online", "offline", "bind", "unbind"}


def _err(code: int) -> OSError:
    return OSError(code, os.strerror(code))


class EmulatedHost:
    """One emulated kernel; create with a profile name, then :meth:`start`."""

    def __init__(self, profile: str = "default", **params: Any) -> None:
        self.kernel: Kernel = make_kernel(profile, **params)
        self._lock = threading.Lock()  # the model: held briefly, never across a uevent
        self._op = threading.Lock()  # one kernel operation (and its uevents) at a time
        self._tb: Testbed | None = None
        self._thread: threading.Thread | None = None
        self._stalled: threading.Event | None = None  # see stall_writes()
        self._stall_hit = threading.Event()
        self._stalled_path = ""
        self._untyped_next = False  # see add_untyped_mdev()
        # printk(text): where the drivers' kernel log lines go (the supervisor's /dev/kmsg)
        self.printk: Callable[[str], None] = lambda text: None
        self._bus_thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------
    @property
    def root(self) -> str:
        """The testbed root directory (``<root>/sys`` is the fake ``/sys``)."""
        if self._tb is None:
            raise RuntimeError("EmulatedHost is not started")
        return self._tb.root

    def child_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for a child process that must see this ``/sys`` and its uevents."""
        if self._tb is None:
            raise RuntimeError("EmulatedHost is not started")
        return self._tb.child_env(base)

    def start(self) -> "EmulatedHost":
        """Create the testbed, the real links and mount the FUSE sysfs."""
        self._tb = tb = Testbed()
        tb.mkdir("/sys/devices")
        for d in ("/sys/bus/mdev/devices", "/sys/class/mdev_bus", "/sys/class/vfio-dev",
                  "/sys/class/vfio", "/sys/bus/pci", "/sys/kernel/iommu_groups"):
            tb.mkdir(d)
        for p in self.kernel.parents.values():
            self._parent_links(p)
        for d in self.kernel.pci.values():
            self._group_link(d)
        handlers = Handlers(self._on_create, self._on_remove, self._on_uevent, self._on_pci,
                            self._on_bus)
        tree = Tree(self.kernel, handlers)
        self._ops = SysfsOps(tree, self._lock, self._log)
        self._bus_ops = SysfsOps(tree, self._lock, self._log, prefix="/bus/pci")
        try:
            self._thread = serve(self._ops, tb.real("/sys/devices"))
            self._bus_thread = serve(self._bus_ops, tb.real("/sys/bus/pci"))
        except BaseException:
            self.close()
            raise
        atexit.register(self.close)  # a mount left behind would outlive the process
        return self

    def close(self) -> None:
        """Unmount, stop the FUSE thread and delete the testbed."""
        tb, self._tb = self._tb, None
        if tb is None:
            return
        atexit.unregister(self.close)
        self.release_writes()  # a stalled write would keep the mount busy
        unmount(tb.real("/sys/bus/pci"))
        unmount(tb.real("/sys/devices"))
        for thread in (self._bus_thread, self._thread):
            if thread is not None:
                thread.join(10)
        root = tb.root
        tb.close()
        shutil.rmtree(root, ignore_errors=True)

    def __enter__(self) -> "EmulatedHost":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the Simulator's operations ----------------------------------------------------------
    def register_parent(self, name: str) -> None:
        """kvmgt (or a sample driver) loading: types appear, then ``change`` MDEV_STATE=registered."""
        with self._op:
            p = self._parent(name)
            if p.registered:
                return
            with self._lock:
                p.registered = True
            self.tb.link(f"/sys/class/mdev_bus/{name}", "/sys" + p.devpath)
            self._change(p, "registered")

    def unregister_parent(self, name: str) -> None:
        """The driver unloading, in mdev_unregister_parent()'s order: the mdev_bus link goes
        first, then the mdevs (with their events), then the types and the change event."""
        with self._op:
            p = self._parent(name)
            if not p.registered:
                return
            self.tb.unlink(f"/sys/class/mdev_bus/{name}")
            for m in self.kernel.mdevs_of(name):
                self._remove(m.uuid, force=True)
            with self._lock:
                p.registered = False
            self._change(p, "unregistered")

    def remove_mdev(self, uuid: str) -> None:
        """Someone else writing ``remove``; ENOENT (OSError) if there is no such mdev."""
        with self._op:
            self._remove(uuid.lower())

    def add_foreign_mdev(self, parent: str, type_id: str) -> str:
        """Someone else creating an mdev with a fresh UUID; returns it (OSError as for create)."""
        if type_id not in self._parent(parent).types:
            raise _err(errno.EINVAL)
        with self._op:
            return self._create(parent, type_id, str(uuidlib.uuid4()))

    def add_untyped_mdev(self, parent: str, type_id: str) -> str:
        """As add_foreign_mdev, but the ``mdev_type`` link stays missing until
        :meth:`type_mdev`: the moment a reader can meet on Linux between the uevents and
        the link, held open."""
        with self._lock:
            self._untyped_next = True
        try:
            return self.add_foreign_mdev(parent, type_id)
        finally:
            with self._lock:
                self._untyped_next = False

    def type_mdev(self, uuid: str) -> None:
        """Add the held ``mdev_type`` link, without an event, as Linux does."""
        with self._lock:
            m = self.kernel.mdevs.get(uuid)
            if m is None:
                raise _err(errno.ENOENT)
            m.typed = True

    def forget_mdevs(self) -> None:
        """A reboot: every mdev is gone at once, without uevents (nobody listens across it)."""
        with self._op, self._lock:
            for m in list(self.kernel.mdevs.values()):
                self._drop_links(m)
            self.kernel.forget()

    def write_log(self) -> list[WriteRecord]:
        """Every write through the emulated sysfs so far: (path, data, "ok" or errno name)."""
        with self._lock:
            return list(self.kernel.writes)

    def set_fault(self, fault: Callable[[str, str, str], None] | None) -> None:
        """fault(phase, path, data) runs before and after every write ("before"/"after")
        and before every read and lookup ("read", data "")."""
        self._ops.fault = self._bus_ops.fault = fault

    def stall_writes(self, suffix: str) -> None:
        """Writes to paths ending in suffix hang before the kernel acts on them, as a remove
        does while a driver is stuck or a VM holds the device open, until release_writes().
        Other files keep answering (the FUSE server has many threads)."""
        self._stall("before", suffix)

    def hold_remove(self, uuid: str) -> None:
        """A write to the mdev's ``remove`` hangs, as on Linux while QEMU holds the vfio
        device open (vfio asks it to let go and waits), until release_writes(): QEMU closing
        it. The mdev stays meanwhile; wait_stalled() says when a remove reached it."""
        uuid = uuid.lower()
        with self._lock:
            if uuid not in self.kernel.mdevs:
                raise _err(errno.ENOENT)
        self.stall_writes(f"/{uuid}/remove")

    def refuse_removes(self, uuid: str, times: int) -> None:
        """The next ``times`` removes of the mdev fail with EBUSY (kvmgt while the vGPU is
        open, on older kernels); the mdev stays. ENOENT if there is no such mdev."""
        with self._lock:
            self.kernel.refuse_removes(uuid.lower(), times)

    def stall_reads(self, suffix: str) -> None:
        """Reads and lookups of paths ending in suffix (existing or not) hang until
        release_writes(): a test then knows gvtd is in the middle of that read, and can
        change the world before it goes on."""
        self._stall("read", suffix)

    def fail_reads(self, suffix: str, errno_name: str) -> None:
        """Reads and lookups of paths ending in suffix fail with that errno (EACCES, EIO:
        a permission fault, a device that stopped answering) until release_writes()."""
        self._fail("read", suffix, errno_name)

    def fail_writes(self, suffix: str, errno_name: str) -> None:
        """Writes to paths ending in suffix fail with that errno before the kernel acts on
        them (EBUSY: a remove refused while something holds the device) until
        release_writes()."""
        self._fail("before", suffix, errno_name)

    def _fail(self, phase: str, suffix: str, errno_name: str) -> None:
        code = getattr(errno, errno_name, None)
        if not isinstance(code, int) or not errno_name.startswith("E"):
            raise ValueError(f"{errno_name!r} is not an errno name such as EIO")
        self.release_writes()

        def fault(when: str, path: str, data: str) -> None:
            if when == phase and path.endswith(suffix):
                raise OSError(code, os.strerror(code))

        self._stalled = threading.Event()  # so that release_writes() clears the fault
        self.set_fault(fault)

    def _stall(self, phase: str, suffix: str) -> None:
        gate = threading.Event()
        self.release_writes()
        self._stalled = gate
        self._stall_hit.clear()

        def fault(when: str, path: str, data: str) -> None:
            if when == phase and path.endswith(suffix):
                self._stalled_path = path
                self._stall_hit.set()
                gate.wait()

        self.set_fault(fault)

    def wait_stalled(self, timeout: float) -> str:
        """The path of the first write or read that hangs since stall_writes() or
        stall_reads(), once one does."""
        if not self._stall_hit.wait(timeout):
            raise TimeoutError(f"nothing stalled within {timeout:.0f} s")
        return self._stalled_path

    def release_writes(self) -> None:
        """Let every stalled write or read go on."""
        gate, self._stalled = self._stalled, None
        if gate is not None:
            self.set_fault(None)
            gate.set()

    def uevents(self) -> list[tuple[float, str, str]]:
        """(CLOCK_MONOTONIC time, action, syspath) of the last 1000 uevents sent."""
        with self._lock:
            return list(self.tb.sent)

    def mdevs(self) -> list[tuple[str, str, str]]:
        """(uuid, parent, type id) of every mdev, in creation order."""
        with self._lock:
            return [(m.uuid, m.parent, m.type_id) for m in self.kernel.mdevs.values() if not m.removing]

    def model(self) -> threading.Lock:
        """The model's lock, for a caller that changes the kernel's facts (the machine)."""
        return self._lock

    # -- internals -----------------------------------------------------------------------
    @property
    def tb(self) -> Testbed:
        if self._tb is None:
            raise RuntimeError("EmulatedHost is not started")
        return self._tb

    def _parent(self, name: str) -> Parent:
        try:
            return self.kernel.parent(name)
        except KeyError:
            raise _err(errno.ENODEV) from None

    def _parent_links(self, p: Parent) -> None:
        tb, dev = self.tb, "/sys" + p.devpath
        tb.mkdir("/sys" + p.subsystem)
        if p.subsystem != "/bus/pci":  # the PCI bus's links are rendered (gvtd.sim.sysfs)
            tb.link(f"/sys{p.subsystem}/{p.name}", dev)
        tb.mkdir(f"/sys/bus/mdev/drivers/{p.mdev_driver}")
        if p.registered:
            tb.link(f"/sys/class/mdev_bus/{p.name}", dev)

    def _drop_links(self, m: Mdev) -> None:
        p = self.kernel.parent(m.parent)
        self.tb.unlink(f"/sys/bus/mdev/devices/{m.uuid}")
        self.tb.unlink(f"/sys/bus/mdev/drivers/{p.mdev_driver}/{m.uuid}")
        self.tb.unlink(f"/sys/class/vfio-dev/vfio{m.vfio}")

    def _log(self, path: str, data: str, result: str, seconds: float = 0.0) -> None:
        with self._lock:
            self.kernel.log_write(path, data, result, seconds)

    def _change(self, p: Parent, state: str) -> None:
        with self._lock:
            p.extra_uevent = {"MDEV_STATE": state}
        try:
            self.tb.send("/sys" + p.devpath, "change")
        finally:
            with self._lock:
                p.extra_uevent = {}

    def _create(self, parent: str, type_id: str, text: str) -> str:
        p = self.kernel.parent(parent)
        try:
            with self._lock:
                uuid = self.kernel.create(parent, type_id, text)
                m = self.kernel.mdevs[uuid]
        except CreateError as e:
            if e.probed:  # the core added the device before the driver's probe said no
                self._failed_probe(p, type_id, str(e.filename))
            raise
        dev = f"/sys{p.devpath}/{uuid}"
        self.tb.link(f"/sys/bus/mdev/devices/{uuid}", dev)
        self.tb.send(dev, "add")
        with self._lock:
            # Linux adds the link after the bind; each emulated uevent takes milliseconds where
            # Linux's take microseconds, so here the link follows the add, to keep the gap as
            # short as a reader meets it on Linux (AddUntypedMdev holds it open).
            m.typed = not self._untyped_next
            m.vfio_present = True
        self.tb.link(f"/sys/class/vfio-dev/vfio{m.vfio}", f"{dev}/vfio-dev/vfio{m.vfio}")
        self.tb.send(f"{dev}/vfio-dev/vfio{m.vfio}", "add")
        with self._lock:
            m.bound = True
        self.tb.link(f"/sys/bus/mdev/drivers/{p.mdev_driver}/{uuid}", dev)
        self.tb.send(dev, "bind")
        return uuid

    def _failed_probe(self, p: Parent, type_id: str, uuid: str) -> None:
        dev = f"/sys{p.devpath}/{uuid}"
        with self._lock:
            self.kernel.mdevs[uuid] = Mdev(uuid, p.name, type_id, -1, removing=True)
        try:
            self.tb.link(f"/sys/bus/mdev/devices/{uuid}", dev)
            self.tb.send(dev, "add")
            self.tb.unlink(f"/sys/bus/mdev/devices/{uuid}")
            self.tb.send(dev, "remove")
        finally:
            with self._lock:
                self.kernel.drop(uuid)

    def _remove(self, uuid: str, force: bool = False) -> None:
        with self._lock:
            m = self.kernel.remove(uuid, force)
            p = self.kernel.parent(m.parent)
        dev = f"/sys{p.devpath}/{uuid}"
        try:
            self.tb.send(f"{dev}/vfio-dev/vfio{m.vfio}", "remove")
            with self._lock:
                m.vfio_present = False
            self.tb.unlink(f"/sys/class/vfio-dev/vfio{m.vfio}")
            self.tb.unlink(f"/sys/bus/mdev/devices/{uuid}")
            with self._lock:
                m.bound = False
            self.tb.unlink(f"/sys/bus/mdev/drivers/{p.mdev_driver}/{uuid}")
            self.tb.send(dev, "unbind")
            self.tb.send(dev, "remove")
        finally:
            with self._lock:
                self._drop_links(m)
                self.kernel.drop(uuid)

    # -- the PCI SR-IOV core ------------------------------------------------------------------
    def unbind_driver(self, name: str) -> None:
        """The device's driver letting go (a PF's driver unloading takes its VFs first, as
        i915's and xe's remove disable SR-IOV); nothing when it has none. ENODEV (OSError)
        for an unknown device."""
        with self._op:
            with self._lock:
                dev = self.kernel.pci_device(name)
            if dev.driver is None:
                return
            if dev.sriov is not None and self.kernel.vfs_of(dev.name):
                self._disable_vfs(dev)
            self._unbind(dev)

    def bind_driver(self, name: str, driver: str) -> None:
        """``driver`` taking the device whatever its override and autoprobe say (a module
        loading with the device in its table, a host tool binding it); the driver is
        loaded first if it is not. EBUSY when another driver has it, the probe's errno
        (vfio-pci without an IOMMU group: EINVAL) when it fails."""
        with self._op:
            with self._lock:
                dev = self.kernel.pci_device(name)
                if dev.driver == driver:
                    return
                if dev.driver is not None:
                    raise _err(errno.EBUSY)
                drv = self.kernel.load_driver(driver)
                code = self.kernel.probe_failure(drv, dev)
            if code:
                self.printk(f"{driver} {dev.name}: probe with driver {driver} failed with "
                            f"error -{code}")
                raise _err(code)
            self._bind(dev, driver)

    def forget_vfs(self) -> None:
        """A reboot: every VF is gone without uevents, autoprobe is 1, overrides cleared."""
        with self._op, self._lock:
            for vf in self.kernel.forget_vfs():
                self._drop_vf_links(vf)

    def pci_devices(self) -> list[tuple[str, str, str]]:
        """(name, driver or "", driver_override or "") of every PCI function of the SR-IOV
        core, PFs first, VFs in index order."""
        with self._lock:
            return [(d.name, d.driver or "", d.driver_override or "")
                    for d in sorted(self.kernel.pci.values(),
                                    key=lambda d: (d.physfn is not None, d.name))]

    def _group_link(self, d: PciDevice) -> None:
        if d.iommu_group is not None:
            self.tb.link(f"/sys/kernel/iommu_groups/{d.iommu_group}/devices/{d.name}",
                         "/sys" + d.devpath)

    def _drop_vf_links(self, vf: PciDevice) -> None:
        if vf.iommu_group is not None:
            group = f"/sys/kernel/iommu_groups/{vf.iommu_group}"
            self.tb.unlink(f"{group}/devices/{vf.name}")
            shutil.rmtree(self.tb.real(group), ignore_errors=True)
        if vf.vfio >= 0:
            self.tb.unlink(f"/sys/class/vfio-dev/vfio{vf.vfio}")
        if vf.iommu_group is not None and vf.vfio_group:
            self.tb.unlink(f"/sys/class/vfio/{vf.iommu_group}")

    def _bind(self, dev: PciDevice, driver: str) -> None:
        """Bind with its uevents (vfio-pci: the group's vfio device and vfio-dev first)."""
        sys_dev = "/sys" + dev.devpath
        if driver == VFIO_PCI:
            with self._lock:
                first = dev.iommu_group not in self.kernel.vfio_groups()
                self.kernel.vfio_attach(dev)
            if first:
                group = f"/sys/devices/virtual/vfio/{dev.iommu_group}"
                self.tb.link(f"/sys/class/vfio/{dev.iommu_group}", group)
                self.tb.send(group, "add")
            vfio = f"{sys_dev}/vfio-dev/vfio{dev.vfio}"
            self.tb.link(f"/sys/class/vfio-dev/vfio{dev.vfio}", vfio)
            self.tb.send(vfio, "add")
        with self._lock:
            self.kernel.bind(dev, driver)
        self.tb.send(sys_dev, "bind")
        if dev.sriov is not None:
            self.printk(self._driver_line(dev, "probe"))

    def _unbind(self, dev: PciDevice) -> None:
        """Unbind with its uevents (vfio-pci: vfio-dev and the group's device go first)."""
        sys_dev = "/sys" + dev.devpath
        if dev.vfio_dev:
            self.tb.send(f"{sys_dev}/vfio-dev/vfio{dev.vfio}", "remove")
            with self._lock:
                dev.vfio_dev = False
            self.tb.unlink(f"/sys/class/vfio-dev/vfio{dev.vfio}")
        if dev.vfio_group and dev.iommu_group is not None:
            with self._lock:
                last = len(self.kernel.vfio_groups().get(dev.iommu_group, [])) == 1
            if last:
                self.tb.send(f"/sys/devices/virtual/vfio/{dev.iommu_group}", "remove")
                self.tb.unlink(f"/sys/class/vfio/{dev.iommu_group}")
            with self._lock:
                dev.vfio_group = False
        with self._lock:
            self.kernel.unbind(dev)
        self.tb.send(sys_dev, "unbind")

    def _enable_vfs(self, pf: PciDevice, n: int) -> None:
        """sriov_enable(): each VF added, linked, probed; then ``change`` on the PF."""
        assert pf.sriov is not None
        for index in range(n):
            with self._lock:
                vf = self.kernel.add_vf(pf, index)
            self.printk(f"pci {vf.name}: [{vf.vendor:04x}:{vf.device:04x}] type 00 class "
                        f"0x{vf.pci_class:06x} PCIe Root Complex Integrated Endpoint")
            if vf.iommu_group is not None:
                self._group_link(vf)
                self.printk(f"pci {vf.name}: Adding to iommu group {vf.iommu_group}")
            self.tb.send("/sys" + vf.devpath, "add")
            with self._lock:
                vf.linked = True
            self.tb.send("/sys" + vf.devpath, "change")
            with self._lock:
                driver = self.kernel.probe(vf)
            if driver is not None:
                self._bind(vf, driver)
        with self._lock:
            pf.sriov.num = n
        self.tb.send("/sys" + pf.devpath, "change")
        self.printk(self._driver_line(pf, "enabled"))

    def _disable_vfs(self, pf: PciDevice) -> None:
        """sriov_disable(): each VF unlinked, unbound, removed, in index order."""
        assert pf.sriov is not None
        vfs = self.kernel.vfs_of(pf.name)
        for vf in vfs:
            with self._lock:
                vf.linked = False
            if vf.driver is not None:
                self._unbind(vf)
            with self._lock:
                vf.gone = True
            self.tb.send("/sys" + vf.devpath, "remove")
            with self._lock:
                self._drop_vf_links(vf)
                self.kernel.drop_vf(vf)
        with self._lock:
            pf.sriov.num = 0
        self.printk(self._driver_line(pf, "disabled", len(vfs)))

    def _driver_line(self, pf: PciDevice, what: str, n: int = 0) -> str:
        """The PF driver's kernel log line for a probe or a changed VF count."""
        assert pf.sriov is not None
        drv, total = pf.driver or "pci", self.kernel.totalvfs(pf)
        n = n or pf.sriov.num
        if drv == "xe":
            return {"probe": f"xe {pf.name}: [drm] Running in SR-IOV PF mode",
                    "enabled": f"xe {pf.name}: [drm] PF: Enabled {n} of {total} VFs",
                    "disabled": f"xe {pf.name}: [drm] PF: Disabled {n} VFs"}[what]
        return {"probe": f"{drv} {pf.name}: {total} VFs could be associated with this PF",
                "enabled": f"{drv} {pf.name}: Enabled {n} VFs",
                "disabled": f"{drv} {pf.name}: Disabled {n} VFs"}[what]

    def _on_pci(self, name: str, attr: str, text: str) -> None:
        """A write to a PCI function's sriov_numvfs, sriov_drivers_autoprobe or
        driver_override."""
        with self._op:
            with self._lock:
                dev = self.kernel.pci_device(name)
                if attr == "driver_override":
                    self.kernel.set_override(dev, text)
                    return
                if attr == "sriov_drivers_autoprobe":
                    self.kernel.set_autoprobe(dev, text)
                    return
                try:
                    wanted = self.kernel.numvfs_request(dev, text)
                except OSError as e:
                    if e.errno in (errno.ENOENT, errno.EBUSY):  # the kernel says why
                        self.printk(f"{dev.driver or 'pci'} {dev.name}: {e.filename}")
                    raise _err(e.errno or errno.EIO) from None
            if wanted is None:
                return
            if wanted:
                self._enable_vfs(dev, wanted)
            else:
                self._disable_vfs(dev)

    def _on_bus(self, driver: str, attr: str, text: str) -> None:
        """``/sys/bus/pci/drivers_probe`` (driver "") or a driver's ``bind``/``unbind``."""
        failed = ""
        with self._op:
            with self._lock:
                dev = self.kernel.pci_device(text)
                if attr == "unbind":
                    self.kernel.check_unbind(driver, dev)
                elif attr == "bind":
                    self.kernel.check_bind(driver, dev)
                else:
                    driver = self.kernel.probe(dev) or ""
                    failed = "" if driver else self.kernel.failing_probe(dev)
            if attr == "drivers_probe" and failed:  # device_attach() only logs it
                code = self.kernel.probe_failure(self.kernel.pci_drivers[failed], dev)
                self.printk(f"{failed} {dev.name}: probe with driver {failed} failed with "
                            f"error -{code}")
            if attr == "unbind":
                self._unbind(dev)
            elif driver:
                self._bind(dev, driver)

    # -- sysfs write handlers ----------------------------------------------------------------
    def _on_create(self, parent: str, type_id: str, text: str) -> None:
        with self._op:
            self._create(parent, type_id, text)

    def _on_remove(self, uuid: str, text: str) -> None:
        value = text[:-1] if text.endswith("\n") else text
        if not _ULONG.match(value):
            raise _err(errno.EINVAL)
        if re.sub(r"^\+?(0[xX])?", "", value).strip("0"):  # kstrtoul(): nonzero removes
            with self._op:
                self._remove(uuid)

    def _on_uevent(self, devpath: str, text: str) -> None:
        """``echo change > uevent``: a synthetic event, as ``udevadm trigger`` asks for."""
        action = text.split()[0] if text.split() else ""
        if action not in _SYNTH_ACTIONS:
            raise _err(errno.EINVAL)
        with self._op:
            self.tb.send("/sys" + devpath, action)
