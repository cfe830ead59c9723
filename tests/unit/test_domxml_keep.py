"""Edits change only what they change: attach, detach and tune on the XML virt-manager 4
defines for a Windows guest keep its prefixes, comments and layout, their diff is the edit
alone, and what they write is valid for libvirt's own schema (virt-xml-validate)."""

import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from gvtd.cputopo import Topology
from gvtd.errors import InvalidArgument
from gvtd.sim.supervisor import LIBVIRT_TEST_NODE
from gvtd.virt import domxml, tune
from gvtd.virt.domxml import Q, AttachSpec
from libvirtd import domain_xml
from test_tune_xml import WIN10

FIXTURES = Path(__file__).parents[1] / "fixtures"
VIRT_MANAGER = (FIXTURES / "virt-manager-win10.xml").read_text()
OSINFO = "http://libosinfo.org/xmlns/libvirt/domain/1.0"
U = "fff6f017-3417-4ad3-b05e-17ae3e1a4615"
RENDER = "/dev/dri/renderD128"
KABY_LAKE = Topology(((0, 4), (1, 5), (2, 6), (3, 7)))
TUNE = tune.TuneSpec(KABY_LAKE, hyperv=frozenset(tune.HYPERV))


def changed(before: str, after: str) -> list[str]:
    """The dry-run diff's changed lines (as gvtd's Domains shows it), without the headers."""
    lines = domxml.diff(domxml.serialize(domxml.parse(before)), after, "win10").splitlines()
    return [x for x in lines[2:] if x[:1] in "+-"]


def canonical(xml: str) -> str:
    """xml with the lexical choices that say nothing (quotes, attribute order, <a/> or
    <a></a>) made one; prefixes, comments and every bit of text stay as they are."""
    return ET.canonicalize(xml, with_comments=True)


def test_an_untouched_document_comes_back_as_it_was() -> None:
    again = domxml.serialize(domxml.parse(VIRT_MANAGER))
    assert canonical(again) == canonical(VIRT_MANAGER)
    lines = again.splitlines()
    assert lines[:2] == ["<!--", "WARNING: THIS IS AN AUTO-GENERATED FILE. CHANGES TO IT ARE "
                                 "LIKELY TO BE"]  # the header virsh edit's file carries
    assert '<domain type="kvm">' in lines  # nothing declared on the root that was not
    assert f'    <libosinfo:libosinfo xmlns:libosinfo="{OSINFO}">' in lines
    assert '      <libosinfo:os id="http://microsoft.com/win/10"/>' in lines


def test_spice_gl_attach_diff_is_the_edit_alone() -> None:
    spec = AttachSpec(U, "spice-gl", RENDER)
    after = domxml.attach(VIRT_MANAGER, spec)
    assert domxml.attach(after, spec) == after
    assert changed(VIRT_MANAGER, after) == [
        '-    <graphics type="spice" autoport="yes">',
        '-      <listen type="address"/>',
        '+    <graphics type="spice">',
        '+      <listen type="none"/>',
        f'+      <gl enable="yes" rendernode="{RENDER}"/>',
        '+    <hostdev mode="subsystem" type="mdev" managed="no" model="vfio-pci" '
        'display="on" ramfb="on">',
        '+      <source>',
        f'+        <address uuid="{U}"/>',
        '+      </source>',
        '+      <alias name="ua-gvtd-vgpu"/>',
        '+      <address type="pci" domain="0x0000" bus="0x00" slot="0x04" function="0x0"/>',
        '+    </hostdev>',
        f'+  <qemu:override xmlns:qemu="{domxml.QEMU_NS}">',
        '+    <qemu:device alias="ua-gvtd-vgpu">',
        '+      <qemu:frontend>',
        '+        <qemu:property name="x-igd-opregion" type="bool" value="true"/>',
        '+      </qemu:frontend>',
        '+    </qemu:device>',
        '+  </qemu:override>',
    ]


def test_detach_diff_takes_out_what_attach_put_in() -> None:
    attached = domxml.attach(VIRT_MANAGER, AttachSpec(U, "gtk-gl", x_display=":1"))
    added = changed(VIRT_MANAGER, attached)
    assert added and all(x.startswith("+") for x in added)
    assert changed(attached, domxml.detach(attached, U)) == ["-" + x[1:] for x in added]
    assert domxml.detach(attached, U) == domxml.serialize(domxml.parse(VIRT_MANAGER))
    vnc = domxml.attach(VIRT_MANAGER, AttachSpec(U, "vnc"))  # switching modes leaves no trace
    assert domxml.attach(attached, AttachSpec(U, "vnc")) == vnc


def test_attach_again_leaves_what_libvirt_moved_in_place() -> None:
    """libvirt writes <qemu:commandline> before <qemu:override>, and a new commandline goes
    there; attaching again to XML in either order changes nothing (attach used to take them
    out and put them back last, a diff of lines that did not change)."""
    spec = AttachSpec(U, "gtk-gl")
    once = domxml.attach(VIRT_MANAGER, spec)
    assert [c.tag for c in ET.fromstring(once)][-2:] == [Q + "commandline", Q + "override"]
    head, cut, tail = once.partition("  <qemu:commandline")
    block, end, rest = tail.partition("</qemu:commandline>\n")
    moved = head + rest.replace("</domain>", cut + block + end + "</domain>")
    assert [c.tag for c in ET.fromstring(moved)][-2:] == [Q + "override", Q + "commandline"]
    assert domxml.attach(once, spec) == once and domxml.attach(moved, spec) == moved


