"""Host suspend with vGPUs: logind inhibitor locks, and what gvtd does around a sleep.

A GVT-g vGPU does not survive host suspend (hangs, vGPUs lost after resume), so gvtd takes
part in logind's sleep protocol (https://systemd.io/INHIBITOR_LOCKS/):

- it holds a *delay* lock while it runs; on PrepareForSleep(true) it removes the vGPUs no
  running domain uses, remembers exactly which, and closes the lock so the host may sleep;
  on PrepareForSleep(false) it takes the lock again and recreates what it removed;
- with `suspend = "block-while-running"` it also holds a *block* lock, naming the VMs,
  while a domain with a vGPU runs;
- with `suspend = "ignore"` it does none of this.

logind lives on the system bus even when gvtd serves the session bus (simulation), so this
module opens its own system bus connection (DBUS_SYSTEM_BUS_ADDRESS points it elsewhere).
Inhibit() returns a file descriptor: the lock is held while gvtd keeps it open.

gvtd acts on a signal only when its sender is the current owner of the name that emits it:
logind's unique name (GetNameOwner at start, then the bus driver's NameOwnerChanged) for
PrepareForSleep, the bus driver itself for NameOwnerChanged. Match rules name the sender
too, but they only filter broadcasts: a signal addressed to gvtd's connection is delivered
whatever they say, so any local user could otherwise make gvtd tear down vGPUs or believe
that logind left. A forged signal is logged once at debug level and ignored.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Literal

from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus

from gvtd.background import Background, Problem
from gvtd.errors import Busy
from gvtd.host import Host
from gvtd.teardown import Teardown, restore_after_sleep, teardown_idle

if TYPE_CHECKING:
    from gvtd.domains import Domains

log = logging.getLogger(__name__)

LOGIND = "org.freedesktop.login1"
LOGIND_PATH = "/org/freedesktop/login1"
LOGIND_MANAGER = "org.freedesktop.login1.Manager"
DBUS = "org.freedesktop.DBus"
DBUS_PATH = "/org/freedesktop/DBus"
FORGED_MEMORY = 64  # (sender, member) pairs of forged signals remembered, each logged once

DEFAULT_DELAY_MAX = 5.0  # logind's default InhibitDelayMaxSec
DELAY_SHARE = 0.8  # of InhibitDelayMaxSec that the removals may take before gvtd lets go

DELAY_WHY = ("Removing the virtual GPUs (Intel GVT-g) that no running VM uses, so that the "
             "host sleeps and resumes safely")

# What Manager.Suspend shows: off (policy ignore, or no logind), on (delay lock held),
# blocked (a block lock held too: a VM with a vGPU runs), preparing (removing before sleep),
# sleeping (lock released: the host may sleep), resuming (recreating after resume).
State = Literal["off", "on", "blocked", "preparing", "sleeping", "resuming"]


def block_why(domains: list[str]) -> str:
    """The block lock's reason, as a desktop shows it when suspend is refused."""
    if len(domains) == 1:
        return (f"The VM {domains[0]} is running with an Intel GVT-g virtual GPU, which does "
                "not survive suspend; shut it down first")
    return (f"The VMs {', '.join(domains)} are running with Intel GVT-g virtual GPUs, which "
            "do not survive suspend; shut them down first")


