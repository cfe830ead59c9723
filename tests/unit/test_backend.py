"""The device-backend seam (gvtd.backend): the mdev backend fills the protocol, and Backends
sends each request to the backend that owns it."""

import inspect
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from test_mdev_read import UUID, _tree

from gvtd.backend import Backend, Backends, HostdevOptions, Instance, MdevType, Parent, Uevent
from gvtd.errors import NotFound
from gvtd.mdev import Mdev, MdevBackend, Sysfs
from gvtd.mdev import MdevType as MdevTypeAgain
from gvtd.mdev import Parent as ParentAgain

PF = "0000:00:03.0"
VF_UUID = "0d6c7f4e-8a54-4b8e-9a0d-3d1c2a9b7e11"
DOMAIN = f"""<domain><devices>
  <hostdev mode='subsystem' type='mdev'><source><address uuid='{UUID.upper()}'/></source></hostdev>
  <hostdev mode='subsystem' type='pci'><source>
    <address domain='0x0000' bus='0x00' slot='0x03' function='0x1'/></source></hostdev>
</devices></domain>"""


class Tiny:
    """A second backend, as small as the protocol allows: one parent, one instance at a PCI
    address, and a record of what it was asked to do."""

    kind = "tiny"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.calls: list[tuple[str, ...]] = []
        self.parent_ = Parent(PF, "/sys/devices/pci0000:00/0000:00:03.0", "xe",
                              0x8086, 0x46A6, True,
                              (MdevType("vf", "VF", None, "vfio-pci", 7),), kind="tiny",
                              total_vfs=7, num_vfs=1, vf_offset=1, vf_stride=1)
        self.vf = Instance(VF_UUID, PF, "vf", "0000:00:03.1", "tiny")
        self.made: dict[str, Instance] = {}

    def parents(self) -> list[Parent]:
        return [self.parent_]

    def parent(self, name: str) -> Parent | None:
        return self.parent_ if name == self.parent_.name else None

    def instances(self) -> dict[str, Instance]:
        return {VF_UUID: self.vf, **self.made}

    def instance(self, uuid: str) -> Instance | None:
        return self.instances().get(uuid)

    def arriving(self, uuid: str) -> bool:
        return False

    def address(self, uuid: str) -> str:
        made = self.made.get(uuid)
        return made.address if made else ""

    def reserve(self, parent: Parent, type_id: str, uuid: str) -> None:
        pass

    def create(self, parent: Parent, type_id: str, uuid: str) -> None:
        self.calls.append(("create", parent.name, type_id, uuid))
        self.made[uuid] = Instance(uuid, parent.name, type_id, f"0000:00:03.{len(self.made) + 2}",
                                   self.kind)

    def remove(self, uuid: str) -> None:
        self.calls.append(("remove", uuid))

    def write_attr(self, uuid: str, name: str, value: str) -> None:
        self.calls.append(("write_attr", uuid, name, value))

    def no_capacity_message(self, parent: str, type_id: str) -> str:
        return f"tiny: {parent} is full"

    def classify(self, action: str, subsystem: str | None, sys_path: str,
                 properties: dict[str, str]) -> Uevent | None:
        if subsystem == "pci" and sys_path.endswith("0000:00:03.1"):
            return Uevent(action, frozenset({PF}), VF_UUID)
        return None

    def hostdev(self, instance: Instance, options: HostdevOptions) -> ET.Element:
        return ET.Element("hostdev", {"type": "pci", "at": instance.address})

    def used_in(self, root: ET.Element) -> list[str]:
        found = root.find("./devices/hostdev[@type='pci']/source/address[@function='0x1']")
        return [VF_UUID] if found is not None else []


def _members(cls: type) -> dict[str, inspect.Signature]:
    return {n: inspect.signature(f) for n, f in vars(cls).items()
            if callable(f) and not n.startswith("_")}


def test_the_mdev_backend_has_every_member_of_the_protocol_with_its_signature() -> None:
    assert MdevBackend is Sysfs and Sysfs.kind == "mdev"
    wanted = _members(Backend)
    assert set(wanted) <= set(dir(Sysfs)) and set(wanted) <= set(dir(Tiny))
    for name, signature in wanted.items():
        assert list(inspect.signature(getattr(Sysfs, name)).parameters) == \
            list(signature.parameters), name
    assert isinstance(Backend.kind, property) and isinstance(Backend.root, property)
    assert Sysfs(Path("/sys")).root == Path("/sys")


def test_the_old_mdev_names_are_the_backend_s() -> None:
    assert (Mdev, ParentAgain, MdevTypeAgain) == (Instance, Parent, MdevType)
    assert Mdev("u", "p", "t") == Instance("u", "p", "t", "", "mdev")
    p = Parent("mtty0", "/x", "", None, None, True)
    assert (p.kind, p.total_vfs, p.num_vfs, p.vf_offset, p.vf_stride, p.autoprobe) == \
        ("mdev", 0, 0, 0, 0, True)


