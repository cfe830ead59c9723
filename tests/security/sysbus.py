"""A system-type dbus-daemon that enforces the shipped policy, a mocked polkit on it, a bus
monitor, and callers running as other uids: the parts of the authorization tests.

The bus configuration is the system bus's default policy (as Debian's system.conf has it)
plus an <include> of dbus-policy/io.github.gvtd1.conf, and a test-only block for the two
names a test needs besides gvtd's: the simulation's supervisor and polkit (dbusmock).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from gvtd import names
from harness import ROOT, TIMEOUT, Client

NOBODY = 65534
HERE = Path(__file__).resolve().parent
POLKIT = "org.freedesktop.PolicyKit1"
POLKIT_PATH = "/org/freedesktop/PolicyKit1/Authority"
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
        super().__init__(address)
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


class Monitor:
    """A bus monitor (BecomeMonitor) that records the method calls matching its rules."""

    def __init__(self, address: str, rules: list[str]) -> None:
        self.loop = asyncio.new_event_loop()
        self.calls: list[Message] = []
        self._seen = asyncio.Event()

        async def start() -> MessageBus:
            bus = await MessageBus(bus_address=address).connect()
            bus.add_message_handler(self._on_message)
            reply = await bus.call(Message(
                destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus.Monitoring", member="BecomeMonitor",
                signature="asu", body=[rules, 0]))
            assert reply is not None and reply.message_type is MessageType.METHOD_RETURN, reply
            return bus

        self.bus = self.loop.run_until_complete(start())

    def _on_message(self, msg: Message) -> bool | None:
        if msg.message_type is MessageType.METHOD_CALL:
            self.calls.append(msg)
            self._seen.set()
            return True  # a monitor never answers
        return None

    def wait_calls(self, count: int, timeout: float = TIMEOUT) -> list[Message]:
        deadline = time.monotonic() + timeout
        while len(self.calls) < count:
            self._seen.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"saw {len(self.calls)} of {count} calls")
            try:
                self.loop.run_until_complete(asyncio.wait_for(self._seen.wait(), remaining))
            except asyncio.TimeoutError:
                continue
        return self.calls

    def close(self) -> None:
        self.bus.disconnect()
        self.loop.close()


def run_caller(address: str, vgpu: str, members: list[str], uid: int = 0,
               interactive: bool = False) -> dict[str, Any]:
    """Run caller.py as uid (setpriv drops root for any other uid) and return its report."""
    cmd = [sys.executable, str(HERE / "caller.py"), address, vgpu, *members]
    if interactive:
        cmd.append("--interactive")
    if uid != 0:
        cmd = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *cmd]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [
        str(ROOT), os.environ.get("PYTHONPATH", "")])))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=env,
                          cwd="/")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def manager_methods(client: Client) -> list[str]:
    """The Manager methods gvtd exports now, from its introspection."""
    import xml.etree.ElementTree as ET

    xml = client.call("Introspect", iface="org.freedesktop.DBus.Introspectable")[0]
    for iface in ET.fromstring(xml).iter("interface"):
        if iface.get("name") == names.MANAGER_IFACE:
            return [m.get("name", "") for m in iface.iter("method")]
    raise AssertionError("gvtd exports no Manager")
