"""systemd-logind for tests: python-dbusmock's logind template on a private bus that gvtd
takes for the system bus (DBUS_SYSTEM_BUS_ADDRESS). Waits on signals, never on sleeps."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import Message, Variant

from harness import TIMEOUT, Client, DBusDaemon, plain

LOGIND = "org.freedesktop.login1"
LOGIND_PATH = "/org/freedesktop/login1"
MANAGER = "org.freedesktop.login1.Manager"
SESSION = "org.freedesktop.login1.Session"
USER = "org.freedesktop.login1.User"
MOCK = "org.freedesktop.DBus.Mock"
DBUS = "org.freedesktop.DBus"


@pytest.fixture
def system_bus(monkeypatch: pytest.MonkeyPatch) -> Iterator[DBusDaemon]:
    """A test's own system bus, for its Logind: gvtd started from the test connects to it
    for logind (DBUS_SYSTEM_BUS_ADDRESS)."""
    bus = DBusDaemon()
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", bus.address)
    yield bus
    bus.stop()


class Logind:
    """The mock's controls and call log, on a bus of its own (the "system bus")."""

    def __init__(self, bus: DBusDaemon, delay_max_usec: int | None = None,
                 start: bool = True) -> None:
        self.bus = bus
        self.proc: subprocess.Popen[bytes] | None = None
        # Root: the mock's controls and call log are the test's, not a caller of gvtd's.
        self.client = Client(bus.address, uid=0)
        for rule in (f"type='signal',sender='{LOGIND}'",
                     f"type='signal',sender='{DBUS}',member='NameOwnerChanged',"
                     f"arg0='{LOGIND}'"):
            self.client.call("AddMatch", "s", [rule], dest=DBUS, path="/org/freedesktop/DBus",
                             iface=DBUS)
        self.delay_max_usec = delay_max_usec
        if start:
            self.start()

    def start(self) -> None:
        """Run the mock and return once it owns org.freedesktop.login1."""
        env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=self.bus.address)
        mark = self.last_signal()  # a restart waits for its own NameOwnerChanged
        self.proc = subprocess.Popen([sys.executable, "-m", "dbusmock", "--system",
                                      "--template", "logind"], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.client.wait_for(lambda m: m.member == "NameOwnerChanged"
                             and m.body[0] == LOGIND and m.body[2] != "", after=mark)
        if self.delay_max_usec is not None:
            self.mock("AddProperty", "ssv",
                      [MANAGER, "InhibitDelayMaxUSec", Variant("t", self.delay_max_usec)])

    def quit(self) -> None:
        """End the mock (logind leaving the bus) and return once its name is gone."""
        assert self.proc is not None
        mark = self.last_signal()
        self.proc.terminate()
        self.proc.wait(TIMEOUT)
        self.client.wait_for(lambda m: m.member == "NameOwnerChanged"
                             and m.body[0] == LOGIND and m.body[2] == "", after=mark)

    def owner(self) -> str:
        """logind's unique name now."""
        return self.client.call("GetNameOwner", "s", [LOGIND], dest=DBUS,
                                path="/org/freedesktop/DBus", iface=DBUS)[0]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(TIMEOUT)
        self.client.close()

    def add_session(self, sid: str, uid: int, user: str, kind: str, display: str = "",
                    runtime: Path | None = None, active: bool = True,
                    remote: bool = False) -> str:
        """A session on seat0 of type kind (x11, wayland, tty); returns its path, which
        remove_session takes away again."""
        path: str = self.mock("AddSession", "ssusb", [sid, "seat0", uid, user, active])[0]
        self.client.call("UpdateProperties", "sa{sv}", [SESSION, {
            "Type": Variant("s", kind), "Display": Variant("s", display),
            "Remote": Variant("b", remote)}], dest=LOGIND, path=path, iface=MOCK)
        if runtime is not None:
            self.client.call("UpdateProperties", "sa{sv}", [USER, {
                "RuntimePath": Variant("s", str(runtime))}], dest=LOGIND,
                path=f"{LOGIND_PATH}/user/{uid}", iface=MOCK)
        return path

    def remove_session(self, path: str) -> None:
        self.mock("RemoveObject", "o", [path])

    def mock(self, member: str, signature: str = "", body: list[Any] | None = None) -> Any:
        return self.client.call(member, signature, body, dest=LOGIND, path=LOGIND_PATH,
                                iface=MOCK)

    def prepare_for_sleep(self, sleeping: bool) -> Message:
        """Emit PrepareForSleep as logind does; returns the signal as seen on the bus."""
        before = self.client.signals[-1] if self.client.signals else None
        self.mock("EmitSignal", "sssav", [MANAGER, "PrepareForSleep", "b",
                                          [Variant("b", sleeping)]])
        return self.client.wait_for(lambda m: m.member == "PrepareForSleep", after=before)

    def inhibitors(self) -> list[tuple[str, str, str, str]]:
        """(what, who, why, mode) of every lock logind holds now."""
        rows = self.client.call("ListInhibitors", dest=LOGIND, path=LOGIND_PATH,
                                iface=MANAGER)[0]
        return [tuple(r[:4]) for r in rows]

    def inhibit_calls(self) -> list[list[str]]:
        """The arguments of every Inhibit call so far, oldest first."""
        return [plain(args) for _, args in self.mock("GetMethodCalls", "s", ["Inhibit"])[0]]

    def wait_inhibit(self, mode: str, after: Message | None = None) -> list[str]:
        """Wait for an Inhibit call with this mode (MethodCalled signal); its arguments."""
        msg = self.client.wait_for(lambda m: m.member == "MethodCalled"
                                   and m.body[0] == "Inhibit"
                                   and plain(m.body[1])[3] == mode, after=after)
        return plain(msg.body[1])

    def last_signal(self) -> Message | None:
        return self.client.signals[-1] if self.client.signals else None
