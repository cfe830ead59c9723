"""The emulated host kernel: model + umockdev testbed + FUSE sysfs, behind one small API.

Layout of the testbed root (``host.root``; every ``/sys`` path below lives at
``<root>/sys/...`` and processes under the preload see it as ``/sys``)::

    sys/devices/                    FUSE (gvtd.sim.sysfs): rendered from gvtd.sim.kernel
      pci0000:00/0000:00:02.0/      i915 parent: vendor device class uevent driver subsystem
        mdev_supported_types/<t>/   while registered: create available_instances device_api
                                    name [description] devices/<uuid>
        <uuid>/                     uevent remove mdev_type subsystem driver vfio-dev/vfioN/
      virtual/mtty/mtty/            sample parents (profiles mtty, multi), same shape
    sys/bus/pci/devices/<addr>      real symlinks, kept in step by this module
    sys/bus/pci/drivers/i915/<addr>
    sys/bus/mdev/devices/<uuid>
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

from .kernel import CreateError, Kernel, Mdev, Parent, WriteRecord, make_kernel
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
        for d in ("/sys/bus/mdev/devices", "/sys/class/mdev_bus", "/sys/class/vfio-dev"):
            tb.mkdir(d)
        for p in self.kernel.parents.values():
            self._parent_links(p)
        handlers = Handlers(self._on_create, self._on_remove, self._on_uevent)
        self._ops = SysfsOps(Tree(self.kernel, handlers), self._lock, self._log)
        try:
            self._thread = serve(self._ops, tb.real("/sys/devices"))
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
        unmount(tb.real("/sys/devices"))
        if self._thread is not None:
            self._thread.join(10)
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
        self._ops.fault = fault

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
        if p.subsystem == "/bus/pci":
            tb.link(f"/sys/bus/pci/devices/{p.name}", dev)
        else:
            tb.link(f"/sys{p.subsystem}/{p.name}", dev)
        if p.driver:
            tb.link(f"/sys{p.driver}/{p.name}", dev)
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
