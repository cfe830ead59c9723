"""The daemon's model of the host: definitions, what sysfs shows, what gvtd created.

Every change — a method call, a reload, later a uevent — goes through here: it updates the
desired or observed state, asks reconcile what to do, writes through the backends
(gvtd.backend: mdev.py for mdevs), and tells its
listeners (the D-Bus objects) once at the end.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid as uuidlib
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from pydantic import ValidationError

from gvtd import reconcile
from gvtd.backend import Backend, Backends, Instance, Parent, Uevent
from gvtd.config import (SETTINGS_FILE, VF_TYPE, ConfigDir, Definition, Problem, on_disk,
                         request_error, validate_name)
from gvtd.errors import (Busy, Failed, GvtdError, InvalidArgument, NoCapacity, NotFound,
                         ParentMissing)
from gvtd.mdev import render_nodes
from gvtd.observed import Observed
from gvtd.reconcile import VgpuView
from gvtd.state import Ownership
from gvtd.uevents import UeventQueue

log = logging.getLogger(__name__)

RESTORE_LIMIT = 3  # automatic re-creations of one vGPU after its first ...
RESTORE_WINDOW = 60.0  # ... within this many seconds, before gvtd gives up on it


def journal_fields(name: str = "", uuid: str = "", parent: str = "") -> dict[str, str]:
    """Structured journal fields, so `journalctl VGPU_NAME=win10` finds every line."""
    out = {}
    if name:
        out["VGPU_NAME"] = name
    if uuid:
        out["VGPU_UUID"] = uuid
    if parent:
        out["PARENT"] = parent
    return out


class DomainView(Protocol):
    """What Host asks of libvirt's domains (gvtd.domains.Domains)."""

    def domain_of(self, uuid: str) -> str:
        """The domain that uses a vGPU, or ""."""

    def running_user(self, uuid: str) -> str | None:
        """The running domain that uses a vGPU, or None."""


class NoDomains:
    """The DomainView until attach(): no domain uses anything."""

    def domain_of(self, uuid: str) -> str:
        return ""

    def running_user(self, uuid: str) -> str | None:
        return None


def _not_restored(name: str) -> str:
    """The LastError of a vGPU left removed because restore_removed is off."""
    return (f"Removed outside gvtd and not recreated (restore_removed = false); `gvt-client "
            f"create {name}` brings it back.")


