"""The kernel's mdev sysfs ABI, for any mdev parent: the only module that touches /sys.

Parents are the entries of /sys/class/mdev_bus; their types are directories of
`<parent>/mdev_supported_types`; mdevs are the entries of /sys/bus/mdev/devices. Every path
written is built from names read back from those listings, never from caller input alone,
and only `create`, `remove` and an mdev's own attributes are ever written.

Sysfs is the mdev backend (gvtd.backend.Backend): it also reads the uevents and the domain
hostdevs that are about mdevs. Parent, MdevType and Mdev (gvtd.backend.Instance) are
re-exported from gvtd.backend.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from gvtd import gvt
from gvtd.backend import HostdevOptions, Instance, MdevType, Parent, Uevent
from gvtd.config import ATTR_NAME_RE, TYPE_RE, UUID_RE
from gvtd.errors import Busy, Failed, GvtdError, InvalidArgument, NoCapacity, NotFound, ParentMissing

PCI_DISPLAY_CLASS = 0x03


Mdev = Instance  # an mdev is the mdev backend's instance: the name the callers knew

# sysfs renders an attribute into one page and hands it whole to the first read
ATTR_MAX = 4096


# What a read of a device that is not there (any more) fails with; anything else (EACCES,
# EIO) is a fault to report, not the device's absence.
GONE = frozenset({errno.ENOENT, errno.ENODEV})


class ReadFailed(Failed):
    """A sysfs read that failed for another reason than the file being gone."""

    def __init__(self, path: str, e: OSError) -> None:
        self.path = path
        self.errno_name = errno.errorcode.get(e.errno or 0, str(e.errno))
        super().__init__(f"Cannot read {path}: {e.strerror} ({self.errno_name}); gvtd keeps "
                         "what it read there before.")


def _where(path: Path | str, dir_fd: int | None) -> str:
    """The full path of a file opened relative to dir_fd, for a message."""
    if dir_fd is None:
        return str(path)
    try:
        return os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)
    except OSError:
        return str(path)


def absent(e: OSError, path: Path | str, dir_fd: int | None = None) -> None:
    """Returns when e says the file is gone; raises ReadFailed for any other errno."""
    if e.errno not in GONE:
        raise ReadFailed(_where(path, dir_fd), e) from e


def read_attr(path: Path | str, dir_fd: int | None = None, strict: bool = False) -> str | None:
    """A sysfs attribute's text, or None when it cannot be read (gone, or with strict
    False, no permission or an I/O error; strict raises ReadFailed for those).

    One open, one read, one close: a buffered text read adds two fstats, an ioctl, two
    lseeks and a read that meets the end, each a round trip through the kernel."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as e:
        if strict:
            absent(e, path, dir_fd)
        return None
    try:
        return os.read(fd, ATTR_MAX).decode(errors="replace")
    except OSError as e:
        if strict:
            absent(e, path, dir_fd)
        return None
    finally:
        os.close(fd)


def parse_int(text: str | None, base: int = 0) -> int | None:
    try:
        return int(text.strip(), base) if text is not None else None
    except ValueError:
        return None


def list_dir(path: Path, strict: bool = False) -> list[str]:
    """A directory's entries, sorted; empty when it is missing (sysfs dirs come and go).
    strict: ReadFailed when listing fails for another reason (see read_attr)."""
    try:
        return sorted(os.listdir(path))
    except OSError as e:
        if strict:
            absent(e, path)
        return []


def _link_name(path: Path | str, dir_fd: int | None = None) -> str:
    """Where a link points, by name; "" when it is gone, ReadFailed for another fault."""
    try:
        return os.path.basename(os.readlink(path, dir_fd=dir_fd))
    except OSError as e:
        absent(e, path, dir_fd)
        return ""


@contextmanager
def _opened(path: Path | str, dir_fd: int | None = None, listing: bool = False) -> Iterator[int]:
    """A directory held open, to open its files relative to it: each file is then one
    lookup instead of the whole path resolved again (sysfs paths run ten components deep).
    O_PATH unless it is to be listed. Raises OSError when it is gone."""
    fd = os.open(path, (os.O_RDONLY if listing else os.O_PATH) | os.O_DIRECTORY | os.O_CLOEXEC,
                 dir_fd=dir_fd)
    try:
        yield fd
    finally:
        os.close(fd)


