"""Domain XML: which mdevs a domain uses, and the edits the guide makes by hand.

attach() adds (or updates) the vGPU's hostdev the way that works: vfio-pci with display and
ramfb as the display mode needs, a free PCI slot that is not after a Cirrus adapter, OpRegion
through <qemu:override> on libvirt >= 8.2 (the old `-set device.hostdev0.x-igd-opregion=on`
broke with QEMU 7's JSON -device), and the display itself. detach() undoes it; lint() finds
the guide's pitfalls.

An edit changes only what it changes: parse() keeps comments, whitespace and each
namespace's own prefix where the document declares it (lxml: xml.etree renames prefixes
through one process-wide table and declares every namespace on the root), and add() and
remove() indent and unindent only the lines they touch. Reading alone (mdev_uuids, lint, ...)
needs none of that and stays on xml.etree, so the daemon's start does not load lxml.
"""

from __future__ import annotations

import difflib
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

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


def detach(xml: str, uuid: str) -> str:
    """The domain XML without the vGPU and what attach() added for it."""
    root = parse(xml)
    found = [h for h in mdev_hostdevs(root) if _uuid_of(h) == uuid]
    if not found:
        raise InvalidArgument(f"The domain has no vGPU {uuid}.")
    for hostdev in found:
        remove(hostdev)
    _clear_properties(root)
    _set_gtk(root, False, "")
    return serialize(root)


def lint(xml: str) -> list[tuple[str, str, str]]:
    """(id, message, fix) for the guide's pitfalls in one domain."""
    if (root := _read(xml)) is None:
        return []
    out: list[tuple[str, str, str]] = []
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