class Host:
    def __init__(self, config: ConfigDir, backends: Backends | Backend, ownership: Ownership,
                 restore_removed: bool = True) -> None:
        """backends: every backend of the host; one alone (an mdev-only host) is taken as
        the only one."""
        self.config = config
        self.backends = backends if isinstance(backends, Backends) else Backends([backends])
        self.ownership = ownership
        self.restore_removed = restore_removed
        # UUIDs not to create on their own: removed on request (until CreateVGPU or the next
        # start), or whose create failed (value: the type's available instances then, so a
        # retry waits until room appears; None: until CreateVGPU or Reload).
        self._held: set[str] = set()
        self._blocked: dict[str, int | None] = {}
        self._restores: dict[str, list[float]] = {}  # when gvtd last created each UUID itself
        self.definitions: dict[str, Definition] = {}
        self.config_problems: list[Problem] = []
        self.errors: dict[str, str] = {}
        # mdev UUIDs whose remove the kernel has not answered yet (QEMU may hold it for as
        # long as it keeps the device open), and why the last remove of one was refused:
        # shown as the still-active vGPU's LastError until it goes.
        self.removing: set[str] = set()
        self.refused: dict[str, str] = {}
        self.observed = Observed(self.backends, self.on_uevents)  # what sysfs shows
        self.views: dict[str, VgpuView] = {}
        self.listeners: list[Callable[[], None]] = []
        self._last_parent: dict[str, str] = {}
        # One operation at a time: method calls and event passes take the lock; kernel writes
        # run in a worker thread meanwhile, so the loop keeps reading uevents (which queue up
        # in `uevents`, never lost) and answering D-Bus.
        self.lock = asyncio.Lock()
        self.uevents = UeventQueue(self.lock, self._follow, self.refresh, self.publish)
        # Given by attach(): which domain uses a UUID, and which running domain does.
        self.domains: DomainView = NoDomains()

    @property
    def parents(self) -> dict[str, Parent]:
        """Every parent seen, by name: registered or not (gvtd.observed)."""
        return self.observed.parents

    @property
    def mdevs(self) -> dict[str, Instance]:
        """Every instance (mdev, VF) sysfs shows, by vGPU UUID (gvtd.observed)."""
        return self.observed.mdevs

    def attach(self, domains: DomainView) -> None:
        """The wiring step (gvtd.daemon), once libvirt's domains exist."""
        self.domains = domains

    def set_restore_removed(self, on: bool) -> None:
        """Reload: whether a vGPU removed outside gvtd is recreated from now on."""
        self.restore_removed = on

    # -- state --------------------------------------------------------------------------

    def load(self, settings_problems: list[Problem] | None = None) -> None:
        self.ownership.load()
        self.definitions, problems = self.config.load_definitions()
        self.config_problems = list(settings_problems or []) + problems
        for p in problems:
            log.error("Ignoring invalid definition %s", p, extra={"CONFIG_FILE": p.file})

    def vf_parents(self) -> dict[str, str]:
        """The parent ("auto" or an address) of each SR-IOV definition, by UUID: what the
        SR-IOV backend reads and keeps VF slots for (gvtd.sriov). Worker threads ask while
        the loop may define: dict() copies in one step under the GIL."""
        return {d.uuid: d.parent for d in dict(self.definitions).values()
                if d.type == VF_TYPE}

    async def refresh(self) -> None:
        """Re-read everything sysfs shows (gvtd.observed)."""
        await self.observed.refresh()

    def publish(self) -> None:
        """Recompute what every vGPU shows and tell the listeners (the bus objects)."""
        self._last_parent = {u: m.parent for u, m in self.mdevs.items()}
        owned = dict(self.ownership.items())
        self.views = reconcile.views(self.definitions, list(self.parents.values()), self.mdevs,
                                     owned, self.errors, self.domains.domain_of, self.refused,
                                     self.ownership.origins(), self.backends.address)
        for listener in self.listeners:
            listener()

    async def reconcile(self) -> None:
        """Re-read everything, then converge."""
        await self.refresh()
        await self._converge()

    async def _reread(self, parents: set[str], mdevs: set[str]) -> None:
        """Re-read only what events named: the cheap path of refresh() (gvtd.observed)."""
        await self.observed.reread(parents, mdevs)

    async def _reread_around(self, uuid: str, parent: str) -> None:
        """Before acting on one vGPU, re-read what the act depends on: the mdev and the
        parents it may be on (all known ones for `auto`). Events keep the rest current; a
        full refresh() would re-read every parent and every mdev, hundreds of files on a
        host with many, for each request."""
        await self._reread(set(self.parents) if parent == "auto" else {parent}, {uuid})

    def on_uevents(self, events: list[Uevent]) -> None:
        """Queue events; one pass handles all that arrived, once the lock is free
        (gvtd.uevents)."""
        self.uevents.add(events)

    async def _follow(self, events: list[Uevent]) -> None:
        """Follow the kernel: re-read what changed, show it, then converge."""
        before_mdevs = set(self.mdevs)
        before_reg = {n for n, p in self.parents.items() if p.registered}
        if any(not e.parents and e.mdev is None for e in events):
            await self.refresh()
        else:
            named = {e.mdev for e in events if e.mdev}
            # The add of an mdev already known (gvtd's own create, recorded when its write
            # returned) says nothing new: the kernel never changes an existing mdev's parent
            # or type, and whatever else befell it (a remove) brings events of its own.
            settled = (named & set(self.mdevs)) - {e.mdev for e in events if e.action != "add"}
            await self.observed.reread_mdevs(named - settled)
            new = set(self.mdevs) - before_mdevs
            if new and before_mdevs <= set(self.mdevs) \
                    and all(self.mdevs[u].parent in self.parents for u in new):
                # Only additions, on parents already shown: a new mdev's view depends on the
                # mdev alone, so show it now. Its parent's counts (a file per type) follow.
                self.publish()
            await self.observed.reread_parents({p for e in events for p in e.parents})
        now_reg = {n for n, p in self.parents.items() if p.registered}
        for name in sorted(now_reg - before_reg):
            log.info("mdev parent %s registered", name, extra=journal_fields(parent=name))
            self._blocked.clear()  # a new registration: every failed create gets a new try
            self._restores.clear()
        for name in sorted(before_reg - now_reg):
            log.warning("mdev parent %s unregistered; its vGPUs wait for it to come back",
                        name, extra=journal_fields(parent=name))
        by_uuid = {d.uuid: n for n, d in self.definitions.items()}
        for uuid in sorted(before_mdevs - set(self.mdevs)):
            name = by_uuid.get(uuid, "")
            d = self.definitions.get(name)
            self.refused.pop(uuid, None)
            if d is None or d.start != "auto" or uuid in self._held or uuid in self.removing:
                log.info("mdev %s is gone", uuid, extra=journal_fields(name, uuid))
                continue
            parent = self.parents.get(self._last_parent.get(uuid, ""))
            if parent is None or not parent.registered:
                continue  # went with its parent: parent-missing, not an outside removal
            user = self.domains.running_user(uuid)
            if user is not None:
                log.error("vGPU %s (%s) was removed outside gvtd while %s uses it", name, uuid,
                          user, extra=journal_fields(name, uuid, parent.name))
                self._held.add(uuid)
                self.errors[name] = (f"Removed outside gvtd while the running domain {user} "
                                     f"uses it; not recreated under a running VM. Stop {user}, "
                                     f"then `gvt-client start {user}`.")
            elif self.restore_removed:
                log.warning("vGPU %s (%s) was removed outside gvtd; recreating it", name, uuid,
                            extra=journal_fields(name, uuid, parent.name))
            else:
                log.warning("vGPU %s (%s) was removed outside gvtd; not recreating it "
                            "(restore_removed = false)", name, uuid,
                            extra=journal_fields(name, uuid, parent.name))
                self._held.add(uuid)
                self.errors[name] = _not_restored(name)
        self.publish()
        await self._converge()

    def _may_create(self, name: str, uuid: str) -> bool:
        """Automatic creates of one vGPU are bounded in a window: one that keeps vanishing
        (seen gone or not) must not turn into a create/remove storm."""
        now = time.monotonic()
        recent = [t for t in self._restores.get(uuid, []) if now - t < RESTORE_WINDOW]
        if len(recent) <= RESTORE_LIMIT:
            self._restores[uuid] = recent + [now]
            return True
        log.error("vGPU %s (%s) keeps vanishing right after gvtd creates it; giving up until "
                  "`gvt-client create %s`", name, uuid, name, extra=journal_fields(name, uuid))
        self._held.add(uuid)
        self.errors[name] = (
            f"Created {len(recent)} times within {RESTORE_WINDOW:.0f} s and removed again each "
            "time: something removes it (the driver, or another tool). gvtd stopped recreating "
            f"it: see the kernel log, then `gvt-client create {name}`.")
        return False

    async def _converge(self) -> None:
        """Adopt what exists, create every `auto` vGPU that should exist and does not."""
        adopted: dict[str, str] = {}
        for name, d in self.definitions.items():
            mdev = self.mdevs.get(d.uuid)
            if mdev is not None and (d.type is None or mdev.type_id == d.type):
                if d.uuid not in self.ownership:
                    log.info("Adopting existing mdev %s for %s: used and shown, never "
                             "removed by gvtd", d.uuid, name,
                             extra=journal_fields(name, d.uuid, mdev.parent))
                adopted[d.uuid] = name
                self._blocked.pop(d.uuid, None)
        await self.ownership.add_all(adopted, "adopted")  # gvtd's own stay its own: see state.py
        plan: list[tuple[str, reconcile.Target, int]] = []
        for name, target in reconcile.to_create(self.definitions, list(self.parents.values()),
                                                self.mdevs):
            uuid = self.definitions[name].uuid
            mtype = target.parent.type(target.type_id)
            available = mtype.available if mtype else 0
            if uuid in self._held or uuid in self.removing:
                continue
            if uuid in self._blocked:
                then = self._blocked[uuid]
                if then is None or available <= then:
                    continue  # nothing changed since it failed: no retry storm
            if not self._may_create(name, uuid):
                continue
            plan.append((name, target, available))
        try:  # the whole batch in one durable write, before any create: see state.py
            await self.ownership.add_all({self.definitions[n].uuid: n for n, _, _ in plan})
        except OSError as e:
            for name, target, _ in plan:
                self._unrecorded(name, target, e)
                self._blocked[self.definitions[name].uuid] = None
            plan = []
        touched_parents: set[str] = set()
        touched: set[str] = set()
        failed: set[str] = set()
        for name, target, available in plan:
            uuid = self.definitions[name].uuid
            try:
                await self._check_capacity(target)
                await self.create_target(name, target, recorded=True)
                self._blocked.pop(uuid, None)
            except GvtdError as e:
                self.errors[name] = e.message
                retry = isinstance(e, (NoCapacity, ParentMissing))
                self.block(uuid, available if retry else None)
                failed.add(uuid)
            touched_parents.add(target.parent.name)
            touched.add(uuid)
        if touched:
            await self._reread(touched_parents, failed)  # the created ones are known: see _create
            # recorded for the batch but never written (no room left): not gvtd's after all
            await self.ownership.discard_all([u for u in touched if u not in self.mdevs])
        self.publish()

    def _unrecorded(self, name: str, target: reconcile.Target, e: OSError) -> Failed:
        """A vGPU not created because the state file could not record it first."""
        self.errors[name] = (f"Cannot record the vGPU in {self.ownership.path}: "
                             f"{e.strerror}; it was not created. Free space there.")
        log.error("Not creating vGPU %s: %s", name, self.errors[name],
                  extra=journal_fields(name, self.definitions[name].uuid, target.parent.name))
        return Failed(self.errors[name])

    async def _check_capacity(self, target: reconcile.Target) -> None:
        """NoCapacity before any write when the kernel said no instance is left; the
        sentence re-reads the parent for what still fits, in a worker thread."""
        if reconcile.full(target):
            raise NoCapacity(await asyncio.to_thread(
                self.backends.no_capacity_message, target.parent, target.type_id))

    async def create_target(self, name: str, target: reconcile.Target,
                            recorded: bool = False) -> None:
        """Record (unless the caller recorded a batch), then write the create; with the
        lock held."""
        d = self.definitions[name]
        fields = journal_fields(name, d.uuid, target.parent.name)
        if not recorded:
            try:
                await self.ownership.add(d.uuid, name)  # before the write: see state.py
            except OSError as e:
                raise self._unrecorded(name, target, e) from e
        try:
            made = await asyncio.to_thread(self.backends.create, target.parent, target.type_id,
                                           d.uuid)
            for attr, value in d.attrs:
                await asyncio.to_thread(self.backends.write_attr, d.uuid, attr, value,
                                        target.parent.kind)
        except GvtdError as e:
            self.errors[name] = e.message
            if await asyncio.to_thread(self.backends.instance, d.uuid) is None:  # never written
                await self.ownership.discard(d.uuid)
            log.error("Could not create vGPU %s: %s", name, e.message, extra=fields)
            raise
        self.mdevs[d.uuid] = made  # the kernel creates synchronously: it is there
        self.errors.pop(name, None)
        self.refused.pop(d.uuid, None)
        log.info("Created vGPU %s (%s, %s on %s)", name, d.uuid, target.type_id,
                 target.parent.name, extra=fields)

    # -- what the bus shows ---------------------------------------------------------------

    def render_node(self, parent: str) -> str | None:
        """/dev/dri/renderD* of a parent GPU, for SPICE GL."""
        p = self.parents.get(parent)
        nodes = render_nodes(self.backends.root, Path(p.syspath)) if p else []
        return f"/dev/dri/{nodes[0]}" if nodes else None

    # -- operations (D-Bus methods) -----------------------------------------------------------

    def find(self, key: str) -> VgpuView:
        """A vGPU by definition name or UUID.

        Callers that do not hold the lock (attach, detach) can run while a Define is half
        way: its definition is there before its view, so compute the views then."""
        if key in self.definitions:
            uuid = self.definitions[key].uuid
            if uuid not in self.views:
                self.publish()
            return self.views[uuid]
        if key in self.views:
            return self.views[key]
        raise NotFound(f"There is no vGPU named {key[:100]!r}; `gvt-client list` shows them.")

    async def define(self, name: str, data: dict[str, object]) -> str:
        async with self.lock:
            return await self._define(name, data)

    async def _define(self, name: str, data: dict[str, object]) -> str:
        """Validate, check it can work, then write vgpus.d/NAME.toml and reconcile."""
        validate_name(name)
        if name in self.definitions:
            raise InvalidArgument(f"A vGPU named {name!r} is already defined; undefine it first "
                                  "or choose another name.")
        data = dict(data)
        take_over = bool(data.pop("take_over", False))
        data.setdefault("uuid", str(uuidlib.uuid4()))
        try:
            definition = Definition.model_validate(data)
        except ValidationError as e:
            raise request_error(e) from None
        for other, d in self.definitions.items():
            if d.uuid == definition.uuid:
                raise InvalidArgument(f"UUID {definition.uuid} is already used by {other!r}.")
        await self._reread_around(definition.uuid, definition.parent)
        foreign = self.mdevs.get(definition.uuid)
        if foreign is not None and definition.uuid not in self.ownership and definition.type \
                and foreign.type_id != definition.type:
            raise InvalidArgument(f"An mdev {definition.uuid} of type {foreign.type_id} already "
                                  "exists; choose another UUID.")
        try:
            target = reconcile.resolve(definition, list(self.parents.values()))
        except ParentMissing:
            target = None  # allowed: created when the parent registers
        if target is not None and definition.start == "auto" and foreign is None:
            await self._check_capacity(target)
        if target is not None:  # a VF's slot, before the file: see SriovBackend.reserve
            await asyncio.to_thread(self.backends.reserve, target.parent, target.type_id,
                                    definition.uuid)
        await on_disk(self.config.save_definition, name, definition)
        self.definitions[name] = definition
        log.info("Defined vGPU %s (%s)", name, definition.uuid,
                 extra=journal_fields(name, definition.uuid))
        if target is None and definition.uuid in self.vf_parents():
            # a PF that only a definition makes a parent (a NIC's, QEMU's nvme) is one now
            await self._reread({definition.parent} - {"auto"}, set())
        if take_over and foreign is not None and definition.uuid not in self.ownership:
            log.info("Taking over existing mdev %s for %s: gvtd removes it as its own",
                     definition.uuid, name, extra=journal_fields(name, definition.uuid, foreign.parent))
            await self.ownership.add_all({definition.uuid: name}, "taken-over")
        await self._converge()
        return definition.uuid

    async def undefine(self, name: str) -> None:
        async with self.lock:
            await self._undefine(name)

    async def _undefine(self, name: str) -> None:
        validate_name(name)
        d = self.definitions.get(name)
        if d is None:
            raise NotFound(f"There is no vGPU definition named {name!r}.")
        await self._reread(set(), {d.uuid})  # the mdev alone: see _reread_around
        parent = None
        if d.uuid in self.mdevs and self.ownership.removable(d.uuid):
            parent = self.mdevs[d.uuid].parent
            try:
                await self.remove_owned(d.uuid, name)
            except GvtdError:  # the definition stays; the vGPU shows why
                self.publish()
                raise
        elif d.uuid in self.mdevs:
            log.info("mdev %s stays: gvtd did not create it, and never removes what it did "
                     "not create", d.uuid, extra=journal_fields(name, d.uuid))
        if self.definitions.get(name) != d:  # the lock was let go during the remove
            self.publish()
            if name not in self.definitions:
                return  # another Undefine of it ended first: done all the same
            raise Busy(f"{name} was defined again while its vGPU was being removed; the new "
                       f"definition stays (`gvt-client undefine {name}` removes it).")
        await on_disk(self.config.delete_definition, name)
        del self.definitions[name]
        self.errors.pop(name, None)
        self._held.discard(d.uuid)
        self._blocked.pop(d.uuid, None)
        await self.ownership.discard(d.uuid)
        log.info("Undefined vGPU %s", name, extra=journal_fields(name, d.uuid))
        await self._reread({parent} if parent else set(), {d.uuid})
        self.publish()

    async def create(self, key: str) -> str:
        async with self.lock:
            return await self.create_now(key)

    async def create_now(self, key: str) -> str:
        """create(), with the lock held already."""
        view = self.find(key)
        if not view.name or view.name not in self.definitions:
            raise InvalidArgument(f"{key!r} has no definition; define it first.")
        await self._reread_around(view.uuid, self.definitions[view.name].parent)
        self.not_removing(view.uuid, view.name)
        self._held.discard(view.uuid)
        self._blocked.pop(view.uuid, None)
        self._restores.pop(view.uuid, None)
        if view.uuid not in self.mdevs:
            d = self.definitions[view.name]
            touched: set[str] = set()
            try:
                target = reconcile.resolve(d, list(self.parents.values()))
                await self._check_capacity(target)
                touched.add(target.parent.name)
                await self.create_target(view.name, target)
            except GvtdError as e:
                self.errors[view.name] = e.message
                raise
            finally:
                await self._reread(touched, {view.uuid})  # only what the write can have changed
                self.publish()
        return view.uuid

    async def remove(self, key: str) -> None:
        async with self.lock:
            await self._remove_now(key)

    async def _remove_now(self, key: str) -> None:
        view = self.find(key)
        await self._reread(set(), {view.uuid})  # the mdev alone: see _reread_around
        if view.uuid not in self.mdevs:
            return
        parent = self.mdevs[view.uuid].parent
        if not self.ownership.removable(view.uuid):
            raise InvalidArgument(
                f"The mdev {view.uuid} was not created by gvtd"
                + (" (it existed when its definition named it)" if view.name else "")
                + ", and gvtd never removes what it did not create. To remove it yourself: "
                f"echo 1 > /sys/bus/mdev/devices/{view.uuid}/remove")
        was_held = self.hold(view.uuid)  # removed on request: not recreated on its own
        try:
            await self.remove_owned(view.uuid, view.name)
        except GvtdError:
            if not was_held:
                self._held.discard(view.uuid)
            await self._reread({parent}, {view.uuid})
            self.publish()
            raise
        if view.name not in self.definitions:
            await self.ownership.discard(view.uuid)
        await self._reread({parent}, {view.uuid})
        self.publish()

    def not_removing(self, uuid: str, name: str) -> None:
        """Busy while a remove of uuid waits for the kernel."""
        if uuid in self.removing:
            raise Busy(f"vGPU {name or uuid} is being removed and the kernel has not finished: "
                       "something holds it open (a VM outside libvirt, or QEMU still exiting). "
                       "Close that, then try again.")

    # -- for what goes on beside Host (gvtd.teardown, gvtd.ondemand), with the lock held ----

    def hold(self, uuid: str) -> bool:
        """Create uuid on its own no more (until CreateVGPU or the next start); returns
        whether it was held already."""
        held = uuid in self._held
        self._held.add(uuid)
        return held

    def unhold(self, uuid: str) -> None:
        self._held.discard(uuid)

    def block(self, uuid: str, available: int | None) -> None:
        """A create of uuid failed: no automatic retry until its type has more than
        `available` instances free (None: until CreateVGPU or Reload)."""
        self._blocked[uuid] = available

    async def remove_owned(self, uuid: str, name: str) -> None:
        """Write the remove with the host lock let go: the kernel holds a remove for as long
        as QEMU keeps the device open, and gvtd must go on serving everything else. The UUID
        is in `removing` meanwhile: not recreated, not removed or created twice. A refusal
        (Busy for EBUSY) stays shown on the vGPU until it goes. The caller holds the lock
        and has checked that the mdev is gvtd's to remove (ownership)."""
        self.not_removing(uuid, name)
        known = self.mdevs.get(uuid)
        backend = known.backend if known is not None else "mdev"
        self.removing.add(uuid)
        self.lock.release()
        try:
            await asyncio.to_thread(self.backends.remove, uuid, backend)
        except NotFound:
            pass
        except GvtdError as e:
            self.refused[uuid] = f"Not removed: {e.message}"
            log.error("Could not remove vGPU %s (%s): %s", name, uuid, e.message,
                      extra=journal_fields(name, uuid))
            raise
        finally:
            await _relock(self.lock)
            self.removing.discard(uuid)
        self.refused.pop(uuid, None)
        log.info("Removed vGPU %s (%s)", name, uuid, extra=journal_fields(name, uuid))

    async def reload(self) -> None:
        async with self.lock:
            await self._reload()

    def reject_settings(self, problems: list[Problem]) -> None:
        """Reload found gvtd.toml invalid and applies none of it: Problems says why, in
        place of what it said about the file before."""
        file = str(self.config.path / SETTINGS_FILE)
        self.config_problems = problems + [p for p in self.config_problems if p.file != file]
        for p in problems:
            log.error("Not reloading: %s", p, extra={"CONFIG_FILE": p.file})
        self.publish()

    async def _reload(self) -> None:
        """Re-read the definitions (after a hand edit) and reconcile; gvtd.toml was read
        and applied already (gvtd.daemon). With restore_removed now on, the vGPUs left
        removed while it was off come back."""
        self.load()
        if self.restore_removed:
            for name, d in self.definitions.items():
                if self.errors.get(name) == _not_restored(name):
                    del self.errors[name]
                    self._held.discard(d.uuid)
        self.errors = {k: v for k, v in self.errors.items() if k in self.definitions}
        self._blocked.clear()
        self._restores.clear()
        await self.reconcile()


async def _relock(lock: asyncio.Lock) -> None:
    """Take back a lock the caller's `async with` will release, even when cancelled
    meanwhile (gvtd stopping): the cancellation is raised once it is held."""
    cancelled = False
    while True:
        try:
            await lock.acquire()
            break
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