def test_tune_diff_is_the_edit_alone() -> None:
    after = tune.tune(VIRT_MANAGER, TUNE)
    assert changed(VIRT_MANAGER, after) == [
        '-  <vcpu placement="static">4</vcpu>',
        '+  <vcpu placement="static">6</vcpu>',
        '+  <cputune>',
        *[f'+    <vcpupin vcpu="{v}" cpuset="{c}"/>' for v, c in enumerate((1, 5, 2, 6, 3, 7))],
        '+  </cputune>',
        '+      <vpindex state="on"/>',
        '+      <runtime state="on"/>',
        '+      <synic state="on"/>',
        '+      <stimer state="on"/>',
        '-  <cpu mode="host-passthrough" check="none" migratable="on"/>',
        '+  <cpu mode="host-passthrough" check="none" migratable="on">',
        '+    <topology sockets="1" cores="3" threads="2"/>',
        '+  </cpu>',
        '-    <graphics type="spice" autoport="yes">',
        '-      <listen type="address"/>',
        '+    <graphics type="spice">',
        '+      <listen type="none"/>',
        '+      <jpeg compression="never"/>',
        '+      <zlib compression="never"/>',
        '+      <playback compression="off"/>',
        '+      <streaming mode="off"/>',
    ]
    assert tune.tune(after, TUNE) == after


def test_a_one_line_document_stays_on_one_line() -> None:
    xml = "<domain type='kvm'><name>x</name><devices><disk type='file'/></devices></domain>"
    after = domxml.attach(xml, AttachSpec(U, "vnc"))
    assert after.count("\n") == 1
    assert domxml.detach(after, U) == domxml.serialize(domxml.parse(xml))


def test_prefixes_belong_to_their_document() -> None:
    """Each document keeps its own prefixes, and none leaks into the next: not another
    document's prefix for the same namespace, nor one that binds `qemu` elsewhere."""
    osinfo = VIRT_MANAGER
    other = VIRT_MANAGER.replace("libosinfo:", "os:").replace("xmlns:libosinfo", "xmlns:os")
    hostile = VIRT_MANAGER.replace(
        "<domain type='kvm'>", "<domain type='kvm' xmlns:qemu='urn:not-qemu'>").replace(
        "  </devices>\n", "  </devices>\n  <qemu:commandline><qemu:arg value='-x'/>"
        "</qemu:commandline>\n")
    spec = AttachSpec(U, "gtk-gl")
    first, second, third = (domxml.attach(x, spec) for x in (osinfo, other, hostile))
    assert '<os:libosinfo xmlns:os="' in second and "libosinfo:" not in second
    assert domxml.attach(osinfo, spec) == first and "<os:" not in first
    assert '<qemu:override xmlns:qemu="' + domxml.QEMU_NS in first
    root = ET.fromstring(third)
    (theirs,) = root.findall("{urn:not-qemu}commandline")  # left alone, in its namespace
    assert [a.get("value") for a in theirs] == ["-x"]
    assert [a.get("value") for a in root.iterfind(f"{Q}commandline/{Q}arg")] == \
        ["-display", "gtk,gl=on"]
    assert root.find(f"{Q}override/{Q}device").get("alias") == domxml.ALIAS


def test_a_doctype_is_refused_by_name() -> None:
    """libvirt never writes one; refusing it leaves no entity for the root daemon to read."""
    xml = ("<!DOCTYPE domain [<!ENTITY e SYSTEM 'file:///etc/shadow'>]>"
           "<domain type='kvm'><name>&e;</name><devices/></domain>")
    with pytest.raises(InvalidArgument, match="DOCTYPE.*remove it"):
        domxml.attach(xml, AttachSpec(U, "vnc"))
    with pytest.raises(InvalidArgument, match="does not parse"):
        tune.tune("<domain><name>x</name>", TUNE)


def validate(xml: str, tmp_path: Path) -> None:
    path = tmp_path / "domain.xml"
    path.write_text(xml)
    p = subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stdout + p.stderr


# The sim's test-driver domain without <test:runstate>, the one element the schema lacks.
SIM = LIBVIRT_TEST_NODE[LIBVIRT_TEST_NODE.index("<domain"):].split("</node>")[0].replace(
    "    <test:runstate>5</test:runstate>\n", "")
DOMAINS = {"virt-manager": VIRT_MANAGER, "tune": WIN10, "sim": SIM,
           "libvirtd": domain_xml("plain")}
EDITS = {
    **{f"attach-{d}": lambda x, d=d: domxml.attach(x, AttachSpec(U, d, RENDER))
       for d in domxml.DISPLAYS},
    "attach-set-before-8.2": lambda x: domxml.attach(x, AttachSpec(U, override=False,
                                                                   render_node=RENDER)),
    "detach": lambda x: domxml.detach(domxml.attach(x, AttachSpec(U, "gtk-gl")), U),
    "tune": lambda x: tune.tune(x, TUNE),
    "tune-no-pinning": lambda x: tune.tune(x, tune.TuneSpec(KABY_LAKE, 2, pinning=False,
                                                            hyperv=frozenset())),
    "tune-attached": lambda x: tune.tune(domxml.attach(x, AttachSpec(U, "spice-gl", RENDER)),
                                         TUNE),
}


@pytest.mark.parametrize("domain", DOMAINS)
def test_revert_puts_back_valid_xml(domain: str, tmp_path: Path) -> None:
    """tune --revert defines the XML from before the tune again: the fixture itself."""
    validate(DOMAINS[domain], tmp_path)


@pytest.mark.parametrize("edit", EDITS)
@pytest.mark.parametrize("domain", DOMAINS)
def test_edits_are_valid_for_libvirt(domain: str, edit: str, tmp_path: Path) -> None:
    validate(EDITS[edit](DOMAINS[domain]), tmp_path)
