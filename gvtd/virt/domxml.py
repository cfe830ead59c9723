"""Domain XML: which vGPUs a domain uses, and the edits the guide makes by hand.

attach() adds (or updates) an mdev vGPU's hostdev the way that works: vfio-pci with display
and ramfb as the display mode needs, a free PCI slot that is not after a Cirrus adapter,
OpRegion through <qemu:override> on libvirt >= 8.2 (the old `-set
device.hostdev0.x-igd-opregion=on` broke with QEMU 7's JSON -device), and the display
itself. detach() undoes it. An SR-IOV VF is a PCI hostdev at the VF's address instead
(attach_vf, detach_vf, pci_addresses): gvtd binds it to vfio-pci, so libvirt must not
(managed='no'), and it has none of an mdev's display options. lint() finds the guide's
pitfalls, and VFs left where libvirt cannot use them.

An edit changes only what it changes: parse() keeps comments, whitespace and each
namespace's own prefix where the document declares it (lxml: xml.etree renames prefixes
through one process-wide table and declares every namespace on the root), and add() and
remove() indent and unindent only the lines they touch. Reading alone (mdev_uuids, lint, ...)
needs none of that and stays on xml.etree, so the daemon's start does not load lxml.
"""

from __future__ import annotations

import difflib
import xml.etree.ElementTree as ET
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from gvtd.config import PCI_ADDRESS_RE
from gvtd.errors import Busy, InvalidArgument
from gvtd.mdev import hostdev as mdev_hostdev
from gvtd.mdev import hostdev_uuid as _uuid_of
from gvtd.mdev import mdev_hostdevs, used_in

if TYPE_CHECKING:
    from lxml.etree import _Element as Element  # an edit's tree, with xml.etree's API
else:
    Element = ET.Element  # at run time a name for annotations only

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
Q = f"{{{QEMU_NS}}}"

# hostdev attributes a backend sets only for some displays: gone when it leaves them off
HOSTDEV_OPTIONAL = ("ramfb",)
ALIAS = "ua-gvtd-vgpu"  # a user alias (libvirt wants the ua- prefix) that overrides can name
OVERRIDE_VERSION = 8_002_000  # libvirt 8.2: <qemu:override>
Display = Literal["spice-gl", "gtk-gl", "vnc", "none"]
DISPLAYS: tuple[str, ...] = ("spice-gl", "gtk-gl", "vnc", "none")


@dataclass(frozen=True)
class AttachSpec:
    uuid: str
    display: Display = "spice-gl"
    render_node: str | None = None  # /dev/dri/renderD128 for spice-gl
    x_display: str = ":0"  # the desktop's $DISPLAY for gtk-gl
    override: bool = True  # libvirt >= 8.2
    # the vGPU's hostdev as its backend writes it (gvtd.backend.Backend.hostdev); None:
    # an mdev's for this display
    hostdev: ET.Element | None = None


def parse(xml: str) -> Element:
    """The domain XML as a tree to edit, with all that serialize() must give back. No DTD,
    no entities, no network: whoever may define a domain writes this XML, and gvtd is root."""
    from lxml import etree  # here, not at import: the daemon's start does not need it

    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    try:
        root = etree.fromstring(xml.encode(), parser)
    except (etree.XMLSyntaxError, ValueError) as e:
        raise InvalidArgument(f"The domain XML does not parse: {e}.") from e
    if root.getroottree().docinfo.internalDTD is not None:
        raise InvalidArgument("The domain XML has a DOCTYPE, which libvirt's domain XML never "
                              "has: remove it (virsh dumpxml gives the XML libvirt keeps).")
    return root


def serialize(root: Element) -> str:
    """The document again, each comment around the root element on its own line as it was
    (libvirt's files under /etc/libvirt start with one)."""
    from lxml import etree

    nodes = [*reversed(list(root.itersiblings(preceding=True))), root, *root.itersiblings()]
    return "".join(etree.tostring(n, encoding="unicode", with_tail=False) + "\n"
                   for n in nodes)


