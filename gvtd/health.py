"""Each vGPU's health, from what GVT-g says about it in the kernel log (gvtd.kmsg).

A record counts only when the kernel itself printed it (facility 0) at error level and in
GVT-g's exact form (gvtd.gvt.classify): a local user can make the kernel print text of
their choosing in other messages, never one of these. GVT-g names a vGPU by its own id,
which the mdev shows as intel_vgpu/vgpu_id; a message without an id ("gvt: guest page
write error") is the running GVT-g vGPU's when exactly one runs, the host's otherwise.

Memory is bounded: one entry per existing mdev (dropped when it goes, so a new vGPU with a
reused id starts healthy), one per known host-wide message, a fixed queue of messages
waiting for the id map, and unknown messages shown at most UNKNOWN_BURST per
UNKNOWN_WINDOW of kernel time per vGPU.

With on_guest_fault = "shutdown", a message known to precede a host hang makes gvtd ask
the vGPU's domain to shut down (ACPI), once per vGPU, and say why in the log and on the
vGPU.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from gvtd import gvt
from gvtd.background import Background, Problem, why
from gvtd.kmsg import Record
from gvtd.mdev import parse_int, read_attr

log = logging.getLogger(__name__)

UNKNOWN_BURST = 5  # unknown GVT-g messages shown per vGPU ...
UNKNOWN_WINDOW = 60_000_000  # ... in this many microseconds of kernel time
PENDING = 256  # messages kept while the vGPU id map is re-read
SHUTDOWN_TIMEOUT = 300.0  # seconds a guest is given to shut down on a fault
_RANK = {"ok": 0, "degraded": 1, "failed": 2}


@dataclass(frozen=True)
class VgpuHealth:
    """What the VGPU object shows: Health, HealthMessage, HealthTime."""

    health: str = "ok"
    message: str = ""
    time_usec: int = 0  # wall clock of the last message shown, microseconds since 1970
    known: str = ""  # the KnownMessage id
    count: int = 0  # messages of this kind so far
    acted: bool = False  # gvtd asked its domain to shut down


OK = VgpuHealth()


class _RateLimit:
    """At most UNKNOWN_BURST per UNKNOWN_WINDOW of kernel time, per key; bounded keys."""

    def __init__(self) -> None:
        self._windows: dict[str, tuple[int, int]] = {}  # key -> (window start, shown)
        self.suppressed = 0

    def allow(self, key: str, usec: int) -> bool:
        start, shown = self._windows.get(key, (usec, 0))
        if usec - start >= UNKNOWN_WINDOW:
            start, shown = usec, 0
        if shown >= UNKNOWN_BURST:
            self.suppressed += 1
            return False
        self._windows[key] = (start, shown + 1)
        return True

    def forget(self, keep: set[str]) -> None:
        self._windows = {k: v for k, v in self._windows.items() if k in keep}


def wall_usec(usec: int) -> int:
    """A record's time (CLOCK_MONOTONIC, as printk's) on the wall clock."""
    return int((time.time() - time.monotonic()) * 1_000_000) + usec


class Health:
    """The vGPUs' health, fed with kernel records (KernelLog's on_records)."""

    def __init__(self, sysfs: Path, mdevs: Callable[[], Mapping[str, Any]],
                 name_of: Callable[[str], str], running_user: Callable[[str], str | None],
                 changed: Callable[[], None],
                 shutdown: Callable[[str], Coroutine[Any, Any, None]],
                 on_guest_fault: str = "notify") -> None:
        self.sysfs = sysfs
        self.mdevs = mdevs  # the mdevs sysfs shows, by UUID (Host.mdevs)
        self.name_of = name_of  # a UUID's definition name, or ""
        self.running_user = running_user  # the running domain using a UUID, or None
        self.changed = changed  # Host.publish: the bus objects show the change
        self.shutdown = shutdown  # ask a domain to shut down cleanly (ACPI)
        self.on_guest_fault = on_guest_fault
        self.actions = Background(changed)  # the shutdowns, their failures in Problems
        self._state: dict[str, VgpuHealth] = {}
        self._host: dict[str, tuple[str, int, str]] = {}  # known id -> (text, time, where)
        self._ids: dict[int, str] = {}  # GVT-g's vgpu id -> mdev UUID
        self._ids_of: frozenset[str] | None = None  # the mdevs the id map was read for
        self._checked: set[int] = set()  # ids looked for again since (bounded: 4 digits)
        self._pending: deque[tuple[gvt.GvtMessage, int]] = deque(maxlen=PENDING)
        self._reading: asyncio.Task[None] | None = None
        self._classifier = gvt.Classifier()
        self._unknown = _RateLimit()

    # -- what the bus shows -------------------------------------------------------------
    def of(self, uuid: str) -> VgpuHealth:
        return self._state.get(uuid, OK)

    def problems(self) -> list[Problem]:
        out: list[Problem] = []
        for uuid, h in sorted(self._state.items()):
            if h.health == "ok":
                continue
            known = gvt.KNOWN[h.known]
            who = self.name_of(uuid) or uuid
            out.append((f"health:{who}", "error" if h.health == "failed" else "warn",
                        f"vGPU {who}: {h.message}", known.fix))
        for kid, (text, _, where) in sorted(self._host.items()):
            known = gvt.KNOWN[kid]
            out.append((f"health:host:{kid}", "error" if known.health == "failed" else "warn",
                        f"The kernel says \"{text}\"{where}: {known.cause}", known.fix))
        return out + self.actions.problems()

    def published(self) -> None:
        """A Host listener: forget the vGPUs that are gone (a new mdev, even with a
        reused GVT-g id, starts healthy); the id map is re-read when the mdevs change."""
        present = set(self.mdevs())
        for uuid in [u for u in self._state if u not in present]:
            del self._state[uuid]
        self._unknown.forget(present | {"host"})

    # -- kernel records -----------------------------------------------------------------
    def on_records(self, records: list[Record]) -> bool:
        """Handle a batch; True when any was GVT-g's (the kernel log cursor moves then)."""
        seen = changed = False
        for r in records:
            if not r.from_kernel:
                continue  # written into /dev/kmsg by a process: never trusted
            msg = self._classifier.feed(r.text, r.level)
            if msg is None:
                continue
            seen = True
            if self._ids_of != frozenset(self.mdevs()) or self._new_id(msg.vgpu_id):
                self._pending.append((msg, r.usec))
                self._read_ids()
                continue
            changed |= self._apply(msg, r.usec)
        if changed:
            self.changed()
        return seen

    def _new_id(self, vgpu_id: int | None) -> bool:
        """An id no mdev had when the map was read: read it again, once per id until the
        mdevs change (an attribute may appear after its mdev's uevent)."""
        if vgpu_id is None or vgpu_id in self._ids or vgpu_id in self._checked:
            return False
        self._checked.add(vgpu_id)
        return True

    def _read_ids(self) -> None:
        if self._reading is None or self._reading.done():
            self._reading = asyncio.get_running_loop().create_task(self._reread_ids())

    async def _reread_ids(self) -> None:
        """The vgpu id of each mdev, off the loop; then the messages that waited for it."""
        while True:
            uuids = frozenset(self.mdevs())
            self._ids = await asyncio.to_thread(vgpu_ids, self.sysfs, uuids)
            if self._ids_of != uuids:
                self._checked = set()
            self._ids_of = uuids
            if uuids == frozenset(self.mdevs()):
                break
        changed = False
        while self._pending:
            changed |= self._apply(*self._pending.popleft())
        if changed:
            self.changed()

    def _owner(self, msg: gvt.GvtMessage) -> str | None:
        if msg.vgpu_id is not None:
            return self._ids.get(msg.vgpu_id)
        if msg.known.id == "memlock":
            return None
        running = [u for u in self._ids.values() if self.running_user(u)]
        return running[0] if len(running) == 1 else None

    def _apply(self, msg: gvt.GvtMessage, usec: int) -> bool:
        uuid = self._owner(msg)
        if uuid is None:
            return self._apply_host(msg, usec)
        old = self.of(uuid)
        if msg.known.id == "unknown" and old.known and old.known != "unknown":
            return False  # a known fault says more than what follows it
        if msg.known.id == old.known and msg.known.id != "unknown":
            self._state[uuid] = replace(old, count=old.count + 1)
            return False  # the same fault again: shown already (a flood is one change)
        if msg.known.id == "unknown" and not self._unknown.allow(uuid, usec):
            return False
        if _RANK[msg.known.health] < _RANK[old.health]:
            return False
        who = self.name_of(uuid) or uuid
        domain = self.running_user(uuid)
        text = f"The kernel says \"{msg.text}\""
        text += f" ({domain} is running on it): " if domain else ": "
        text += msg.known.cause
        new = VgpuHealth(msg.known.health, text, wall_usec(usec), msg.known.id, 1, old.acted)
        fields = {"VGPU_UUID": uuid, "VGPU_NAME": self.name_of(uuid), "GVT_MESSAGE": msg.known.id}
        log.error("vGPU %s is %s: %s", who, new.health, text, extra=fields)
        if msg.known.hang and domain and not old.acted:
            if self.on_guest_fault == "shutdown":
                new = replace(new, acted=True, message=new.message + f" gvtd asked {domain} to "
                              "shut down (on_guest_fault = \"shutdown\") before the host hangs.")
                log.error("Asking domain %s to shut down: its vGPU %s %s", domain, who,
                          msg.known.cause, extra={**fields, "DOMAIN": domain})
                self.actions.spawn(self._shut_down(domain, who), f"shutdown:{domain}",
                                   lambda e, d=domain: _shutdown_failed(d, e))
            else:
                new = replace(new, message=new.message + " (on_guest_fault = \"notify\": gvtd "
                              f"leaves {domain} running.)")
        self._state[uuid] = new
        return True

    def _apply_host(self, msg: gvt.GvtMessage, usec: int) -> bool:
        """A message no single vGPU owns: shown host-wide, unknown ones rate-limited."""
        kid = msg.known.id
        if kid in self._host and kid != "unknown":
            return False
        if kid == "unknown" and not self._unknown.allow("host", usec):
            return False
        where = "" if msg.vgpu_id is None else f" (GVT-g's vgpu {msg.vgpu_id}: no mdev has it)"
        self._host[kid] = (msg.text, wall_usec(usec), where)
        log.error("The kernel says \"%s\"%s", msg.text, where, extra={"GVT_MESSAGE": kid})
        return True

    async def _shut_down(self, domain: str, who: str) -> None:
        await self.shutdown(domain)
        log.info("Domain %s shut down after the fault of its vGPU %s", domain, who,
                 extra={"DOMAIN": domain})


def vgpu_ids(sysfs: Path, uuids: Iterable[str]) -> dict[int, str]:
    """GVT-g's id of each mdev that has one (kvmgt's intel_vgpu/vgpu_id), to its UUID."""
    out = {}
    for uuid in uuids:
        n = parse_int(read_attr(sysfs / "bus" / "mdev" / "devices" / uuid / "intel_vgpu" /
                                "vgpu_id"))
        if n is not None:
            out[n] = uuid
    return out


def _shutdown_failed(domain: str, e: BaseException) -> Problem:
    return (f"health:shutdown:{domain}", "error",
            f"gvtd asked {domain} to shut down after a vGPU fault, and it did not: {why(e)}",
            f"Stop it yourself: `gvt-client stop {domain} --force`.")