def _resolve(link: Path) -> str:
    """Where a /sys/class or /sys/bus entry points: those are relative links straight to the
    device's directory, so one readlink does what realpath does with a lookup per component."""
    try:
        return os.path.normpath(os.path.join(os.path.dirname(link), os.readlink(link)))
    except OSError:
        return os.path.realpath(link)  # not a link (a test tree, a bind mount): as it is


def write_once(path: Path, text: str) -> None:
    """One write(2) of the whole value, as `echo ... > file` does; sysfs rejects partial
    ones."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


@dataclass
class Sysfs:
    """Reads and writes the mdev ABI below `root` (normally /sys): the mdev backend."""

    kind: ClassVar[str] = "mdev"
    root: Path = field(default_factory=lambda: Path("/sys"))
    # What a registered parent's driver fixed when it registered (ids, driver, each type's
    # name, description and device_api) is read once per registration; only
    # available_instances and the type list are read every time.
    _static: dict[str, tuple[Parent, dict[str, MdevType]]] = field(default_factory=dict)

    @property
    def _bus(self) -> Path:
        return self.root / "class" / "mdev_bus"

    @property
    def _mdevs(self) -> Path:
        return self.root / "bus" / "mdev" / "devices"

    # -- reading --------------------------------------------------------------------------

    def parents(self) -> list[Parent]:
        """Registered parents, plus Intel display devices that could be but are not."""
        registered = list_dir(self._bus, strict=True)
        for gone in set(self._static) - set(registered):
            del self._static[gone]  # unregistered: its driver may come back different
        found = {name: self._parent(name, self._bus / name, True) for name in registered}
        pci = self.root / "bus" / "pci" / "devices"
        for name in list_dir(pci, strict=True):
            if name in found:
                continue
            try:
                with _opened(pci / name) as d:
                    vendor = parse_int(read_attr("vendor", d, strict=True), 16)
                    cls = parse_int(read_attr("class", d, strict=True), 16)
                    gpu = vendor == gvt.INTEL_VENDOR and cls is not None \
                        and cls >> 16 == PCI_DISPLAY_CLASS
                    # an Intel GPU's SR-IOV VF is a display function too, and never a parent
                    gpu = gpu and not _link_name("physfn", d)
            except OSError as e:
                absent(e, pci / name)
                continue  # gone since listed
            if gpu:
                found[name] = self._parent(name, pci / name, False)
        return sorted(found.values(), key=lambda p: p.name)

    def parent(self, name: str) -> Parent | None:
        """One parent, reading only its own files."""
        if name in list_dir(self._bus, strict=True):
            return self._parent(name, self._bus / name, True)
        return next((p for p in self.parents() if p.name == name), None)

    def _parent(self, name: str, link: Path, registered: bool) -> Parent:
        cached = self._static.get(name) if registered else None
        if cached is None:
            syspath = _resolve(link)
            try:
                with _opened(syspath) as d:
                    base = Parent(name=name, syspath=syspath, driver=_link_name("driver", d),
                                  vendor=parse_int(read_attr("vendor", d, strict=True), 16),
                                  device=parse_int(read_attr("device", d, strict=True), 16),
                                  registered=registered)
            except OSError as e:  # gone since it was listed: what a read of its files would say
                absent(e, syspath)
                base = Parent(name=name, syspath=syspath, driver="", vendor=None, device=None,
                              registered=registered)
            cached = (base, {})
            if registered:
                self._static[name] = cached
        base, types = cached
        if not registered:
            return base
        return dataclasses.replace(base, types=tuple(self._types(base.syspath, types)))

    @staticmethod
    def _types(parent: str, known: dict[str, MdevType]) -> list[MdevType]:
        out = []
        try:
            with _opened(os.path.join(parent, "mdev_supported_types"), listing=True) as base:
                for type_id in sorted(os.listdir(base)):
                    try:
                        with _opened(type_id, base) as d:
                            static = known.get(type_id)
                            if static is None:
                                description = read_attr("description", d, strict=True)
                                known[type_id] = static = MdevType(
                                    id=type_id,
                                    name=(read_attr("name", d, strict=True) or type_id).strip(),
                                    description=description,
                                    device_api=(read_attr("device_api", d, strict=True)
                                                or "").strip(),
                                    available=0,
                                    gvt=gvt.parse_description(description),
                                )
                            available = parse_int(read_attr("available_instances", d,
                                                            strict=True)) or 0
                    except OSError as e:
                        absent(e, type_id, base)
                        continue  # the type went away while listed
                    out.append(dataclasses.replace(static, available=available))
        except OSError as e:
            absent(e, os.path.join(parent, "mdev_supported_types"))
            # no types (any more): the parent is unregistering
        return out

    def mdev(self, uuid: str) -> Mdev | None:
        """One mdev, or None when it is gone (or the name is not an mdev's)."""
        if not UUID_RE.fullmatch(uuid):
            return None
        dev = self._mdevs / uuid
        type_id = _link_name(dev / "mdev_type")
        if not type_id:
            return None
        # The bus's entry links straight to the device's directory below its parent: one
        # readlink, where realpath would look up every component of the path again.
        try:
            parent_dir = os.path.dirname(os.readlink(dev))
        except OSError as e:
            absent(e, dev)
            return None
        return Mdev(uuid=uuid, parent=os.path.basename(parent_dir), type_id=type_id)

    def mdev_arriving(self, uuid: str) -> bool:
        """The mdev is on the bus but its `mdev_type` link is not there yet: Linux adds the
        link after the mdev's add and bind uevents, so a reader quick enough meets this."""
        return UUID_RE.fullmatch(uuid) is not None and os.path.lexists(self._mdevs / uuid) \
            and not os.path.lexists(self._mdevs / uuid / "mdev_type")

    def mdevs(self) -> dict[str, Mdev]:
        """Every mdev the kernel has, on any parent. The type comes from the `mdev_type`
        link (uevents carry no type)."""
        found = (self.mdev(uuid) for uuid in list_dir(self._mdevs, strict=True))
        return {m.uuid: m for m in found if m is not None}

    # the Backend names of the three reads above
    def instances(self) -> dict[str, Instance]:
        return self.mdevs()

    def instance(self, uuid: str) -> Instance | None:
        return self.mdev(uuid)

    def arriving(self, uuid: str) -> bool:
        return self.mdev_arriving(uuid)

    def address(self, uuid: str) -> str:
        return ""  # an mdev lives at its UUID

    def reserve(self, parent: Parent, type_id: str, uuid: str) -> None:
        pass  # nothing to set aside: its UUID is where it will be

    # -- writing --------------------------------------------------------------------------

    def create(self, parent: Parent, type_id: str, uuid: str) -> Instance:
        """Create an mdev of a parent read before. The kernel does it synchronously: when
        this returns, the mdev exists, on this parent, of this type (reading it back cost
        two lookups per vGPU on a busy sysfs)."""
        _check_uuid(uuid)
        types_dir = Path(parent.syspath) / "mdev_supported_types"
        try:
            if not TYPE_RE.fullmatch(type_id):  # never a path of its own
                raise FileNotFoundError
            write_once(types_dir / type_id / "create", uuid)
        except FileNotFoundError:
            # Only now ask why: what the kernel lists now, not what we saw before. (Listing
            # before every create cost a directory read per vGPU.)
            listed = list_dir(types_dir)
            if not listed:
                raise ParentMissing(
                    f"The mdev parent {parent.name} is not registered: for GVT-g, check that "
                    "i915.enable_gvt=1 is on the kernel command line and the kvmgt module is "
                    "loaded (`gvt-client doctor` checks both)."
                ) from None
            if type_id not in listed:
                raise InvalidArgument(f"{parent.name} has no mdev type {type_id!r}; it offers: "
                                      f"{', '.join(listed)}.") from None
            raise Failed(f"Creating a {type_id} vGPU on {parent.name} failed: its create "
                         "file is missing.") from None
        except OSError as e:
            raise self._create_error(e, parent, type_id, uuid) from e
        return Instance(uuid, parent.name, type_id)

    def remove(self, uuid: str) -> None:
        _check_uuid(uuid)
        if uuid not in list_dir(self._mdevs):
            raise NotFound(f"There is no mdev {uuid}.")
        try:
            write_once(self._mdevs / uuid / "remove", "1")
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENODEV):
                raise NotFound(f"The mdev {uuid} was already gone.") from e
            if e.errno == errno.EBUSY:
                raise Busy(f"The kernel refused to remove the mdev {uuid} (EBUSY): a VM has it "
                           "open, perhaps one outside libvirt. Stop that VM, then remove it "
                           "again.") from e
            raise Failed(f"Removing mdev {uuid} failed: {e.strerror}.") from e

    def write_attr(self, uuid: str, name: str, value: str) -> None:
        """Write one of an mdev's own attributes (the definition's `attrs`)."""
        _check_uuid(uuid)
        dev = self._mdevs / uuid
        if not ATTR_NAME_RE.fullmatch(name) or name not in list_dir(dev) or name == "remove":
            raise InvalidArgument(f"The mdev {uuid} has no attribute {name!r}.")
        try:
            write_once(dev / name, value)
        except OSError as e:
            raise Failed(f"Writing {value!r} to attribute {name} of {uuid} failed: {e.strerror}.") from e

    def _create_error(self, e: OSError, parent: Parent, type_id: str, uuid: str) -> GvtdError:
        code = e.errno
        if code in (errno.ENOSPC, errno.EUSERS):
            return NoCapacity(self.no_capacity_message(parent.name, type_id))
        if code == errno.EEXIST:
            return Busy(f"An mdev with UUID {uuid} already exists (the kernel compares UUIDs on "
                        "every parent and ignores case): remove it, or define the vGPU with "
                        "another UUID.")
        if code == errno.EINVAL:
            return InvalidArgument(f"The kernel rejected UUID {uuid} for {type_id} on "
                                   f"{parent.name} (invalid argument).")
        if code == errno.ENODEV:
            return ParentMissing(f"{parent.name} went away while creating the vGPU (its driver "
                                 "is unloading); it is recreated when the parent registers again.")
        if code in (errno.EACCES, errno.EPERM, errno.EROFS):
            return Failed(f"gvtd may not write {type_id}/create on {parent.name} "
                          f"({e.strerror}); it must run as root with /sys writable.")
        return Failed(f"Creating a {type_id} vGPU on {parent.name} failed: {e.strerror}.")

    def no_capacity_message(self, parent: str, type_id: str) -> str:
        """Why a type does not fit, what it needs, and what still fits (re-read from sysfs)."""
        return self._no_capacity(parent, self.parent(parent), type_id)

    @staticmethod
    def _no_capacity(parent_name: str, parent: Parent | None, type_id: str) -> str:
        mtype = parent.type(type_id) if parent else None
        if parent is None or mtype is None:
            return f"{parent_name} has no room for another {type_id}."
        fitting = [t for t in parent.types if t.available > 0]
        if mtype.gvt:
            fitting.sort(key=lambda t: gvt.size_key(t.gvt) if t.gvt else (0, 0, 0), reverse=True)
            need = gvt.describe_need(mtype.id, mtype.gvt)
            still = (f"{fitting[0].id} ({fitting[0].gvt.resolution_text if fitting[0].gvt else ''}) "
                     "still fits" if fitting else "no GVT-g type fits any more")
            return (f"No room for another {mtype.id} on {parent.name}: {need}, and what is left "
                    f"is not enough ({still}). Remove a vGPU you do not need, choose a smaller "
                    "type, or give the GPU more memory in the firmware setup (DVMT pre-allocated "
                    "/ aperture size).")
        still = f"{fitting[0].id} still fits" if fitting else "no type of it fits any more"
        return (f"No room for another {mtype.id} on {parent.name} ({still}). Remove a vGPU of "
                "that parent or choose another type.")

    # -- on the loop: no I/O --------------------------------------------------------------

    def classify(self, action: str, subsystem: str | None, sys_path: str,
                 properties: dict[str, str]) -> Uevent | None:
        return classify(action, subsystem, sys_path, properties)

    def hostdev(self, instance: Instance, options: HostdevOptions) -> ET.Element:
        return hostdev(instance.uuid, options.display)

    def used_in(self, root: ET.Element) -> list[str]:
        return used_in(root)


