"""Host suspend with vGPUs: gvtd against python-dbusmock's logind on a private system bus,
over the emulated kernel and the libvirt test driver."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from dbus_fast import Message

from gvtd import names
from gvtd.suspend import DELAY_SHARE, DELAY_WHY
from harness import DBusDaemon, Simulation, plain
from logind import Logind

RUNNING = "fff6f017-3417-4ad3-b05e-17ae3e1a4615"  # win10's vGPU
IDLE = "11111111-2222-4333-8444-555555555555"
SPARE = "22222222-3333-4444-8555-666666666666"  # start = manual, created by hand


def domain(name: str, uuid: str) -> str:
    return (f"<domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>"
            f"<name>{name}</name><memory>1048576</memory><os><type>hvm</type></os>"
            f"<devices><hostdev mode='subsystem' type='mdev' managed='no' model='vfio-pci'>"
            f"<source><address uuid='{uuid}'/></source></hostdev></devices>"
            f"<test:runstate>5</test:runstate></domain>")


def start_gvtd(dbus: DBusDaemon, tmp_path: Path, policy: str = "teardown-idle",
               profile: str = "desktop") -> Simulation:
    node = tmp_path / "node.xml"
    node.write_text("<node>" + domain("win10", RUNNING) + "</node>")
    (tmp_path / "gvtd.toml").write_text(f'libvirt_uri = "test://{node}"\n'
                                        f'suspend = "{policy}"\n')
    sim = Simulation(dbus, profile, config_dir=tmp_path)
    if not manager(sim)["LibvirtConnected"]:
        sim.client.wait_for(lambda m: changed(m, names.ROOT_PATH).get("LibvirtConnected"))
    return sim


def manager(sim: Simulation) -> dict:
    return sim.client.props(names.ROOT_PATH, names.MANAGER_IFACE)


def changed(m: Message, path: str = names.ROOT_PATH) -> dict:
    """The changed properties of a PropertiesChanged signal on path ({} for others)."""
    if m.member != "PropertiesChanged" or m.path != path:
        return {}
    return plain(m.body[1])


def last(sim: Simulation) -> Message | None:
    return sim.client.signals[-1] if sim.client.signals else None


def wait_suspend(sim: Simulation, state: str, after: Message | None = None) -> None:
    """Wait until Manager.Suspend is state: now (without `after`) or by a later signal."""
    if after is None and manager(sim)["Suspend"] == state:
        return
    sim.client.wait_for(lambda m: changed(m, names.ROOT_PATH).get("Suspend") == state,
                        after=after)


def writes(sim: Simulation) -> list[tuple[str, str]]:
    """(what, data) of every create and remove write: ("create", uuid), ("remove", uuid)."""
    out = []
    for path, data, result in sim.write_log():
        assert result == "ok", (path, data, result)
        if path.endswith("/create"):
            out.append(("create", data.strip()))
        elif path.endswith("/remove"):
            out.append(("remove", path.split("/")[-2]))
    return out


def setup_vgpus(sim: Simulation) -> str:
    """win10 running with its vGPU, an idle auto vGPU, a manual one created by hand and a
    foreign mdev; returns the foreign UUID."""
    c = sim.client
    c.define(name="win10", type="i915-GVTg_V5_4", uuid=RUNNING, domain="win10")
    c.define(name="idle", type="i915-GVTg_V5_8", uuid=IDLE)
    c.define(name="spare", type="i915-GVTg_V5_8", uuid=SPARE, start="manual")
    c.call("CreateVGPU", "s", ["spare"])
    c.call("StartDomain", "sa{sv}", ["win10", {}])
    return sim.sim_call("AddForeignMdev", "ss", ["0000:00:02.0", "i915-GVTg_V5_8"])[0]


def test_sleep_removes_idle_vgpus_and_resume_recreates_them(
        dbus: DBusDaemon, system_bus: DBusDaemon, tmp_path: Path) -> None:
    logind = Logind(system_bus)
    sim = start_gvtd(dbus, tmp_path)
    try:
        wait_suspend(sim, "on")
        assert logind.inhibit_calls() == [["sleep", "gvtd", DELAY_WHY, "delay"]]
        assert logind.inhibitors() == [("sleep", "gvtd", DELAY_WHY, "delay")]
        foreign = setup_vgpus(sim)
        before = writes(sim)

        mark = last(sim)
        logind.prepare_for_sleep(True)
        wait_suspend(sim, "sleeping", after=mark)
        assert logind.inhibitors() == []  # the delay lock is released
        # the idle vGPUs went; win10's (its domain runs) and the foreign mdev stayed
        assert sorted(writes(sim)[len(before):]) == [("remove", IDLE), ("remove", SPARE)]
        v = sim.client.vgpus()
        assert (v["idle"]["State"], v["spare"]["State"]) == ("inactive", "inactive")
        assert v["win10"]["State"] == "active" and v[foreign]["State"] == "active"
        # announced as it happened
        assert [m for m in sim.client.signals if changed(m, names.vgpu_path(IDLE))
                .get("State") == "inactive"]

        asleep = writes(sim)
        mark = last(sim)
        logind.prepare_for_sleep(False)
        wait_suspend(sim, "on", after=mark)
        assert sorted(writes(sim)[len(asleep):]) == [("create", IDLE), ("create", SPARE)]
        v = sim.client.vgpus()
        assert all(v[n]["State"] == "active" for n in ("idle", "spare", "win10", foreign))
        assert logind.inhibit_calls() == [["sleep", "gvtd", DELAY_WHY, "delay"]] * 2
        assert logind.inhibitors() == [("sleep", "gvtd", DELAY_WHY, "delay")]
        assert not [p for p in manager(sim)["Problems"] if p[0].startswith("suspend:")]

        # a manual vGPU removed on request before sleep is not brought back by a resume
        sim.client.call("RemoveVGPU", "s", ["spare"])
        mark = last(sim)
        logind.prepare_for_sleep(True)
        wait_suspend(sim, "sleeping", after=mark)
        logind.prepare_for_sleep(False)
        wait_suspend(sim, "on", after=mark)
        assert sim.client.vgpus()["spare"]["State"] == "inactive"
        assert sim.client.vgpus()["idle"]["State"] == "active"
    finally:
        sim.stop()
        logind.stop()


def test_failed_recreation_is_a_problem_and_last_error(
        dbus: DBusDaemon, system_bus: DBusDaemon, tmp_path: Path) -> None:
    logind = Logind(system_bus)
    sim = start_gvtd(dbus, tmp_path, profile="default")  # room for one V5_4
    try:
        sim.client.define(name="idle", type="i915-GVTg_V5_4", uuid=IDLE)
        wait_suspend(sim, "on")
        mark = last(sim)
        logind.prepare_for_sleep(True)
        wait_suspend(sim, "sleeping", after=mark)
        # while the host sleeps something else takes the GPU's room
        sim.sim_call("AddForeignMdev", "ss", ["0000:00:02.0", "i915-GVTg_V5_4"])
        logind.prepare_for_sleep(False)
        msg = sim.client.wait_for(lambda m: changed(m, names.vgpu_path(IDLE))
                                  .get("State") == "failed", after=mark)
        assert "Not recreated after the host resumed" in changed(
            msg, names.vgpu_path(IDLE))["LastError"]
        wait_suspend(sim, "on", after=mark)
        m = manager(sim)
        (problem,) = [p for p in m["Problems"] if p[0] == "vgpu:idle"]
        assert problem[1] == "error" and "Not recreated after the host resumed" in problem[2]
        assert m["State"] == "degraded"
    finally:
        sim.stop()
        logind.stop()


def test_hung_removal_releases_the_lock_in_time(
        dbus: DBusDaemon, system_bus: DBusDaemon, tmp_path: Path) -> None:
    delay_max = 4.0
    logind = Logind(system_bus, delay_max_usec=int(delay_max * 1_000_000))
    sim = start_gvtd(dbus, tmp_path)
    try:
        sim.client.define(name="idle", type="i915-GVTg_V5_8", uuid=IDLE)
        wait_suspend(sim, "on")
        sim.sim_call("StallWrites", "s", ["/remove"])
        mark = last(sim)
        started = time.monotonic()
        logind.prepare_for_sleep(True)
        wait_suspend(sim, "sleeping", after=mark)
        took = time.monotonic() - started
        assert delay_max * DELAY_SHARE <= took < delay_max
        assert logind.inhibitors() == []
        (problem,) = [p for p in manager(sim)["Problems"] if p[0] == "suspend:teardown"]
        assert problem[1] == "error" and "idle" in problem[2] and "hung" in problem[2]

        # the kernel comes back around the resume: the removal ends, then the vGPU is
        # recreated (the resume does not wait for it: see test_a_removal_held_through_sleep_...)
        sim.sim_call("ReleaseWrites")
        logind.prepare_for_sleep(False)
        wait_suspend(sim, "on", after=mark)
        gone = sim.client.wait_for(lambda m: changed(m, names.vgpu_path(IDLE)).get("State")
                                   == "inactive", after=mark)
        sim.client.wait_for(lambda m: changed(m, names.vgpu_path(IDLE)).get("State")
                            == "active", after=gone)
        assert writes(sim)[-2:] == [("remove", IDLE), ("create", IDLE)]
        assert sim.client.vgpus()["idle"]["State"] == "active"
        (problem,) = [p for p in manager(sim)["Problems"] if p[0] == "suspend:teardown"]
        assert problem[1] == "warn" and "took" in problem[2]
        assert logind.inhibitors() == [("sleep", "gvtd", DELAY_WHY, "delay")]
    finally:
        sim.sim_call("ReleaseWrites")
        sim.stop()
        logind.stop()


def test_block_while_running_holds_a_block_lock_naming_the_vm(
        dbus: DBusDaemon, system_bus: DBusDaemon, tmp_path: Path) -> None:
    logind = Logind(system_bus)
    sim = start_gvtd(dbus, tmp_path, policy="block-while-running")
    try:
        sim.client.define(name="win10", type="i915-GVTg_V5_4", uuid=RUNNING,
                          start="on-demand", domain="win10")
        wait_suspend(sim, "on")
        assert logind.inhibitors() == [("sleep", "gvtd", DELAY_WHY, "delay")]
        mark, lmark = last(sim), logind.last_signal()
        sim.client.call("StartDomain", "sa{sv}", ["win10", {}])
        what, who, why, mode = logind.wait_inhibit("block", after=lmark)
        assert (what, who, mode) == ("sleep", "gvtd", "block") and "win10" in why
        wait_suspend(sim, "blocked", after=mark)
        assert ("sleep", "gvtd", why, "block") in logind.inhibitors()

        mark = last(sim)
        sim.client.call("StopDomain", "sa{sv}", ["win10", {}])
        wait_suspend(sim, "on", after=mark)
        assert logind.inhibitors() == [("sleep", "gvtd", DELAY_WHY, "delay")]
        assert [c[3] for c in logind.inhibit_calls()] == ["delay", "block"]
    finally:
        sim.stop()
        logind.stop()


def test_ignore_takes_no_lock(dbus: DBusDaemon, system_bus: DBusDaemon,
                              tmp_path: Path) -> None:
    logind = Logind(system_bus)
    sim = start_gvtd(dbus, tmp_path, policy="ignore")
    try:
        sim.client.define(name="idle", type="i915-GVTg_V5_8", uuid=IDLE)
        m = manager(sim)
        assert m["Suspend"] == "off" and m["Problems"] == []
        assert logind.inhibit_calls() == [] and logind.inhibitors() == []
    finally:
        sim.stop()
        logind.stop()


def test_logind_absent_at_start(dbus: DBusDaemon, system_bus: DBusDaemon,
                                tmp_path: Path) -> None:
    logind = Logind(system_bus, start=False)
    sim = start_gvtd(dbus, tmp_path)
    try:
        if not [p for p in manager(sim)["Problems"] if p[0] == "suspend:logind"]:
            sim.client.wait_for(lambda m: any(p[0] == "suspend:logind" for p in changed(
                m, names.ROOT_PATH).get("Problems", [])))
        m = manager(sim)
        (problem,) = [p for p in m["Problems"] if p[0] == "suspend:logind"]
        assert problem[1] == "warn" and "logind is not running" in problem[2]
        assert (m["State"], m["Suspend"]) == ("running", "off")
        sim.client.define(name="idle", type="i915-GVTg_V5_8", uuid=IDLE)  # gvtd works

        # logind starting later is noticed: the lock is taken, the problem goes
        mark = last(sim)
        logind.start()
        wait_suspend(sim, "on", after=mark)
        assert logind.inhibitors() == [("sleep", "gvtd", DELAY_WHY, "delay")]
        assert not [p for p in manager(sim)["Problems"] if p[0] == "suspend:logind"]
    finally:
        sim.stop()
        logind.stop()


def test_no_system_bus(dbus: DBusDaemon, tmp_path: Path,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path}/no-such-socket")
    sim = start_gvtd(dbus, tmp_path)
    try:
        if not [p for p in manager(sim)["Problems"] if p[0] == "suspend:logind"]:
            sim.client.wait_for(lambda m: any(p[0] == "suspend:logind" for p in changed(
                m, names.ROOT_PATH).get("Problems", [])))
        m = manager(sim)
        (problem,) = [p for p in m["Problems"] if p[0] == "suspend:logind"]
        assert "system bus is unreachable" in problem[2]
        assert (m["State"], m["Suspend"]) == ("running", "off")
    finally:
        sim.stop()


def test_libvirt_unreachable_removes_nothing(dbus: DBusDaemon, system_bus: DBusDaemon,
                                             tmp_path: Path) -> None:
    """Without libvirt gvtd cannot tell which vGPUs running VMs use: it removes none, and
    says so."""
    logind = Logind(system_bus)
    (tmp_path / "gvtd.toml").write_text('libvirt_uri = "test:///nonexistent/node.xml"\n')
    sim = Simulation(dbus, "desktop", config_dir=tmp_path)
    try:
        sim.client.define(name="idle", type="i915-GVTg_V5_8", uuid=IDLE)
        wait_suspend(sim, "on")
        assert manager(sim)["LibvirtConnected"] is False
        mark = last(sim)
        logind.prepare_for_sleep(True)
        wait_suspend(sim, "sleeping", after=mark)
        assert logind.inhibitors() == []
        assert [w for w in writes(sim) if w[0] == "remove"] == []
        (problem,) = [p for p in manager(sim)["Problems"] if p[0] == "suspend:teardown"]
        assert problem[1] == "warn" and "libvirt was unreachable" in problem[2]
        logind.prepare_for_sleep(False)
        wait_suspend(sim, "on", after=mark)
        assert sim.client.vgpus()["idle"]["State"] == "active"
    finally:
        sim.stop()
        logind.stop()


def remove_results(sim: Simulation) -> list[tuple[str, str]]:
    """(uuid, result) of every write to an mdev's remove, refused ones included."""
    return [(p.split("/")[-2], r) for p, _, r in sim.write_log() if p.endswith("/remove")]


