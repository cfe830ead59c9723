"""Domain XML edits: attach/detach as the guide does by hand, and the lint."""

import xml.etree.ElementTree as ET

import pytest

from gvtd.errors import Busy, InvalidArgument
from gvtd.virt import domxml
from gvtd.virt.domxml import AttachSpec, Q

U = "fff6f017-3417-4ad3-b05e-17ae3e1a4615"
RENDER = "/dev/dri/renderD128"


def dom(devices: str = "", extra: str = "") -> str:
    return (f"<domain type='kvm' xmlns:qemu='{domxml.QEMU_NS}'><name>win10</name>"
            f"<devices>{devices}</devices>{extra}</domain>")


def pci(slot: int) -> str:
    return f"<address type='pci' domain='0x0000' bus='0x00' slot='{slot:#04x}' function='0x0'/>"


def spice(xml: str) -> str:
    return domxml.attach(xml, AttachSpec(U, "spice-gl", RENDER))


def test_spice_gl_attach() -> None:
    root = ET.fromstring(spice(dom()))
    (hostdev,) = root.findall("./devices/hostdev")
    assert hostdev.attrib == {"mode": "subsystem", "type": "mdev", "managed": "no",
                              "model": "vfio-pci", "display": "on", "ramfb": "on"}
    assert hostdev.find("./source/address").get("uuid") == U
    assert hostdev.find("./address").get("slot") == "0x02"
    graphics = root.find("./devices/graphics[@type='spice']")
    assert graphics.find("listen").attrib == {"type": "none"}
    assert graphics.find("gl").attrib == {"enable": "yes", "rendernode": RENDER}
    prop = root.find(f"{Q}override/{Q}device[@alias='{domxml.ALIAS}']/{Q}frontend/{Q}property")
    assert prop.attrib == {"name": "x-igd-opregion", "type": "bool", "value": "true"}


def test_attach_is_idempotent_and_keeps_unrelated_xml() -> None:
    xml = dom("<disk type='file'><!-- mine --><source file='/w.qcow2'/></disk>",
              f"<qemu:commandline><qemu:arg value='-smbios'/><qemu:arg value='type=2'/>"
              f"</qemu:commandline>")
    once = spice(xml)
    assert spice(once) == once
    root = ET.fromstring(once)
    assert root.find("./devices/disk/source").get("file") == "/w.qcow2"
    assert "<!-- mine -->" in once
    assert [a.get("value") for a in root.iterfind(f"{Q}commandline/{Q}arg")] == \
        ["-smbios", "type=2"]


def test_old_libvirt_gets_set_arguments() -> None:
    root = ET.fromstring(domxml.attach(dom(), AttachSpec(U, "spice-gl", RENDER, override=False)))
    assert root.find(f"{Q}override") is None
    assert [a.get("value") for a in root.iterfind(f"{Q}commandline/{Q}arg")] == \
        ["-set", f"device.{domxml.ALIAS}.x-igd-opregion=on"]


def test_gtk_gl_and_switching_modes() -> None:
    gtk = domxml.attach(dom(), AttachSpec(U, "gtk-gl", x_display=":1"))
    root = ET.fromstring(gtk)
    assert root.find("./devices/hostdev").get("display") == "off"
    assert [a.get("value") for a in root.iterfind(f"{Q}commandline/{Q}arg")] == \
        ["-display", "gtk,gl=on"]
    env = {e.get("name"): e.get("value") for e in root.iterfind(f"{Q}commandline/{Q}env")}
    assert env == {"DISPLAY": ":1", "GDK_SCALE": "1.0"}
    props = {p.get("name") for p in root.iterfind(f".//{Q}property")}
    assert props == {"x-igd-opregion", "display"}
    vnc = ET.fromstring(domxml.attach(gtk, AttachSpec(U, "vnc")))
    assert vnc.find(f"{Q}commandline") is None and vnc.find(f"{Q}override") is None
    assert vnc.find("./devices/hostdev").get("display") == "off"


def test_slot_is_free_and_before_cirrus() -> None:
    xml = dom(f"<disk type='file'>{pci(2)}</disk><controller type='usb'>{pci(3)}</controller>"
              f"<video><model type='cirrus'/>{pci(6)}</video>")
    root = ET.fromstring(spice(xml))
    assert root.find("./devices/hostdev/address").get("slot") == "0x04"
    full = dom(f"<disk type='file'>{pci(2)}</disk><video><model type='cirrus'/>{pci(3)}</video>")
    with pytest.raises(InvalidArgument, match="Cirrus"):
        spice(full)


def test_one_vgpu_per_domain() -> None:
    other = spice(dom()).replace(U, "11111111-2222-4333-8444-555555555555")
    with pytest.raises(Busy, match="only one"):
        spice(other)


def test_spice_gl_needs_a_render_node() -> None:
    with pytest.raises(InvalidArgument, match="render node"):
        domxml.attach(dom(), AttachSpec(U, "spice-gl", None))


def test_detach_reverses_attach() -> None:
    base = dom("<disk type='file'/>", f"<qemu:commandline><qemu:arg value='-x'/></qemu:commandline>")
    for display in ("gtk-gl", "vnc"):
        attached = domxml.attach(base, AttachSpec(U, display))  # type: ignore[arg-type]
        assert domxml.detach(attached, U) == domxml.serialize(domxml.parse(base))
    with pytest.raises(InvalidArgument):
        domxml.detach(base, U)


@pytest.mark.parametrize("xml, check", [
    (dom(f"<disk type='file'>{pci(2)}</disk><interface type='user'>{pci(2)}</interface>"),
     "slot-collision"),
    (dom("<graphics type='spice'><gl enable='yes' rendernode='auto'/></graphics>"),
     "rendernode-auto"),
    (dom(f"<video><model type='cirrus'/>{pci(3)}</video><graphics type='vnc'/>"
         f"<hostdev mode='subsystem' type='mdev' display='off'><source><address uuid='{U}'/>"
         f"</source>{pci(9)}</hostdev>"), "after-cirrus"),
    (dom(f"<graphics type='spice'/><hostdev mode='subsystem' type='mdev' display='on'><source>"
         f"<address uuid='{U}'/></source></hostdev>"), "opregion-missing"),
    (dom(f"<hostdev mode='subsystem' type='mdev' display='on'><source><address uuid='{U}'/>"
         f"</source></hostdev>"), "display-no-graphics"),
])
def test_lint_finds_the_guides_pitfalls(xml: str, check: str) -> None:
    assert check in [c[0] for c in domxml.lint(xml)]


def test_lint_is_quiet_after_attach() -> None:
    assert domxml.lint(spice(dom(f"<video><model type='qxl'/>{pci(1)}</video>"))) == []


def test_mdev_uuids() -> None:
    assert domxml.mdev_uuids(spice(dom()).replace(U, U.upper())) == [U]
    assert domxml.mdev_uuids("not xml") == []


def test_gtk_display_and_dac_user() -> None:
    gtk = domxml.attach(dom(), AttachSpec(U, "gtk-gl", x_display=":1"))
    assert domxml.gtk_display(gtk) == ":1"
    assert domxml.gtk_display(spice(dom())) is None
    assert domxml.gtk_display(domxml.detach(gtk, U)) is None
    assert domxml.dac_user(gtk) is None
    labelled = dom(extra="<seclabel type='static' model='dac'><label>qemu:kvm</label>"
                   "</seclabel>")
    assert domxml.dac_user(labelled) == "qemu"