MdevBackend = Sysfs


def classify(action: str, subsystem: str | None, sys_path: str,
             properties: dict[str, str]) -> Uevent | None:
    """What one kernel event asks gvtd to re-read, or None for an event about no mdev or
    mdev parent.

    mdev events carry no type or parent: both come from sysfs (the mdev's parent is the
    directory its device lives in). An mdev's driver binding after its add, or unbinding
    before its remove, changes nothing gvtd reads: re-reading for them only doubled the
    work of every create and remove.
    """
    name = os.path.basename(sys_path)
    if subsystem == "mdev":
        if not UUID_RE.fullmatch(name) or action in ("bind", "unbind"):
            return None
        parent = os.path.basename(os.path.dirname(sys_path))
        return Uevent(action, frozenset({parent}), name)
    if "MDEV_STATE" in properties:  # a parent (un)registering with the mdev core
        return Uevent(f"{action} {properties['MDEV_STATE']}", frozenset({name}))
    if subsystem == "pci" and action in ("bind", "unbind") and properties.get("DRIVER", "i915") == "i915" \
            and properties.get("PCI_CLASS", "").startswith("3"):
        return Uevent(action, frozenset({name}))  # i915 bound or unbound on a display device
    return None


def mdev_hostdevs(root: ET.Element) -> list[ET.Element]:
    """A domain XML's mdev hostdevs, in device order."""
    return root.findall("./devices/hostdev[@type='mdev']")


