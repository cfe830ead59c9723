"""The kernel model rendered as Linux 6.1's sysfs, served by FUSE over ``<root>/sys/devices``
and ``<root>/sys/bus/pci``.

Two mounts of the same tree are served: ``/sys/devices``, the part whose content the kernel
computes (capacity, ``create``, ``remove``, the PCI functions and their ``sriov_*`` files,
vfio's group devices), and ``/sys/bus/pci``, the PCI bus itself: its ``devices/`` links, its
drivers with their ``bind``/``unbind`` files and device links, and ``drivers_probe``. The
bus is a mount of its own rather than real files because its writable files act on the
kernel (``drivers_probe`` binds a device) and its links follow every VF's arrival and
departure: rendering them from the model keeps them right by construction, where real
symlinks would be a second copy to keep in step. A mount over ``/sys`` as a whole would also
have to serve the plain files the machine writes (``/sys/module``, ``/sys/kernel``,
``/sys/class``); ``/sys/bus/pci`` is the one directory outside ``/sys/devices`` whose files
have kernel behaviour. Links elsewhere in ``/sys`` (the mdev bus, classes, IOMMU groups) are
real symlinks that :mod:`gvtd.sim.host` keeps in step. The tree is rebuilt level by level on
every lookup from the model, so there is no second copy of the state to fall out of date.

Concurrency: reads take the model lock briefly. Writes to ``create``/``remove`` go to the
host's handlers, which send uevents *before* the write returns; umockdev reads the device's
``uevent`` file through this same mount while sending, so a write must never hold the model
lock across a send (the handlers serialise themselves with their own lock).
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Union

import mfusepy  # FUSE 3, as gvtd/sim/__init__.py asks for

from .kernel import VFIO_PCI, Kernel, Mdev, Parent, PciDevice

Node = Union["File", "Link", "Dir"]


@dataclass
class File:
    """A sysfs attribute: ``read`` renders it, ``write`` (if any) acts on it."""

    read: Callable[[], str] | None
    write: Callable[[str], None] | None = None

    @property
    def mode(self) -> int:
        return (0o444 if self.read else 0) | (0o200 if self.write else 0)


@dataclass
class Link:
    """A symlink; ``target`` is /sys-relative (``/bus/pci``) and rendered relative to its dir."""

    target: str


@dataclass
class Dir:
    """A directory whose entries are computed when asked."""

    entries: Callable[[], dict[str, Node]] = field(default=lambda: {})


@dataclass
class Handlers:
    """What the tree calls for writes that change the kernel (implemented by the host)."""

    create: Callable[[str, str, str], None]  # parent, type id, written text
    remove: Callable[[str, str], None]  # uuid, written text
    uevent: Callable[[str, str], None]  # devpath, written text (a synthetic uevent)
    # a PCI function's sriov_numvfs, sriov_drivers_autoprobe or driver_override: name, file, text
    pci: Callable[[str, str, str], None]
    # the PCI bus's drivers_probe (driver "") or a driver's bind/unbind: driver, file, text
    bus: Callable[[str, str, str], None]


VFIO_MAJOR = 242  # the vfio group character devices' (dynamic) major on a typical host


def _kv(props: dict[str, str]) -> str:
    return "".join(f"{k}={v}\n" for k, v in props.items())


class Tree:
    """Maps /sys-relative paths under ``/devices`` to nodes rendered from the kernel."""

    def __init__(self, kernel: Kernel, handlers: Handlers) -> None:
        self.k = kernel
        self.h = handlers

    def lookup(self, path: str) -> Node | None:
        """The node at ``path`` (e.g. ``/devices/pci0000:00``, ``/bus/pci/drivers``), or None."""
        node: Node = Dir(lambda: {"devices": self.root(), "bus": Dir(lambda: {"pci": self.pci_bus()})})
        for part in [p for p in path.split("/") if p]:
            if not isinstance(node, Dir):
                return None
            found = node.entries().get(part)
            if found is None:
                return None
            node = found
        return node

    def root(self) -> Dir:
        devices = self._prefix_dir("/devices")
        return Dir(lambda: {**devices.entries(), "system": Dir(lambda: {"cpu": self._cpus()})})

    def _cpus(self) -> Dir:
        """``system/cpu/cpuN/topology``: what vCPU pinning reads (x86: cpu0 has no
        ``online``, it cannot go offline)."""

        def cpu(n: int, core_id: int, core: tuple[int, ...]) -> Dir:
            topology = {"thread_siblings_list": File(lambda: ",".join(map(str, core)) + "\n"),
                        "core_id": File(lambda: f"{core_id}\n"),
                        "physical_package_id": File(lambda: "0\n")}
            return Dir(lambda: {"topology": Dir(lambda: topology),
                                **({"online": File(lambda: "1\n")} if n else {})})

        return Dir(lambda: {f"cpu{n}": cpu(n, i, core)
                            for i, core in enumerate(self.k.cpu_cores) for n in core})

    def _devices(self) -> dict[str, Callable[[], Dir]]:
        """Every device directory by devpath: mdev parents, PCI functions, vfio groups."""
        out: dict[str, Callable[[], Dir]] = {
            p.devpath: lambda p=p: self._parent_dir(p) for p in self.k.parents.values()}
        out.update({d.devpath: lambda d=d: self._pci_dir(d) for d in self.k.pci.values()})
        out.update({f"/devices/virtual/vfio/{g}": lambda g=g: self._vfio_group_dir(g)
                    for g in self.k.vfio_groups()})
        return out

    def _prefix_dir(self, path: str) -> Dir:
        """A directory on the way to some devices' devpaths (``pci0000:00``, ``virtual/mtty``)."""

        def entries() -> dict[str, Node]:
            out: dict[str, Node] = {}
            if path.count("/") == 2 and os.path.basename(path).startswith("pci"):
                out["uevent"] = File(lambda: "", self._trigger(path))  # the PCI root bridge
            for devpath, make in self._devices().items():
                if devpath.startswith(path + "/"):
                    name = devpath[len(path) + 1 :].split("/")[0]
                    sub = f"{path}/{name}"
                    out[name] = make() if sub == devpath else self._prefix_dir(sub)
            return out

        return Dir(entries)

    def _pci_dir(self, d: PciDevice) -> Dir:
        """A PCI function the SR-IOV core manages: its ids, ``driver_override``, its IOMMU
        group and driver links; a PF's ``sriov_*`` files and ``virtfnN`` links; a VF's
        ``physfn``; ``vfio-dev/vfioN`` while vfio-pci has it."""
        at = d.devpath

        def write(attr: str) -> Callable[[str], None]:
            return lambda text: self.h.pci(d.name, attr, text)

        def entries() -> dict[str, Node]:
            out: dict[str, Node] = {
                "vendor": File(lambda: f"0x{d.vendor:04x}\n"),
                "device": File(lambda: f"0x{d.device:04x}\n"),
                "class": File(lambda: f"0x{d.pci_class:06x}\n"),
                "subsystem_vendor": File(lambda: f"0x{d.subsys[0]:04x}\n"),
                "subsystem_device": File(lambda: f"0x{d.subsys[1]:04x}\n"),
                "uevent": File(lambda: _kv(d.uevent()), self._trigger(at)),
                "driver_override": File(lambda: f"{d.driver_override or '(null)'}\n",
                                        write("driver_override")),
            }
            links = {"subsystem": "/bus/pci"}
            if d.driver:
                links["driver"] = f"/bus/pci/drivers/{d.driver}"
            if d.iommu_group is not None:
                links["iommu_group"] = f"/kernel/iommu_groups/{d.iommu_group}"
            sriov = d.sriov
            if sriov is not None:
                out.update({
                    "sriov_totalvfs": File(lambda: f"{self.k.totalvfs(d)}\n"),
                    "sriov_numvfs": File(lambda: f"{sriov.num}\n", write("sriov_numvfs")),
                    "sriov_offset": File(lambda: f"{sriov.offset}\n"),
                    "sriov_stride": File(lambda: f"{sriov.stride}\n"),
                    "sriov_vf_device": File(lambda: f"{sriov.vf_device:x}\n"),
                    "sriov_vf_total_msix": File(lambda: "0\n"),
                    "sriov_drivers_autoprobe": File(lambda: f"{int(sriov.autoprobe)}\n",
                                                    write("sriov_drivers_autoprobe")),
                })
                for vf in self.k.vfs_of(d.name):
                    if vf.linked:
                        links[f"virtfn{vf.vf_index}"] = vf.devpath
            if d.physfn is not None and d.linked:
                links["physfn"] = self.k.pci[d.physfn].devpath
            out.update(self._links(at, links))
            if d.vfio_dev:
                vat = f"{at}/vfio-dev/vfio{d.vfio}"
                vfio = Dir(lambda: {
                    "uevent": File(lambda: "", self._trigger(vat)),
                    **self._links(vat, {"subsystem": "/class/vfio-dev", "device": at})})
                out["vfio-dev"] = Dir(lambda: {f"vfio{d.vfio}": vfio})
            return out

        return Dir(entries)

    def _vfio_group_dir(self, group: int) -> Dir:
        """vfio's character device for an IOMMU group (udev makes /dev/vfio/<group> of it)."""
        at = f"/devices/virtual/vfio/{group}"
        uevent = {"MAJOR": str(VFIO_MAJOR), "MINOR": str(group), "DEVNAME": f"vfio/{group}"}
        return Dir(lambda: {
            "uevent": File(lambda: _kv(uevent), self._trigger(at)),
            "dev": File(lambda: f"{VFIO_MAJOR}:{group}\n"),
            **self._links(at, {"subsystem": "/class/vfio"})})

    def pci_bus(self) -> Dir:
        """``/sys/bus/pci``: the bus's device links, its drivers and ``drivers_probe``."""
        at = "/bus/pci"

        def devices() -> dict[str, Node]:
            found = {p.name: p.devpath for p in self.k.parents.values() if p.subsystem == at}
            found.update({d.name: d.devpath for d in self.k.pci.values() if not d.gone})
            return self._links(f"{at}/devices", found)

        def entries() -> dict[str, Node]:
            return {
                "devices": Dir(devices),
                "drivers": Dir(lambda: {n: self._driver_dir(n) for n in self._driver_names()}),
                "drivers_probe": File(None, lambda text: self.h.bus("", "drivers_probe", text)),
                "drivers_autoprobe": File(lambda: "1\n"),
            }

        return Dir(entries)

    def _driver_names(self) -> list[str]:
        names = list(self.k.pci_drivers)
        for p in self.k.parents.values():
            if p.driver and p.driver.startswith("/bus/pci/drivers/"):
                names.append(os.path.basename(p.driver))
        return list(dict.fromkeys(names))

    def _driver_dir(self, name: str) -> Dir:
        """``/sys/bus/pci/drivers/<name>``: bind, unbind and a link to each of its devices."""
        at = f"/bus/pci/drivers/{name}"
        driver = self.k.pci_drivers.get(name)
        module = driver.module if driver else name

        def entries() -> dict[str, Node]:
            bound = {p.name: p.devpath for p in self.k.parents.values()
                     if p.driver == at}
            bound.update({d.name: d.devpath for d in self.k.pci.values() if d.driver == name})
            return {
                "bind": File(None, lambda text: self.h.bus(name, "bind", text)),
                "unbind": File(None, lambda text: self.h.bus(name, "unbind", text)),
                "uevent": File(None, lambda text: None),
                **self._links(at, {**bound, "module": f"/module/{module}"}),
            }

        return Dir(entries)

    def _trigger(self, devpath: str) -> Callable[[str], None]:
        return lambda text: self.h.uevent(devpath, text)

    def _links(self, at: str, links: dict[str, str]) -> dict[str, Node]:
        return {name: Link(os.path.relpath(target, at)) for name, target in links.items()}

    def _parent_dir(self, p: Parent) -> Dir:
        def entries() -> dict[str, Node]:
            out: dict[str, Node] = {n: File(lambda v=v: v) for n, v in p.attrs.items()}
            out["uevent"] = File(lambda: _kv({**p.uevent, **p.extra_uevent}), self._trigger(p.devpath))
            links = {"subsystem": p.subsystem}
            if p.driver:
                links["driver"] = p.driver
            out.update(self._links(p.devpath, links))
            if p.registered:
                out["mdev_supported_types"] = Dir(
                    lambda: {t: self._type_dir(p, t) for t in p.types}
                )
            for m in self.k.mdevs_of(p.name):
                out[m.uuid] = self._mdev_dir(p, m)
            return out

        return Dir(entries)

    def _type_dir(self, p: Parent, type_id: str) -> Dir:
        t = p.types[type_id]
        at = f"{p.devpath}/mdev_supported_types/{type_id}/devices"

        def entries() -> dict[str, Node]:
            out: dict[str, Node] = {
                "create": File(None, lambda text: self.h.create(p.name, type_id, text)),
                "available_instances": File(lambda: f"{self.k.available(p.name, type_id)}\n"),
                "device_api": File(lambda: f"{t.device_api}\n"),
                "name": File(lambda: f"{t.name}\n"),
                "devices": Dir(
                    lambda: self._links(
                        at,
                        {
                            m.uuid: f"{p.devpath}/{m.uuid}"
                            for m in self.k.mdevs_of(p.name)
                            if m.type_id == type_id and m.typed and not m.removing
                        },
                    )
                ),
            }
            if t.description is not None:
                out["description"] = File(lambda: t.description or "")
            return out

        return Dir(entries)

    def _mdev_dir(self, p: Parent, m: Mdev) -> Dir:
        at = f"{p.devpath}/{m.uuid}"

        def entries() -> dict[str, Node]:
            out: dict[str, Node] = {
                "uevent": File(
                    lambda: _kv({"DRIVER": p.mdev_driver} if m.bound else {}), self._trigger(at)
                ),
                "remove": File(None, lambda text: self.h.remove(m.uuid, text)),
            }
            links = {"subsystem": "/bus/mdev"}
            if m.typed:
                links["mdev_type"] = f"{p.devpath}/mdev_supported_types/{m.type_id}"
            if m.bound:
                links["driver"] = f"/bus/mdev/drivers/{p.mdev_driver}"
            out.update(self._links(at, links))
            if m.vgpu_id:  # kvmgt's attribute group (intel_vgpu_groups)
                out["intel_vgpu"] = Dir(lambda: {"vgpu_id": File(lambda: f"{m.vgpu_id}\n")})
            if m.vfio_present:
                vat = f"{at}/vfio-dev/vfio{m.vfio}"
                vfio = Dir(
                    lambda: {
                        "uevent": File(lambda: "", self._trigger(vat)),
                        **self._links(vat, {"subsystem": "/class/vfio-dev", "device": at}),
                    }
                )
                out["vfio-dev"] = Dir(lambda: {f"vfio{m.vfio}": vfio})
            return out

        return Dir(entries)


