"""NewDomain: a Windows VM ready to install, in one call, through gvtd's libvirt connection.

gvtd is root and libvirt trusts it with everything, so what the caller names is checked
before anything is made: the caller proves it can read each ISO by passing it open
(the descriptor must be a readable regular file and the very file the path names), QEMU's
user must be able to read it too, the disk is made only as a volume of a libvirt storage
pool, and the name must be free. Then, in this order, the volume, the vGPU definition and
the domain are made; a failure undoes what was made before it. See docs/security.md.
"""

from __future__ import annotations

import asyncio
import fcntl
import grp
import logging
import os
import pwd
import stat
import uuid as uuidlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from gvtd import cputopo, names, reconcile, win11cpu
from gvtd.backend import HostdevOptions, Instance
from gvtd.config import VF_TYPE, Definition
from gvtd.errors import Busy, Failed, GvtdError, InvalidArgument, LibvirtUnavailable, \
    NoCapacity, NotFound, ParentMissing
from gvtd.virt import audio, domxml, newdomain, tune
from gvtd.virt.connection import libvirt

if TYPE_CHECKING:
    from gvtd.domains import Domains
    from gvtd.host import Host

log = logging.getLogger(__name__)

GIB = 1024 ** 3
# What gvtd's sandbox keeps it out of: /tmp is its own (PrivateTmp=), and homes and
# runtime directories are 0700 (Debian), which root without CAP_DAC_* cannot enter. An ISO
# there is out of its sight, and mostly out of QEMU's reach too.
HIDDEN = ("/home/", "/root/", "/run/user/", "/tmp/", "/var/tmp/")
DEFAULT_RESOLUTION = "1920x1200"


@dataclass(frozen=True)
class NewOptions:
    """NewDomain's a{sv} beyond the domain itself: the vGPU and the tuning."""

    dry_run: bool = False
    vgpu: bool = True
    audio: bool = True
    min_resolution: str | None = None  # None: DEFAULT_RESOLUTION for a GVT-g vGPU
    pinning: bool = True
    allow_unsupported_cpu: bool = False


OPTION_TYPES: dict[str, type] = {
    "iso": str, "virtio_win": str, "windows": str, "memory_mib": int, "vcpus": int,
    "disk_gib": int, "pool": str, "network": str, "virt_type": str, "dry_run": bool,
    "vgpu": bool, "audio": bool, "min_resolution": str, "pinning": bool, "allow_unsupported_cpu": bool,
}


def new_options(options: dict[str, object]) -> tuple[dict[str, object], NewOptions]:
    """(the domain's fields, the rest) from NewDomain's a{sv}."""
    for key, value in options.items():
        kind = OPTION_TYPES.get(key)
        if kind is None or not isinstance(value, kind) or (kind is int and
                                                           isinstance(value, bool)):
            raise InvalidArgument(f"Bad option {key[:40]!r}: NewDomain takes "
                                  f"{', '.join(OPTION_TYPES)} (see docs/dbus-api.md).")
    rest = {k: options[k] for k in NewOptions.__dataclass_fields__ if k in options}
    spec = {k: v for k, v in options.items() if k not in rest}
    return spec, NewOptions(**rest)  # type: ignore[arg-type]


def _may(st: os.stat_result, uid: int, gids: set[int], bit: int) -> bool:
    """Whether uid (with groups gids) has permission bit (4 read, 1 search) by the mode."""
    if uid == 0:
        return True
    if st.st_uid == uid:
        return bool(st.st_mode >> 6 & bit)
    if st.st_gid in gids:
        return bool(st.st_mode >> 3 & bit)
    return bool(st.st_mode & bit)


