"""The shipped bus policy, activation file and polkit actions, checked by the programs that
read them: xmllint against their DTDs, dbus-daemon, and polkitd itself."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

from gvtd import names
from harness import ROOT, CallError, Client
from sysbus import POLKIT, NameWatcher, SystemBus

POLICY_DIR = ROOT / "dbus-policy"
BUSCONFIG_DTD = Path("/usr/share/xml/dbus-1/busconfig.dtd")
POLKIT_DTD = Path("/usr/share/polkit-1/policyconfig-1.dtd")
# The attributes of <allow>/<deny> that dbus-daemon(1) documents. The DTD that dbus ships
# still declares only the ones of its first versions (send, receive, own, user, ...), so
# no system bus policy in use today validates against it unchanged.
RULE_ATTRIBUTES = """send_interface send_member send_error send_broadcast send_destination
    send_destination_prefix send_type send_path send_requested_reply receive_interface
    receive_member receive_error receive_sender receive_type receive_path
    receive_requested_reply eavesdrop own own_prefix user group log max_fds min_fds""".split()


def xmllint(document: Path, dtd: Path) -> None:
    proc = subprocess.run(["xmllint", "--noout", "--nonet", "--dtdvalid", str(dtd),
                           str(document)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_bus_policy_is_valid(tmp_path: Path) -> None:
    dtd = BUSCONFIG_DTD.read_text()
    extra = "".join(f"\n          {a} CDATA #IMPLIED" for a in RULE_ATTRIBUTES)
    dtd, count = re.subn(r"(<!ATTLIST (?:allow|deny)\s+user CDATA #IMPLIED)", r"\1" + extra, dtd)
    assert count == 2, "the shipped busconfig.dtd changed: check RULE_ATTRIBUTES"
    (tmp_path / "busconfig.dtd").write_text(dtd)
    xmllint(POLICY_DIR / "io.github.gvtd1.conf", tmp_path / "busconfig.dtd")
    # and dbus-daemon itself loads it (SystemBus fails to start on a configuration error)
    SystemBus().stop()


def test_bus_policy_grants_only_what_it_should() -> None:
    """Ownership to root alone; sends to gvtd for the listed interfaces, nothing else; the
    libvirt hook's two methods to root alone."""
    tree = ET.parse(POLICY_DIR / "io.github.gvtd1.conf").getroot()
    owners = [(p.attrib, a.attrib) for p in tree.iter("policy") for a in p
              if "own" in a.attrib or "own_prefix" in a.attrib]
    assert owners == [({"user": "root"}, {"own": names.BUS_NAME})]
    sends = {(a.get("send_interface"), a.get("send_member")) for p in tree.iter("policy")
             if p.attrib == {"context": "default"}
             for a in p.iter("allow") if "send_destination" in a.attrib}
    assert all(a.get("send_destination") == names.BUS_NAME
               for a in tree.iter("allow") if "send_destination" in a.attrib)
    assert sends == {
        ("org.freedesktop.DBus.Introspectable", None), ("org.freedesktop.DBus.Peer", None),
        ("org.freedesktop.DBus.Properties", "Get"), ("org.freedesktop.DBus.Properties", "GetAll"),
        ("org.freedesktop.DBus.ObjectManager", None),
        (names.MANAGER_IFACE, None), (names.PARENT_IFACE, None), (names.VGPU_IFACE, None),
        (names.DOMAIN_IFACE, None)}
    hook = {(names.MANAGER_IFACE, "PrepareDomain"), (names.MANAGER_IFACE, "ReleaseDomain")}

    def rules(kind: str, who: dict[str, str]) -> set[tuple[str | None, str | None]]:
        return {(a.get("send_interface"), a.get("send_member")) for p in tree.iter("policy")
                if p.attrib == who for a in p.iter(kind)
                if a.get("send_destination") == names.BUS_NAME}

    assert rules("deny", {"context": "default"}) == hook
    assert rules("allow", {"user": "root"}) == hook
    assert not [d for d in tree.iter("deny") if d.get("send_destination") != names.BUS_NAME]


def test_polkit_actions_are_valid_for_polkitd() -> None:
    """xmllint against polkit's DTD, then polkitd itself reads the file (in a mount
    namespace where it is the only action file) and pkaction shows what it understood."""
    xmllint(POLICY_DIR / "io.github.gvtd1.policy", POLKIT_DTD)
    actions = Path(tempfile.mkdtemp(prefix="gvtd-actions-"))
    actions.chmod(0o755)  # polkitd reads it as its own user
    shutil.copy(POLICY_DIR / "io.github.gvtd1.policy", actions)
    bus = SystemBus()
    watcher = NameWatcher(bus.address)
    env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=bus.address)
    watcher.forget()
    polkitd = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         f'mount --bind "{actions}" /usr/share/polkit-1/actions && '
         "exec /usr/lib/polkit-1/polkitd --no-debug"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        watcher.wait_owner(POLKIT, True)
        out = subprocess.run(["pkaction", "--verbose"], env=env, capture_output=True,
                             text=True, timeout=30)
    finally:
        polkitd.terminate()
        _, err = polkitd.communicate(timeout=30)
        watcher.close()
        bus.stop()
        shutil.rmtree(actions)
    assert out.returncode == 0, out.stderr
    assert "WARNING" not in err, err
    implicit = {}
    for block in out.stdout.strip().split("\n\n"):
        head, *lines = block.splitlines()
        fields = dict(re.match(r"\s*([^:]+):\s*(.*)", line).groups() for line in lines)  # type: ignore[union-attr]
        implicit[head.rstrip(":")] = (fields["implicit any"], fields["implicit inactive"],
                                      fields["implicit active"])
    assert implicit == {
        names.ACTION_MANAGE: ("auth_admin_keep",) * 3,
        names.ACTION_VGPU: ("auth_admin_keep",) * 3,
        names.ACTION_DOMAIN: ("auth_admin", "auth_admin", "yes"),
    }


def test_activation_only_through_systemd() -> None:
    """The bus knows gvtd is activatable, hands it to gvtd.service, and cannot start it
    on its own: its Exec always fails."""
    service = configparser.ConfigParser(interpolation=None)
    service.optionxform = str  # type: ignore[assignment,method-assign]
    service.read(POLICY_DIR / "io.github.gvtd1.service")
    entry = service["D-BUS Service"]
    assert entry["Name"] == names.BUS_NAME
    assert entry["SystemdService"] == "gvtd.service"
    assert subprocess.run(entry["Exec"].split()).returncode != 0
    bus = SystemBus(servicedir=POLICY_DIR)
    client = Client(bus.address)
    try:
        activatable = client.call("ListActivatableNames", dest="org.freedesktop.DBus",
                                  path="/org/freedesktop/DBus", iface="org.freedesktop.DBus")[0]
        assert names.BUS_NAME in activatable
        try:
            client.call("Ping", iface="org.freedesktop.DBus.Peer")
            raise AssertionError("gvtd was started outside systemd")
        except CallError as e:
            assert e.name.startswith("org.freedesktop.DBus.Error.Spawn."), e
    finally:
        client.close()
        bus.stop()
