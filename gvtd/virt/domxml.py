"""Reading libvirt domain XML: which mdevs a domain uses."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from gvtd.config import UUID_RE


def mdev_uuids(xml: str) -> list[str]:
    """UUIDs of the domain's mdev hostdevs, in device order (lower case, as the kernel
    names them)."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return []
    out = []
    for hostdev in root.iterfind("./devices/hostdev[@type='mdev']"):
        address = hostdev.find("./source/address")
        uuid = (address.get("uuid") or "").lower() if address is not None else ""
        if UUID_RE.fullmatch(uuid):
            out.append(uuid)
    return out
