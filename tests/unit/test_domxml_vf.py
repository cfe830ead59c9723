"""An SR-IOV VF in a domain's XML: a PCI hostdev at the VF's address that libvirt leaves
alone (gvtd binds it), its ROM setting, its removal, reading it back, and the lint of PCI
hostdevs that cannot be the VF they look like; every edit valid for libvirt's schema."""

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from gvtd.errors import InvalidArgument
from gvtd.virt import domxml
from gvtd.virt.domxml import AttachSpec, VfSpec
from test_domxml_keep import DOMAINS, VIRT_MANAGER, changed, validate

VF = "0000:00:02.1"
ROM = "/usr/share/kvm/igd.rom"
U = "fff6f017-3417-4ad3-b05e-17ae3e1a4615"


def dom(devices: str = "") -> str:
    return f"<domain type='kvm'><name>win11</name><devices>{devices}</devices></domain>"


def vf(xml: str, address: str = VF, rom: str | None = None, rom_bar: bool = True) -> str:
    """attach_vf with the hostdev the SR-IOV backend gives (pci_hostdev)."""
    return domxml.attach_vf(xml, domxml.pci_hostdev(VfSpec(address, rom, rom_bar)))


def host(bus: str = "0x00", slot: str = "0x02", function: str = "0x1",
         extra: str = "") -> str:
    return (f"<hostdev mode='subsystem' type='pci' managed='yes'><source><address "
            f"domain='0x0000' bus='{bus}' slot='{slot}' function='{function}'/></source>"
            f"{extra}</hostdev>")


def test_a_vf_is_a_pci_hostdev_libvirt_does_not_manage() -> None:
    root = ET.fromstring(vf(dom()))
    (hostdev,) = root.findall("./devices/hostdev")
    assert hostdev.attrib == {"mode": "subsystem", "type": "pci", "managed": "no"}
    assert hostdev.find("./source/address").attrib == {
        "domain": "0x0000", "bus": "0x00", "slot": "0x02", "function": "0x1"}
    assert hostdev.find("rom") is None
    # none of an mdev's display options: no display, ramfb, alias, OpRegion, graphics
    assert hostdev.find("alias") is None and root.find(f"{domxml.Q}override") is None
    assert root.find("./devices/graphics") is None


def test_rom_file_and_rom_bar_off() -> None:
    with_file = vf(dom(), rom=ROM)
    assert ET.fromstring(with_file).find("./devices/hostdev/rom").attrib == {"file": ROM}
    bar_off = vf(with_file, rom_bar=False)
    assert ET.fromstring(bar_off).find("./devices/hostdev/rom").attrib == {"bar": "off"}
    plain = vf(bar_off)
    assert plain == vf(dom())
    with pytest.raises(InvalidArgument, match="either rom or rom_bar false"):
        VfSpec(VF, rom=ROM, rom_bar=False)


@pytest.mark.parametrize("address", ["0000:00:02", "00:02.1", "0000:00:02.8", "0000:00:20.0",
                                     "../../x",
                                     "0000:00:02.1'/><x a='"])
def test_only_a_pci_address_is_a_vf_address(address: str) -> None:
    with pytest.raises(InvalidArgument, match="not a PCI address"):
        VfSpec(address)


def test_attach_again_updates_and_keeps_what_libvirt_added() -> None:
    """libvirt gives the hostdev a guest address and an alias on define; a user may have
    written managed='yes' (libvirt would rebind the VF behind gvtd): only that changes."""
    guest = "<address type='pci' domain='0x0000' bus='0x00' slot='0x05' function='0x0'/>"
    xml = dom(host(extra=f"<alias name='hostdev0'/>{guest}"))
    once = vf(xml, rom=ROM)
    assert vf(once, rom=ROM) == once
    hostdev = ET.fromstring(once).find("./devices/hostdev")
    assert hostdev.get("managed") == "no"
    assert [c.tag for c in hostdev] == ["source", "rom", "alias", "address"]
    assert hostdev.find("address").get("slot") == "0x05"