def _read(xml: str) -> ET.Element | None:
    """The XML for reading only (xml.etree is loaded already), or None if it does not parse."""
    try:
        return ET.fromstring(xml)
    except ET.ParseError:
        return None


def _before(el: Element) -> str | None:
    """The text between el and what precedes it: its indentation in a pretty document."""
    prev = el.getprevious()
    if prev is not None:
        return prev.tail
    parent = el.getparent()
    return parent.text if parent is not None else None


def _line_break(ws: str | None) -> str | None:
    """ws if it is a line break and an indentation (a pretty-printed layout), else None."""
    return ws if ws and "\n" in ws and not ws.strip() else None


def add(parent: Element, tag: str, attrs: dict[str, str] | None = None,
        index: int | None = None) -> Element:
    """A new child of parent at index (default: last), on a line of its own indented like
    its siblings where parent's children are on lines of their own, inline where they are
    not; nothing else moves. A qemu element declares the namespace if nothing above does."""
    nsmap = {"qemu": QEMU_NS} if tag.startswith(Q) and QEMU_NS not in \
        parent.nsmap.values() else None
    el = parent.makeelement(tag, attrs or {}, nsmap)
    count = len(parent)
    index = count if index is None else min(index, count)
    parent.insert(index, el)
    first = _line_break(parent.getroottree().getroot().text)
    if first is None:  # the whole document on one line
        return el
    if count == 0:  # parent had no children: it is opened and closed on lines of its own now
        outer = _line_break(_before(parent))
        if outer is not None and not (parent.text or "").strip():
            parent.text = outer + first.rpartition("\n")[2]  # one level (the root's) deeper
            el.tail = outer
        return el
    inner = _line_break(parent.text)
    if inner is None:
        return el
    if index == count:  # after the last child: it takes the closing line break
        last = parent[index - 1]
        el.tail, last.tail = last.tail, inner
    else:
        el.tail = inner
    return el


def remove(el: Element | None) -> None:
    """Take el out with its line, leaving no blank line behind."""
    parent = el.getparent() if el is not None else None
    if el is None or parent is None:
        return
    if el.getnext() is None:  # the last child: the one before it closes the parent now
        prev = el.getprevious()
        if prev is not None:
            prev.tail = el.tail
        elif not (parent.text or "").strip():
            parent.text = None
    parent.remove(el)


def diff(before: str, after: str, name: str) -> str:
    return "".join(difflib.unified_diff(before.splitlines(True), after.splitlines(True),
                                        f"{name}.xml", f"{name}.xml (gvtd)"))


def mdev_uuids(xml: str) -> list[str]:
    """UUIDs of the domain's mdev hostdevs, in device order (lower case, as the kernel
    names them)."""
    return used_in(root) if (root := _read(xml)) is not None else []


def _slot(address: ET.Element) -> tuple[int, int, int] | None:
    try:
        return (int(address.get("bus", "0"), 0), int(address.get("slot", "-1"), 0),
                int(address.get("function", "0"), 0))
    except ValueError:
        return None


def _pci_addresses(devices: ET.Element, skip: ET.Element | None = None) -> list[
        tuple[ET.Element, tuple[int, int, int]]]:
    out = []
    for dev in devices:
        if dev is skip or not isinstance(dev.tag, str):
            continue
        address = dev.find("./address[@type='pci']")
        if address is not None and (slot := _slot(address)) is not None and slot[1] >= 0:
            out.append((dev, slot))
    return out


def _cirrus_slot(devices: ET.Element) -> int | None:
    for video in devices.findall("video"):
        if video.find("./model[@type='cirrus']") is not None:
            address = video.find("./address[@type='pci']")
            slot = _slot(address) if address is not None else None
            return slot[1] if slot and slot[0] == 0 else None
    return None


