"""The libvirt connection, its lifecycle events on the asyncio loop, and reconnection.

libvirtaio puts libvirt's event loop on ours, so lifecycle events arrive as callbacks on the
one loop; blocking calls (open, start, shutdown) run in worker threads. When libvirtd is down
gvtd keeps running: it retries with a growing delay and resyncs every domain when it is back.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import sys
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

from gvtd.background import Background, Problem
from gvtd.errors import Busy, Failed, GvtdError, LibvirtUnavailable, NotFound
from gvtd.virt.domxml import mdev_uuids, parse

Uses = Callable[[str], list[str]]  # a domain XML -> the vGPU UUIDs it uses


def _on_first_use(name: str) -> ModuleType:
    """The module, imported when one of its names is first used. libvirt-python and the
    client library it loads cost about 20 ms, and gvtd connects to libvirt only after
    READY=1: importing it up front delayed every start by that much."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ImportError(f"No module named {name!r}", name=name)
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


if TYPE_CHECKING:
    import libvirt
else:
    libvirt = _on_first_use("libvirt")

log = logging.getLogger(__name__)


def _state(code: int) -> str:
    """A libvirt domain state (virDomainState) as gvtd names it."""
    return {
        libvirt.VIR_DOMAIN_RUNNING: "running",
        libvirt.VIR_DOMAIN_BLOCKED: "running",
        libvirt.VIR_DOMAIN_PAUSED: "paused",
        libvirt.VIR_DOMAIN_SHUTDOWN: "shutting-down",
        libvirt.VIR_DOMAIN_SHUTOFF: "shut-off",
        libvirt.VIR_DOMAIN_CRASHED: "crashed",
        libvirt.VIR_DOMAIN_PMSUSPENDED: "suspended",
    }.get(code, "unknown")


ACTIVE = {"running", "paused", "shutting-down", "suspended"}
MIN_DELAY, MAX_DELAY = 0.5, 30.0
# libvirt's domain format documents relaxed, vapic and spinlocks since 1.1.0 and the rest
# of these since 1.3.3
HYPERV_SINCE_1_3_3 = frozenset({"relaxed", "vapic", "spinlocks", "vpindex", "runtime",
                                "synic", "stimer"})

_event_impl_registered = False


@dataclass
class DomainInfo:
    name: str
    state: str
    mdevs: list[str] = field(default_factory=list)  # the vGPU UUIDs its XML uses
    xml: str = ""  # the persistent (inactive) definition

    @property
    def active(self) -> bool:
        return self.state in ACTIVE