def hostdev_uuid(hostdev: ET.Element) -> str:
    """The UUID an mdev hostdev names (lower case, as the kernel names mdevs), or ""."""
    address = hostdev.find("./source/address")
    return (address.get("uuid") or "").lower() if address is not None else ""


def used_in(root: ET.Element) -> list[str]:
    """The mdev UUIDs a domain XML's hostdevs name, in device order."""
    return [u for u in map(hostdev_uuid, mdev_hostdevs(root)) if UUID_RE.fullmatch(u)]


def hostdev(uuid: str, display: str) -> ET.Element:
    """The mdev hostdev that works: vfio-pci, with display and ramfb for SPICE GL (ramfb:
    the boot screen before the guest's driver takes over)."""
    gl = display == "spice-gl"
    el = ET.Element("hostdev", {"mode": "subsystem", "type": "mdev", "managed": "no",
                                "model": "vfio-pci", "display": "on" if gl else "off"})
    if gl:
        el.set("ramfb", "on")
    ET.SubElement(ET.SubElement(el, "source"), "address", {"uuid": uuid})
    return el


def render_nodes(sysfs_root: Path, device: Path) -> list[str]:
    """The DRM render nodes (renderD*) of a GPU: under its own drm/ directory, or the
    /sys/class/drm entries whose device is it."""
    nodes = [n for n in list_dir(device / "drm") if n.startswith("renderD")]
    if not nodes:
        drm = sysfs_root / "class" / "drm"
        nodes = [n for n in list_dir(drm) if n.startswith("renderD")
                 and os.path.realpath(drm / n / "device") == os.path.realpath(device)]
    return nodes


def _check_uuid(uuid: str) -> None:
    if not isinstance(uuid, str) or not UUID_RE.fullmatch(uuid):
        raise InvalidArgument(f"{str(uuid)[:60]!r} is not a valid vGPU UUID: use the lower-case "
                              "8-4-4-4-12 form that uuidgen prints.")