def _choose_slot(devices: ET.Element, hostdev: ET.Element) -> int:
    used = {s[1] for _, s in _pci_addresses(devices, skip=hostdev) if s[0] == 0}
    cirrus = _cirrus_slot(devices)
    limit = cirrus if cirrus is not None else 0x20
    free = [s for s in range(0x02, 0x20) if s not in used and s < limit]
    if not free:
        why = (f"no free PCI slot before the Cirrus adapter at slot {cirrus:#04x} (a vGPU "
               "after a Cirrus adapter crashes the VM)" if cirrus is not None
               else "no free PCI slot on bus 0")
        raise InvalidArgument(f"Cannot place the vGPU: {why}. Switch the video model to "
                              "none or virtio, or free a slot.")
    return free[0]


def _sub(parent: Element, tag: str, **attrs: str) -> Element:
    """The first child matching tag and attrs, added last if missing."""
    for child in parent.findall(tag):
        if all(child.get(k) == v for k, v in attrs.items()):
            return child
    return add(parent, tag, attrs)


def _drop_if_empty(root: Element, tag: str) -> None:
    el = root.find(tag)
    if el is not None and len(el) == 0:
        remove(el)


def _arg_pairs(cmd: Element | None, match: Callable[[str, str], bool]) -> list[
        tuple[Element, Element]]:
    """Adjacent <qemu:arg> pairs of cmd whose two values match."""
    args = cmd.findall(Q + "arg") if cmd is not None else []
    return [(a, b) for a, b in zip(args, args[1:])
            if match(a.get("value") or "", b.get("value") or "")]


def _ours(first: str, second: str) -> bool:
    """-set device.ALIAS.prop=value: a property of our hostdev before libvirt 8.2."""
    return first == "-set" and second.startswith(f"device.{ALIAS}.")


def _set_properties(root: Element, props: dict[str, str], override: bool) -> None:
    """QEMU device properties of our hostdev: <qemu:override> or, before libvirt 8.2,
    `-set device.ALIAS.prop=value` on the command line. Left in place when they are so
    already (libvirt may have moved them)."""
    bools = [(name, "bool", "true" if value == "on" else "false") for name, value in props.items()]
    sets = [f"device.{ALIAS}.{name}={value}" for name, value in props.items()]
    now = ([(p.get("name"), p.get("type"), p.get("value")) for p in root.iterfind(
               f"{Q}override/{Q}device[@alias='{ALIAS}']/{Q}frontend/{Q}property")],
           [b.get("value") for _, b in _arg_pairs(root.find(Q + "commandline"), _ours)])
    if now == ((bools, []) if override else ([], sets)):
        return
    _clear_properties(root)
    if not props:
        return
    if override:
        frontend = _sub(_sub(_sub(root, Q + "override"), Q + "device", alias=ALIAS),
                        Q + "frontend")
        for name, kind, value in bools:
            add(frontend, Q + "property", {"name": name, "type": kind, "value": value})
    else:
        cmd = _sub(root, Q + "commandline")
        for value in sets:
            add(cmd, Q + "arg", {"value": "-set"})
            add(cmd, Q + "arg", {"value": value})


def _clear_properties(root: Element) -> None:
    override = root.find(Q + "override")
    if override is not None:
        remove(override.find(f"{Q}device[@alias='{ALIAS}']"))
        _drop_if_empty(root, Q + "override")
    cmd = root.find(Q + "commandline")
    for first, second in _arg_pairs(cmd, _ours):
        remove(first)
        remove(second)
    _drop_if_empty(root, Q + "commandline")


GTK_ARGS = ("-display", "gtk,gl=on")


