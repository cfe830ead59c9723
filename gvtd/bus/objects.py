"""The D-Bus objects: Manager at the root, one Parent per vGPU parent, one VGPU per vGPU.

They hold no state of their own: they show what gvtd.host.Host knows and turn GvtdErrors into
named D-Bus errors. Changes reach listeners through the standard ObjectManager and
PropertiesChanged signals (dbus-fast emits InterfacesAdded/Removed on export/unexport).
"""
# No `from __future__ import annotations`: dbus-fast reads the D-Bus signatures from them.

import asyncio
import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

from dbus_fast import DBusError, PropertyAccess, Variant
from dbus_fast.service import ServiceInterface, dbus_property, method

from gvtd import __version__, names
from gvtd.bounded import Shared
from gvtd.bus.auth import authorized, caller_uid, define_details, root_only
from gvtd.bus.fds import carried, closing_fds
from gvtd.domains import attach_options, hook_options, stop_options, tune_options
from gvtd.errors import Busy, Failed, GvtdError, InvalidArgument
from gvtd.health import Health
from gvtd.backend import Parent
from gvtd.reconcile import VgpuView

log = logging.getLogger(__name__)

# Define's a{sv}: the definition's TOML fields plus the name, with their variant types.
DEFINE_KEYS = {
    "name": "s", "uuid": "s", "parent": "s", "type": "s", "min_resolution": "s",
    "start": "s", "domain": "s", "attrs": "a(ss)",
    "take_over": "b",  # not a TOML field: an existing mdev becomes gvtd's to remove
}
# Seconds a Diagnose answer is reused while gvtd sees no change (see ManagerInterface).
DIAGNOSE_TTL = 5.0

# Why PrepareDomain and ReleaseDomain refuse everyone but root (see gvtd.bus.auth.root_only).
HOOK_ONLY = ("as gvtd's libvirt hook does from inside libvirtd. Use `gvt-client start` or "
             "`gvt-client stop` (StartDomain, StopDomain) to start or stop a VM.")