def test_a_removal_refused_before_sleep_stays_and_is_reported(
        dbus: DBusDaemon, system_bus: DBusDaemon, tmp_path: Path) -> None:
    """EBUSY from the kernel before sleep: the host sleeps on time, the vGPU stays (shown
    active, LastError and Problems say why), the others go and come back, and after resume
    nothing is recreated in its place: nothing lost."""
    logind = Logind(system_bus)
    sim = start_gvtd(dbus, tmp_path)
    try:
        sim.client.define(name="idle", type="i915-GVTg_V5_8", uuid=IDLE)
        sim.client.define(name="spare", type="i915-GVTg_V5_8", uuid=SPARE)
        wait_suspend(sim, "on")
        sim.sim_call("RefuseRemove", "su", [IDLE, 1])
        mark = last(sim)
        logind.prepare_for_sleep(True)
        wait_suspend(sim, "sleeping", after=mark)
        assert logind.inhibitors() == []
        assert remove_results(sim) == [(IDLE, "EBUSY"), (SPARE, "ok")]
        v = sim.client.vgpus()
        assert v["idle"]["State"] == "active" and "EBUSY" in v["idle"]["LastError"]
        assert v["spare"]["State"] == "inactive"
        problems = {p[0]: p for p in manager(sim)["Problems"]}
        assert problems["suspend:teardown"][1] == "warn"
        assert "idle could not be removed" in problems["suspend:teardown"][2]

        logind.prepare_for_sleep(False)
        wait_suspend(sim, "on", after=mark)
        v = sim.client.vgpus()
        assert (v["idle"]["State"], v["spare"]["State"]) == ("active", "active")
        assert [w for w in sim.write_log() if w[0].endswith("/create")][-1][1].strip() == SPARE
        assert remove_results(sim) == [(IDLE, "EBUSY"), (SPARE, "ok")]
    finally:
        sim.stop()
        logind.stop()