def prove_readable(path: str, fd: int, qemu_user: str) -> str:
    """The real path of the ISO the caller passed open as fd, once it is sure the caller
    could read it (fd is a readable descriptor of that very regular file) and so can QEMU's
    user; a named refusal otherwise. In a worker thread: it stats the caller's paths."""
    if not os.path.isabs(path):
        raise InvalidArgument(f"{path[:200]!r} is not an absolute path.")
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        held = os.fstat(fd)
    except OSError:
        raise InvalidArgument(f"No open file came with {path}: gvt-client passes each ISO "
                              "open, to prove you can read it.") from None
    if flags & os.O_PATH or flags & os.O_ACCMODE == os.O_WRONLY:
        raise InvalidArgument(f"The file passed for {path} is not open for reading: open it "
                              "for reading to prove you may read it.")
    real = os.path.realpath(path)
    try:
        named = os.stat(real)
    except OSError as e:
        if real.startswith(HIDDEN):
            raise InvalidArgument(
                f"gvtd cannot see {path}: its sandbox keeps it out of /tmp and of home and "
                "runtime directories, and QEMU could rarely read an ISO there either. Move it where both can, such as "
                f"/var/lib/libvirt/images (sudo mv {path} /var/lib/libvirt/images/).") from None
        raise NotFound(f"There is no {path} ({e.strerror}).") from None
    if (named.st_dev, named.st_ino) != (held.st_dev, held.st_ino):
        raise InvalidArgument(f"The file passed open is not {path} (another file, or {path} "
                              "was replaced meanwhile); nothing was made.")
    if not stat.S_ISREG(held.st_mode):
        raise InvalidArgument(f"{path} is not a regular file; give the path of the .iso file.")
    try:
        os.pread(fd, 1, 0)
    except OSError as e:
        raise InvalidArgument(f"{path} cannot be read through the file passed ({e.strerror}).") \
            from None
    try:
        who = pwd.getpwnam(qemu_user)
    except KeyError:
        return real  # a +UID or unknown user: libvirt's own check at start decides
    gids = {who.pw_gid} | {g.gr_gid for g in grp.getgrall() if qemu_user in g.gr_mem}
    for d in reversed(Path(real).parents):
        if not _may(os.stat(d), who.pw_uid, gids, 1):
            raise InvalidArgument(
                f"QEMU runs as {qemu_user}, which cannot enter {d} (mode "
                f"{stat.filemode(os.stat(d).st_mode)}), so the VM could not read {path}: move "
                f"the ISO to a directory it can reach, such as /var/lib/libvirt/images, or "
                f"let others enter {d} (chmod o+x {d}).")
    if not _may(named, who.pw_uid, gids, 4):
        raise InvalidArgument(f"QEMU runs as {qemu_user}, which cannot read {path} (mode "
                              f"{stat.filemode(named.st_mode)}): make it readable (chmod o+r "
                              f"{path}).")
    return real


