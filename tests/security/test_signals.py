"""Signals come from whom they claim: gvtd acts on PrepareForSleep only from logind's current
unique name and on NameOwnerChanged only from the bus driver.

gvtd (as root, over the emulated host) and python-dbusmock's logind share a system-type bus
with the system bus's default policy, which lets everyone send signals to everyone, as a
real system bus does. Forged signals come from tests/security/forger.py, run as nobody
(setpriv) or as root. A signal sent straight to a connection (a unicast) reaches it
whatever its match rules say, so each forger also sends its signal to each of gvtd's
connections: the debug line gvtd logs for it shows that gvtd has read everything the
forger sent before it, and then the state is checked. No sleeps: every wait is on a log
line, a signal or a reply.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import pytest
from dbus_fast import Message

from gvtd import names
from gvtd.suspend import DELAY_WHY
from harness import ROOT, TIMEOUT, Simulation, plain
from logind import Logind
from sysbus import NOBODY, HERE, SystemBus, run_as

IDLE = "11111111-2222-4333-8444-555555555555"
DELAY = ("sleep", "gvtd", DELAY_WHY, "delay")
DBUS = "org.freedesktop.DBus"


class StderrLines:
    """gvtd's stderr as it comes: a thread drains the pipe (gvtd never blocks on it) and
    wait_for wakes on each new line."""

    def __init__(self, pipe: IO[bytes]) -> None:
        self.lines: list[str] = []
        self.closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._thread.start()

    def _read(self, pipe: IO[bytes]) -> None:
        for raw in pipe:
            with self._cond:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def wait_for(self, text: str, timeout: float = TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        with self._cond:
            seen = 0
            while True:
                for line in self.lines[seen:]:
                    if text in line:
                        return line
                seen = len(self.lines)
                remaining = deadline - time.monotonic()
                if self.closed or remaining <= 0:
                    raise AssertionError(f"gvtd never logged {text!r}")
                self._cond.wait(remaining)


@dataclass
class World:
    bus: SystemBus
    logind: Logind
    sim: Simulation
    log: StderrLines

    def manager(self) -> dict[str, Any]:
        return self.sim.client.props(names.ROOT_PATH, names.MANAGER_IFACE)

    def bus_call(self, member: str, signature: str = "", body: list[Any] | None = None) -> Any:
        """One call to the bus driver, its first return value."""
        return self.sim.client.call(member, signature, body, dest=DBUS,
                                    path="/org/freedesktop/DBus", iface=DBUS)[0]

    def connections_of(self, pid: int) -> list[str]:
        """The unique names of every connection the process pid has on the bus."""
        every = self.bus_call("ListNames")
        return [n for n in every if n.startswith(":")
                and self.bus_call("GetConnectionUnixProcessID", "s", [n]) == pid]

    def gvtd_connections(self) -> list[str]:
        """Every unique name of gvtd's process: its API connection and its suspend one."""
        found = self.connections_of(self.bus_call("GetConnectionUnixProcessID", "s",
                                                  [names.BUS_NAME]))
        assert len(found) >= 2, found  # the API and the system bus for logind
        return found

    def removes(self) -> list[str]:
        return [path for path, _, _ in self.sim.write_log() if path.endswith("/remove")]

    def assert_untouched(self) -> None:
        """Suspend handling on, the delay lock held, the idle vGPU in place."""
        m = self.manager()
        assert m["Suspend"] == "on", m["Suspend"]
        assert not [p for p in m["Problems"] if p[0].startswith("suspend:")], m["Problems"]
        assert self.logind.inhibitors() == [DELAY]
        assert self.sim.client.vgpus()["idle"]["State"] == "active"
        assert self.removes() == []


def changed(m: Message, path: str = names.ROOT_PATH) -> dict[str, Any]:
    """The changed properties of a PropertiesChanged signal on path ({} for others)."""
    if m.member != "PropertiesChanged" or m.path != path:
        return {}
    return plain(m.body[1])


def wait_suspend(world: World, state: str, after: Message | None = None) -> None:
    """Wait until Manager.Suspend is state: now (without `after`) or by a later signal."""
    if after is None and world.manager()["Suspend"] == state:
        return
    world.sim.client.wait_for(lambda m: changed(m).get("Suspend") == state, after=after)


def last(world: World) -> Message | None:
    return world.sim.client.signals[-1] if world.sim.client.signals else None


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    bus = SystemBus()
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", bus.address)
    logind = sim = None
    try:
        logind = Logind(bus)  # type: ignore[arg-type]
        read, write = os.pipe()
        log = StderrLines(os.fdopen(read, "rb"))
        try:
            sim = Simulation(bus, extra=["--system", "--log-level", "debug"],  # type: ignore[arg-type]
                             stderr=write)
        finally:
            os.close(write)  # gvtd holds its own copy: the reader ends when gvtd does
        w = World(bus, logind, sim, log)
        if not w.manager()["LibvirtConnected"]:  # teardown needs libvirt's running domains
            sim.client.wait_for(lambda m: changed(m).get("LibvirtConnected"))
        sim.client.define(name="idle", type="i915-GVTg_V5_8", uuid=IDLE)
        wait_suspend(w, "on")
        w.assert_untouched()
        yield w
    finally:
        if sim is not None:
            sim.stop()
        if logind is not None:
            logind.stop()
        bus.stop()


