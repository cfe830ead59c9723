"""A system-type dbus-daemon that enforces the shipped policy, a mocked polkit on it, a bus
monitor, and callers running as other uids: the parts of the authorization tests.

The bus configuration is the system bus's default policy (as Debian's system.conf has it)
plus an <include> of dbus-policy/io.github.gvtd1.conf, and test-only blocks for the names a
test needs besides gvtd's: the simulation's supervisor, polkit and logind (dbusmock).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dbus_fast import Message

from gvtd import names
from harness import (POLKIT, POLKIT_PATH, ROOT, STRANGER, TIMEOUT, Client,  # noqa: F401
                     Monitor, Simulation)

NOBODY = STRANGER
HERE = Path(__file__).resolve().parent
MOCK_IFACE = "org.freedesktop.DBus.Mock"

CONFIG = """\
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  {servicedir}
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Properties"/>
  </policy>
  <policy user="root">
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Monitoring"/>
  </policy>

  <include>{shipped}</include>

  <!-- test only: the simulation's supervisor and the mocked polkit, both run as root -->
  <policy user="root">
    <allow own="io.github.gvtd1.Simulator"/>
    <allow send_destination="io.github.gvtd1.Simulator"/>
    <allow own="org.freedesktop.PolicyKit1"/>
    <allow send_destination="org.freedesktop.PolicyKit1"/>
  </policy>
  <!-- test only: systemd-logind (dbusmock) runs as root, and root calls it -->
  <policy user="root">
    <allow own="org.freedesktop.login1"/>
    <allow send_destination="org.freedesktop.login1"/>
  </policy>
  <!-- test only: the real polkitd, to check the shipped actions, runs as its own user -->
  <policy user="polkitd">
    <allow own="org.freedesktop.PolicyKit1"/>
  </policy>
</busconfig>
"""


# In place of the shipped policy, for tests of gvtd's own gate: root owns the name and
# everyone may send gvtd anything, so whatever is refused was refused by gvtd.
OPEN_POLICY = """\
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <policy user="root"><allow own="io.github.gvtd1"/></policy>
  <policy context="default"><allow send_destination="io.github.gvtd1"/></policy>
