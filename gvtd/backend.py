"""The device-backend seam: what a vGPU is made of, whichever kernel ABI realises it.

A vGPU is a definition (name, UUID); a backend realises it on a parent: `mdev` (gvtd.mdev:
the mediated device ABI, GVT-g and any mdev parent) or, later, `sriov` (a PCI virtual
function bound to vfio-pci). Host, Observed, udev and Domains hold a `Backends` and never ask
which ABI is underneath; the UUID stays the vGPU's identity everywhere (docs/backends.md).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gvtd import gvt
from gvtd.errors import NotFound


@dataclass(frozen=True)
class MdevType:
    """A kind of instance a parent offers (an mdev type; an SR-IOV parent's one "vf")."""

    id: str
    name: str
    description: str | None
    device_api: str
    available: int
    gvt: gvt.GvtTypeInfo | None = None


@dataclass(frozen=True)
class Parent:
    """A device that can host vGPUs. `registered` is false for an Intel GPU whose GVT-g
    half (kvmgt) has not registered it yet (or, for SR-IOV, whose PF has no driver); such a
    parent has no types. The VF fields are 0 for mdev parents."""

    name: str
    syspath: str
    driver: str
    vendor: int | None
    device: int | None
    registered: bool
    types: tuple[MdevType, ...] = ()
    kind: str = "mdev"  # the backend that realises its vGPUs: "mdev" | "sriov"
    total_vfs: int = 0
    num_vfs: int = 0
    vf_offset: int = 0
    vf_stride: int = 0
    autoprobe: bool = True

    def type(self, type_id: str) -> MdevType | None:
        return next((t for t in self.types if t.id == type_id), None)

    @property
    def platform(self) -> tuple[str, bool]:
        return gvt.platform(self.vendor, self.device)

    @property
    def is_gvt(self) -> bool:
        return any(t.gvt for t in self.types) or self.driver == "i915"


@dataclass(frozen=True)
class Instance:
    """A vGPU that exists in the kernel, by the UUID of its definition. `address` is where
    it lives when that is not the UUID (a VF's PCI address; "" for an mdev)."""

    uuid: str
    parent: str
    type_id: str
    address: str = ""
    backend: str = "mdev"


@dataclass(frozen=True)
class HostdevOptions:
    """How a domain is to use its vGPU: what the backend's hostdev element depends on."""

    display: str = "spice-gl"  # an mdev's (gvtd.mdev.hostdev)
    rom: str | None = None  # a VF's ROM file, checked already (gvtd.virt.rom)
    rom_bar: bool = True  # False: a VF without a ROM BAR (gvtd.virt.domxml.VfSpec)


@dataclass(frozen=True)
class Uevent:
    """What one kernel event asks gvtd to re-read: parents by name, an instance by UUID."""

    action: str
    parents: frozenset[str] = frozenset()  # parent device names to re-read
    mdev: str | None = None  # the instance UUID to re-read

    def __str__(self) -> str:
        what = self.mdev or ", ".join(sorted(self.parents))
        return f"{self.action} {what}"


class Backend(Protocol):
    """One kernel ABI that realises vGPUs. Reads are strict (ReadFailed for a fault other
    than absence, as gvtd.mdev.Sysfs); everything but classify, hostdev and used_in touches
    sysfs and runs in a worker thread."""

    @property
    def kind(self) -> str:
        """"mdev" | "sriov": a Parent's kind, an Instance's backend."""

    @property
    def root(self) -> Path:
        """The sysfs it reads (normally /sys)."""

    def parents(self) -> list[Parent]: ...
    def parent(self, name: str) -> Parent | None: ...
    def instances(self) -> dict[str, Instance]: ...
    def instance(self, uuid: str) -> Instance | None: ...
    def arriving(self, uuid: str) -> bool: ...
    def address(self, uuid: str) -> str:
        """Where a vGPU's instance lives or will live when that is not its UUID (a VF's PCI
        address, known from its slot while the VF is unbound or not made); "" else. No
        I/O: it runs on the loop."""
    def create(self, parent: Parent, type_id: str, uuid: str) -> Instance | None:
        """Make the instance; when it returns, the instance exists. Returns it, or None to
        have it read back (instance())."""
    def reserve(self, parent: Parent, type_id: str, uuid: str) -> None:
        """Record, at Define, where the vGPU's instance will live (a VF slot), so that it
        has an address to attach by before it is made; nothing for an mdev. Blocking."""
    def remove(self, uuid: str) -> None: ...
    def write_attr(self, uuid: str, name: str, value: str) -> None: ...
    def no_capacity_message(self, parent: str, type_id: str) -> str: ...
    def classify(self, action: str, subsystem: str | None, sys_path: str,
                 properties: dict[str, str]) -> Uevent | None: ...
    def hostdev(self, instance: Instance, options: HostdevOptions) -> ET.Element: ...
    def used_in(self, root: ET.Element) -> list[str]: ...


class Backends:
    """Every backend of the host (mdev first), as one: parents and instances merged, a
    write sent to the backend of the parent's kind or of the instance."""

    def __init__(self, backends: Sequence[Backend]) -> None:
        if not backends:
            raise ValueError("Backends needs at least one backend")
        self.all: tuple[Backend, ...] = tuple(backends)

    @property
    def root(self) -> Path:
        return self.all[0].root

    def of(self, kind: str) -> Backend:
        """The backend of a kind; NotFound for one this host does not run."""
        for b in self.all:
            if b.kind == kind:
                return b
        raise NotFound(f"gvtd has no {kind!r} backend; it knows "
                       f"{', '.join(b.kind for b in self.all)}.")

    # -- reading (worker threads) ---------------------------------------------------------

    def parents(self) -> list[Parent]:
        """Every backend's parents; a device that two backends see is the one that can
        host vGPUs now (registered), else the one that knows it for sure (see _wins)."""
        found: dict[str, Parent] = {}
        for b in self.all:
            for p in b.parents():
                if p.name not in found or _wins(p, found[p.name]):
                    found[p.name] = p
        return sorted(found.values(), key=lambda p: p.name)

    def parent(self, name: str) -> Parent | None:
        """One parent, as parents() would choose it."""
        seen = None
        for b in self.all:
            p = b.parent(name)
            if p is not None and p.registered:
                return p
            seen = p if seen is None or (p is not None and _wins(p, seen)) else seen
        return seen

    def instances(self) -> dict[str, Instance]:
        out: dict[str, Instance] = {}
        for b in self.all:
            out.update({u: i for u, i in b.instances().items() if u not in out})
        return out

    def instance(self, uuid: str) -> Instance | None:
        return next((i for b in self.all if (i := b.instance(uuid)) is not None), None)

    def arriving(self, uuid: str) -> bool:
        return any(b.arriving(uuid) for b in self.all)

    def address(self, uuid: str) -> str:
        return next((a for b in self.all if (a := b.address(uuid))), "")

    def no_capacity_message(self, parent: Parent, type_id: str) -> str:
        return self.of(parent.kind).no_capacity_message(parent.name, type_id)

    # -- writing (worker threads) ---------------------------------------------------------

    def create(self, parent: Parent, type_id: str, uuid: str) -> Instance:
        """Create on the backend of the parent's kind; the instance it made."""
        backend = self.of(parent.kind)
        made = backend.create(parent, type_id, uuid) or backend.instance(uuid)
        return made or Instance(uuid, parent.name, type_id, backend=parent.kind)

    def reserve(self, parent: Parent, type_id: str, uuid: str) -> None:
        self.of(parent.kind).reserve(parent, type_id, uuid)

    def remove(self, uuid: str, backend: str) -> None:
        """Remove an instance known to be of `backend` (Instance.backend)."""
        self.of(backend).remove(uuid)

    def write_attr(self, uuid: str, name: str, value: str, backend: str) -> None:
        self.of(backend).write_attr(uuid, name, value)

    # -- on the loop: no I/O --------------------------------------------------------------

    def classify(self, action: str, subsystem: str | None, sys_path: str,
                 properties: dict[str, str]) -> Uevent | None:
        """Every backend's reading of an event, as one: a PCI event can be an mdev
        parent's and an SR-IOV PF's or VF's at once (an Intel GPU's VF is a display
        function too), so the parents to re-read are all that any backend names, and the
        instance the first that names one."""
        events = [e for b in self.all
                  if (e := b.classify(action, subsystem, sys_path, properties)) is not None]
        if len(events) < 2:
            return events[0] if events else None
        return Uevent(events[0].action, frozenset().union(*(e.parents for e in events)),
                      next((e.mdev for e in events if e.mdev), None))

    def hostdev(self, instance: Instance, options: HostdevOptions) -> ET.Element:
        return self.of(instance.backend).hostdev(instance, options)

    def used_in(self, root: ET.Element) -> list[str]:
        """vGPU UUIDs a domain's XML uses, each once, in the backends' order."""
        out: list[str] = []
        for b in self.all:
            out += [u for u in b.used_in(root) if u not in out]
        return out

    def uses(self, xml: str) -> list[str]:
        """used_in over a domain's XML text; none for XML that does not parse."""
        try:
            return self.used_in(ET.fromstring(xml))
        except ET.ParseError:
            return []


def _wins(p: Parent, other: Parent) -> bool:
    """Whether p, of a later backend, shows a device both see better than other: registered
    when other is not, or, neither registered, an SR-IOV PF (which it is for sure: it has
    sriov_totalvfs) over the mdev backend's guess that an Intel GPU may register later."""
    if p.registered != other.registered:
        return p.registered
    return not p.registered and p.total_vfs > 0 and other.total_vfs == 0