def _kind(node: Node) -> int:
    return stat.S_IFDIR if isinstance(node, Dir) else stat.S_IFLNK if isinstance(node, Link) else stat.S_IFREG


class SysfsOps(mfusepy.Operations):
    """FUSE operations over a :class:`Tree`; paths arrive relative to ``/sys<prefix>``."""

    use_ns = True

    def __init__(self, tree: Tree, lock: threading.Lock, log: Callable[..., None],
                 prefix: str = "/devices") -> None:
        self.tree = tree
        self.prefix = prefix  # the /sys-relative directory this mount serves
        self._mlock = lock
        self.log = log
        self.ready = threading.Event()
        # Called as fault(phase, path, data) with phase "before" or "after" around every
        # write, and "read" (data "") before every read and lookup (getattr); it may raise
        # OSError to fail the write or read, or block to hold it. Fault-injection tests use it.
        self.fault: Callable[[str, str, str], None] | None = None
        self.stamp = time.time_ns()
        self.uid, self.gid = os.getuid(), os.getgid()

    def init_with_config(self, conn_info: Any, config_3: Any) -> None:
        """No kernel caching: the tree changes under the reader, as sysfs does."""
        if config_3 is not None:
            cfg = getattr(config_3, "contents", config_3)
            cfg.entry_timeout = cfg.attr_timeout = cfg.negative_timeout = 0.0
            cfg.direct_io = 1  # reads return the real content although st_size says 4096
            cfg.use_ino = 0
        self.ready.set()

    def _node(self, path: str) -> Node:
        with self._mlock:
            node = self.tree.lookup(self.prefix + path.rstrip("/"))
        if node is None:
            raise mfusepy.FuseOSError(errno.ENOENT)
        return node

    def _read_fault(self, path: str) -> None:
        if self.fault is not None:
            try:
                self.fault("read", "/sys" + self.prefix + path, "")
            except OSError as e:
                raise mfusepy.FuseOSError(e.errno or errno.EIO) from None

    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        """Files claim 4096 bytes like sysfs; direct_io makes reads stop at the real end."""
        self._read_fault(path)  # every lookup of the path, even of one that is not there
        node = self._node(path)
        t = self.stamp
        base = {"st_uid": self.uid, "st_gid": self.gid, "st_atime": t, "st_mtime": t, "st_ctime": t}
        if isinstance(node, Dir):
            return {**base, "st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2, "st_size": 0}
        if isinstance(node, Link):
            return {**base, "st_mode": stat.S_IFLNK | 0o777, "st_nlink": 1, "st_size": len(node.target)}
        return {**base, "st_mode": stat.S_IFREG | node.mode, "st_nlink": 1, "st_size": 4096}

    def readdir(self, path: str, fh: int) -> list[tuple[str, int, int]]:
        """Entries with their type, so that walkers need no stat per entry (d_type)."""
        node = self._node(path)
        if not isinstance(node, Dir):
            raise mfusepy.FuseOSError(errno.ENOTDIR)
        with self._mlock:
            entries = node.entries()
        out = [(".", stat.S_IFDIR, 0), ("..", stat.S_IFDIR, 0)]
        return out + [(name, _kind(n), 0) for name, n in entries.items()]

    def readlink(self, path: str) -> str:
        node = self._node(path)
        if not isinstance(node, Link):
            raise mfusepy.FuseOSError(errno.EINVAL)
        return node.target

    def open(self, path: str, flags: int) -> int:
        """kernfs refuses at open a direction the attribute lacks, even to root: EACCES."""
        node = self._node(path)
        if not isinstance(node, File):
            raise mfusepy.FuseOSError(errno.EISDIR)
        acc = flags & os.O_ACCMODE
        if acc != os.O_RDONLY and node.write is None:
            self.log("/sys" + self.prefix + path, "", "EACCES")  # a write attempt, refused at open
            raise mfusepy.FuseOSError(errno.EACCES)
        if acc != os.O_WRONLY and node.read is None:
            raise mfusepy.FuseOSError(errno.EACCES)
        return 0

    def truncate(self, path: str, length: int, fh: Any = None) -> int:
        """``echo x > attr`` truncates first; sysfs ignores that."""
        node = self._node(path)
        if not isinstance(node, File) or node.write is None:
            raise mfusepy.FuseOSError(errno.EACCES)
        return 0

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        self._read_fault(path)
        node = self._node(path)
        if not isinstance(node, File) or node.read is None:
            raise mfusepy.FuseOSError(errno.EACCES)
        with self._mlock:
            data = node.read().encode()
        return data[offset : offset + size]

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        """Synchronous like kernfs: the handler's work (and uevents) is done when this returns."""
        started = time.perf_counter()
        text = data.decode(errors="replace")
        full = "/sys" + self.prefix + path
        try:
            with self._mlock:
                node = self.tree.lookup(self.prefix + path)
            if node is None:  # an open file whose device went away: kernfs says ENODEV
                raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
            if not isinstance(node, File) or node.write is None:
                raise OSError(errno.EACCES, os.strerror(errno.EACCES))
            if self.fault is not None:
                self.fault("before", full, text)
            node.write(text)
            if self.fault is not None:
                self.fault("after", full, text)
        except OSError as e:
            code = e.errno or errno.EIO
            self.log(full, text, errno.errorcode.get(code, str(code)),
                     time.perf_counter() - started)
            raise mfusepy.FuseOSError(code) from None
        self.log(full, text, "ok", time.perf_counter() - started)
        return len(data)

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 4096, "f_namemax": 255}


