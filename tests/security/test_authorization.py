"""Who may change the host, on a bus that enforces the shipped policy.

gvtd (as root, over the emulated kernel) serves a system-type bus that loads
dbus-policy/io.github.gvtd1.conf; callers run as root or as nobody (setpriv); polkit is
python-dbusmock's polkitd, granting everything, nothing, or absent from the bus. Every
mutating Manager method is called by each kind of caller; every refusal must leave the
emulated /sys (the kernel's write log) and /etc (the configuration directory) untouched.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from gvtd import names
from harness import Simulation, tree_snapshot
from sysbus import NOBODY, POLKIT, Monitor, NameWatcher, PolkitMock, SystemBus, \
    manager_methods, run_caller

READS = {"Diagnose"}
# What polkit is asked, in order, for each method.
ACTIONS = {
    "Define": [names.ACTION_MANAGE], "Undefine": [names.ACTION_MANAGE],
    "Reload": [names.ACTION_MANAGE],
    "CreateVGPU": [names.ACTION_VGPU], "RemoveVGPU": [names.ACTION_VGPU],
    "StartDomain": [names.ACTION_DOMAIN], "StopDomain": [names.ACTION_DOMAIN],
    "AttachVGPU": [names.ACTION_DOMAIN], "DetachVGPU": [names.ACTION_DOMAIN],
    "TuneDomain": [names.ACTION_DOMAIN],
    # a vGPU definition and a domain: both
    "NewDomain": [names.ACTION_MANAGE, names.ACTION_DOMAIN],
}
# The libvirt hook's: root's alone, whatever polkit says (tests/security/test_hook_methods.py)
ROOT_ONLY = {"PrepareDomain", "ReleaseDomain"}
# In the order a permitted caller makes them, so that each one can succeed.
ORDER = ["Define", "CreateVGPU", "StartDomain", "StopDomain", "PrepareDomain",
         "ReleaseDomain", "AttachVGPU", "DetachVGPU", "TuneDomain",
         "RemoveVGPU", "NewDomain", "Reload", "Undefine"]
# Methods whose success the permitted run checks; the domain methods need libvirt's test
# driver to cooperate, so for them the matrix checks only that the gate let them through.
MUST_SUCCEED = {"Define", "CreateVGPU", "RemoveVGPU", "Reload", "Undefine"}
SHARED = "shared"  # defined by root beforehand: a refused CreateVGPU would otherwise work


@dataclass
class World:
    bus: SystemBus
    sim: Simulation
    watcher: NameWatcher
    polkit: PolkitMock | None

    def start_polkit(self) -> PolkitMock:
        if self.polkit is None:
            self.polkit = PolkitMock(self.bus, self.watcher)
        return self.polkit

    def stop_polkit(self) -> None:
        if self.polkit is not None:
            self.polkit.stop()
            self.polkit = None


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    bus = SystemBus()
    mp = pytest.MonkeyPatch()
    mp.setenv("DBUS_SYSTEM_BUS_ADDRESS", bus.address)
    sim = watcher = None
    w = None
    try:
        sim = Simulation(bus, extra=["--system"], polkit=False)  # type: ignore[arg-type]
        watcher = NameWatcher(bus.address)
        w = World(bus, sim, watcher, None)
        w.start_polkit()
        # Root defines it (no polkit asked), so that every role finds it in place.
        sim.root_client.define(name=SHARED, type="i915-GVTg_V5_8", start="manual",
                               domain="win10")
        yield w
    finally:
        if w is not None:
            w.stop_polkit()
        if watcher is not None:
            watcher.close()
        if sim is not None:
            sim.stop()
        mp.undo()
        bus.stop()


def mutating(world: World) -> list[str]:
    exported = manager_methods(world.sim.client)
    missing = set(exported) - READS - set(ACTIONS) - ROOT_ONLY
    assert not missing, f"new Manager methods {missing}: add them to the authorization matrix"
    return [m for m in ORDER if m in exported]


def untouched(world: World) -> tuple[list[tuple[str, str, str]], dict[str, bytes]]:
    return world.sim.write_log(), tree_snapshot(world.sim.config_dir)


ROLES = {
    # role: (uid, polkit grants (None: polkit absent), permitted)
    "root": (0, [], True),
    "user-allowed": (NOBODY, [names.ACTION_MANAGE, names.ACTION_VGPU, names.ACTION_DOMAIN],
                     True),
    "user-denied": (NOBODY, [], False),
    "user-polkit-absent": (NOBODY, None, False),
    "root-polkit-absent": (0, None, True),
}


@pytest.mark.parametrize("role", list(ROLES))
def test_matrix(world: World, role: str) -> None:
    uid, grants, permitted = ROLES[role]
    if grants is None:
        world.stop_polkit()
    else:
        world.start_polkit().allow(grants)
    methods = mutating(world)
    vgpu = f"m-{role}" if permitted else SHARED
    before = untouched(world)
    report = run_caller(world.bus.address, vgpu, methods, uid=uid)
    outcome = {m: (err, text) for m, err, text in report["results"]}
    assert list(outcome) == methods
    if permitted:
        for m in methods:
            if m in ROOT_ONLY and uid != 0:
                assert outcome[m][0] == names.ACCESS_DENIED, (m, outcome[m])
            elif m in MUST_SUCCEED:
                assert outcome[m] == ("", ""), (m, outcome[m])
            else:
                assert outcome[m][0] != names.ACCESS_DENIED, (m, outcome[m])
        assert len(world.sim.write_log()) > len(before[0])
        return
    for m in methods:
        err, text = outcome[m]
        assert err == names.ACCESS_DENIED, (m, outcome[m])
        if m in ROOT_ONLY:
            continue  # the bus refused it, in its own words
        assert "Not authorized" in text
        assert ("polkit is not running" in text) == (grants is None), text
    assert untouched(world) == before


def test_polkit_subject_is_the_caller_not_gvtd(world: World) -> None:
    """What polkit is asked about, seen on the bus: the caller's unique name, the action of
    each method, details naming the vGPU or domain, and the interactive flag passed on."""
    polkit = world.start_polkit()
    polkit.allow([names.ACTION_MANAGE, names.ACTION_VGPU, names.ACTION_DOMAIN])
    methods = [m for m in mutating(world) if m not in ROOT_ONLY]  # never asked: root's
    gvtd = world.watcher.owner(names.BUS_NAME)
    monitor = Monitor(world.bus.address, [
        f"type='method_call',destination='{POLKIT}',member='CheckAuthorization'"])
    try:
        plain = run_caller(world.bus.address, "subject", methods, uid=NOBODY)
        interactive = run_caller(world.bus.address, "subject", ["Reload"], uid=NOBODY,
                                 interactive=True)
        seen = monitor.wait_calls(sum(len(ACTIONS[m]) for m in methods) + 1)
    finally:
        monitor.close()
    assert plain["unique_name"] != gvtd and interactive["unique_name"] != gvtd
    asked = [(m, action) for m in methods for action in ACTIONS[m]]
    expected = [(plain["unique_name"], action, 0) for _, action in asked] + \
        [(interactive["unique_name"], names.ACTION_MANAGE, 1)]
    got = []
    for msg in seen:
        assert msg.sender == gvtd  # gvtd asks ...
        (kind, subject), action, details, flags, _ = msg.body
        assert kind == "system-bus-name"
        got.append((subject["name"].value, action, flags))  # ... about its caller
    assert got == expected
    details = {ma: msg.body[2] for ma, msg in zip(asked, seen)}
    assert details["NewDomain", names.ACTION_MANAGE] == {"vgpu": "subject",
                                                         "domain": "subject"}
    assert details["NewDomain", names.ACTION_DOMAIN] == {"domain": "subject"}
    details = {m: d for (m, _), d in details.items() if m != "NewDomain"}
    assert details["Define"] == {"vgpu": "subject", "domain": "win10"}
    assert details["CreateVGPU"] == details["RemoveVGPU"] == {"vgpu": "subject"}
    assert details["Reload"] == {}
    for m in ("StartDomain", "StopDomain", "TuneDomain"):
        if m in details:
            assert details[m] == {"domain": "win10"}
    for m in ("AttachVGPU", "DetachVGPU"):
        if m in details:
            assert details[m] == {"domain": "win10", "vgpu": "subject"}


def test_reads_stay_open_and_the_rest_is_closed(world: World) -> None:
    """nobody may read everything but may not call what the policy does not list."""
    code = """if True:
        import asyncio, sys
        from dbus_fast import Message, MessageType, Variant
        from dbus_fast.aio import MessageBus
        async def go():
            bus = await MessageBus(bus_address=sys.argv[1]).connect()
            def m(iface, member, sig="", body=()):
                return Message(destination="io.github.gvtd1", path="/io/github/gvtd1",
                               interface=iface, member=member, signature=sig, body=list(body))
            for msg in (m("org.freedesktop.DBus.ObjectManager", "GetManagedObjects"),
                        m("org.freedesktop.DBus.Properties", "GetAll", "s",
                          ["io.github.gvtd1.Manager"]),
                        m("org.freedesktop.DBus.Introspectable", "Introspect"),
                        m("org.freedesktop.DBus.Peer", "Ping"),
                        m("io.github.gvtd1.Manager", "Diagnose"),
                        m("org.freedesktop.DBus.Properties", "Set", "ssv",
                          ["io.github.gvtd1.Manager", "State", Variant("s", "x")]),
                        m("org.example.Other", "Anything")):
                r = await bus.call(msg)
                print(msg.member, r.error_name or "ok")
        asyncio.run(go())
    """
    out = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                          "--clear-groups", sys.executable, "-c", code, world.bus.address],
                         capture_output=True, text=True, timeout=30, cwd="/")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:-1] == [
        "GetManagedObjects ok", "GetAll ok", "Introspect ok", "Ping ok", "Diagnose ok",
        f"Set {names.ACCESS_DENIED}", f"Anything {names.ACCESS_DENIED}"]


def test_only_root_may_own_the_name(world: World) -> None:
    code = """if True:
        import asyncio, sys
        from dbus_fast.aio import MessageBus
        from dbus_fast.errors import DBusError
        async def go():
            bus = await MessageBus(bus_address=sys.argv[1]).connect()
            try:
                print(await bus.request_name("io.github.gvtd1"))
            except DBusError as e:
                print(e.type)
        asyncio.run(go())
    """
    out = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                          "--clear-groups", sys.executable, "-c", code, world.bus.address],
                         capture_output=True, text=True, timeout=30, cwd="/")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == names.ACCESS_DENIED
    assert world.watcher.owner(names.BUS_NAME)  # gvtd still owns it


def test_polkit_going_away_and_coming_back(world: World) -> None:
    """polkit stops (an upgrade, a crash): callers that need it get AccessDenied saying it
    is not running, and nothing is written; when it is back, it decides again, under its
    new unique name on the bus."""
    grants = [names.ACTION_VGPU]
    world.start_polkit().allow(grants)
    members = ["CreateVGPU", "RemoveVGPU"]
    before = run_caller(world.bus.address, SHARED, members, uid=NOBODY)
    assert before["results"] == [[m, "", ""] for m in members]
    first = world.watcher.owner(POLKIT)

    world.stop_polkit()
    written = untouched(world)
    away = run_caller(world.bus.address, SHARED, members, uid=NOBODY)
    for member, err, text in away["results"]:
        assert err == names.ACCESS_DENIED and "polkit is not running" in text, (member, text)
    assert untouched(world) == written
    assert run_caller(world.bus.address, SHARED, ["CreateVGPU"])["results"] == \
        [["CreateVGPU", "", ""]]  # root still may
    assert world.sim.client.vgpus()[SHARED]["State"] == "active"

    world.start_polkit().allow(grants)
    assert world.watcher.owner(POLKIT) != first
    back = run_caller(world.bus.address, SHARED, ["RemoveVGPU", "CreateVGPU", "RemoveVGPU"],
                      uid=NOBODY)
    assert [r[1] for r in back["results"]] == ["", "", ""]
    assert world.sim.client.vgpus()[SHARED]["State"] == "inactive"