def test_attach_diff_is_the_hostdev_alone() -> None:
    after = vf(VIRT_MANAGER, rom_bar=False)
    assert changed(VIRT_MANAGER, after) == [
        '+    <hostdev mode="subsystem" type="pci" managed="no">',
        '+      <source>',
        '+        <address domain="0x0000" bus="0x00" slot="0x02" function="0x1"/>',
        '+      </source>',
        '+      <rom bar="off"/>',
        '+    </hostdev>',
    ]
    assert domxml.detach_vf(after, VF) == domxml.serialize(domxml.parse(VIRT_MANAGER))


def test_detach_takes_out_that_vf_alone() -> None:
    xml = dom(host() + host(function="0x2"))
    after = domxml.detach_vf(xml, VF)
    assert domxml.pci_addresses(after) == ["0000:00:02.2"]
    with pytest.raises(InvalidArgument, match="no PCI hostdev at 0000:00:02.1"):
        domxml.detach_vf(after, VF)


def test_pci_addresses() -> None:
    xml = dom(host() + host(bus="0x3", slot="16", function="0x7") + host(slot="0x20") +
              f"<hostdev mode='subsystem' type='mdev'><source><address uuid='{U}'/>"
              "</source></hostdev><hostdev mode='subsystem' type='usb'><source><vendor "
              "id='0x1234'/><product id='0xbeef'/></source></hostdev>")
    # slot 0x20 is out of range: no address, not a wrong one
    assert domxml.pci_addresses(xml) == [VF, "0000:03:10.7"]
    assert domxml.pci_addresses("not xml") == []
    assert domxml.mdev_uuids(xml) == [U]


def test_pci_hostdev_is_attach_vf_hostdev() -> None:
    """attach_vf puts the backend's element into the domain as it is."""
    spec = VfSpec(VF, rom=ROM)
    made = ET.fromstring(domxml.attach_vf(dom(), domxml.pci_hostdev(spec))).find(
        "./devices/hostdev")
    assert ET.tostring(domxml.pci_hostdev(spec)) == ET.tostring(made)


KNOWN = {VF, "0000:00:02.2"}


@pytest.mark.parametrize("devices, drivers, found", [
    (host(), {VF: "vfio-pci"}, []),
    (host(), {}, []),  # a VF gvtd knows, not made yet (on-demand): fine
    (host(), {VF: ""}, []),  # made, unbound (released after its domain stopped)
    (host(), {VF: "i915"}, [f"vf-host-driver:{VF}"]),
    (host(function="0x2"), {"0000:00:02.2": "xe"}, ["vf-host-driver:0000:00:02.2"]),
    (host(function="0x0"), {"0000:00:02.0": "i915"}, ["pci-not-a-vf:0000:00:02.0"]),
    (host(function="0x3"), {}, ["pci-not-a-vf:0000:00:02.3"]),
    (host(bus="0x03", slot="0x00", function="0x0"), {"0000:03:00.0": "vfio-pci"}, []),  # a NIC
    (host(bus="0x03", slot="0x00", function="0x0"), {"0000:03:00.0": "igb"}, []),
])
def test_lint_of_pci_hostdevs(devices: str, drivers: dict[str, str], found: list[str]) -> None:
    got = domxml.lint(dom(devices), drivers, KNOWN)
    assert [c[0] for c in got] == found
    for _, message, fix in got:
        assert ("not a VF of any SR-IOV GPU gvtd knows" in message or
                "rather than vfio-pci" in message) and fix
    assert domxml.lint(dom(devices)) == []  # nothing read of sysfs: nothing said


EDITS = {
    "vf": lambda x: vf(x),
    "vf-rom": lambda x: vf(x, rom=ROM),
    "vf-rom-bar-off": lambda x: vf(x, rom_bar=False),
    "vf-and-mdev": lambda x: vf(domxml.attach(x, AttachSpec(U, "vnc")), "0000:00:02.2", ROM),
    "vf-detached": lambda x: domxml.detach_vf(vf(x, rom=ROM), VF),
}


@pytest.mark.parametrize("edit", EDITS)
@pytest.mark.parametrize("domain", DOMAINS)
def test_vf_edits_are_valid_for_libvirt(domain: str, edit: str, tmp_path: Path) -> None:
    validate(EDITS[edit](DOMAINS[domain]), tmp_path)
