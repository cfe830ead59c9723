"""The sound edit: a pulseaudio backend on the caller's socket and an ich9 card tied to it,
valid for libvirt's schema, idempotent, and touching no sound the domain already had."""

from __future__ import annotations

from pathlib import Path

import pytest

from gvtd import names
from gvtd.virt import audio, domxml
from test_domxml_keep import DOMAINS, VIRT_MANAGER, changed, validate

ALICE = names.sound_socket(1000)
BOB = names.sound_socket(1001)


@pytest.mark.parametrize("domain", DOMAINS)
def test_wired_xml_is_valid_and_idempotent(domain: str, tmp_path: Path) -> None:
    xml = DOMAINS[domain]
    wired = audio.wire(xml, ALICE)
    validate(wired, tmp_path)
    assert audio.wire(wired, ALICE) == wired
    assert audio.sockets(wired) == [ALICE] and audio.sockets(xml) == []
    if "\n" in xml.strip():  # a pretty document: lines are added, none changed
        assert all(line.startswith("+") for line in changed(xml, wired))
    assert audio.wire(wired, None) == domxml.serialize(domxml.parse(xml))


def test_the_domains_own_sound_stays() -> None:
    """virt-manager's ich9 card on SPICE's audio (id 1) keeps it; ours is id 2."""
    wired = audio.wire(VIRT_MANAGER, ALICE)
    added = [line[0] + line[1:].strip() for line in changed(VIRT_MANAGER, wired)]
    assert added == [
        f"+<audio id=\"2\" type=\"pulseaudio\" serverName=\"unix:{ALICE}\"/>",
        "+<sound model=\"ich9\">",
        "+<alias name=\"ua-gvtd-sound\"/>",
        "+<audio id=\"2\"/>",
        "+</sound>",
    ]


def test_another_caller_moves_it_to_their_socket() -> None:
    wired = audio.wire(VIRT_MANAGER, ALICE)
    moved = audio.wire(wired, BOB)
    assert audio.sockets(moved) == [BOB]
    assert [x for x in domxml.diff(wired, moved, "w").splitlines()[2:] if x[:1] in "+-"] == [
        f"-    <audio id=\"2\" type=\"pulseaudio\" serverName=\"unix:{ALICE}\"/>",
        f"+    <audio id=\"2\" type=\"pulseaudio\" serverName=\"unix:{BOB}\"/>"]


def test_a_pulseaudio_backend_of_the_users_own_is_not_ours() -> None:
    mine = VIRT_MANAGER.replace("<audio id='1' type='spice'/>",
                                "<audio id='1' type='pulseaudio' serverName='/tmp/x'/>")
    assert audio.sockets(mine) == []
    assert audio.wire(audio.wire(mine, ALICE), None) == domxml.serialize(domxml.parse(mine))


def test_libvirts_own_layout_is_recognised() -> None:
    """After a define libvirt puts the card before the backend and gives it an address;
    the next attach changes nothing and the next detach takes both out."""
    stored = domxml.serialize(domxml.parse(audio.wire(VIRT_MANAGER, ALICE))).replace(
        '<audio id="2"/>\n',
        '<audio id="2"/>\n      <address type="pci" domain="0x0000" bus="0x00" slot="0x1c" '
        'function="0x0"/>\n')
    assert audio.wire(stored, ALICE) == stored
    assert "ua-gvtd-sound" not in audio.wire(stored, None)
    assert audio.sockets(audio.wire(stored, None)) == []