def _set_gtk(root: Element, on: bool, x_display: str) -> None:
    """QEMU's own GTK window with GL on x_display, or none. Left in place when it is so
    already; a new <qemu:commandline> goes before <qemu:override>, where libvirt puts it."""
    cmd = root.find(Q + "commandline")
    gtk = _arg_pairs(cmd, lambda first, second: (first, second) == GTK_ARGS)
    env = {e.get("name"): e.get("value") for e in cmd.findall(Q + "env")} \
        if cmd is not None else {}
    if on and len(gtk) == 1 and (env.get("DISPLAY"), env.get("GDK_SCALE")) == \
            (x_display, "1.0"):
        return
    if cmd is not None:  # take out what a previous gtk-gl attach added
        for first, second in gtk:
            remove(first)
            remove(second)
        for el in cmd.findall(Q + "env"):
            if el.get("name") in ("DISPLAY", "GDK_SCALE"):
                remove(el)
        _drop_if_empty(root, Q + "commandline")
    if on:
        cmd = root.find(Q + "commandline")
        if cmd is None:
            override = root.find(Q + "override")
            cmd = add(root, Q + "commandline",
                      index=root.index(override) if override is not None else None)
        for value in GTK_ARGS:
            add(cmd, Q + "arg", {"value": value})
        add(cmd, Q + "env", {"name": "DISPLAY", "value": x_display})
        add(cmd, Q + "env", {"name": "GDK_SCALE", "value": "1.0"})  # QEMU's HiDPI is broken


def gtk_display(xml: str) -> str | None:
    """The X display a gtk-gl attach opens QEMU's window on (its DISPLAY), or None."""
    if (root := _read(xml)) is None:
        return None
    values = [a.get("value") for a in root.iterfind(f"{Q}commandline/{Q}arg")]
    if not any(values[i:i + 2] == list(GTK_ARGS) for i in range(len(values) - 1)):
        return None
    env = root.find(f"{Q}commandline/{Q}env[@name='DISPLAY']")
    return env.get("value", ":0") if env is not None else ":0"


def display_of(xml: str) -> str:
    """How the domain is seen: gtk-gl (QEMU's own window), spice or vnc (a viewer attached
    through libvirt), or none."""
    if gtk_display(xml) is not None:
        return "gtk-gl"
    root = _read(xml)
    kinds = [g.get("type") for g in root.iterfind("devices/graphics")] if root is not None \
        else []
    return next((k for k in ("spice", "vnc") if k in kinds), "none")


def dac_user(xml: str) -> str | None:
    """The user of a static DAC label (<seclabel model='dac'><label>USER:GROUP), which
    overrides qemu.conf's user for this domain."""
    if (root := _read(xml)) is None:
        return None
    label = root.findtext("seclabel[@model='dac'][@type='static']/label")
    return label.partition(":")[0] if label else None


def _set_spice_gl(devices: Element, render_node: str) -> None:
    graphics = _sub(devices, "graphics", type="spice")
    for attr in ("port", "autoport", "listen", "tlsPort"):
        graphics.attrib.pop(attr, None)
    for listen in graphics.findall("listen"):
        remove(listen)
    add(graphics, "listen", {"type": "none"}, 0)  # SPICE GL needs a local socket
    gl = _sub(graphics, "gl")
    gl.set("enable", "yes")
    gl.set("rendernode", render_node)  # a path: "auto" does not work with a vGPU


def attach(xml: str, spec: AttachSpec) -> str:
    """The domain XML with the vGPU attached as the display mode needs; idempotent."""
    if spec.display not in DISPLAYS:
        raise InvalidArgument(f"Unknown display {spec.display!r}; use one of "
                              f"{', '.join(DISPLAYS)}.")
    root = parse(xml)
    devices = root.find("devices")
    if devices is None:
        devices = add(root, "devices")
    ours = None
    for hostdev in mdev_hostdevs(root):
        if _uuid_of(hostdev) == spec.uuid:
            ours = hostdev
        else:
            raise Busy(f"The domain already has the vGPU {_uuid_of(hostdev)}, and a VM can open "
                       "only one (the kernel refuses a second with EEXIST): detach it first.")
    wanted = spec.hostdev if spec.hostdev is not None else mdev_hostdev(spec.uuid, spec.display)
    if ours is None:
        ours = add(devices, "hostdev")
        _graft(ours, wanted)
    gl = spec.display == "spice-gl"
    for attr in set(HOSTDEV_OPTIONAL) - set(wanted.attrib):
        ours.attrib.pop(attr, None)
    ours.attrib.update(wanted.attrib)
    alias = ours.find("alias")
    if alias is None:
        alias = add(ours, "alias")
    alias.set("name", ALIAS)
    pci = ours.find("./address[@type='pci']")
    if pci is None:
        slot = _choose_slot(devices, ours)
        add(ours, "address", {"type": "pci", "domain": "0x0000", "bus": "0x00",
                              "slot": f"{slot:#04x}", "function": "0x0"})
    if gl:
        if not spec.render_node:
            raise InvalidArgument("SPICE with GL needs the GPU's render node, and the parent "
                                  "has none (is i915 bound to it?); use --display vnc.")
        _set_spice_gl(devices, spec.render_node)
    props = {"x-igd-opregion": "on"} if spec.display in ("spice-gl", "gtk-gl") else {}
    if spec.display == "gtk-gl":
        props["display"] = "on"  # libvirt refuses display='on' without a graphics device
    _set_properties(root, props, spec.override)
    _set_gtk(root, spec.display == "gtk-gl", spec.x_display)
    return serialize(root)


