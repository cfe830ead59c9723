"""libvirt domains together with their vGPUs: start makes sure every vGPU a domain uses
exists first; stop removes the on-demand ones after, so their share of the GPU is free."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gvtd import cputopo, names, ondemand
from gvtd.backend import HostdevOptions, Instance, Parent
from gvtd.background import Background, Problem, why
from gvtd.bounded import KeyedLock
from gvtd.config import atomic_write
from gvtd.desktop import Desktop
from gvtd.errors import Busy, Failed, GvtdError, InvalidArgument, NotFound
from gvtd.host import Host
from gvtd.session import Logind
from gvtd.virt import audio, domxml, tune
from gvtd.virt.connection import DomainInfo, Libvirt
from gvtd.virt.rom import check_rom

if TYPE_CHECKING:
    from gvtd import doctor
    from gvtd.reconcile import VgpuView

log = logging.getLogger(__name__)

DEFAULT_STOP_TIMEOUT = 120
BACKUP_DIR = "tune"  # under STATE_DIRECTORY: each domain's XML before its last tune


class Domains:
    def __init__(self, host: Host, uri: str, sysfs: Path = Path("/sys"),
                 state_dir: Path = Path("/var/lib/gvtd"),
                 qemu_conf: Path = Path("/etc/libvirt/qemu.conf"),
                 desktop: Desktop | None = None) -> None:
        self.host = host
        self.desktop = desktop or Desktop(Logind(), sysfs)
        self.qemu_conf = qemu_conf
        self.sysfs = sysfs
        self.backups = state_dir / BACKUP_DIR
        self.libvirt = Libvirt(uri, self._changed, host.backends.uses)
        # By the caller's domain name, which may be any string: kept only while used.
        self.locks = KeyedLock()
        self._active: set[str] = set()
        # Releases after a domain stopped on its own: a failure stays in Problems.
        self.releases = Background(host.publish)

    async def start(self) -> None:
        await self.libvirt.start()

    def close(self) -> asyncio.Future[None] | None:
        self.desktop.logind.close()
        return self.libvirt.close()

    def retarget(self, uri: str) -> None:
        """Reload: domains from another libvirt. Those of the old one that the new one does
        not show are out of sight, not stopped: their on-demand vGPUs stay."""
        self.libvirt.retarget(uri)
        self._active = set()

    # -- what the bus shows -------------------------------------------------------------

    def uses(self, info: DomainInfo) -> list[str]:
        """UUIDs a domain uses: its vGPU hostdevs (gvtd.backend.Backends.used_in), then
        definitions that name it."""
        out = list(info.mdevs)
        out += [d.uuid for d in self.host.definitions.values()
                if d.domain == info.name and d.uuid not in out]
        return out

    def shown(self) -> dict[str, DomainInfo]:
        """Domains with a Domain object: those with a vGPU, or named by a definition."""
        named = {d.domain for d in self.host.definitions.values() if d.domain}
        return {n: i for n, i in self.libvirt.domains.items() if i.mdevs or n in named}

    def domain_of(self, uuid: str) -> str:
        return next((n for n, i in sorted(self.libvirt.domains.items())
                     if uuid in self.uses(i)), "")

    def running_user(self, uuid: str) -> str | None:
        return next((n for n, i in sorted(self.libvirt.domains.items())
                     if i.active and uuid in self.uses(i)), None)

    def _changed(self, names: set[str]) -> None:
        now = {n for n, i in self.libvirt.domains.items() if i.active}
        for name in sorted(names & (self._active - now)):
            if self.libvirt.conn is not None:  # off, not merely out of sight
                self.releases.spawn(self._stopped(name), name,
                                    lambda e, name=name: _release_failed(name, e))
        self._active = now
        self.host.publish()

    async def _stopped(self, name: str) -> None:
        async with self.locks.hold(name):
            info = self.libvirt.domains.get(name)
            if info is None or not info.active:
                await ondemand.release(self.host, name, self._uses_by_name(name))
                await self.desktop.stopped(name)

    def _uses_by_name(self, name: str) -> list[str]:
        info = self.libvirt.domains.get(name)
        return self.uses(info) if info else [d.uuid for d in self.host.definitions.values()
                                             if d.domain == name]

    # -- operations (D-Bus methods) --------------------------------------------------------

    async def start_domain(self, name: str, uid: int | None = None) -> None:
        """Make sure every vGPU the domain uses exists, then start it; a GL display gets
        what uid's desktop session needs (gvtd.desktop). Concurrent starts of one domain
        start it once."""
        async with self.locks.hold(name):
            xml = await self.libvirt.read_xml(name)  # LibvirtUnavailable / NotFound first
            await self.libvirt.resync() if name not in self.libvirt.domains else None
            uuids = self._uses_by_name(name)
            info = self.libvirt.domains.get(name)
            live = None
            if uid is not None and not (info is not None and info.active):
                live = await self.desktop.start_xml(name, xml, uid,
                                                    await self._qemu_user(xml))
            try:
                await ondemand.ensure(self.host, uuids, name)
            except GvtdError:  # nothing starts: the X access given for it goes
                await self.desktop.stopped(name)
                raise
            info = self.libvirt.domains.get(name)
            if info is not None and info.active:
                return  # already running: nothing to do, not an error
            log.info("Starting domain %s", name, extra={"DOMAIN": name})
            try:
                await self.libvirt.create(name, live)
            except Failed:  # libvirt refused: on-demand vGPUs made for it free their share
                await ondemand.release(self.host, name, uuids)
                await self.desktop.stopped(name)
                raise

    async def _qemu_user(self, xml: str) -> str:
        """Who QEMU runs as: the domain's static DAC label, else qemu.conf's user."""
        from gvtd import doctor

        return domxml.dac_user(xml) or await asyncio.to_thread(doctor.qemu_user, self.qemu_conf)

    async def prepare_domain(self, name: str, uuids: list[str]) -> None:
        """libvirt is about to start the domain (its hook, packaging/libvirt-hook): create
        the vGPUs it uses, as StartDomain does. Asks libvirt nothing and takes no domain
        lock: libvirt runs the prepare hook with the domain object locked, and waits for it,
        perhaps for our own StartDomain holding that lock.

        The hook's UUIDs are a claim, not a fact: only those the domain uses as gvtd knows it
        (its XML in gvtd's libvirt cache, definitions naming it) are created; one that
        another domain's definition has is ignored and logged. A UUID no definition has is
        passed on, so that the start fails with the fix (nothing is created for it)."""
        defined = {d.uuid for d in self.host.definitions.values()}
        wanted = self._hook_uuids("PrepareDomain", name, uuids, keep=lambda u: u not in defined)
        await ondemand.ensure(self.host, wanted, name)

    async def release_domain(self, name: str, uuids: list[str]) -> None:
        """libvirt has released the domain after it stopped (its hook): remove the on-demand
        vGPUs it uses (as gvtd knows it, not as the caller says) that no running domain uses.

        "Running" is what libvirt's events say (gvtd's cache), never the caller. libvirt
        calls the release hook from qemuProcessStop with the domain object locked, after it
        set the state to shut off but before the STOPPED event goes out (that is queued once
        qemuProcessStop returns), so any question to libvirt about this domain would wait
        for the hook, which waits for gvtd. So nothing is asked: a vGPU of a domain the
        cache still has running stays, and goes when libvirt's STOPPED event arrives
        (_stopped), which follows the hook by milliseconds."""
        await ondemand.release(
            self.host, name, self._hook_uuids("ReleaseDomain", name, uuids, keep=lambda u: False))

    def _hook_uuids(self, method: str, name: str, uuids: list[str],
                    keep: Callable[[str], bool]) -> list[str]:
        """What a hook call may act on: what the domain uses, plus the caller's UUIDs that
        keep allows; the rest is logged and ignored."""
        uses = self._uses_by_name(name)
        for uuid in dict.fromkeys(uuids):
            if uuid not in uses and not keep(uuid):
                log.warning("%s(%s) named vGPU %s, which %s does not use (not in its libvirt "
                            "XML as gvtd knows it, nor defined for it); ignored", method, name,
                            uuid, name, extra={"DOMAIN": name})
        return list(dict.fromkeys([*uses, *(u for u in uuids if u not in uses and keep(u))]))

    async def attach(self, name: str, key: str, opts: AttachOptions,
                     socket: str = "") -> str:
        """Edit the domain's persistent XML as the guide does by hand; returns the diff,
        then for a VF the line saying what gives its picture. opts.audio: its sound on
        `socket` (True), none of gvtd's (False) or as it is (None); a dry run with sound
        then names QEMU's user, whom the caller's session must let reach the socket."""
        async with self.locks.hold(name):
            view = self.host.find(key)
            before = await self.libvirt.read_xml(name)
            instance = Instance(view.uuid, view.parent, view.type_id, view.address,
                                view.backend)
            if view.backend == "sriov":  # its backend writes a PCI hostdev
                hostdev = self.host.backends.hostdev(instance, await _vf_options(view, opts))
                after = domxml.attach_vf(before, hostdev)
                picture = f"{names.PICTURE_LINE}{domxml.PICTURE}\n"
            else:
                after = await self._attach_mdev(before, view, instance, opts)
                picture = ""
            if opts.audio is not None:
                after = audio.wire(after, socket if opts.audio else None)
            change = await self._edit(name, before, after, opts.dry_run) + picture
            if not (opts.audio and opts.dry_run):
                return change
            from gvtd import doctor  # not on the way to READY=1
            user = domxml.dac_user(before) or await asyncio.to_thread(doctor.qemu_user,
                                                                      self.qemu_conf)
            return f"{change}{names.SOUND_LINE}{user}@{socket}\n"

    async def _attach_mdev(self, before: str, view: VgpuView, instance: Instance,
                           opts: AttachOptions) -> str:
        if opts.rom is not None or opts.rom_bar is not None:
            raise InvalidArgument(f"rom and rom_bar are for an SR-IOV VF (a PCI function with "
                                  f"a ROM BAR); {view.name or view.uuid} is an mdev, which has "
                                  "none.")
        display = opts.display or "spice-gl"
        render_node = await asyncio.to_thread(self.host.render_node, view.parent) \
            if display == "spice-gl" else None  # a sysfs scan
        spec = domxml.AttachSpec(
            uuid=view.uuid, display=display,  # type: ignore[arg-type]
            render_node=render_node,
            x_display=opts.x_display or ":0",
            override=await self.libvirt.version() >= domxml.OVERRIDE_VERSION,
            hostdev=self.host.backends.hostdev(instance, HostdevOptions(display)))
        return domxml.attach(before, spec)

    async def detach(self, name: str, key: str) -> str:
        async with self.locks.hold(name):
            view = self.host.find(key)
            before = await self.libvirt.read_xml(name)
            after = domxml.detach_vf(before, view.address) if view.backend == "sriov" \
                else domxml.detach(before, view.uuid)
            return await self._edit(name, before, audio.wire(after, None), False)

    def backup_path(self, name: str) -> Path:
        return self.backups / f"{names.escape_path_element(name)}.xml"

    async def tune(self, name: str, opts: TuneOptions) -> str:
        """The guide's tuning step on the domain's persistent XML; returns the diff, then
        one `# warning:` line per piece of the guide's advice the XML does not follow.
        The XML before a change is kept so that revert can put it back exactly."""
        async with self.locks.hold(name):
            before = await self.libvirt.read_xml(name)
            if opts.revert:
                return await self._revert(name, before, opts.dry_run)
            topology = await asyncio.to_thread(cputopo.read, self.sysfs) if opts.cpu else None
            hyperv = await self.libvirt.hyperv_features(before) if opts.hyperv else None
            spec = tune.TuneSpec(topology, opts.vcpus, opts.pinning, opts.first_core, hyperv,
                                 opts.spice)
            after = tune.tune(before, spec)
            change = domxml.diff(domxml.serialize(domxml.parse(before)), after, name)
            if change and not opts.dry_run:
                log.info("Tuning domain %s:\n%s", name, change, extra={"DOMAIN": name})
                # the copy for --revert is replaced only once libvirt is known to still
                # have `before`, and before the define: a crash between them loses nothing
                await self.libvirt.define(name, after, before,
                                          first=lambda: self._save_backup(name, before))
            warnings = [f"# warning: {message}. Fix: {fix}\n"
                        for _, message, fix in tune.checks(after)]
            missing = [f for f in tune.HYPERV if f not in tune.hyperv_wanted(hyperv)] \
                if hyperv is not None else []
            if missing:
                warnings.insert(0, "# warning: libvirt offers no Hyper-V "
                                f"{', '.join(missing)} for this domain (its domain "
                                "capabilities), so Windows runs without them. Fix: use the "
                                "kvm domain type on a host whose KVM has Hyper-V support "
                                "(`virsh domcapabilities --virttype kvm` lists them).\n")
            return change + "".join(warnings)

    def _save_backup(self, name: str, xml: str) -> None:
        self.backups.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(self.backup_path(name), xml, mode=0o600)

    async def _revert(self, name: str, current: str, dry_run: bool) -> str:
        path = self.backup_path(name)
        try:
            saved = await asyncio.to_thread(path.read_text, encoding="utf-8")
        except FileNotFoundError:
            raise NotFound(f"There is no tune of {name} to revert (no {path}): gvtd keeps "
                           "the XML from before the last `gvt-client tune` that changed "
                           "it.") from None
        if domxml.parse(saved).findtext("name") != name:
            raise Failed(f"{path} is not {name}'s XML; remove it by hand.")
        change = domxml.diff(domxml.serialize(domxml.parse(current)),
                             domxml.serialize(domxml.parse(saved)), name)
        if not dry_run:
            log.info("Reverting the tune of domain %s:\n%s", name, change,
                     extra={"DOMAIN": name})
            await self.libvirt.define(name, saved, current)
            await asyncio.to_thread(path.unlink)
        return change

    async def _edit(self, name: str, before: str, after: str, dry_run: bool) -> str:
        change = domxml.diff(domxml.serialize(domxml.parse(before)), after, name)
        if change and not dry_run:
            log.info("Changing the XML of domain %s:\n%s", name, change, extra={"DOMAIN": name})
            await self.libvirt.define(name, after, before)
        return change

    async def checks(self, opregion: bool = True) -> list[doctor.Check]:
        """doctor's libvirt findings: reachable, and (for an mdev's display, not a VF's:
        opregion False) how OpRegion can be set, asking libvirt off the loop."""
        from gvtd import doctor  # only for Diagnose: not on the way to READY=1

        lv = self.libvirt
        if not lv.connected:
            return [doctor.Check("libvirt", "fail", f"libvirt is not reachable at {lv.uri}.",
                                 "Start it (systemctl start libvirtd) or set libvirt_uri in "
                                 "gvtd.toml; gvtd reconnects on its own.")]
        version = await lv.version()
        shown = f"{version // 1_000_000}.{version // 1000 % 1000}.{version % 1000}"
        out = [doctor.Check("libvirt", "pass", f"libvirt {shown} at {lv.uri} is reachable.")]
        if opregion and version >= domxml.OVERRIDE_VERSION:
            out.append(doctor.Check("opregion", "pass", f"libvirt {shown} sets OpRegion "
                                    "through <qemu:override> (8.2 or newer)."))
        elif opregion:
            out.append(doctor.Check(
                "opregion", "warn", f"libvirt {shown} is older than 8.2: OpRegion can only be "
                "set with -set device.ALIAS.x-igd-opregion=on, which QEMU 7 and newer reject "
                "(JSON -device).", "Use libvirt 8.2 or newer with QEMU 7 and newer."))
        # Every domain's XML parsed, qemu.conf and sysfs read: off the loop, over snapshots
        vfs = _vf_addresses(self.host.parents.values())
        return out + await asyncio.to_thread(self._session_checks,
                                             sorted(self.libvirt.domains.items())) + \
            await asyncio.to_thread(self._pci_checks, sorted(self.shown().items()), vfs)

    def _pci_checks(self, domains: list[tuple[str, DomainInfo]],
                    vfs: frozenset[str]) -> list[doctor.Check]:
        """domxml.pci_lint of the domains gvtd shows, over the drivers sysfs shows now for
        their PCI hostdevs; vfs: the VF addresses of the SR-IOV parents."""
        from gvtd import doctor

        out = []
        for name, info in domains:
            drivers = {a: d for a in domxml.pci_addresses(info.xml)
                       if (d := _pci_driver(self.sysfs, a)) is not None}
            out += [doctor.Check(f"domain:{name}:{check}", "warn", f"Domain {name}: {message}.",
                                 fix)
                    for check, message, fix in domxml.pci_lint(info.xml, drivers, vfs)]
        return out

    def _session_checks(self, domains: list[tuple[str, DomainInfo]]) -> list[doctor.Check]:
        """What only the desktop session can confirm, one finding per (QEMU's user, X
        display) that gtk-gl domains open windows on and per (QEMU's user, socket) that
        domains play their sound through."""
        from gvtd import doctor
        default: str | None = None  # qemu.conf's user, read once and only when needed

        def user_of(xml: str) -> str:
            nonlocal default
            user = domxml.dac_user(xml)
            if user is None:
                default = default or doctor.qemu_user(self.qemu_conf)
                user = default
            return user

        def by_user(found: Callable[[str], list[str]]) -> list[tuple[tuple[str, str],
                                                                      list[str]]]:
            out: dict[tuple[str, str], list[str]] = {}
            for name, info in domains:
                for key in found(info.xml):
                    out.setdefault((user_of(info.xml), key), []).append(name)
            return sorted(out.items())

        displays = by_user(lambda xml: [d] if (d := domxml.gtk_display(xml)) else [])
        sockets = by_user(audio.sockets)
        return [doctor.check_x_access(display, user, doms)
                for (user, display), doms in displays] + \
            [audio.check(user, socket, doms) for (user, socket), doms in sockets]

    def problems(self) -> list[tuple[str, str, str, str]]:
        """The guide's pitfalls in every domain gvtd shows, and a UUID used twice."""
        out = self.libvirt.background.problems() + self.releases.problems()
        users: dict[str, list[str]] = {}
        for name, info in sorted(self.shown().items()):
            for uuid in info.mdevs:
                users.setdefault(uuid, []).append(name)
            for check, message, fix in domxml.lint(info.xml):
                out.append((f"domain:{name}:{check}", "warn", f"Domain {name}: {message}.", fix))
        for uuid, doms in sorted(users.items()):
            if len(doms) > 1:
                out.append((f"vgpu:{uuid}:shared", "warn",
                            f"The vGPU {uuid} is in the XML of {', '.join(doms)}: only one "
                            "of them can run at a time.", "Give each domain its own vGPU."))
        return out

    async def stop_domain(self, name: str, force: bool, timeout: float) -> None:
        async with self.locks.hold(name):
            await self.libvirt.read_xml(name)  # LibvirtUnavailable / NotFound first
            log.info("Stopping domain %s%s", name, " (forced)" if force else "",
                     extra={"DOMAIN": name})
            if not await self.libvirt.shutdown(name, timeout, force):
                raise Busy(f"{name} did not shut down within {timeout:.0f} s (the guest may "
                           f"ignore the ACPI request); `gvt-client stop {name} --force` turns "
                           "it off.")
            await ondemand.release(self.host, name, self._uses_by_name(name))
            await self.desktop.stopped(name)
            self.releases.succeeded(name)  # released now: the earlier failure is past


def _vf_addresses(parents: Iterable[Parent]) -> frozenset[str]:
    """Every address the SR-IOV parents' VFs have or will have: a VF of an on-demand vGPU
    whose domain is off does not exist, and is no stranger for all that."""
    from gvtd import sriov  # only for Diagnose

    out = set()
    for p in parents:
        for index in range(p.total_vfs if p.kind == "sriov" else 0):
            try:
                out.add(sriov.vf_address(p.name, p.vf_offset, p.vf_stride, index))
            except ValueError:  # beyond the PCI domain's last bus: no more VFs
                break
    return frozenset(out)


def _pci_driver(sysfs: Path, address: str) -> str | None:
    """The driver bound to a PCI device ("" for none), None when there is no such device,
    "?" when sysfs does not say (pci_lint then says nothing of it). address is one
    domxml.pci_addresses gave: digits, colons and a dot, never a path of the caller's."""
    device = sysfs / "bus/pci/devices" / address
    try:
        return os.path.basename(os.readlink(device / "driver"))
    except FileNotFoundError:
        return "" if os.path.lexists(device) else None
    except OSError:
        return "?"


def _release_failed(name: str, e: BaseException) -> Problem:
    return (f"domain:{name}:release", "error",
            f"Domain {name} stopped, but removing its on-demand vGPUs failed: {why(e)}",
            "See `gvt-client status`; `gvt-client remove VGPU` removes one by hand.")


@dataclass(frozen=True)
class AttachOptions:
    """AttachVGPU's a{sv}. display and x_display are an mdev's (None: not asked for, so
    spice-gl and ":0" for an mdev), rom and rom_bar a VF's; dry_run and audio both's."""

    display: str | None = None
    dry_run: bool = False
    x_display: str | None = None
    audio: bool | None = None
    rom: str | None = None  # a path, checked (gvtd.virt.rom) by Domains.attach
    rom_bar: bool | None = None


ATTACH_KEYS = {"display": str, "dry_run": bool, "x_display": str, "audio": bool, "rom": str,
               "rom_bar": bool}


async def _vf_options(view: VgpuView, opts: AttachOptions) -> HostdevOptions:
    """A VF's hostdev as opts ask: its ROM file checked (a worker thread: it stats the
    caller's path), and none of an mdev's display options, whose refusal says what gives
    a VF's picture instead."""
    if opts.display not in (None, "vnc", "none") or opts.x_display is not None:
        asked = f"display {opts.display}" if opts.x_display is None else "x_display"
        raise InvalidArgument(f"{asked} is for an mdev vGPU's display. {domxml.PICTURE}")
    if not view.address:
        raise InvalidArgument(f"{view.name or view.uuid} has no VF address yet (its GPU "
                              "makes no VFs now): see `gvt-client status`.")
    rom = await asyncio.to_thread(check_rom, opts.rom) if opts.rom is not None else None
    spec = domxml.VfSpec(view.address, rom, opts.rom_bar is not False)  # refuses rom and no BAR
    return HostdevOptions(rom=spec.rom, rom_bar=spec.rom_bar)


def attach_options(options: dict[str, object]) -> AttachOptions:
    for key, value in options.items():
        if not isinstance(value, ATTACH_KEYS.get(key, ())):
            raise InvalidArgument(
                f"Bad option {key[:40]!r}. AttachVGPU options are display (s: spice-gl, "
                "gtk-gl, vnc or none), x_display (s, for gtk-gl), rom (s: a ROM file for a "
                "VF), rom_bar (b: false hides a VF's ROM BAR), dry_run (b) and audio (b: "
                "sound on the caller's own sound server, or none of gvtd's).")
    opts = AttachOptions(**options)  # type: ignore[arg-type]
    x_display = opts.x_display
    if x_display is not None and (not x_display.startswith(":") or
                                  not x_display[1:].replace(".", "").isdigit()):
        raise InvalidArgument(f"x_display {x_display[:20]!r} is not an X display like :0.")
    return opts


def hook_options(options: dict[str, object]) -> list[str]:
    """PrepareDomain/ReleaseDomain options: uuids (as), the domain XML's mdev UUIDs."""
    uuids = options.get("uuids", [])
    if set(options) - {"uuids"} or not isinstance(uuids, list) or \
            not all(isinstance(u, str) for u in uuids):
        raise InvalidArgument("PrepareDomain and ReleaseDomain take one option, uuids (as): "
                              "the mdev UUIDs in the domain's XML.")
    return [u.lower() for u in uuids]


def stop_options(options: dict[str, object]) -> tuple[bool, float]:
    force = options.get("force", False)
    timeout = options.get("timeout", DEFAULT_STOP_TIMEOUT)
    if not isinstance(force, bool) or not isinstance(timeout, int) or not 0 <= timeout <= 3600:
        raise InvalidArgument("StopDomain options are force (b) and timeout (u, seconds, at "
                              "most 3600).")
    return force, float(timeout)


@dataclass(frozen=True)
class TuneOptions:
    """TuneDomain's a{sv}: which parts of the guide's tuning to make."""

    dry_run: bool = False
    revert: bool = False
    cpu: bool = True
    vcpus: int | None = None
    pinning: bool = True
    first_core: bool = False
    hyperv: bool = True
    spice: bool = True


TUNE_KEYS = {"dry_run": bool, "revert": bool, "cpu": bool, "vcpus": int, "pinning": bool,
             "first_core": bool, "hyperv": bool, "spice": bool}


def tune_options(options: dict[str, object]) -> TuneOptions:
    usage = ("TuneDomain options are dry_run, revert, cpu, pinning, first_core, hyperv, "
             "spice (b) and vcpus (u, 1 to 512).")
    for key, value in options.items():
        kind = TUNE_KEYS.get(key)
        # bool is an int in Python: a b for vcpus must not pass as 0 or 1
        if kind is None or not isinstance(value, kind) or (kind is int and
                                                           isinstance(value, bool)):
            raise InvalidArgument(f"Bad option {key[:40]!r}. {usage}")
    vcpus = options.get("vcpus")
    if vcpus is not None and not 1 <= vcpus <= 512:  # type: ignore[operator]
        raise InvalidArgument(f"vcpus {vcpus} is out of range. {usage}")
    opts = TuneOptions(**options)  # type: ignore[arg-type]
    if opts.revert and set(options) - {"revert", "dry_run"}:
        raise InvalidArgument("revert puts back the XML from before the last tune; it takes "
                              "no other option than dry_run.")
    if not opts.cpu and (vcpus is not None or "pinning" in options or opts.first_core):
        raise InvalidArgument("vcpus, pinning and first_core are part of the CPU tuning, "
                              "which cpu=false leaves out.")
    return opts