def run_forger(world: World, signals: list[str], uid: int, to: list[str],
               broadcast: bool = False) -> str:
    """Run forger.py as uid, sending signals to the unique names to (and broadcast);
    returns the forger's unique name once the bus has routed them all."""
    cmd = [sys.executable, str(HERE / "forger.py"), world.bus.address, *signals,
           *(a for n in to for a in ("--to", n))]
    if broadcast:
        cmd.append("--broadcast")
    return run_as(cmd, uid)["unique_name"]


def forge(world: World, signals: list[str], uid: int, broadcast: bool = False) -> str:
    """Forge signals to every gvtd connection (and broadcast), and wait until gvtd logged
    ignoring the last one; returns the forger's unique name."""
    forger = run_forger(world, signals, uid, world.gvtd_connections(), broadcast)
    member = "PrepareForSleep" if signals[-1] == "sleep" else "NameOwnerChanged"
    try:
        world.log.wait_for(f"Ignored a {member} signal from {forger}:")
    except AssertionError:
        world.assert_untouched()  # says what gvtd did instead, if it acted on the signal
        raise
    return forger


@pytest.mark.parametrize("uid", [NOBODY, 0], ids=["nobody", "root"])
def test_prepare_for_sleep_from_another_connection_is_ignored(world: World, uid: int) -> None:
    """PrepareForSleep(true) broadcast by someone who is not logind, as nobody or even as
    root, and the same signal sent straight to gvtd: no vGPU goes, the lock stays."""
    forger = forge(world, ["sleep"], uid, broadcast=True)
    world.assert_untouched()
    line = world.log.wait_for(f"from {forger}:")
    assert f"only org.freedesktop.login1 ({world.logind.owner()})" in line
    assert sum(f"from {forger}:" in x for x in world.log.lines) == 1  # logged once


def test_unicast_name_owner_changed_is_ignored(world: World) -> None:
    """A NameOwnerChanged saying logind left, sent straight to gvtd by nobody: gvtd keeps
    its lock and its Suspend state."""
    forge(world, [f"left={world.logind.owner()}"], NOBODY)
    world.assert_untouched()


def test_forged_handover_does_not_make_the_forger_logind(world: World) -> None:
    """A forged NameOwnerChanged handing logind's name to the forger, then the forger's
    PrepareForSleep(true): gvtd believes neither."""
    forger = forge(world, [f"handover={world.logind.owner()}", "sleep"], NOBODY)
    world.assert_untouched()
    world.log.wait_for(f"Ignored a NameOwnerChanged signal from {forger}:")


def test_genuine_prepare_for_sleep_still_works(world: World) -> None:
    """logind's own PrepareForSleep passes the sender check and the match rule."""
    mark = last(world)
    world.logind.prepare_for_sleep(True)
    wait_suspend(world, "sleeping", after=mark)
    assert world.logind.inhibitors() == []
    assert [p.split("/")[-2] for p in world.removes()] == [IDLE]
    mark = last(world)
    world.logind.prepare_for_sleep(False)
    wait_suspend(world, "on", after=mark)
    assert world.logind.inhibitors() == [DELAY]
    assert world.sim.client.vgpus()["idle"]["State"] == "active"


def test_logind_leaving_and_coming_back_is_followed(world: World) -> None:
    """The bus driver's NameOwnerChanged is still followed: logind leaving turns suspend
    handling off, a new logind (a new unique name) gets the lock again, and its
    PrepareForSleep is obeyed."""
    old = world.logind.owner()
    mark = last(world)
    world.logind.quit()
    wait_suspend(world, "off", after=mark)
    (problem,) = [p for p in world.manager()["Problems"] if p[0] == "suspend:logind"]
    assert "left the system bus" in problem[2]

    mark = last(world)
    world.logind.start()
    assert world.logind.owner() != old
    wait_suspend(world, "on", after=mark)
    assert world.logind.inhibitors() == [DELAY]
    mark = last(world)
    world.logind.prepare_for_sleep(True)
    wait_suspend(world, "sleeping", after=mark)
    assert [p.split("/")[-2] for p in world.removes()] == [IDLE]


def test_gvt_client_monitor_believes_only_gvtd_and_the_bus(world: World) -> None:
    """gvt-client monitor, sent "gvtd left" and a change of Manager.State by nobody: it
    neither quits nor shows the change, and still shows gvtd's own next change."""
    proc = subprocess.Popen([sys.executable, "-m", "gvtd.client.main", "--system", "monitor"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        for line in proc.stdout:
            if line.startswith("-- watching"):
                break
        else:
            raise AssertionError(f"monitor ended before watching: {proc.stderr.read()}")
        gvtd = world.bus_call("GetNameOwner", "s", [names.BUS_NAME])
        run_forger(world, [f"gvtd-gone={gvtd}", "degraded"], NOBODY,
                   world.connections_of(proc.pid))
        world.sim.client.define(name="late", type="i915-GVTg_V5_8", start="manual")
        lines = []
        for line in proc.stdout:  # gvtd's change comes after what the forger sent
            lines.append(line)
            if line.startswith("vgpu late: added"):
                break
        else:
            raise AssertionError(f"monitor ended: {lines} {proc.stderr.read()}")
        assert not [x for x in lines if "degraded" in x], lines
        proc.send_signal(signal.SIGINT)
        assert proc.wait(TIMEOUT) == 0
        assert proc.stderr.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(TIMEOUT)
