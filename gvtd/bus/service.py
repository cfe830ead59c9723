"""Keeps the exported object tree in step with the Host: export what appeared, unexport what
went, and let each object signal its own property changes."""

from dbus_fast.aio import MessageBus

from gvtd import names
from gvtd.bus import auth
from gvtd.bus.objects import DomainInterface, ManagerInterface, ParentInterface, VgpuInterface


class ObjectTree:
    def __init__(self, bus: MessageBus, daemon: object) -> None:
        self.bus = bus
        self.daemon = daemon
        self.host = daemon.host  # type: ignore[attr-defined]
        self.manager = ManagerInterface(daemon)
        self.parents: dict[str, ParentInterface] = {}
        self.vgpus: dict[str, VgpuInterface] = {}
        self.domains: dict[str, DomainInterface] = {}
        auth.watch(bus)  # before export: mutating methods need their caller
        bus.export(names.ROOT_PATH, self.manager)
        self.host.listeners.append(self.sync)

    def sync(self) -> None:
        for name, parent in self.host.parents.items():
            obj = self.parents.get(name)
            if obj is None:
                self.parents[name] = obj = ParentInterface(parent)
                self.bus.export(names.parent_path(name), obj)
            else:
                obj.parent = parent
                obj.refresh()
        for uuid in [u for u in self.vgpus if u not in self.host.views]:
            self.bus.unexport(names.vgpu_path(uuid), self.vgpus.pop(uuid))
        for uuid, view in self.host.views.items():
            vobj = self.vgpus.get(uuid)
            if vobj is None:
                self.vgpus[uuid] = vobj = VgpuInterface(view)
                self.bus.export(names.vgpu_path(uuid), vobj)
            else:
                vobj.view = view
                vobj.refresh()
        domains = self.daemon.domains  # type: ignore[attr-defined]
        shown = domains.shown() if domains.libvirt.connected else {}
        for name in [n for n in self.domains if n not in shown]:
            self.bus.unexport(names.domain_path(name), self.domains.pop(name))
        for name, info in shown.items():
            dobj = self.domains.get(name)
            if dobj is None:
                self.domains[name] = dobj = DomainInterface(name, info.state, domains.uses(info))
                self.bus.export(names.domain_path(name), dobj)
            else:
                dobj.state, dobj.vgpus = info.state, domains.uses(info)
                dobj.refresh()
        self.manager.refresh()