def test_a_removal_held_through_sleep_and_resume(
        dbus: DBusDaemon, system_bus: DBusDaemon, tmp_path: Path) -> None:
    """QEMU holds a vGPU open before sleep: the host sleeps within gvtd's budget, gvtd keeps
    answering, and the resume neither waits for the kernel nor removes anything more; once
    the remove goes through, that vGPU is recreated too."""
    delay_max = 4.0
    logind = Logind(system_bus, delay_max_usec=int(delay_max * 1_000_000))
    sim = start_gvtd(dbus, tmp_path)
    try:
        sim.client.define(name="idle", type="i915-GVTg_V5_8", uuid=IDLE)
        sim.client.define(name="spare", type="i915-GVTg_V5_8", uuid=SPARE)
        wait_suspend(sim, "on")
        sim.sim_call("HoldRemove", "s", [IDLE])  # removed first: UUIDs in order
        mark = last(sim)
        started = time.monotonic()
        logind.prepare_for_sleep(True)
        wait_suspend(sim, "sleeping", after=mark)
        assert time.monotonic() - started < delay_max
        assert logind.inhibitors() == []
        (problem,) = [p for p in manager(sim)["Problems"] if p[0] == "suspend:teardown"]
        assert problem[1] == "error" and "idle" in problem[2]
        sim.client.call("Diagnose", timeout=10)  # not wedged behind the kernel
        assert sim.client.vgpus()["idle"]["State"] == "active"

        logind.prepare_for_sleep(False)
        wait_suspend(sim, "on", after=mark)  # without waiting for the held remove
        assert logind.inhibitors() == [("sleep", "gvtd", DELAY_WHY, "delay")]
        v = sim.client.vgpus()
        assert (v["idle"]["State"], v["spare"]["State"]) == ("active", "active")

        sim.sim_call("ReleaseWrites")  # QEMU lets go after the resume
        gone = sim.client.wait_for(lambda m: changed(m, names.vgpu_path(IDLE)).get("State")
                                   == "inactive", after=mark)
        sim.client.wait_for(lambda m: changed(m, names.vgpu_path(IDLE)).get("State")
                            == "active", after=gone)
        assert writes(sim)[-2:] == [("remove", IDLE), ("create", IDLE)]
        assert ("remove", SPARE) not in writes(sim)  # nothing removed after the resume
        assert sim.client.vgpus()["idle"]["LastError"] == ""
    finally:
        sim.sim_call("ReleaseWrites")
        sim.stop()
        logind.stop()