</busconfig>
"""


class SystemBus:
    """A private system-type bus that enforces dbus-policy/io.github.gvtd1.conf (or, with
    shipped=False, lets everyone call gvtd: only gvtd's gate then decides)."""

    def __init__(self, servicedir: Path | None = None, shipped: bool = True) -> None:
        # World-searchable, so that callers running as another uid reach the socket.
        self.dir = Path(tempfile.mkdtemp(prefix="gvtd-sysbus-"))
        self.dir.chmod(0o755)
        socket = self.dir / "system_bus_socket"
        self.config = self.dir / "system.conf"
        policy = ROOT / "dbus-policy" / "io.github.gvtd1.conf"
        if not shipped:
            policy = self.dir / "open.conf"
            policy.write_text(OPEN_POLICY)
        self.config.write_text(CONFIG.format(
            socket=socket, shipped=policy,
            servicedir=f"<servicedir>{servicedir}</servicedir>" if servicedir else ""))
        # Its log goes to a file: a pipe nobody reads fills up under a burst (a line per
        # refused call) and blocks the bus.
        self.log = self.dir / "dbus-daemon.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                ["dbus-daemon", f"--config-file={self.config}", "--nofork", "--nopidfile",
                 "--print-address=1"], stdout=subprocess.PIPE, stderr=log, text=True)
        assert self.proc.stdout is not None
        self.address = self.proc.stdout.readline().strip()
        if not self.address:
            raise RuntimeError(f"dbus-daemon refused the configuration: {self.log.read_text()}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(TIMEOUT)
        for f in self.dir.iterdir():
            f.unlink()
        self.dir.rmdir()


class NameWatcher(Client):
    """A root client that sees every NameOwnerChanged, to wait for a name to come or go."""

    def __init__(self, address: str) -> None:
        super().__init__(address, uid=0)  # root: the test's own watcher, not a caller
        self.call("AddMatch", "s", ["type='signal',sender='org.freedesktop.DBus',"
                                    "member='NameOwnerChanged'"],
                  dest="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                  iface="org.freedesktop.DBus")

    def owner(self, name: str) -> str:
        try:
            return self.call("GetNameOwner", "s", [name], dest="org.freedesktop.DBus",
                             path="/org/freedesktop/DBus", iface="org.freedesktop.DBus")[0]
        except Exception:
            return ""

    def forget(self) -> None:
        """Drop the signals seen so far: call before starting or stopping an owner."""
        self.signals.clear()

    def wait_owner(self, name: str, present: bool) -> None:
        def changed(m: Message) -> bool:
            return m.member == "NameOwnerChanged" and m.body[0] == name and \
                bool(m.body[2]) == present

        if bool(self.owner(name)) != present:
            self.wait_for(changed)


class PolkitMock:
    """python-dbusmock's polkitd template on the bus; allow() sets what it grants."""

    def __init__(self, bus: SystemBus, names_: NameWatcher) -> None:
        self.names = names_
        env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=bus.address)
        names_.forget()
        self.proc = subprocess.Popen([sys.executable, "-m", "dbusmock", "--system",
                                      "--template", "polkitd"], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        names_.wait_owner(POLKIT, True)

    def allow(self, actions: list[str]) -> None:
        self.names.call("SetAllowed", "as", [actions], dest=POLKIT, path=POLKIT_PATH,
                        iface=MOCK_IFACE)

    def stop(self) -> None:
        self.names.forget()
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(TIMEOUT)
        self.names.wait_owner(POLKIT, False)


@contextmanager
def policed(shipped: bool = True) -> Iterator[tuple[SystemBus, Simulation, PolkitMock]]:
    """gvtd --simulate as root serving a system-type bus (with the shipped policy, or with
    shipped=False only gvtd's gate), which is also its system bus, and python-dbusmock's
    polkit there, which the test sets (the harness's own polkit is left out)."""
    bus = SystemBus(shipped=shipped)
    saved = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS")
    os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = bus.address
    sim = watcher = polkit = None
    try:
        sim = Simulation(bus, extra=["--system"], polkit=False)  # type: ignore[arg-type]
        watcher = NameWatcher(bus.address)
        polkit = PolkitMock(bus, watcher)
        yield bus, sim, polkit
    finally:
        if polkit is not None:
            polkit.stop()
        if watcher is not None:
            watcher.close()
        if sim is not None:
            sim.stop()
        if saved is None:
            os.environ.pop("DBUS_SYSTEM_BUS_ADDRESS", None)
        else:
            os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = saved
        bus.stop()


def run_as(cmd: list[str], uid: int) -> dict[str, Any]:
    """Run one of this directory's scripts as uid (setpriv drops root for any other uid),
    with gvtd importable, and return the JSON report it prints."""
    if uid != 0:
        cmd = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *cmd]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [
        str(ROOT), os.environ.get("PYTHONPATH", "")])))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=env,
                          cwd="/")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def run_caller(address: str, vgpu: str, members: list[str], uid: int = 0,
               interactive: bool = False) -> dict[str, Any]:
    """Run caller.py as uid and return its report."""
    cmd = [sys.executable, str(HERE / "caller.py"), address, vgpu, *members]
    if interactive:
        cmd.append("--interactive")
    return run_as(cmd, uid)


def manager_methods(client: Client) -> list[str]:
    """The Manager methods gvtd exports now, from its introspection."""
    import xml.etree.ElementTree as ET

    xml = client.call("Introspect", iface="org.freedesktop.DBus.Introspectable")[0]
    for iface in ET.fromstring(xml).iter("interface"):
        if iface.get("name") == names.MANAGER_IFACE:
            return [m.get("name", "") for m in iface.iter("method")]
    raise AssertionError("gvtd exports no Manager")
