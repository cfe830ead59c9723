"""Desired against actual: the one place that decides what gvtd creates and what it shows.

Pure functions over snapshots (definitions, parents and mdevs as read from sysfs, the set of
mdevs gvtd created), so every decision can be tested without a kernel.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from gvtd import gvt
from gvtd.backend import Instance, Parent
from gvtd.config import VF_TYPE, Definition
from gvtd.errors import GvtdError, InvalidArgument, ParentMissing

VgpuState = Literal["inactive", "active", "parent-missing", "failed"]
REMOVABLE = ("", "created", "taken-over")  # "": none yet, gvtd creates it


@dataclass(frozen=True)
class Target:
    parent: Parent
    type_id: str


@dataclass(frozen=True)
class VgpuView:
    """What the VGPU D-Bus object shows, for a definition or for a foreign mdev."""

    uuid: str
    name: str
    parent: str
    type_id: str
    state: VgpuState
    start: str
    domain: str
    managed: bool
    last_error: str
    attrs: tuple[tuple[str, str], ...] = ()
    # created (by gvtd), taken-over, adopted (existed, a definition names it: never
    # removed), foreign (nobody defined it); empty while no mdev exists.
    origin: str = ""
    backend: str = "mdev"  # the backend that realises it (its parent's kind)
    address: str = ""  # where its instance lives when not at its UUID (a VF's PCI address)


def choose_type(parent: Parent, want: tuple[int, int]) -> str:
    """The smallest GVT-g type of `parent` whose resolution is at least `want`.

    Smallest by share of the GPU, so that more vGPUs fit; ties go to the one with instances
    still available.
    """
    if parent.kind == "sriov":
        raise InvalidArgument(f"{parent.name} is an SR-IOV parent: its VFs have no resolution "
                              "to choose by (the guest's driver sets it). Define the vGPU "
                              "with type = \"vf\" (--type vf) instead of min_resolution.")
    candidates = [t for t in parent.types if t.gvt and gvt.fits(t.gvt, want)]
    if not candidates:
        have = ", ".join(f"{t.id} ({t.gvt.resolution_text})" for t in parent.types if t.gvt)
        raise InvalidArgument(
            f"No mdev type of {parent.name} reaches {want[0]}x{want[1]}"
            + (f"; its types are {have}." if have else
               " (it is not a GVT-g parent: name a type with --type).")
        )
    candidates.sort(key=lambda t: (gvt.size_key(t.gvt), t.available == 0))  # type: ignore[arg-type]
    return candidates[0].id


def resolve(definition: Definition, parents: list[Parent]) -> Target:
    """Where and as what a definition's vGPU is created, given the parents sysfs shows."""
    registered = [p for p in parents if p.registered]
    if definition.parent == "auto":
        if definition.type is not None:
            pool = [p for p in registered if p.type(definition.type)]
        else:
            pool = [p for p in registered if any(t.gvt for t in p.types)]
        if not pool and definition.type is not None and registered and \
                all(p.registered for p in parents):
            offered = sorted({t.id for p in registered for t in p.types})
            raise InvalidArgument(f"No mdev parent offers type {definition.type!r}; the types "
                                  f"offered are: {', '.join(offered)}.")
        if not pool:
            what = definition.type or f"GVT-g at {definition.min_resolution}"
            raise ParentMissing(f"No registered mdev parent offers {what} (yet): it is created "
                                "as soon as one registers.")
        parent = pool[0]
    else:
        found = next((p for p in parents if p.name == definition.parent), None)
        if found is None or not found.registered:
            state = "is not registered" if found else "does not exist"
            raise ParentMissing(f"The parent {definition.parent} {state}; the vGPU is created "
                                "when it registers (for GVT-g: when kvmgt loads).")
        parent = found
    want = definition.resolution()
    if want is not None:
        return Target(parent, choose_type(parent, want))
    assert definition.type is not None
    if parent.type(definition.type) is None:
        listed = ", ".join(t.id for t in parent.types) or "none"
        raise InvalidArgument(f"{parent.name} has no mdev type {definition.type!r}; "
                              f"it offers: {listed}.")
    return Target(parent, definition.type)


def full(target: Target) -> bool:
    """Whether the kernel already says no instance is left: refuse before writing."""
    mtype = target.parent.type(target.type_id)
    return mtype is not None and mtype.available <= 0


def to_create(definitions: dict[str, Definition], parents: list[Parent],
              mdevs: dict[str, Instance]) -> list[tuple[str, Target]]:
    """The `auto` definitions that should exist and do not, with where to create them."""
    out = []
    for name, definition in sorted(definitions.items()):
        if definition.start != "auto" or definition.uuid in mdevs:
            continue
        try:
            out.append((name, resolve(definition, parents)))
        except GvtdError:
            continue  # shown as parent-missing or failed by views()
    return out


def views(definitions: dict[str, Definition], parents: list[Parent], mdevs: dict[str, Instance],
          owned: dict[str, str], errors: dict[str, str],
          domain_of: Callable[[str], str] = lambda uuid: "",
          refused: dict[str, str] | None = None,
          origins: dict[str, str] | None = None,
          address_of: Callable[[str], str] = lambda uuid: "") -> dict[str, VgpuView]:
    """Every vGPU gvtd shows, keyed by UUID: one per definition, one per other mdev.
    refused: why the kernel would not remove an mdev that is still there (its LastError);
    origins: how each recorded mdev became gvtd's (gvtd.state); address_of: where a
    vGPU with no instance now will live (Backend.address)."""
    refused, origins = refused or {}, origins or {}
    out: dict[str, VgpuView] = {}
    for name, d in definitions.items():
        mdev = mdevs.get(d.uuid)
        error = errors.get(name, "")
        parent, type_id, address = d.parent, d.type or "", address_of(d.uuid)
        backend = "sriov" if d.type == VF_TYPE else "mdev"  # until a parent says
        try:
            target = resolve(d, parents)
            parent, type_id, backend = target.parent.name, target.type_id, target.parent.kind
            state: VgpuState = "failed" if error else "inactive"
        except ParentMissing as e:
            state, error = "parent-missing", e.message  # an older error no longer applies
        except GvtdError as e:
            state, error = "failed", e.message
        origin = ""
        if mdev is not None:
            parent, backend, address = mdev.parent, mdev.backend, mdev.address
            origin = origins.get(d.uuid) or "adopted"
            if d.type is not None and mdev.type_id != d.type:
                origin = origins.get(d.uuid) or "foreign"
                state = "failed"
                error = (f"An mdev with this UUID exists as {mdev.type_id}, not {d.type}; "
                         "gvtd leaves it alone. Remove it or change the definition's type.")
            else:
                state, error, type_id = "active", refused.get(d.uuid, ""), mdev.type_id
        out[d.uuid] = VgpuView(d.uuid, name, parent, type_id, state, d.start,
                               d.domain or domain_of(d.uuid), origin in REMOVABLE, error,
                               tuple(d.attrs), origin, backend, address)
    for uuid, mdev in mdevs.items():
        if uuid in out:
            continue
        name = owned.get(uuid, "")
        origin = origins.get(uuid) or "foreign"
        out[uuid] = VgpuView(uuid, name, mdev.parent, mdev.type_id, "active", "manual",
                             domain_of(uuid), origin in REMOVABLE, refused.get(uuid, ""),
                             origin=origin, backend=mdev.backend, address=mdev.address)
    return out