def _graft(el: Element, model: ET.Element) -> None:
    """model's children below el, each indented as add() does."""
    for child in model:
        _graft(add(el, child.tag, dict(child.attrib)), child)


def _take_out(hostdevs: list[Element], none: str) -> None:
    """Remove the hostdevs a detach found; InvalidArgument(none) when it found none."""
    if not hostdevs:
        raise InvalidArgument(none)
    for hostdev in hostdevs:
        remove(hostdev)


def detach(xml: str, uuid: str) -> str:
    """The domain XML without the vGPU and what attach() added for it."""
    root = parse(xml)
    _take_out([h for h in mdev_hostdevs(root) if _uuid_of(h) == uuid],
              f"The domain has no vGPU {uuid}.")
    _clear_properties(root)
    _set_gtk(root, False, "")
    return serialize(root)


def lint(xml: str, drivers: Mapping[str, str] | None = None,
         vfs: Collection[str] = ()) -> list[tuple[str, str, str]]:
    """(id, message, fix) for the guide's pitfalls in one domain and, given what the caller
    read of sysfs, for its PCI hostdevs that cannot be the VF they look like: drivers, the
    driver of each PCI device that exists ("" when none is bound), and vfs, the addresses
    of the VFs of the SR-IOV parents gvtd knows (made or not yet). Without drivers, no
    PCI hostdev is looked at."""
    if (root := _read(xml)) is None:
        return []
    out: list[tuple[str, str, str]] = [] if drivers is None else _pci_lint(root, drivers, vfs)
    devices = root.find("devices")
    if devices is None:
        return out
    seen: dict[tuple[int, int, int], str] = {}
    for dev, slot in _pci_addresses(devices):
        if slot in seen:
            out.append(("slot-collision", f"{dev.tag} and {seen[slot]} share PCI address "
                        f"{slot[0]:02x}:{slot[1]:02x}.{slot[2]} (the guide: the VM crashes)",
                        "Give one of them another slot (virsh edit)."))
        seen[slot] = dev.tag
    for graphics in devices.findall("graphics[@type='spice']"):
        gl = graphics.find("gl")
        if gl is not None and gl.get("enable") == "yes" and \
                gl.get("rendernode", "auto") in ("", "auto"):
            out.append(("rendernode-auto", "SPICE GL has no render node path (rendernode is "
                        "auto), which does not work with a vGPU",
                        "gvt-client attach DOMAIN VGPU --display spice-gl sets the path."))
    cirrus = _cirrus_slot(devices)
    for hostdev in mdev_hostdevs(root):
        address = hostdev.find("./address[@type='pci']")
        slot = _slot(address) if address is not None else None
        if cirrus is not None and slot is not None and slot[0] == 0 and slot[1] > cirrus:
            out.append(("after-cirrus", "the vGPU sits after the Cirrus adapter (the guide: "
                        "the VM crashes)", "Move the vGPU to a lower slot or change the video "
                        "model."))
        wants_opregion = hostdev.get("display") == "on" or root.find(
            f"{Q}override/{Q}device/{Q}frontend/{Q}property[@name='display']") is not None
        if wants_opregion and not _has_opregion(root):
            out.append(("opregion-missing", "the vGPU shows a display but OpRegion is not "
                        "enabled (x-igd-opregion): the guest driver may not light it up",
                        "gvt-client attach DOMAIN VGPU sets it."))
        if hostdev.get("display") == "on" and devices.find("graphics") is None:
            out.append(("display-no-graphics", "the vGPU has display='on' but the domain has "
                        "no graphics device (libvirt refuses to start it)",
                        "Add SPICE graphics, or use --display gtk-gl or vnc."))
    return out