def serve(ops: SysfsOps, mountpoint: str) -> threading.Thread:
    """Mount ``ops`` at ``mountpoint`` in a daemon thread; returns once the mount answers."""
    return mount(ops, mountpoint, "sysfs", default_permissions=True, max_threads=32)


def mount(ops: Any, mountpoint: str, fsname: str, **opts: Any) -> threading.Thread:
    """Mount a FUSE file system (its ``ready`` event set by its init) in a daemon thread;
    returns once it answers."""
    opts["fsname"] = fsname
    if os.geteuid() == 0:
        opts["allow_other"] = True
    errors: list[BaseException] = []

    def run() -> None:
        try:
            mfusepy.FUSE(ops, mountpoint, foreground=True, **opts)
        except BaseException as e:  # reported to start()
            errors.append(e)
            ops.ready.set()

    thread = threading.Thread(target=run, name=f"gvtd-sim-{fsname}", daemon=True)
    thread.start()
    if not ops.ready.wait(30) or errors:
        raise RuntimeError(f"FUSE mount at {mountpoint} failed: {errors[0] if errors else 'timeout'}")
    return thread


def unmount(mountpoint: str) -> None:
    """Unmount (lazily if a reader still holds it open), without the preload: under it
    fusermount3 sees the testbed's mounts at /sys and refuses."""
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "UMOCKDEV_DIR")}
    if subprocess.run(["fusermount3", "-u", mountpoint], env=env, capture_output=True).returncode:
        subprocess.run(["fusermount3", "-u", "-z", mountpoint], env=env, capture_output=True)