def dbus_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Every method answers with a named gvtd error, never a Python exception text."""

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            result = fn(*args, **kwargs)
            return await result if inspect.isawaitable(result) else result
        except GvtdError as e:
            raise DBusError(e.dbus_name, e.message) from e
        except DBusError:
            raise
        except asyncio.CancelledError:  # only when gvtd stops: see Daemon.run
            raise DBusError(Busy("").dbus_name, "gvtd is stopping (or restarting) and gave up "
                            "on this call; what it had done stays done. Try again once gvtd "
                            "is back.") from None
        except Exception as e:  # a bug: say so plainly, keep the daemon running
            log.exception("Internal error in %s", fn.__name__)
            raise DBusError(Failed("").dbus_name,
                            f"Internal error in gvtd ({type(e).__name__}); the journal has "
                            "the details (journalctl -u gvtd).") from e

    return wrapper


def unpack_define(options: dict[str, Variant]) -> tuple[str, dict[str, object]]:
    data: dict[str, object] = {}
    for key, variant in options.items():
        sig = DEFINE_KEYS.get(key)
        if sig is None:
            raise InvalidArgument(f"Unknown key {key[:60]!r}; Define accepts "
                                  f"{', '.join(DEFINE_KEYS)}.")
        if variant.signature != sig:
            raise InvalidArgument(f"Key {key!r} must be of D-Bus type {sig!r}, "
                                  f"not {variant.signature!r}.")
        value = variant.value
        data[key] = [tuple(pair) for pair in value] if sig == "a(ss)" else value
    name = data.pop("name", None)
    if not isinstance(name, str):
        raise InvalidArgument("Define needs a 'name' (a string).")
    return name, data


class _Mirror(ServiceInterface):
    """An interface whose properties mirror a snapshot; update() signals what changed."""

    def __init__(self, iface: str) -> None:
        super().__init__(iface)
        self._props: dict[str, Any] = {}
        # Called on every change; the object tree drops its GetManagedObjects reply then.
        self.on_change: Callable[[], None] = lambda: None

    def _compute(self) -> dict[str, Any]:
        raise NotImplementedError

    def refresh(self, emit: bool = True) -> None:
        new = self._compute()
        changed = {k: v for k, v in new.items() if self._props.get(k) != v}
        self._props = new
        if changed:
            self.on_change()
        if changed and emit:
            self.emit_properties_changed(changed)

    def variants(self) -> dict[str, Variant]:
        """Every property as GetAll shows it, from the snapshot (no getter calls)."""
        return {p.name: Variant(p.signature, self._props[p.name])
                for p in ServiceInterface._get_properties(self) if not p.disabled}



class ManagerInterface(_Mirror):
    def __init__(self, daemon: Any) -> None:
        super().__init__(names.MANAGER_IFACE)
        self.daemon = daemon
        self.host = daemon.host
        # Diagnose is open to every local user and reads the whole host and the kernel log:
        # concurrent calls share one run, and its answer serves later calls until gvtd sees
        # a change (every uevent pass, definition change, libvirt event and Reload ends in
        # Host.publish) or DIAGNOSE_TTL passes (the kernel log and /proc send no uevents).
        self._diagnosis: Shared[list[list[str]]] = Shared(self._diagnose, DIAGNOSE_TTL)
        self.host.listeners.append(self._diagnosis.invalidate)
        self.refresh(emit=False)

    def _compute(self) -> dict[str, Any]:
        return {"Version": __version__, "State": self.daemon.state,
                "Problems": [list(p) for p in self.daemon.status.problems()],
                "LibvirtConnected": self.daemon.domains.libvirt.connected,
                "LibvirtURI": self.daemon.domains.libvirt.uri,
                "Suspend": self.daemon.suspend.state}

    @method()
    @dbus_errors
    @authorized(names.ACTION_MANAGE, detail=define_details)
    async def Define(self, options: "a{sv}") -> "o":  # noqa: F821
        name, data = unpack_define(options)
        return names.vgpu_path(await self.host.define(name, data))

    @method()
    @dbus_errors
    @authorized(names.ACTION_MANAGE, detail="vgpu")
    async def Undefine(self, name: "s") -> None:  # noqa: F821
        await self.host.undefine(name)

    @method()
    @dbus_errors
    @authorized(names.ACTION_VGPU, detail="vgpu")
    async def CreateVGPU(self, name: "s") -> "o":  # noqa: F821
        return names.vgpu_path(await self.host.create(name))

    @method()
    @dbus_errors
    @authorized(names.ACTION_VGPU, detail="vgpu")
    async def RemoveVGPU(self, name: "s") -> None:  # noqa: F821
        await self.host.remove(name)

    @method()
    @dbus_errors
    @authorized(names.ACTION_MANAGE)
    async def Reload(self) -> None:
        await self.daemon.reload()

    @method()
    @dbus_errors
    @authorized(names.ACTION_DOMAIN, detail="domain")
    async def StartDomain(self, name: "s", options: "a{sv}") -> "o":  # noqa: F821
        if options:
            raise InvalidArgument(f"StartDomain takes no options yet, not {', '.join(options)}.")
        await self.daemon.domains.start_domain(name, await caller_uid())
        return names.domain_path(name)

    @method()
    @dbus_errors
    @authorized(names.ACTION_DOMAIN, detail="domain")
    async def StopDomain(self, name: "s", options: "a{sv}") -> None:  # noqa: F821
        force, timeout = stop_options({k: v.value for k, v in options.items()})
        await self.daemon.domains.stop_domain(name, force, timeout)

    @method()
    @dbus_errors
    @root_only(HOOK_ONLY)
    async def PrepareDomain(self, name: "s", options: "a{sv}") -> None:  # noqa: F821
        uuids = hook_options({k: v.value for k, v in options.items()})
        await self.daemon.domains.prepare_domain(name, uuids)

    @method()
    @dbus_errors
    @root_only(HOOK_ONLY)
    async def ReleaseDomain(self, name: "s", options: "a{sv}") -> None:  # noqa: F821
        uuids = hook_options({k: v.value for k, v in options.items()})
        await self.daemon.domains.release_domain(name, uuids)

    @method()
    @dbus_errors
    @authorized(names.ACTION_DOMAIN, detail=("domain", "vgpu"))
    async def AttachVGPU(self, domain: "s", vgpu: "s", options: "a{sv}") -> "s":  # noqa: F821
        opts = attach_options({k: v.value for k, v in options.items()})
        socket = names.sound_socket(await caller_uid()) if opts.audio else ""
        return await self.daemon.domains.attach(domain, vgpu, opts, socket)

    @method()
    @dbus_errors
    @authorized(names.ACTION_DOMAIN, detail=("domain", "vgpu"))
    async def DetachVGPU(self, domain: "s", vgpu: "s") -> None:  # noqa: F821
        await self.daemon.domains.detach(domain, vgpu)

    @method()
    @dbus_errors
    @authorized(names.ACTION_DOMAIN, detail="domain")
    async def TuneDomain(self, domain: "s", options: "a{sv}") -> "s":  # noqa: F821
        opts = tune_options({k: v.value for k, v in options.items()})
        return await self.daemon.domains.tune(domain, opts)

    @method()
    @dbus_errors
    @closing_fds
    @authorized(names.ACTION_MANAGE, detail=lambda name, *_: {"vgpu": name, "domain": name})
    @authorized(names.ACTION_DOMAIN, detail="domain")
    async def NewDomain(self, name: "s", iso: "h", virtio_win: "h",  # noqa: F821
                        options: "a{sv}") -> "s":  # noqa: F821
        """A domain, its disk and its vGPU (gvtd.newvm): manage for the vGPU, as Define."""
        if not carried(iso, virtio_win):
            raise InvalidArgument("NewDomain needs the two ISOs passed open (unix file "
                                  "descriptors, type h), and the call carried none for them.")
        return await self.daemon.newvm.new(name, iso, virtio_win,
                                           {k: v.value for k, v in options.items()},
                                           await caller_uid())

    @method()
    @dbus_errors
    async def Diagnose(self) -> "a(ssss)":  # noqa: F821
        """Host checks (gvtd.doctor) over the roots gvtd.toml names; a read, open to all,
        shared between callers (see __init__)."""
        return await self._diagnosis.get()

    async def _diagnose(self) -> list[list[str]]:
        """In a worker thread: reading the kernel log must not hold up uevents or calls."""
        from gvtd import doctor  # only here: not on the way to READY=1

        log.debug("Running the host checks for Diagnose")
        roots = doctor.HostRoots.from_settings(self.daemon.settings)
        uuids = [d.uuid for d in self.host.definitions.values()]
        checks = await asyncio.to_thread(doctor.diagnose, roots, uuids)
        backend = await asyncio.to_thread(
            lambda: doctor.host_backend(doctor.find_gpu(roots.sysfs)))
        with_vgpu = [(n, i.xml) for n, i in self.daemon.domains.shown().items()]
        checks.append(await asyncio.to_thread(doctor.check_memlock, roots.procfs, with_vgpu))
        checks += await self.daemon.domains.checks(opregion=backend != "sriov")
        return [list(c.as_tuple()) for c in checks]

    @dbus_property(access=PropertyAccess.READ)
    def Version(self) -> "s":  # noqa: F821
        return self._props["Version"]

    @dbus_property(access=PropertyAccess.READ)
    def State(self) -> "s":  # noqa: F821
        return self._props["State"]

    @dbus_property(access=PropertyAccess.READ)
    def Problems(self) -> "a(ssss)":  # noqa: F821
        return self._props["Problems"]

    @dbus_property(access=PropertyAccess.READ)
    def LibvirtConnected(self) -> "b":  # noqa: F821
        return self._props["LibvirtConnected"]

    @dbus_property(access=PropertyAccess.READ)
    def LibvirtURI(self) -> "s":  # noqa: F821
        return self._props["LibvirtURI"]

    @dbus_property(access=PropertyAccess.READ)
    def Suspend(self) -> "s":  # noqa: F821
        return self._props["Suspend"]


def _type_details(t: Any) -> dict[str, Variant]:
    out = {"device_api": Variant("s", t.device_api)}
    if t.description is not None:
        out["description"] = Variant("s", t.description)
    if t.gvt is not None:
        out.update(low_gm_mb=Variant("u", t.gvt.low_gm_mb), high_gm_mb=Variant("u", t.gvt.high_gm_mb),
                   fence=Variant("u", t.gvt.fence), resolution=Variant("s", t.gvt.resolution_text),
                   weight=Variant("u", t.gvt.weight))
    return out


class ParentInterface(_Mirror):
    def __init__(self, parent: Parent) -> None:
        super().__init__(names.PARENT_IFACE)
        self.parent = parent
        self.refresh(emit=False)

    def _compute(self) -> dict[str, Any]:
        p = self.parent
        model = f"{p.vendor:04x}:{p.device:04x}" if p.vendor is not None and p.device is not None else ""
        return {
            "Address": p.name,
            "Driver": p.driver,
            "Kind": p.kind,
            "Model": model,
            "NumVFs": p.num_vfs,
            "Platform": p.platform[0],
            "Registered": p.registered,
            "TotalVFs": p.total_vfs,
            "Types": [[t.id, t.name, t.available, _type_details(t)] for t in p.types],
        }

    @dbus_property(access=PropertyAccess.READ)
    def Address(self) -> "s":  # noqa: F821
        return self._props["Address"]

    @dbus_property(access=PropertyAccess.READ)
    def Driver(self) -> "s":  # noqa: F821
        return self._props["Driver"]

    @dbus_property(access=PropertyAccess.READ)
    def Kind(self) -> "s":  # noqa: F821
        return self._props["Kind"]

    @dbus_property(access=PropertyAccess.READ)
    def Model(self) -> "s":  # noqa: F821
        return self._props["Model"]

    @dbus_property(access=PropertyAccess.READ)
    def NumVFs(self) -> "u":  # noqa: F821
        return self._props["NumVFs"]

    @dbus_property(access=PropertyAccess.READ)
    def TotalVFs(self) -> "u":  # noqa: F821
        return self._props["TotalVFs"]

    @dbus_property(access=PropertyAccess.READ)
    def Platform(self) -> "s":  # noqa: F821
        return self._props["Platform"]

    @dbus_property(access=PropertyAccess.READ)
    def Registered(self) -> "b":  # noqa: F821
        return self._props["Registered"]

    @dbus_property(access=PropertyAccess.READ)
    def Types(self) -> "a(ssua{sv})":  # noqa: F821
        return self._props["Types"]


class VgpuInterface(_Mirror):
    def __init__(self, view: VgpuView, health: Health) -> None:
        super().__init__(names.VGPU_IFACE)
        self.view = view
        self.health = health
        self.refresh(emit=False)

    def _compute(self) -> dict[str, Any]:
        v = self.view
        h = self.health.of(v.uuid)
        return {"Health": h.health, "HealthMessage": h.message, "HealthTime": h.time_usec,
                "Name": v.name, "UUID": v.uuid, "Parent": v.parent, "Type": v.type_id,
                "State": v.state, "Start": v.start, "Domain": v.domain, "Managed": v.managed,
                "Origin": v.origin, "LastError": v.last_error,
                "Attrs": [list(a) for a in v.attrs], "Backend": v.backend,
                "Address": v.address}

    @dbus_property(access=PropertyAccess.READ)
    def Name(self) -> "s":  # noqa: F821
        return self._props["Name"]

    @dbus_property(access=PropertyAccess.READ)
    def UUID(self) -> "s":  # noqa: F821
        return self._props["UUID"]

    @dbus_property(access=PropertyAccess.READ)
    def Parent(self) -> "s":  # noqa: F821
        return self._props["Parent"]

    @dbus_property(access=PropertyAccess.READ)
    def Type(self) -> "s":  # noqa: F821
        return self._props["Type"]

    @dbus_property(access=PropertyAccess.READ)
    def Backend(self) -> "s":  # noqa: F821
        return self._props["Backend"]

    @dbus_property(access=PropertyAccess.READ)
    def Address(self) -> "s":  # noqa: F821
        return self._props["Address"]

    @dbus_property(access=PropertyAccess.READ)
    def State(self) -> "s":  # noqa: F821
        return self._props["State"]

    @dbus_property(access=PropertyAccess.READ)
    def Start(self) -> "s":  # noqa: F821
        return self._props["Start"]

    @dbus_property(access=PropertyAccess.READ)
    def Domain(self) -> "s":  # noqa: F821
        return self._props["Domain"]

    @dbus_property(access=PropertyAccess.READ)
    def Managed(self) -> "b":  # noqa: F821
        return self._props["Managed"]

    @dbus_property(access=PropertyAccess.READ)
    def Origin(self) -> "s":  # noqa: F821
        return self._props["Origin"]

    @dbus_property(access=PropertyAccess.READ)
    def LastError(self) -> "s":  # noqa: F821
        return self._props["LastError"]

    @dbus_property(access=PropertyAccess.READ)
    def Attrs(self) -> "a(ss)":  # noqa: F821
        return self._props["Attrs"]

    @dbus_property(access=PropertyAccess.READ)
    def Health(self) -> "s":  # noqa: F821
        return self._props["Health"]

    @dbus_property(access=PropertyAccess.READ)
    def HealthMessage(self) -> "s":  # noqa: F821
        return self._props["HealthMessage"]

    @dbus_property(access=PropertyAccess.READ)
    def HealthTime(self) -> "t":  # noqa: F821
        return self._props["HealthTime"]


class DomainInterface(_Mirror):
    """A libvirt domain that uses a vGPU (or that a definition names)."""

    def __init__(self, name: str, state: str, vgpus: list[str], display: str) -> None:
        super().__init__(names.DOMAIN_IFACE)  # (`name` is the interface's own attribute)
        self.domain, self.state, self.vgpus, self.display = name, state, vgpus, display
        self.refresh(emit=False)

    def _compute(self) -> dict[str, Any]:
        return {"Name": self.domain, "State": self.state,
                "VGPUs": [names.vgpu_path(u) for u in self.vgpus], "Display": self.display}

    @dbus_property(access=PropertyAccess.READ)
    def Display(self) -> "s":  # noqa: F821
        return self._props["Display"]

    @dbus_property(access=PropertyAccess.READ)
    def Name(self) -> "s":  # noqa: F821
        return self._props["Name"]

    @dbus_property(access=PropertyAccess.READ)
    def State(self) -> "s":  # noqa: F821
        return self._props["State"]

    @dbus_property(access=PropertyAccess.READ)
    def VGPUs(self) -> "ao":  # noqa: F821
        return self._props["VGPUs"]