def _has_opregion(root: ET.Element) -> bool:
    if root.find(f"{Q}override/{Q}device/{Q}frontend/{Q}property[@name='x-igd-opregion']") \
            is not None:
        return True
    return any("x-igd-opregion=on" in (arg.get("value") or "")
               for arg in root.iterfind(f"{Q}commandline/{Q}arg"))


# -- SR-IOV virtual functions -------------------------------------------------------------

# Why a VF takes none of an mdev's display options: said by attach's reply and refusals.
PICTURE = ("A VF has no display that QEMU can show (no dma-buf: no SPICE GL, gtk-gl, ramfb "
           "or OpRegion), so the picture comes from inside the guest: Looking Glass (the "
           "guest's frames through shared memory, in a window on the host), RDP (Windows' "
           "Remote Desktop) or Sunshine (with Moonlight as the viewer).")
HOST_GPU_DRIVERS = ("i915", "xe")  # a VF on one of these is the host's, not the VM's


@dataclass(frozen=True)
class VfSpec:
    """A VF's hostdev: its PCI address and its ROM (a file, or the ROM BAR off)."""

    address: str  # "0000:00:02.1"
    rom: str | None = None  # an option ROM file QEMU gives the guest instead of the VF's
    rom_bar: bool = True  # False: the guest sees no ROM BAR at all

    def __post_init__(self) -> None:
        if not PCI_ADDRESS_RE.fullmatch(self.address):
            raise InvalidArgument(f"{self.address[:40]!r} is not a PCI address like "
                                  "0000:00:02.1.")
        if self.rom is not None and not self.rom_bar:
            raise InvalidArgument("A ROM file needs the ROM BAR (the guest reads the file "
                                  "through it): give either rom or rom_bar false, not both.")


def pci_hostdev(spec: VfSpec) -> ET.Element:
    """The VF's <hostdev> (the SR-IOV backend's), for attach_vf()."""
    d, b, s, f = PCI_ADDRESS_RE.fullmatch(spec.address).groups()  # type: ignore[union-attr]
    hostdev = ET.Element("hostdev", {"mode": "subsystem", "type": "pci", "managed": "no"})
    ET.SubElement(ET.SubElement(hostdev, "source"), "address", {
        "domain": f"0x{d}", "bus": f"0x{b}", "slot": f"0x{s}", "function": f"0x{f}"})
    if spec.rom is not None:
        ET.SubElement(hostdev, "rom", {"file": spec.rom})
    elif not spec.rom_bar:
        ET.SubElement(hostdev, "rom", {"bar": "off"})
    return hostdev


def pci_hostdevs(root: ET.Element) -> list[ET.Element]:
    return root.findall("./devices/hostdev[@type='pci']")


def _pci_number(value: str | None, limit: int) -> int | None:
    """A libvirt PCI address field (0x-prefixed hex, or decimal) within 0..limit."""
    if value is None:
        return None
    try:
        n = int(value, 16) if value[:2].lower() == "0x" else int(value, 10)
    except ValueError:
        return None
    return n if 0 <= n <= limit else None


def _pci_address_of(hostdev: ET.Element) -> str:
    """The host PCI address a hostdev's <source> names, as sysfs names it, or ""."""
    address = hostdev.find("./source/address")
    if address is None:
        return ""
    fields = [_pci_number(address.get(k, default), limit) for k, default, limit in (
        ("domain", "0", 0xffff), ("bus", None, 0xff), ("slot", None, 0x1f),
        ("function", None, 7))]
    if None in fields:
        return ""
    d, b, s, f = fields
    return f"{d:04x}:{b:02x}:{s:02x}.{f}"


