"""The vGPUs around a host sleep (gvtd.suspend says when): the idle ones gvtd created go
before, and exactly those come back after, with the same UUID, parent and type."""

from __future__ import annotations

import dataclasses
import logging

from gvtd import reconcile
from gvtd.errors import GvtdError, ParentMissing
from gvtd.host import Host, journal_fields, retry_after

log = logging.getLogger("gvtd.host")  # the lines Host logged before this moved out stay its own


@dataclasses.dataclass(frozen=True)
class TornDown:
    """A vGPU removed before sleep, with what it takes to make the same one again."""

    name: str
    uuid: str
    parent: str
    type_id: str
    held: bool  # already held before: stays held after resume


@dataclasses.dataclass
class Teardown:
    """Progress of teardown_idle(), readable while it runs."""

    done: list[TornDown] = dataclasses.field(default_factory=list)
    failed: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    current: str = ""  # the vGPU being removed now
    stop: bool = False  # set on resume: the removals not begun yet are not wanted any more


async def teardown_idle(host: Host, progress: Teardown) -> None:
    """Before the host sleeps: remove every vGPU gvtd created for a definition that no
    running domain uses. Each lands in progress.done as soon as it is gone, so a caller
    that stops waiting (a hung removal) still knows exactly what went. They are held
    meanwhile, so nothing recreates them before restore_after_sleep()."""
    async with host.lock:
        await host.refresh()
        by_uuid = {d.uuid: n for n, d in host.definitions.items()}
        for uuid, mdev in sorted(host.mdevs.items()):
            if progress.stop:
                break  # the host is awake again: remove nothing more
            name = by_uuid.get(uuid, "")
            user = host.domains.running_user(uuid)
            if user is not None:
                log.info("vGPU %s stays through sleep: the running domain %s uses it",
                         name or uuid, user, extra=journal_fields(name, uuid, mdev.parent))
                continue
            if not host.ownership.removable(uuid) or not name:
                log.warning("mdev %s stays through sleep: gvtd did not create it, and "
                            "never removes what it did not create", uuid,
                            extra=journal_fields(name, uuid, mdev.parent))
                continue
            progress.current = name
            was_held = host.hold(uuid)
            try:
                await host.remove_owned(uuid, name)
            except GvtdError as e:
                if not was_held:
                    host.unhold(uuid)
                progress.failed.append((name, e.message))
                continue
            finally:
                progress.current = ""
            progress.done.append(TornDown(name, uuid, mdev.parent, mdev.type_id, was_held))
        await host.refresh()
        host.publish()


async def restore_after_sleep(host: Host, torn: list[TornDown]) -> None:
    """After resume: recreate exactly what teardown_idle() removed (same UUID, parent
    and type). A failure shows on the vGPU (LastError, state failed) and in Problems."""
    async with host.lock:
        await host.refresh()
        for t in torn:
            if not t.held:
                host.unhold(t.uuid)
            d = host.definitions.get(t.name)
            if d is None or d.uuid != t.uuid or t.uuid in host.mdevs:
                continue  # undefined meanwhile, or already back
            fields = journal_fields(t.name, t.uuid, t.parent)
            parent = host.parents.get(t.parent)
            mtype = parent.type(t.type_id) if parent else None
            try:
                if parent is None or not parent.registered:
                    raise ParentMissing(f"Its parent {t.parent} is not registered (for "
                                        "GVT-g: kvmgt is not loaded).")
                await host.create_target(t.name, reconcile.Target(parent, t.type_id))
            except GvtdError as e:
                host.errors[t.name] = (f"Not recreated after the host resumed: {e.message} "
                                       f"`gvt-client create {t.name}` tries again.")
                host.block(t.uuid, retry_after(e, mtype.available if mtype else 0)
                           if d.start == "auto" else None)
                log.error("vGPU %s was not recreated after resume: %s", t.name, e.message,
                          extra=fields)
                continue
            log.info("Recreated vGPU %s after resume", t.name, extra=fields)
        await host.refresh()
        host.publish()