def test_an_adopted_mdev_stays_through_sleep(
        dbus: DBusDaemon, system_bus: DBusDaemon, tmp_path: Path) -> None:
    """An mdev someone else made, then named by a definition, is not gvtd's to remove: it
    stays through the teardown before sleep, while the idle vGPU gvtd created goes and
    comes back."""
    logind = Logind(system_bus)
    sim = start_gvtd(dbus, tmp_path)
    try:
        theirs = sim.sim_call("AddForeignMdev", "ss", ["0000:00:02.0", "i915-GVTg_V5_8"])[0]
        sim.client.define(name="theirs", type="i915-GVTg_V5_8", uuid=theirs)
        sim.client.define(name="idle", type="i915-GVTg_V5_8", uuid=IDLE)
        wait_suspend(sim, "on")
        assert sim.client.vgpus()["theirs"]["Origin"] == "adopted"
        mark = last(sim)
        logind.prepare_for_sleep(True)
        wait_suspend(sim, "sleeping", after=mark)
        assert remove_results(sim) == [(IDLE, "ok")]
        v = sim.client.vgpus()
        assert (v["theirs"]["State"], v["idle"]["State"]) == ("active", "inactive")
        logind.prepare_for_sleep(False)
        wait_suspend(sim, "on", after=mark)
        v = sim.client.vgpus()
        assert (v["theirs"]["State"], v["idle"]["State"]) == ("active", "active")
        assert (v["theirs"]["Origin"], v["idle"]["Origin"]) == ("adopted", "created")
        assert remove_results(sim) == [(IDLE, "ok")]
    finally:
        sim.stop()
        logind.stop()
