"""The shipped bus policy, activation file and polkit actions, checked by the programs that
read them: xmllint against their DTDs, dbus-daemon, and polkitd itself."""

from __future__ import annotations

import configparser
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

from gvtd import names
from harness import ROOT, CallError, Client
from sysbus import NOBODY, POLKIT, NameWatcher, SystemBus

POLICY_DIR = ROOT / "dbus-policy"
RULES = POLICY_DIR / "50-io.github.gvtd1.rules"
LIBVIRT_GID = 64055  # for /etc/group in polkitd's namespace, when the host has no libvirt
OTHER_USER = "daemon"  # a user in /etc/passwd, in no group libvirt
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


class Polkitd:
    """The real polkitd on a private system bus, in a mount namespace where the shipped
    actions and rules are the only ones, and /etc/group may say who is in group libvirt."""

    def __init__(self, libvirt_members: list[str] = ()) -> None:  # type: ignore[assignment]
        self.dir = Path(tempfile.mkdtemp(prefix="gvtd-polkit-"))
        self.dir.chmod(0o755)  # polkitd reads it as its own user
        for sub in ("actions", "rules", "etc-rules"):
            (self.dir / sub).mkdir(mode=0o755)
        shutil.copy(POLICY_DIR / "io.github.gvtd1.policy", self.dir / "actions")
        shutil.copy(RULES, self.dir / "rules")
        lines = Path("/etc/group").read_text().splitlines()
        if not any(line.startswith("libvirt:") for line in lines):
            lines.append(f"libvirt:x:{LIBVIRT_GID}:")
        self.libvirt_gid = int(next(line for line in lines
                                    if line.startswith("libvirt:")).split(":")[2])
        (self.dir / "group").write_text("\n".join(
            f"libvirt:x:{self.libvirt_gid}:{','.join(libvirt_members)}"
            if line.startswith("libvirt:") else line for line in lines) + "\n")
        (self.dir / "group").chmod(0o644)
        self.bus = SystemBus()
        self.watcher = NameWatcher(self.bus.address)
        self.env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=self.bus.address)
        self.watcher.forget()
        d = self.dir
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c",
             f'mount --bind "{d}/actions" /usr/share/polkit-1/actions && '
             f'mount --bind "{d}/rules" /usr/share/polkit-1/rules.d && '
             f'mount --bind "{d}/etc-rules" /etc/polkit-1/rules.d && '
             f'mount --bind "{d}/group" /etc/group && '
             "exec /usr/lib/polkit-1/polkitd"],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.watcher.wait_owner(POLKIT, True)

    def run(self, *cmd: str) -> subprocess.CompletedProcess[str]:
        """A command (as root) on polkitd's bus."""
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=30,
                              cwd="/")

    def allowed(self, action: str, uid: int, groups: list[int] = ()) -> bool:  # type: ignore[assignment]
        """What polkitd answers, without interaction, about a process of uid (with those
        supplementary groups): root asks with pkcheck, as gvtd asks about its caller."""
        subject = subprocess.Popen(
            ["setpriv", f"--reuid={uid}", f"--regid={uid}",
             f"--groups={','.join(map(str, groups))}" if groups else "--clear-groups",
             "sh", "-c", "echo dropped; exec sleep 600"], cwd="/", stdout=subprocess.PIPE,
            text=True)
        try:
            assert subject.stdout is not None
            # the uid is the subject's only once setpriv has dropped root: ask after that
            assert subject.stdout.readline() == "dropped\n"
            p = self.run("pkcheck", "--action-id", action, "--process", str(subject.pid))
        finally:
            subject.kill()
            subject.communicate()
        assert p.returncode in (0, 1, 2), p.stderr  # yes; no; needs authentication
        return p.returncode == 0

    def stop(self) -> str:
        """Stop polkitd; its log."""
        self.proc.terminate()
        _, err = self.proc.communicate(timeout=30)
        self.watcher.close()
        self.bus.stop()
        shutil.rmtree(self.dir)
        return err


def test_polkit_actions_are_valid_for_polkitd() -> None:
    """xmllint against polkit's DTD, then polkitd itself reads the file (in a mount
    namespace where it is the only action file) and pkaction shows what it understood:
    no action is granted to anyone by default (gvtd is root before libvirt: no confused
    deputy)."""
    xmllint(POLICY_DIR / "io.github.gvtd1.policy", POLKIT_DTD)
    polkitd = Polkitd()
    try:
        out = polkitd.run("pkaction", "--verbose")
    finally:
        err = polkitd.stop()
    assert out.returncode == 0, out.stderr
    assert "WARNING" not in err, err
    implicit = {}
    for block in out.stdout.strip().split("\n\n"):
        head, *lines = block.splitlines()
        fields = dict(re.match(r"\s*([^:]+):\s*(.*)", line).groups() for line in lines)  # type: ignore[union-attr]
        implicit[head.rstrip(":")] = (fields["implicit any"], fields["implicit inactive"],
                                      fields["implicit active"])
    assert not [a for a, defaults in implicit.items() if "yes" in defaults]
    assert implicit == {
        names.ACTION_MANAGE: ("auth_admin_keep",) * 3,
        names.ACTION_VGPU: ("auth_admin_keep",) * 3,
        names.ACTION_DOMAIN: ("auth_admin_keep",) * 3,
    }


def test_polkit_rule_grants_the_domain_action_to_group_libvirt() -> None:
    """polkitd loads 50-io.github.gvtd1.rules (it is JavaScript polkitd runs) and, as
    libvirt's own rule does for qemu:///system, grants the domain action, and only that,
    to a member of group libvirt; a non-member is refused without authenticating."""
    polkitd = Polkitd(libvirt_members=["nobody"])
    try:
        member = polkitd.allowed(names.ACTION_DOMAIN, NOBODY, [polkitd.libvirt_gid])
        member_other = [polkitd.allowed(a, NOBODY, [polkitd.libvirt_gid])
                        for a in (names.ACTION_MANAGE, names.ACTION_VGPU)]
        stranger = polkitd.allowed(names.ACTION_DOMAIN, pwd.getpwnam(OTHER_USER).pw_uid)
    finally:
        err = polkitd.stop()
    assert "Error" not in err and "WARNING" not in err, err
    assert member and member_other == [False, False] and not stranger, err


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