class Libvirt:
    """One connection to libvirt, kept up; `domains` mirrors what libvirt has."""

    def __init__(self, uri: str, on_change: Callable[[set[str]], None],
                 uses: Uses = mdev_uuids) -> None:
        """uses: which vGPUs a domain's XML uses (gvtd.backend.Backends.uses)."""
        self.uri = uri
        self.uses = uses
        self.on_change = on_change  # called with the names of domains that changed
        self.conn: libvirt.virConnect | None = None
        self.domains: dict[str, DomainInfo] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self._reconnecting: asyncio.Task[None] | None = None
        self._stopped: dict[str, list[asyncio.Future[None]]] = {}
        self._closing = False
        self._synced: libvirt.virConnect | None = None  # the connection whose domains are read
        self._failure: str | None = None  # why the last attempt failed: said once, not per retry
        self._loop_thread = 0
        # Re-reads after events and reconnects: a failure stays in Problems until it passes.
        self.background = Background(lambda: self.on_change(set()))

    @property
    def connected(self) -> bool:
        """True once the connection's domains have been read: a client that sees
        LibvirtConnected never sees the domains (and their problems) still missing."""
        return self.conn is not None and self._synced is self.conn

    async def start(self) -> None:
        global _event_impl_registered
        self.loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        if not _event_impl_registered:
            import libvirtaio  # loads libvirt here, on the loop's thread, before any worker

            libvirtaio.virEventRegisterAsyncIOImpl(loop=self.loop)
            # libvirt prints every error to stderr by default; gvtd reports the ones that
            # matter itself, with what to do.
            libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
            _event_impl_registered = True
        if not await self._connect():
            self._reconnect_later()

    def close(self) -> asyncio.Future[None] | None:
        """Stop reconnecting and let go of the connection. Closing it is an RPC that a hung
        libvirtd never answers, so it runs in a worker thread; the future (None without a
        connection) ends when libvirtd has answered."""
        self._closing = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        conn, self.conn = self.conn, None
        if conn is None:
            return None
        assert self.loop is not None
        return self.loop.run_in_executor(None, _drop, conn)

    def retarget(self, uri: str) -> None:
        """Reload named another URI: leave the old libvirt as when it goes away (its
        domains stay known, the connection shows lost) and connect to uri in the
        background, retrying as after a lost connection."""
        self.close()
        self._closing, self._reconnecting = False, None
        self.uri, self._failure = uri, None
        log.info("libvirt_uri changed: connecting to libvirt at %s", uri)
        self.on_change(set(self.domains))
        self._reconnect_later()

    async def _connect(self) -> bool:
        try:
            conn = await asyncio.to_thread(libvirt.open, self.uri)
        except libvirt.libvirtError as e:
            self._failed(e.get_error_message())
            return False
        try:
            await asyncio.to_thread(self._register, conn)
        except libvirt.libvirtError as e:  # libvirtd went away right after accepting us
            self._failed(f"lost while connecting: {e.get_error_message()}")
            _drop(conn)
            return False
        self.conn = conn
        self._failure = None
        log.info("Connected to libvirt at %s", self.uri)
        await self.resync()
        if self.conn is conn:
            self._synced = conn
            self.on_change(set())  # LibvirtConnected, even when the resync failed
        return True

    def _register(self, conn: libvirt.virConnect) -> None:
        """The callbacks gvtd needs (an RPC to libvirtd: in a worker thread)."""
        conn.registerCloseCallback(self._on_close, None)
        conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                    self._on_lifecycle, None)

    def _failed(self, why: str) -> None:
        """A warning when libvirt becomes unreachable or fails differently; the retries that
        fail the same way (every 30 s while libvirtd is stopped) only at debug level."""
        if why == self._failure:
            log.debug("Still cannot connect to libvirt at %s: %s", self.uri, why)
            return
        self._failure = why
        log.warning("Cannot connect to libvirt at %s: %s; retrying in the background, "
                    "domains are unavailable until then", self.uri, why)

    def _reconnect_later(self) -> None:
        if self._closing or (self._reconnecting and not self._reconnecting.done()):
            return
        self._reconnecting = self._spawn(self._reconnect(), "reconnect to libvirt")

    async def _reconnect(self) -> None:
        delay = MIN_DELAY
        while not self._closing and not await self._connect():
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_DELAY)

    def _on_close(self, conn: libvirt.virConnect, reason: int, opaque: object) -> None:
        assert self.loop is not None
        if threading.get_ident() != self._loop_thread:
            # libvirt closes from the thread that met the end of the socket: a worker's RPC
            self.loop.call_soon_threadsafe(self._on_close, conn, reason, opaque)
            return
        if conn is not self.conn:
            return  # an older connection, already replaced
        log.warning("Lost the connection to libvirt (reason %d); reconnecting", reason)
        self.conn = None
        assert self.loop is not None
        self.loop.call_soon(_drop, conn)  # not from inside its own callback
        changed = set(self.domains)
        self.on_change(changed)
        self._reconnect_later()

    def _on_lifecycle(self, conn: libvirt.virConnect, dom: libvirt.virDomain, event: int,
                      detail: int, opaque: object) -> None:
        self._spawn(self._refresh_one(dom.name()), "read a domain after its libvirt event")

    def _spawn(self, coro: Coroutine[Any, Any, None], what: str) -> asyncio.Task[None]:
        assert self.loop is not None
        return self.background.spawn(coro, what, lambda e: _task_failed(what, e), self.loop)

    async def resync(self) -> None:
        """Read every domain again (after connecting, or when unsure)."""
        conn = self.conn
        if conn is None:
            return
        try:
            found = await asyncio.to_thread(_read_all, conn, self.uses)
        except libvirt.libvirtError as e:
            log.warning("Cannot list libvirt domains: %s", e.get_error_message())
            return
        if conn is not self.conn:
            return  # read on a connection closed meanwhile (lost, or another URI)
        changed = set(self.domains) | set(found)
        self.domains = found
        self._wake_stopped()
        self.on_change(changed)

    async def _refresh_one(self, name: str) -> None:
        conn = self.conn
        if conn is None:
            return
        try:
            info = await asyncio.to_thread(_read_one, conn, name, self.uses)
        except libvirt.libvirtError as e:
            # Not "undefined" (that is None): most likely the connection is going away.
            # Keep what is known; the resync after reconnecting corrects it.
            log.debug("Cannot read domain %s: %s", name, e.get_error_message())
            return
        if conn is not self.conn:
            return  # read on a connection lost meanwhile: the resync decides
        if info is None:
            self.domains.pop(name, None)
        else:
            self.domains[name] = info
        self._wake_stopped()
        self.on_change({name})

    def _wake_stopped(self) -> None:
        for name, waiters in list(self._stopped.items()):
            info = self.domains.get(name)
            if info is None or not info.active:
                for w in waiters:
                    if not w.done():
                        w.set_result(None)
                del self._stopped[name]

    # -- operations ------------------------------------------------------------------------

    def _domain(self, name: str) -> libvirt.virDomain:
        """The domain, looked up with an RPC: call it in a worker thread, never on the loop
        (a libvirtd that hangs would hang every D-Bus answer and the watchdog)."""
        if self.conn is None:
            raise LibvirtUnavailable(f"libvirt is not reachable at {self.uri}: is libvirtd "
                                     "running? gvtd reconnects as soon as it is.")
        try:
            return self.conn.lookupByName(name)
        except libvirt.libvirtError as e:
            if _lost(e):
                raise LibvirtUnavailable(f"lost the connection to libvirt at {self.uri}; gvtd "
                                         "reconnects as soon as libvirtd is back.") from e
            raise NotFound(f"libvirt has no domain named {name!r} (`virsh list --all` shows "
                           "them).") from e

    async def version(self) -> int:
        """libvirt's version as major * 1,000,000 + minor * 1,000 + micro (an RPC, off the
        loop)."""
        conn = self.conn
        if conn is None:
            raise LibvirtUnavailable(f"libvirt is not reachable at {self.uri}.")
        try:
            return int(await asyncio.to_thread(conn.getLibVersion))
        except libvirt.libvirtError as e:
            raise self._lost_or_failed(e, "libvirt cannot tell its version") from e

    async def hyperv_features(self, xml: str) -> frozenset[str]:
        """The Hyper-V enlightenments libvirt accepts for this domain: its domain capabilities
        (QEMU driver, libvirt 8.0 and newer) list them for the domain's emulator, arch,
        machine and type; a driver without domain capabilities (test:///) or an older
        libvirt gets those its version documents (every one the guide names since 1.3.3)."""
        if self.conn is None:
            raise LibvirtUnavailable(f"libvirt is not reachable at {self.uri}.")
        root = parse(xml)
        os_type = root.find("./os/type")
        emulator = root.findtext("./devices/emulator")
        try:
            caps = await asyncio.to_thread(
                self.conn.getDomainCapabilities, emulator,
                os_type.get("arch") if os_type is not None else None,
                os_type.get("machine") if os_type is not None else None,
                root.get("type"))
        except libvirt.libvirtError as e:
            if e.get_error_code() not in (libvirt.VIR_ERR_NO_SUPPORT,
                                          libvirt.VIR_ERR_OPERATION_UNSUPPORTED):
                raise Failed(f"libvirt cannot say what the domain's emulator supports: "
                             f"{e.get_error_message()}") from e
            caps = ""
        hyperv = parse(caps).find("./features/hyperv") if caps else None
        if hyperv is None:
            return HYPERV_SINCE_1_3_3 if await self.version() >= 1_003_003 else frozenset()
        if hyperv.get("supported") != "yes":
            return frozenset()
        return frozenset(v.text or "" for v in
                         hyperv.findall("./enum[@name='features']/value"))

    async def read_xml(self, name: str) -> str:
        """The domain's persistent XML, read off the loop: what an edit starts from and
        passes to define() as `read`."""
        def read() -> str:
            try:
                return self._domain(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
            except libvirt.libvirtError as e:
                raise self._lost_or_failed(e, f"libvirt cannot read the XML of {name}") from e

        return await asyncio.to_thread(read)

    async def define(self, name: str, xml: str, read: str,
                     first: Callable[[], None] | None = None) -> None:
        """Replace a domain's persistent definition (virsh define) with xml, an edit of
        `read`, only if libvirt still has exactly `read`: a `virsh edit` made meanwhile is
        not lost but refused with Busy. `first` (saving what it replaces) runs after that
        check, before the define, in the same worker thread."""
        if self.conn is None:
            raise LibvirtUnavailable(f"libvirt is not reachable at {self.uri}.")

        def define() -> None:
            # libvirt has no compare-and-define: this re-read narrows the window to the
            # two calls below, from the whole edit (which may ask libvirt and sysfs).
            try:
                now = self._domain(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
            except libvirt.libvirtError as e:
                raise self._lost_or_failed(e, f"libvirt cannot read the XML of {name}") from e
            if now != read:
                raise Busy(f"The XML of {name} changed while gvtd was editing it (a `virsh "
                           "edit`?); nothing was changed; run the command again.")
            if first is not None:
                first()
            conn = self.conn
            if conn is None:
                raise LibvirtUnavailable(f"lost the connection to libvirt at {self.uri}; "
                                         "nothing was changed.")
            try:
                conn.defineXML(xml)
            except libvirt.libvirtError as e:
                raise Failed(f"libvirt refused the new XML of {name}: "
                             f"{e.get_error_message()}") from e

        await asyncio.to_thread(define)
        await self._refresh_one(name)

    def _lost_or_failed(self, e: libvirt.libvirtError, what: str) -> GvtdError:
        if _lost(e):
            return LibvirtUnavailable(f"lost the connection to libvirt at {self.uri}; gvtd "
                                      "reconnects as soon as libvirtd is back.")
        return Failed(f"{what}: {e.get_error_message()}")

    async def create(self, name: str, xml: str | None = None) -> None:
        """Start a defined domain (virsh start); with xml, that edit of its definition for
        this run only (virDomainCreateXML: the persistent definition stays as it is)."""
        def create() -> None:
            dom = self._domain(name)
            if xml is None or self.conn is None:
                dom.create()
            else:
                self.conn.createXML(xml, 0)

        try:
            await asyncio.to_thread(create)
        except libvirt.libvirtError as e:
            if _lost(e):
                raise LibvirtUnavailable(f"lost the connection to libvirt at {self.uri} while "
                                         f"starting {name}; it may or may not have started."
                                         ) from e
            raise Failed(f"libvirt could not start {name}: {e.get_error_message()}") from e
        await self._refresh_one(name)

    async def shutdown(self, name: str, timeout: float, force: bool) -> bool:
        """Ask the guest to shut down; wait up to timeout; destroy if forced.
        Returns whether the domain is off."""
        dom = await asyncio.to_thread(self._domain, name)
        assert self.loop is not None
        waiter: asyncio.Future[None] = self.loop.create_future()
        self._stopped.setdefault(name, []).append(waiter)
        await self._refresh_one(name)  # maybe it is off already
        if not waiter.done():
            try:
                await asyncio.to_thread(dom.shutdown)
            except libvirt.libvirtError as e:
                if not force:
                    raise Failed(f"libvirt could not shut down {name}: "
                                 f"{e.get_error_message()}") from e
            try:
                await asyncio.wait_for(asyncio.shield(waiter), timeout)
            except asyncio.TimeoutError:
                if not force:
                    return False
                log.warning("%s did not shut down within %.0f s; destroying it", name, timeout)
                try:
                    await asyncio.to_thread(dom.destroy)
                except libvirt.libvirtError as e:
                    # It may have shut down at the deadline, before its event arrived.
                    await self._refresh_one(name)
                    info = self.domains.get(name)
                    if info is not None and not info.active:
                        return True
                    raise Failed(f"libvirt could not destroy {name}: "
                                 f"{e.get_error_message()}") from e
                await self._refresh_one(name)
        return True


def _lost(e: libvirt.libvirtError) -> bool:
    """The error is the connection's (libvirtd gone), not the request's."""
    return e.get_error_domain() == libvirt.VIR_FROM_RPC


def _drop(conn: libvirt.virConnect) -> None:
    """Release a dead connection: its close callback holds a reference that keeps it."""
    for release in (conn.unregisterCloseCallback, conn.close):
        try:
            release()
        except libvirt.libvirtError:
            pass


def _info(dom: libvirt.virDomain, uses: Uses) -> DomainInfo:
    state, _ = dom.state()
    xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    return DomainInfo(dom.name(), _state(state), uses(xml), xml)


def _read_all(conn: libvirt.virConnect, uses: Uses) -> dict[str, DomainInfo]:
    return {info.name: info for info in (_info(d, uses) for d in conn.listAllDomains())}


def _read_one(conn: libvirt.virConnect, name: str, uses: Uses) -> DomainInfo | None:
    try:
        return _info(conn.lookupByName(name), uses)
    except libvirt.libvirtError as e:
        if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise


def _task_failed(what: str, e: BaseException) -> Problem:
    return (f"libvirt:{what.replace(' ', '-')}", "error",
            f"gvtd failed to {what} ({type(e).__name__}: {e}); what it shows of libvirt's "
            "domains may be out of date until it succeeds again.",
            "If this stays, restart gvtd (systemctl restart gvtd) and report the journal "
            "lines (journalctl -u gvtd).")
