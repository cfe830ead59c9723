"""A domain's sound, wired to the sound server of the person who attached it.

QEMU runs as libvirt's user (libvirt-qemu on Debian), which cannot reach a user's
PulseAudio or PipeWire. Debian 12's QEMU 7.2 has no PipeWire audio driver (8.1 has), so the
backend is always libvirt's `<audio type='pulseaudio'>`, whose protocol PulseAudio and
PipeWire's pulse server both speak; its serverName is a dedicated socket in the caller's
runtime directory (names.sound_socket), which the caller's own session opens (a module of
its PulseAudio, or a second pulse server of its PipeWire) and grants to QEMU's user alone
(gvtd/client/sound.py). The guest sees an Intel HDA (ich9) card tied to that
backend; libvirt refuses a sound card whose <audio id> names no backend, and QEMU refuses
to start when the socket does not answer.

Ours are recognised by what only gvtd writes: the card's alias (ua-gvtd-sound) and a
serverName of the form names.sound_socket gives. Sound cards and backends the domain had
stay as they were.
"""

from __future__ import annotations

import itertools
import re
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

from gvtd import names
from gvtd.virt import domxml

if TYPE_CHECKING:
    from gvtd import doctor

ALIAS = "ua-gvtd-sound"
MODEL = "ich9"
_SERVER = re.compile(r"unix:" + re.escape(names.sound_socket(0)).replace("/0/", r"/\d+/"))


def _ours(devices: ET.Element) -> tuple[list[ET.Element], list[ET.Element]]:
    """Our sound cards and our audio backends."""
    cards = [s for s in devices.findall("sound")
             if s.find(f"alias[@name='{ALIAS}']") is not None]
    backends = [a for a in devices.findall("audio") if a.get("type") == "pulseaudio"
                and _SERVER.fullmatch(a.get("serverName") or "")]
    return cards, backends


def wire(xml: str, socket: str | None) -> str:
    """The domain XML with its sound on socket, or without gvtd's sound (None); only our
    elements change, and a second call changes nothing."""
    root = domxml.parse(xml)
    devices = root.find("devices")
    if devices is None:
        if socket is None:
            return domxml.serialize(root)
        devices = domxml.add(root, "devices")
    cards, backends = _ours(devices)
    keep_card, keep_backend = (cards[:1], backends[:1]) if socket else ([], [])
    for el in [*cards, *backends]:
        if el not in keep_card and el not in keep_backend:
            domxml.remove(el)
    if socket is None:
        return domxml.serialize(root)
    server = f"unix:{socket}"
    if keep_backend:
        backend = keep_backend[0]
        if backend.get("serverName") != server:
            backend.set("serverName", server)
    else:
        taken = {a.get("id") for a in devices.findall("audio")}
        free = next(str(i) for i in itertools.count(1) if str(i) not in taken)
        backend = domxml.add(devices, "audio", {"id": free, "type": "pulseaudio",
                                                "serverName": server})
    card = keep_card[0] if keep_card else domxml.add(devices, "sound", {"model": MODEL})
    if card.find("alias") is None:
        domxml.add(card, "alias", {"name": ALIAS})
    link = card.find("audio")
    if link is None:
        link = domxml.add(card, "audio")
    if link.get("id") != backend.get("id"):
        link.set("id", backend.get("id") or "")
    return domxml.serialize(root)


def sockets(xml: str) -> list[str]:
    """The sockets of gvtd's sound backends in a domain's XML."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return []
    devices = root.find("devices")
    return [a.get("serverName", "")[len("unix:"):] for a in _ours(devices)[1]] \
        if devices is not None else []


def check(user: str, socket: str, domains: list[str]) -> doctor.Check:
    """What only the user's session can see: whether QEMU's user reaches the socket (gvtd
    cannot enter the user's 0700 runtime directory: it has no CAP_DAC_*)."""
    from gvtd import doctor

    return doctor.Check(
        f"{names.CHECK_SOUND}{user}@{socket}", "warn",
        f"{', '.join(domains)} {'plays' if len(domains) == 1 else 'play'} sound through "
        f"{socket}, which QEMU (as {user}) must reach; only the session of that "
        "socket's user can tell whether it does.",
        "Run `gvt-client doctor` in that user's desktop session.")