def test_the_mdev_backend_reads_instances_and_its_domain_hostdevs(tmp_path: Path) -> None:
    mdev = Sysfs(_tree(tmp_path))
    assert mdev.instances() == {UUID: Instance(UUID, "mtty0", "mtty-2")}
    assert mdev.instance(UUID) == Instance(UUID, "mtty0", "mtty-2") and not mdev.arriving(UUID)
    assert mdev.used_in(ET.fromstring(DOMAIN)) == [UUID]
    el = mdev.hostdev(Instance(UUID, "mtty0", "mtty-2"), HostdevOptions("vnc"))
    assert (el.get("type"), el.get("display"), el.findtext("./source/address")) == \
        ("mdev", "off", "") and el.find(f"./source/address[@uuid='{UUID}']") is not None


def test_backends_merge_what_each_reads(tmp_path: Path) -> None:
    sys = _tree(tmp_path)
    tiny = Tiny(sys)
    both = Backends([Sysfs(sys), tiny])
    parents = {p.name: p for p in both.parents()}
    assert (parents["0000:00:02.0"].kind, parents["mtty0"].kind) == ("mdev", "mdev")
    assert set(both.instances()) == {UUID, VF_UUID}
    assert both.instance(VF_UUID) == tiny.vf
    assert both.instance(UUID) == Instance(UUID, "mtty0", "mtty-2", "", "mdev")
    assert both.uses(DOMAIN) == [UUID, VF_UUID] and both.uses("<not xml") == []
    assert both.root == sys


def test_backends_dispatch_by_parent_kind_and_instance_backend(tmp_path: Path) -> None:
    sys = _tree(tmp_path)
    tiny = Tiny(sys)
    both = Backends([Sysfs(sys), tiny])
    both.create(tiny.parent_, "vf", VF_UUID)
    both.write_attr(VF_UUID, "a", "1", "tiny")
    both.remove(VF_UUID, "tiny")
    assert tiny.calls == [("create", PF, "vf", VF_UUID),
                          ("write_attr", VF_UUID, "a", "1"), ("remove", VF_UUID)]
    assert both.no_capacity_message(tiny.parent_, "vf") == "tiny: 0000:00:03.0 is full"
    assert both.hostdev(tiny.vf, HostdevOptions()).get("at") == "0000:00:03.1"
    assert both.hostdev(Instance(UUID, "mtty0", "mtty-2"), HostdevOptions()).get("type") == "mdev"
    # an mdev parent's create goes to the mdev ABI: its type's create file
    create = sys / "devices/virtual/mtty/mtty0/mdev_supported_types/mtty-2/create"
    create.write_text("")
    both.create(Sysfs(sys).parent("mtty0"), "mtty-2", VF_UUID)  # type: ignore[arg-type]
    assert create.read_text() == VF_UUID and len(tiny.calls) == 3
    with pytest.raises(NotFound):
        both.remove(UUID, "nvidia")


def test_backends_classify_with_the_backend_that_knows_the_event(tmp_path: Path) -> None:
    both = Backends([Sysfs(tmp_path), Tiny(tmp_path)])
    gpu = "/sys/devices/pci0000:00/0000:00:02.0"
    assert both.classify("add", "mdev", f"{gpu}/{UUID}", {}) == \
        Uevent("add", frozenset({"0000:00:02.0"}), UUID)
    assert both.classify("bind", "pci", "/sys/devices/pci0000:00/0000:00:03.1",
                         {"DRIVER": "vfio-pci"}) == Uevent("bind", frozenset({PF}), VF_UUID)
    assert both.classify("add", "usb", "/sys/devices/usb1", {}) is None


def test_host_creates_on_the_backend_of_the_parent_and_shows_where_it_lives(
        tmp_path: Path) -> None:
    """Host is given Backends: a definition on the second backend's parent is created there,
    never through the mdev ABI, and its view names that backend and the instance's address."""
    import asyncio

    from gvtd.config import ConfigDir
    from gvtd.host import Host
    from gvtd.state import Ownership

    sys = _tree(tmp_path)
    tiny = Tiny(sys)
    host = Host(ConfigDir(tmp_path / "etc"), Backends([Sysfs(sys), tiny]),
                Ownership(tmp_path / "state"))
    new = "5a0c1d2e-3f40-4a5b-8c6d-7e8f9a0b1c2d"

    async def go() -> None:
        await host.reconcile()
        await host.define("w", {"uuid": new, "parent": PF, "type": "vf"})

    asyncio.run(go())
    assert tiny.calls == [("create", PF, "vf", new)]
    v = host.views[new]
    assert (v.state, v.backend, v.address, v.type_id) == ("active", "tiny", "0000:00:03.2", "vf")
    assert host.views[UUID].backend == "mdev" and host.views[VF_UUID].backend == "tiny"
    assert not list(sys.glob("devices/**/create"))  # nothing written to the mdev ABI
