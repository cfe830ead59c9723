"""Keeps the exported object tree in step with the Host: export what appeared, unexport what
went, and let each object signal its own property changes.

GetManagedObjects is answered here from a reply built once per change: dbus-fast's own
handler calls every property getter of every object on each call, which capped it at a few
hundred calls per second with 64 vGPUs.
"""

from dbus_fast import Message, MessageFlag, MessageType
from dbus_fast.aio import MessageBus

from gvtd import names
from gvtd.bus import auth, fds
from gvtd.virt import domxml
from gvtd.bus.objects import (DomainInterface, ManagerInterface, ParentInterface, VgpuInterface,
                              _Mirror)

MANAGED_OBJECTS = "a{oa{sa{sv}}}"


def _header_len(wire: bytes | bytearray) -> int:
    """Length of a marshalled message's header: 16 fixed bytes, the header fields (their
    length at bytes 12-15), padding to 8 (the D-Bus wire format; dbus-fast writes little
    endian)."""
    return (16 + int.from_bytes(wire[12:16], "little") + 7) & ~7


class _Prebuilt(Message):
    """A method return whose body was marshalled once: each reply only builds its header.
    Marshalling the 64-vGPU body took more time than everything else a call costs gvtd."""

    body_wire = b""

    def _marshall(self, negotiate_unix_fd: bool) -> bytearray:
        head = super()._marshall(negotiate_unix_fd)  # with an empty body of the same type
        head = head[:_header_len(head)]
        head[4:8] = len(self.body_wire).to_bytes(4, "little")
        return head + self.body_wire


class ObjectTree:
    def __init__(self, bus: MessageBus, daemon: object) -> None:
        self.bus = bus
        self.daemon = daemon
        self.host = daemon.host  # type: ignore[attr-defined]
        self.manager = ManagerInterface(daemon)
        self.parents: dict[str, ParentInterface] = {}
        self.vgpus: dict[str, VgpuInterface] = {}
        self.domains: dict[str, DomainInterface] = {}
        self._objects: bytes | None = None  # GetManagedObjects' body, marshalled
        auth.watch(bus)  # before export: mutating methods need their caller
        fds.watch(bus)  # descriptors only NewDomain keeps, and only while it runs
        bus.add_message_handler(self._get_managed_objects)
        bus.export(names.ROOT_PATH, self.manager)
        self.host.listeners.append(self.sync)

    def _changed(self) -> None:
        self._objects = None

    def _export(self, path: str, obj: _Mirror) -> None:
        obj.on_change = self._changed
        self._changed()
        self.bus.export(path, obj)

    def _unexport(self, path: str, obj: _Mirror) -> None:
        self._changed()
        self.bus.unexport(path, obj)

    def _get_managed_objects(self, msg: Message) -> bool:
        """The ObjectManager at the root: every object below it, from the cached body."""
        if msg.message_type is not MessageType.METHOD_CALL or msg.path != names.ROOT_PATH \
                or msg.member != "GetManagedObjects" or msg.signature != "" \
                or msg.interface != names.OBJECT_MANAGER_IFACE:
            return False
        if msg.flags & MessageFlag.NO_REPLY_EXPECTED:
            return True
        if self._objects is None:
            objs: list[tuple[str, _Mirror]] = [
                *((names.parent_path(n), o) for n, o in self.parents.items()),
                *((names.vgpu_path(u), o) for u, o in self.vgpus.items()),
                *((names.domain_path(n), o) for n, o in self.domains.items())]
            body = {path: {o.name: o.variants()} for path, o in objs}
            wire = Message(message_type=MessageType.METHOD_RETURN, reply_serial=1,
                           signature=MANAGED_OBJECTS, body=[body])._marshall(False)
            self._objects = bytes(wire[_header_len(wire):])
        reply = _Prebuilt(message_type=MessageType.METHOD_RETURN, reply_serial=msg.serial,
                          destination=msg.sender, signature=MANAGED_OBJECTS, body=[{}])
        reply.body_wire = self._objects
        self.bus.send(reply)  # (a returned Message is sent only if it is exactly a Message)
        return True

    def sync(self) -> None:
        for name, parent in self.host.parents.items():
            obj = self.parents.get(name)
            if obj is None:
                self.parents[name] = obj = ParentInterface(parent)
                self._export(names.parent_path(name), obj)
            else:
                obj.parent = parent
                obj.refresh()
        for uuid in [u for u in self.vgpus if u not in self.host.views]:
            self._unexport(names.vgpu_path(uuid), self.vgpus.pop(uuid))
        for uuid, view in self.host.views.items():
            vobj = self.vgpus.get(uuid)
            if vobj is None:
                self.vgpus[uuid] = vobj = VgpuInterface(view, self.daemon.health)  # type: ignore[attr-defined]
                self._export(names.vgpu_path(uuid), vobj)
            else:
                vobj.view = view
                vobj.refresh()
        domains = self.daemon.domains  # type: ignore[attr-defined]
        shown = domains.shown() if domains.libvirt.connected else {}
        for name in [n for n in self.domains if n not in shown]:
            self._unexport(names.domain_path(name), self.domains.pop(name))
        for name, info in shown.items():
            dobj = self.domains.get(name)
            if dobj is None:
                self.domains[name] = dobj = DomainInterface(name, info.state, domains.uses(info),
                                                            domxml.display_of(info.xml))
                self._export(names.domain_path(name), dobj)
            else:
                dobj.state, dobj.vgpus = info.state, domains.uses(info)
                dobj.display = domxml.display_of(info.xml)
                dobj.refresh()
        self.manager.refresh()