class Suspend:
    """logind's sleep protocol for gvtd. `changed` is called whenever `state` or
    `problems()` changed, so the bus shows it."""

    def __init__(self, host: Host, domains: Domains, policy: str,
                 changed: Callable[[], None]) -> None:
        self.host = host
        self.domains = domains
        self.policy = policy
        self.changed = changed
        self.state: State = "off"
        self.delay_max = DEFAULT_DELAY_MAX
        self._problems: dict[str, Problem] = {}
        self._bus: MessageBus | None = None
        self._logind = False  # whether logind owns its name now
        self._logind_owner = ""  # logind's unique name: the only sender of PrepareForSleep
        self._owner_changes = 0  # NameOwnerChanged signals followed, newer than a GetNameOwner
        self._forged: dict[tuple[str, str], None] = {}  # logged already, oldest first
        self._delay_fd: int | None = None
        self._block_fd: int | None = None
        self._block_for: list[str] = []  # the domains the block lock names
        self._block_lock = asyncio.Lock()
        self._block_pending = False
        self._cycle = asyncio.Lock()  # one sleep or resume at a time, in signal order
        self._asleep = False
        self._teardown: Teardown | None = None
        self._teardown_task: asyncio.Future[None] | None = None
        # Sleeps, resumes and lock updates handled beside the signal that asked for them.
        self._background = Background(changed)
        self._lost: asyncio.Future[None] | None = None  # ends when the system bus does

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Connect to logind; without it gvtd runs on, and Problems says why."""
        if self.policy == "ignore":
            log.info("Suspend handling is off (suspend = \"ignore\" in gvtd.toml)")
            return
        try:
            self._bus = await MessageBus(bus_type=BusType.SYSTEM,
                                         negotiate_unix_fd=True).connect()
        except Exception as e:  # no system bus at all
            self._off(f"Suspend handling is off: the system bus is unreachable ({e}).")
            return
        bus = self._bus
        bus.add_message_handler(self._on_message)
        for rule in (f"type='signal',sender='{DBUS}',path='{DBUS_PATH}',interface='{DBUS}',"
                     f"member='NameOwnerChanged',arg0='{LOGIND}'",
                     f"type='signal',sender='{LOGIND}',interface='{LOGIND_MANAGER}',"
                     f"member='PrepareForSleep',path='{LOGIND_PATH}'"):
            await self._call(DBUS, DBUS_PATH, DBUS, "AddMatch", "s", [rule])
        if self.policy == "block-while-running":
            self.host.listeners.append(self._domains_changed)
        self._lost = asyncio.ensure_future(bus.wait_for_disconnect())
        self._lost.add_done_callback(self._bus_closed)
        changes = self._owner_changes
        reply = await self._call(DBUS, DBUS_PATH, DBUS, "GetNameOwner", "s", [LOGIND])
        if self._owner_changes == changes:  # else a NameOwnerChanged came first: it is newer
            self._follow_owner(reply.body[0] if reply.message_type == MessageType.METHOD_RETURN
                               else "")
        if not self._logind_owner:
            self._off("Suspend handling is off: systemd-logind is not running (no "
                      f"{LOGIND} on the system bus); gvtd takes part in suspend as soon as "
                      "it appears.")

    def close(self) -> None:
        """Release every lock (by closing its descriptor) and the system bus."""
        for task in [*self._background.tasks, self._lost]:
            if task is not None:
                task.cancel()
        self._lost = None
        self._close_fds()
        if self._bus is not None:
            bus, self._bus = self._bus, None
            bus.disconnect()

    async def switch(self, policy: str) -> None:
        """Reload: end this policy's handling (locks released, system bus closed, state
        off) and start the new policy's as at start. Between sleep and resume it is Busy and
        changes nothing: only this handling's resume recreates what went before the sleep."""
        async with self._cycle:
            if self._asleep:
                raise Busy("The host is between sleep and resume, and the vGPUs gvtd removed "
                           "before the sleep are recreated when it resumes; nothing was "
                           "changed: run `gvt-client reload` again once it has resumed.")
            self.close()
            if self._domains_changed in self.host.listeners:
                self.host.listeners.remove(self._domains_changed)
            self._logind, self._logind_owner, self._block_pending = False, "", False
            self._problems.clear()
            self._background.forget()
            self.state = "off"
            self.changed()
            log.info("Suspend policy changed from \"%s\" to \"%s\"", self.policy, policy)
            self.policy = policy
        await self.start()

    def problems(self) -> list[Problem]:
        return list(self._problems.values()) + self._background.problems()

    # -- logind --------------------------------------------------------------------------

    async def _call(self, dest: str, path: str, iface: str, member: str, signature: str = "",
                    body: list[object] | None = None) -> Message:
        assert self._bus is not None
        reply = await self._bus.call(Message(destination=dest, path=path, interface=iface,
                                             member=member, signature=signature,
                                             body=body or []))
        assert reply is not None
        return reply

    async def _inhibit(self, mode: str, why: str) -> int | None:
        """An inhibitor lock's file descriptor, or None (logged, and in Problems)."""
        if self._bus is None or not self._logind:
            return None
        try:
            reply = await self._call(LOGIND, LOGIND_PATH, LOGIND_MANAGER, "Inhibit", "ssss",
                                     ["sleep", "gvtd", why, mode])
        except Exception as e:
            reply, text = None, str(e)
        else:
            text = reply.body[0] if reply.body else ""
        if reply is None or reply.message_type == MessageType.ERROR or not reply.unix_fds:
            log.error("logind refused a %s lock for suspend: %s", mode, text)
            self._problems[f"suspend:{mode}"] = (
                f"suspend:{mode}", "warn",
                f"logind refused gvtd's {mode} lock for suspend: {text}",
                "Check the system bus policy for org.freedesktop.login1 (gvtd needs Inhibit), "
                "or set suspend = \"ignore\" in /etc/gvtd/gvtd.toml.")
            self.changed()
            return None
        fds = list(reply.unix_fds)
        fd = fds.pop(reply.body[0])
        for other in fds:
            os.close(other)
        if self._problems.pop(f"suspend:{mode}", None) is not None:
            self.changed()
        return fd

    async def _take_delay(self) -> None:
        if self._delay_fd is None:
            self._delay_fd = await self._inhibit("delay", DELAY_WHY)
            if self._delay_fd is not None:
                log.info("Holding a delay lock for suspend (logind waits for it at most "
                         "%.1f s)", self.delay_max)

    def _release_delay(self, why: str = "the host may sleep") -> None:
        fd, self._delay_fd = self._delay_fd, None
        if fd is not None:
            os.close(fd)
            log.info("Released the delay lock: %s", why)

    def _close_fds(self) -> None:
        self._release_delay("gvtd no longer takes part in suspend")
        fd, self._block_fd, self._block_for = self._block_fd, None, []
        if fd is not None:
            os.close(fd)

    async def _read_delay_max(self) -> None:
        """logind's InhibitDelayMaxUSec: the removals before sleep must end well inside it."""
        try:
            reply = await self._call(LOGIND, LOGIND_PATH, "org.freedesktop.DBus.Properties",
                                     "Get", "ss", [LOGIND_MANAGER, "InhibitDelayMaxUSec"])
            if reply.message_type != MessageType.ERROR:
                self.delay_max = reply.body[0].value / 1_000_000
                return
            why = f"{reply.error_name}: {reply.body[0] if reply.body else ''}"
        except Exception as e:  # the bus gone meanwhile, an odd reply: the default still works
            why = f"{type(e).__name__}: {e}"
        log.warning("Cannot read logind's InhibitDelayMaxUSec (%s); assuming its default of "
                    "%.0f s for the removals before sleep", why, DEFAULT_DELAY_MAX)
        self.delay_max = DEFAULT_DELAY_MAX

    async def _logind_appeared(self) -> None:
        self._logind = True
        self._problems.pop("suspend:logind", None)
        await self._read_delay_max()
        await self._take_delay()
        log.info("Suspend handling on (suspend = \"%s\")", self.policy)
        self._set_state("on")
        if self.policy == "block-while-running":
            await self._update_block()

    def _logind_vanished(self) -> None:
        """logind's locks die with it: ours are gone too."""
        self._logind = False
        self._close_fds()
        self._off("Suspend handling is off: systemd-logind left the system bus; gvtd takes "
                  "part in suspend again when it comes back.")

    def _off(self, message: str) -> None:
        log.warning("%s", message)
        self._problems["suspend:logind"] = (
            "suspend:logind", "warn", message,
            "Start systemd-logind (vGPUs may break suspend until then), or set "
            "suspend = \"ignore\" in /etc/gvtd/gvtd.toml.")
        self._set_state("off")
        self.changed()

    def _bus_closed(self, task: asyncio.Future[None]) -> None:
        """The system bus connection ended: lost, unless gvtd is stopping (cancelled)."""
        if task.cancelled():
            return
        task.exception()  # retrieved, so asyncio does not report it again
        self._bus_lost()

    def _bus_lost(self) -> None:
        if self._bus is None:
            return  # close()
        self._bus = None
        self._logind = False
        self._logind_owner = ""
        self._close_fds()
        self._off("Suspend handling is off: the connection to the system bus was lost.")

    def _set_state(self, state: State) -> None:
        if state == "on" and self._block_fd is not None:
            state = "blocked"
        if state != self.state:
            self.state = state
            self.changed()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """A sleep, resume or lock update handled in the background: a failure goes to the
        log and Problems (until the next one succeeds), never lost with its task."""
        self._background.spawn(coro, "handling", _handling_failed)

    def _on_message(self, msg: Message) -> None:
        """logind's and the bus driver's signals, each acted on only from its real sender."""
        if msg.message_type != MessageType.SIGNAL:
            return
        if msg.member == "NameOwnerChanged" and msg.interface == DBUS \
                and msg.path == DBUS_PATH and msg.signature == "sss" and msg.body[0] == LOGIND:
            if self._genuine(msg, DBUS, DBUS):
                self._owner_changes += 1
                self._follow_owner(msg.body[2])
        elif msg.member == "PrepareForSleep" and msg.interface == LOGIND_MANAGER \
                and msg.path == LOGIND_PATH and msg.signature == "b":
            if self._genuine(msg, LOGIND, self._logind_owner):
                self._spawn(self._before_sleep() if msg.body[0] else self._after_sleep())

    def _genuine(self, msg: Message, name: str, owner: str) -> bool:
        """Whether msg comes from owner, the unique name behind name; if not, log it once
        per sender and member (in bounded memory) and tell the caller to ignore it."""
        if owner and msg.sender == owner:
            return True
        key = (msg.sender or "", msg.member or "")
        if key not in self._forged:
            if len(self._forged) >= FORGED_MEMORY:
                del self._forged[next(iter(self._forged))]
            self._forged[key] = None
            log.debug("Ignored a %s signal from %s: only %s (%s) sends it", msg.member,
                      msg.sender or "no sender", name, owner or "not on the bus")
        return False

    def _follow_owner(self, owner: str) -> None:
        """logind's name changed hands (or was read at start): the locks of an old owner
        died with it; a new owner gets gvtd's locks."""
        old, self._logind_owner = self._logind_owner, owner
        if owner == old:
            return
        if old:
            self._logind_vanished()
        if owner:
            log.info("systemd-logind is on the system bus (%s)", owner)
            self._spawn(self._logind_appeared())

    # -- sleep and resume ---------------------------------------------------------------

    async def _before_sleep(self) -> None:
        """Remove the idle vGPUs, then let go of the delay lock: within InhibitDelayMaxSec
        even when a removal hangs (it goes on in the background, and is reported)."""
        async with self._cycle:
            if self._asleep:
                return  # a repeated signal
            self._asleep = True
            self._set_state("preparing")
            budget = self.delay_max * DELAY_SHARE
            log.info("The host is about to sleep: removing the vGPUs no running VM uses "
                     "(at most %.1f s)", budget)
            self._teardown = progress = Teardown()
            if not self.domains.libvirt.connected:
                text = ("libvirt was unreachable at the last suspend, so gvtd could not tell "
                        "which vGPUs running VMs use, and removed none before the host slept.")
                log.warning("%s", text)
                self._problems["suspend:teardown"] = (
                    "suspend:teardown", "warn", text,
                    "Check that libvirtd runs (systemctl status libvirtd) and that "
                    "libvirt_uri in /etc/gvtd/gvtd.toml names it.")
            else:
                started = time.monotonic()
                task = asyncio.ensure_future(teardown_idle(self.host, progress))
                self._teardown_task = task
                try:
                    await asyncio.wait_for(asyncio.shield(task), budget)
                except asyncio.TimeoutError:
                    self._hung(progress, budget, started, task)
                except Exception as e:
                    log.exception("Removing vGPUs before sleep failed")
                    self._problems["suspend:teardown"] = (
                        "suspend:teardown", "error",
                        f"Removing the idle vGPUs before the host slept failed "
                        f"({type(e).__name__}: {e}); the host slept anyway.",
                        "See the journal (journalctl -u gvtd) and `gvt-client status`.")
                    self.changed()
                else:
                    self._problems.pop("suspend:teardown", None)
                    self._report_failed(progress, 0)
                    self.changed()
            self._release_delay()
            self._set_state("sleeping")

    def _hung(self, progress: Teardown, budget: float, started: float,
              task: asyncio.Future[None]) -> None:
        """A removal that outlasts the budget: the host sleeps anyway, and everyone hears."""
        pending = (f"vGPU {progress.current}" if progress.current
                   else "the idle vGPUs (another operation held gvtd busy)")
        log.error("Removing %s before sleep did not finish within %.1f s (logind waits at most "
                  "%.1f s): letting the host sleep anyway", pending, budget, self.delay_max)
        self._problems["suspend:teardown"] = (
            "suspend:teardown", "error",
            f"Removing {pending} before the host slept hung for more than {budget:.1f} s "
            "(the kernel did not answer); the host slept without waiting for it.",
            "See the kernel log (journalctl -k) for i915/GVT-g errors; a VM outside libvirt "
            "may hold the vGPU open.")
        self.changed()
        reported = len(progress.failed)
        self._report_failed(progress, 0)

        def finished(t: asyncio.Future[None]) -> None:
            self._report_failed(progress, reported)
            took = time.monotonic() - started
            failed = t.exception() if not t.cancelled() else None
            log.warning("Removing %s before sleep ended after %.1f s%s", pending, took,
                        f" with an error: {failed}" if failed else "")
            if "suspend:teardown" in self._problems:
                self._problems["suspend:teardown"] = (
                    "suspend:teardown", "warn",
                    f"At the last suspend, removing {pending} took {took:.1f} s, longer "
                    f"than logind allows ({self.delay_max:.1f} s); the host slept before it "
                    "was done.",
                    "See the kernel log (journalctl -k) for i915/GVT-g errors.")
                self.changed()

        task.add_done_callback(finished)

    def _report_failed(self, progress: Teardown, start: int) -> None:
        """vGPUs the kernel refused to remove before sleep: they stayed, visibly."""
        for name, error in progress.failed[start:]:
            log.error("vGPU %s could not be removed before sleep and stayed: %s", name, error)
            self._problems.setdefault("suspend:teardown", (
                "suspend:teardown", "warn",
                f"vGPU {name} could not be removed before the host slept and stayed: {error}",
                "See the kernel log (journalctl -k); stop the VM that holds it open before "
                "suspending."))

    async def _after_sleep(self) -> None:
        """Take the delay lock again first (a new suspend must wait for gvtd), then
        recreate exactly what was removed before sleep."""
        async with self._cycle:
            if not self._asleep:
                return
            self._asleep = False
            self._set_state("resuming")
            await self._take_delay()
            task, self._teardown_task = self._teardown_task, None
            progress, self._teardown = self._teardown, None
            torn = list(progress.done) if progress is not None else []
            if task is not None and not task.done() and progress is not None:
                # The kernel may hold that remove as long as QEMU keeps the vGPU open: do not
                # wait for it (the next suspend would wait too). Nothing more goes, and the
                # held one is recreated once it is gone.
                progress.stop = True
                log.warning("Removing vGPU %s, begun before sleep, still waits for the kernel; "
                            "it is recreated once removed", progress.current or "(queued)")
                task.add_done_callback(lambda t: self._spawn(
                    restore_after_sleep(self.host, progress.done[len(torn):])))
            if torn:
                log.info("The host resumed: recreating %s", ", ".join(t.name for t in torn))
                await restore_after_sleep(self.host, torn)
            else:
                log.info("The host resumed; no vGPU to recreate")
            self._set_state("on")

    # -- block-while-running ----------------------------------------------------------------

    def _running_with_vgpu(self) -> list[str]:
        d = self.domains
        return sorted(n for n, i in d.libvirt.domains.items() if i.active and d.uses(i))

    def _domains_changed(self) -> None:
        """A host listener (domains.py publishes every domain change through Host)."""
        if self._logind and not self._block_pending \
                and self._running_with_vgpu() != self._block_for:
            self._block_pending = True
            self._spawn(self._update_block())

    async def _update_block(self) -> None:
        """Hold a block lock naming the running VMs with a vGPU; none when none runs. A new
        lock is taken before the old one goes, so suspend is never open in between."""
        async with self._block_lock:
            self._block_pending = False
            running = self._running_with_vgpu()
            if running == self._block_for:
                return
            old = self._block_fd
            self._block_fd, self._block_for = None, []
            if running:
                self._block_fd = await self._inhibit("block", block_why(running))
                self._block_for = running  # even when refused: no retry until this changes
                if self._block_fd is not None:
                    log.info("Blocking suspend while %s run%s with a vGPU", ", ".join(running),
                             "" if len(running) > 1 else "s")
            if old is not None:
                os.close(old)
                if not running:
                    log.info("No VM with a vGPU runs any more: suspend is allowed again")
            if self.state in ("on", "blocked"):
                self._set_state("on")
        if self._running_with_vgpu() != self._block_for:
            self._domains_changed()  # changed while we talked to logind


def _handling_failed(e: BaseException) -> Problem:
    return ("suspend:handling", "error",
            f"Handling the host's sleep or resume failed ({type(e).__name__}: {e}); vGPUs "
            "removed before sleep may not be back.",
            "See `gvt-client status` and the journal (journalctl -u gvtd); `gvt-client "
            "create NAME` brings a vGPU back.")