class NewVm:
    """Makes the domain, its volume and its vGPU; collaborators are the daemon's."""

    def __init__(self, host: Host, domains: Domains, procfs: Path,
                 firmware_dir: Path = newdomain.FIRMWARE_DIR) -> None:
        self.host = host
        self.domains = domains
        self.procfs = procfs
        self.firmware_dir = firmware_dir

    def _conn(self) -> Any:
        conn = self.domains.libvirt.conn
        if conn is None:
            raise LibvirtUnavailable(f"libvirt is not reachable at {self.domains.libvirt.uri}: "
                                     "is libvirtd running? gvtd reconnects as soon as it is.")
        return conn

    async def new(self, name: str, iso_fd: int, virtio_fd: int,
                  options: dict[str, object], uid: int) -> str:
        """Make it (or with dry_run, say what would be made); returns the volume's and the
        domain's XML. uid: the caller's, whose sound socket the VM plays on (the grant is
        the caller's session's, made when it starts the VM: gvtd.client.sound)."""
        fields, opts = new_options(options)
        if not fields.get("virtio_win"):
            raise InvalidArgument(
                "Windows finds no virtio-scsi disk without the virtio-win drivers: download "
                f"virtio-win.iso ({names.VIRTIO_WIN_URL}) and pass it with --virtio-win "
                f"PATH (Fedora's virtio-win package installs it as {names.VIRTIO_WIN_DEFAULT}).")
        spec = newdomain.spec_from({"name": name, **fields})
        async with self.domains.locks.hold(name):
            await self._refuse(spec, opts)
            user = await asyncio.to_thread(self._qemu_user)  # reads qemu.conf
            iso = await asyncio.to_thread(prove_readable, spec.iso, iso_fd, user)
            drivers = await asyncio.to_thread(prove_readable, spec.virtio_win, virtio_fd, user)
            spec = spec.model_copy(update={"iso": iso, "virtio_win": drivers})
            pool = await asyncio.to_thread(self._pool_with_room, spec)
            if opts.vgpu and spec.name in self.host.definitions:
                raise Busy(f"A vGPU named {spec.name} is defined already: choose another name "
                           "for the VM, or `gvt-client undefine` that vGPU first.")
            vgpu = self._vgpu(spec, opts) if opts.vgpu else None
            xml, address = await self._xml(spec, opts, vgpu)
            if opts.audio:
                xml = audio.wire(xml, names.sound_socket(uid))
            volume = newdomain.volume_xml(spec)
            shown = (f"<!-- volume {spec.volume} in pool {spec.pool}, qcow2 with "
                     "preallocation=metadata and lazy_refcounts -->\n" + volume + xml)
            if opts.dry_run:
                return shown
            await self._make(spec, pool, volume, xml, vgpu, address)
            return shown

    def _qemu_user(self) -> str:
        from gvtd import doctor

        return doctor.qemu_user(self.domains.qemu_conf)

    async def _refuse(self, spec: newdomain.NewSpec, opts: NewOptions) -> None:
        """What makes the request impossible as it is, before anything is read from libvirt."""
        if spec.windows == "11" and not opts.allow_unsupported_cpu:
            why = win11cpu.refusal(await asyncio.to_thread(win11cpu.read, self.procfs))
            if why:
                raise InvalidArgument(why)
        await asyncio.to_thread(newdomain.check_host, spec, self.firmware_dir)

    def _pool_with_room(self, spec: newdomain.NewSpec) -> Any:
        """The pool, once the name is free in libvirt and the disk fits (worker thread)."""
        conn = self._conn()
        try:
            conn.lookupByName(spec.name)
        except libvirt.libvirtError as e:
            if e.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise Failed(f"libvirt cannot say whether {spec.name} exists: "
                             f"{e.get_error_message()}") from e
        else:
            raise Busy(f"libvirt has a domain named {spec.name} already: choose another name "
                       "(`virsh list --all` shows those in use).")
        try:
            pool = conn.storagePoolLookupByName(spec.pool)
        except libvirt.libvirtError:
            raise NotFound(
                f"libvirt has no storage pool named {spec.pool}, where gvtd makes the disk: "
                f"create it (virsh pool-define-as {spec.pool} dir --target "
                f"/var/lib/libvirt/images; virsh pool-build {spec.pool}; virsh pool-start "
                f"{spec.pool}; virsh pool-autostart {spec.pool}) or name another with "
                "--pool.") from None
        try:
            if not pool.isActive():
                raise Failed(f"The storage pool {spec.pool} is not running: virsh pool-start "
                             f"{spec.pool}.")
            pool.refresh(0)
            try:
                pool.storageVolLookupByName(spec.volume)
            except libvirt.libvirtError:
                pass
            else:
                raise Busy(f"The pool {spec.pool} has a volume {spec.volume} already (an "
                           "earlier VM's disk?): remove it (virsh vol-delete "
                           f"{spec.volume} --pool {spec.pool}) or choose another name.")
            free = pool.info()[3]
        except libvirt.libvirtError as e:
            raise Failed(f"libvirt cannot read the pool {spec.pool}: "
                         f"{e.get_error_message()}") from e
        if free < spec.disk_gib * GIB:
            raise NoCapacity(f"The pool {spec.pool} has {free / GIB:.1f} GiB free, and the "
                             f"disk may grow to {spec.disk_gib} GiB: free space there, choose a "
                             "smaller --disk-size, or another --pool.")
        return pool

    def _vgpu(self, spec: newdomain.NewSpec, opts: NewOptions) -> dict[str, object]:
        """The vGPU's definition (Define's fields): on-demand, so that its share of the GPU
        is free while the VM is off. A host whose GPUs are all SR-IOV PFs gets a VF (parent
        auto: the first PF), which has no resolution to ask for."""
        data: dict[str, object] = {"uuid": str(uuidlib.uuid4()), "start": "on-demand",
                                   "domain": spec.name}
        registered = [p for p in self.host.parents.values() if p.registered]
        if registered and all(p.kind == "sriov" for p in registered):
            if opts.min_resolution is not None:
                raise InvalidArgument("This host's GPU makes SR-IOV VFs, which have no "
                                      "resolution: leave out --min-resolution.")
            return {**data, "type": VF_TYPE, "parent": "auto"}
        resolution = opts.min_resolution or DEFAULT_RESOLUTION
        data["min_resolution"] = resolution
        try:
            Definition.model_validate(data)
            return data
        except ValidationError as e:
            raise InvalidArgument(f"--min-resolution {resolution[:20]!r}: "
                                  f"{e.errors()[0]['msg']}.") from None

    async def _xml(self, spec: newdomain.NewSpec, opts: NewOptions,
                   vgpu: dict[str, object] | None) -> tuple[str, str]:
        """The domain XML, the vGPU attached and tuned as `gvt-client attach` and `tune`
        would, and the VF address it names ("" for an mdev). An mdev gets SPICE GL on its
        GPU; a VF a PCI hostdev at the address its Define will give it, beside the QXL
        display (a VF's picture comes from inside the guest)."""
        xml, address = newdomain.domain_xml(spec), ""
        if vgpu is not None:
            definition = Definition.model_validate(vgpu)
            try:
                target = reconcile.resolve(definition, list(self.host.parents.values()))
                address = self.host.backends.next_address(target.parent)
                if target.type_id == VF_TYPE and not address:  # the sentence reads sysfs
                    raise NoCapacity(await asyncio.to_thread(
                        self.host.backends.no_capacity_message, target.parent, VF_TYPE))
            except (ParentMissing, NoCapacity, InvalidArgument) as e:
                raise type(e)(f"{e.message} (`--no-vgpu` makes the VM without one; attach it "
                              "later with `gvt-client define` and `gvt-client attach`.)") \
                    from None
            if address:
                instance = Instance(definition.uuid, target.parent.name, VF_TYPE, address,
                                    target.parent.kind)
                xml = domxml.attach_vf(xml, self.host.backends.hostdev(instance,
                                                                       HostdevOptions()))
            else:
                render = await asyncio.to_thread(self.host.render_node, target.parent.name)
                override = await self.domains.libvirt.version() >= domxml.OVERRIDE_VERSION
                xml = domxml.attach(xml, domxml.AttachSpec(definition.uuid, "spice-gl", render,
                                                           override=override))
        topology = await asyncio.to_thread(cputopo.read, self.domains.sysfs)
        hyperv = await self.domains.libvirt.hyperv_features(xml)
        return tune.tune(xml, tune.TuneSpec(topology, spec.vcpus, opts.pinning, False, hyperv,
                                            True)), address

    async def _make(self, spec: newdomain.NewSpec, pool: Any, volume: str, xml: str,
                    vgpu: dict[str, object] | None, address: str) -> None:
        """address: the VF the XML names, which its Define must give the vGPU."""
        vol = await asyncio.to_thread(self._create_volume, pool, volume, spec)
        try:
            if vgpu is not None:
                await self.host.define(spec.name, vgpu)
            try:
                got = self.host.find(spec.name).address if vgpu is not None else ""
                if got != address:
                    raise Busy(f"Another vGPU was defined meanwhile and has the VF {address} "
                               f"(this one got {got or 'none'}); nothing was made: run "
                               "`gvt-client new` again.")
                await asyncio.to_thread(self._define, xml, spec)
            except GvtdError:
                if vgpu is not None:
                    await self.host.undefine(spec.name)
                raise
        except BaseException:
            log.warning("Making %s failed; deleting its volume %s", spec.name, spec.volume)
            await asyncio.to_thread(_delete, vol)
            raise
        await self.domains.libvirt.resync()
        log.info("Made domain %s (Windows %s) with its disk %s in pool %s", spec.name,
                 spec.windows, spec.volume, spec.pool, extra={"DOMAIN": spec.name})

    def _create_volume(self, pool: Any, volume: str, spec: newdomain.NewSpec) -> Any:
        try:
            return pool.createXML(volume, libvirt.VIR_STORAGE_VOL_CREATE_PREALLOC_METADATA)
        except libvirt.libvirtError as e:
            if e.get_error_code() != libvirt.VIR_ERR_INVALID_ARG:
                raise Failed(f"libvirt could not make the disk {spec.volume} in pool "
                             f"{spec.pool}: {e.get_error_message()}") from e
        # A driver that cannot preallocate (libvirt's test driver) gets a plain volume.
        log.warning("The pool %s cannot preallocate metadata; making %s without", spec.pool,
                    spec.volume)
        try:
            return pool.createXML(volume, 0)
        except libvirt.libvirtError as e:
            raise Failed(f"libvirt could not make the disk {spec.volume} in pool {spec.pool}: "
                         f"{e.get_error_message()}") from e

    def _define(self, xml: str, spec: newdomain.NewSpec) -> None:
        try:
            self._conn().defineXML(xml)
        except libvirt.libvirtError as e:
            raise Failed(f"libvirt refused the domain {spec.name}: {e.get_error_message()}; "
                         "nothing was made.") from e


def _delete(vol: Any) -> None:
    try:
        vol.delete(0)
    except libvirt.libvirtError as e:
        log.error("Could not delete the volume %s after a failure: %s", vol.name(),
                  e.get_error_message())