def pci_addresses(xml: str) -> list[str]:
    """Host PCI addresses of the domain's PCI hostdevs ("0000:00:02.1"), in device order."""
    if (root := _read(xml)) is None:
        return []
    return pci_addresses_in(root)


def pci_addresses_in(root: ET.Element) -> list[str]:
    """pci_addresses() of a parsed domain XML (the SR-IOV backend's used_in)."""
    return [a for a in map(_pci_address_of, pci_hostdevs(root)) if a]


def attach_vf(xml: str, wanted: ET.Element) -> str:
    """The domain XML with a VF's hostdev as wanted (pci_hostdev(), which its backend
    gives); idempotent. What libvirt added to the hostdev (its guest address, an alias, a
    boot order) stays; the ROM is as wanted says."""
    root = parse(xml)
    devices = root.find("devices")
    if devices is None:
        devices = add(root, "devices")
    address = _pci_address_of(wanted)
    ours = next((h for h in pci_hostdevs(root) if _pci_address_of(h) == address), None)
    if ours is None:
        ours = add(devices, "hostdev")
        _graft(ours, wanted)
    ours.attrib.update(wanted.attrib)  # managed='no': gvtd, not libvirt, binds the VF
    rom, want = ours.find("rom"), wanted.find("rom")
    if want is None:
        remove(rom)
    elif rom is None:
        source = ours.find("source")
        add(ours, "rom", dict(want.attrib),
            ours.index(source) + 1 if source is not None else None)
    elif dict(rom.attrib) != want.attrib:
        rom.attrib.clear()
        rom.attrib.update(want.attrib)
    return serialize(root)


def detach_vf(xml: str, address: str) -> str:
    """The domain XML without the VF's hostdev."""
    root = parse(xml)
    _take_out([h for h in pci_hostdevs(root) if _pci_address_of(h) == address],
              f"The domain has no PCI hostdev at {address[:40]}.")
    return serialize(root)


def pci_lint(xml: str, drivers: Mapping[str, str], vfs: Collection[str]) -> list[
        tuple[str, str, str]]:
    """lint()'s findings on the PCI hostdevs alone (see lint for drivers and vfs)."""
    return _pci_lint(root, drivers, vfs) if (root := _read(xml)) is not None else []


def _pci_lint(root: ET.Element, drivers: Mapping[str, str], vfs: Collection[str]) -> list[
        tuple[str, str, str]]:
    """One whose device exists on a driver other than i915 or xe is someone's passthrough
    (a NIC, a USB controller) and none of gvtd's business."""
    out: list[tuple[str, str, str]] = []
    for address in dict.fromkeys(map(_pci_address_of, pci_hostdevs(root))):
        driver = drivers.get(address)
        if not address or (address not in vfs and driver not in (None, *HOST_GPU_DRIVERS)):
            continue
        if address not in vfs:
            why = ("does not exist, so libvirt cannot start the domain" if driver is None
                   else f"is the host's own device ({driver} drives it): the VM would take "
                   "it from the host, or fail to start")
            out.append((f"pci-not-a-vf:{address}", f"the PCI hostdev {address} is not a VF "
                        f"of any SR-IOV GPU gvtd knows and {why}", "Attach the vGPU "
                        "(gvt-client attach DOMAIN VGPU writes its VF's address) and remove "
                        "that hostdev (virsh edit)."))
        elif driver in HOST_GPU_DRIVERS:
            out.append((f"vf-host-driver:{address}", f"the VF {address} is bound to "
                        f"{driver}, a host driver, rather than vfio-pci: libvirt cannot give "
                        "it to the VM, and the host may be using it",
                        "gvt-client create VGPU (or start DOMAIN) moves it to vfio-pci; "
                        "remove whatever binds it to the host driver (a driverctl override, "
                        "a udev rule)."))
    return out
