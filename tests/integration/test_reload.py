"""Reload applies what changed in gvtd.toml to the running daemon: restore_removed, the
suspend policy and the libvirt URI at once, a sysfs root at the next restart (said in
Problems and by `gvt-client reload`), and an invalid file not at all. Each change is made
the way a person makes it: edit the file, then Reload as an ordinary user."""

from __future__ import annotations

import queue
import subprocess
import threading
import time
from pathlib import Path

import pytest
from dbus_fast import Message

from gvtd import names
from gvtd.suspend import DELAY_WHY
from harness import TIMEOUT, CallError, DBusDaemon, Simulation
from logind import Logind
from test_suspend import changed, domain, last, manager

WIN10 = "fff6f017-3417-4ad3-b05e-17ae3e1a4615"
WIN11 = "11111111-2222-4333-8444-555555555555"


def node(tmp_path: Path, name: str, uuid: str) -> str:
    """A libvirt test:/// URI whose one domain uses the vGPU uuid."""
    path = tmp_path / f"{name}.xml"
    path.write_text("<node>" + domain(name, uuid) + "</node>")
    return f"test://{path}"


def wait_manager(sim: Simulation, prop: str, value: object,
                 after: Message | None = None) -> Message:
    return sim.client.wait_for(lambda m: changed(m).get(prop, not value) == value, after=after)


def creates(sim: Simulation) -> list[str]:
    return [data.strip() for path, data, _ in sim.write_log() if path.endswith("/create")]


def settings(sim: Simulation, extra: str) -> None:
    """gvtd.toml as the simulation wrote it, with extra lines in place of earlier ones."""
    path = sim.config_dir / "gvtd.toml"
    kept = [line for line in path.read_text().splitlines(keepends=True)
            if not line.startswith(("restore_removed", "sysfs_root"))]
    path.write_text("".join(kept) + extra)


def test_restore_removed_applies_at_reload(sim: Simulation) -> None:
    sim.client.define(name="win10", type="i915-GVTg_V5_4", uuid=WIN10)
    path = names.vgpu_path(WIN10)
    settings(sim, "restore_removed = false\n")
    sim.client.call("Reload")

    mark = last(sim)
    sim.sim_call("RemoveMdev", "s", [WIN10])
    msg = sim.client.wait_for(lambda m: changed(m, path).get("State") in ("failed", "active"),
                              after=mark)
    assert changed(msg, path)["State"] == "failed"
    assert "restore_removed = false" in sim.client.vgpus()["win10"]["LastError"]
    assert creates(sim) == [WIN10]

    # turned on again: the vGPU it left removed comes back with the reload
    settings(sim, "restore_removed = true\n")
    sim.client.call("Reload")
    v = sim.client.vgpus()["win10"]
    assert (v["State"], v["LastError"]) == ("active", "")
    assert creates(sim) == [WIN10, WIN10]


def test_removed_on_request_stays_removed_when_restore_removed_comes_back_on(
        sim: Simulation) -> None:
    settings(sim, "restore_removed = false\n")
    sim.client.call("Reload")
    sim.client.define(name="win10", type="i915-GVTg_V5_4", uuid=WIN10)
    sim.client.call("RemoveVGPU", "s", ["win10"])
    settings(sim, "")
    sim.client.call("Reload")
    assert sim.client.vgpus()["win10"]["State"] == "inactive"
    assert creates(sim) == [WIN10]


def test_libvirt_uri_reconnects_at_reload(dbus: DBusDaemon, tmp_path: Path) -> None:
    old, new = node(tmp_path, "win10", WIN10), node(tmp_path, "win11", WIN11)
    (tmp_path / "gvtd.toml").write_text(f'libvirt_uri = "{old}"\n')
    sim = Simulation(dbus, "desktop", config_dir=tmp_path)
    try:
        if not manager(sim)["LibvirtConnected"]:
            wait_manager(sim, "LibvirtConnected", True)
        assert names.domain_path("win10") in sim.client.objects()
        sim.client.define(name="win10", type="i915-GVTg_V5_4", uuid=WIN10,
                          start="on-demand", domain="win10")
        sim.client.call("StartDomain", "sa{sv}", ["win10", {}])

        (tmp_path / "gvtd.toml").write_text(f'libvirt_uri = "{new}"\n')
        mark = last(sim)
        sim.client.call("Reload")
        lost = wait_manager(sim, "LibvirtConnected", False, after=mark)
        wait_manager(sim, "LibvirtConnected", True, after=lost)
        # win10 runs on, out of sight: its on-demand vGPU stays (a foreign mdev's event,
        # handled after whatever the reconnection set off, marks the end)
        foreign = sim.sim_call("AddForeignMdev", "ss", ["0000:00:02.0", "i915-GVTg_V5_8"])[0]
        sim.client.wait_for(lambda m: m.member == "InterfacesAdded"
                            and m.body[0] == names.vgpu_path(foreign))
        assert sim.client.vgpus()["win10"]["State"] == "active"
        assert not [w for w in sim.write_log() if w[0].endswith("/remove")]
        objects = sim.client.objects()
        assert names.domain_path("win11") in objects
        assert names.domain_path("win10") not in objects
        checks = {c[0]: c for c in sim.client.call("Diagnose")[0]}
        assert checks["libvirt"][1] == "pass" and new.removeprefix("test://") in checks[
            "libvirt"][2]
    finally:
        sim.stop()


def test_invalid_settings_change_nothing_and_reload_says_why(
        dbus: DBusDaemon, tmp_path: Path) -> None:
    old, new = node(tmp_path, "win10", WIN10), node(tmp_path, "win11", WIN11)
    (tmp_path / "gvtd.toml").write_text(f'libvirt_uri = "{old}"\n')
    sim = Simulation(dbus, config_dir=tmp_path)
    try:
        if not manager(sim)["LibvirtConnected"]:
            wait_manager(sim, "LibvirtConnected", True)
        # a valid new URI beside an invalid value, and a new definition written by hand
        (tmp_path / "gvtd.toml").write_text(f'libvirt_uri = "{new}"\n'
                                            'restore_removed = "sometimes"\n')
        (tmp_path / "vgpus.d").mkdir(exist_ok=True)
        (tmp_path / "vgpus.d" / "hand.toml").write_text('type = "i915-GVTg_V5_4"\n')
        mark = last(sim)
        with pytest.raises(CallError) as e:
            sim.client.call("Reload")
        assert e.value.name == names.ERROR_PREFIX + "InvalidArgument"
        assert "restore_removed" in e.value.text and "nothing was reloaded" in e.value.text
        # signals sent before the reply came before it: none says libvirt was left
        after = sim.client.signals[sim.client.signals.index(mark) + 1:] if mark else \
            sim.client.signals
        assert not [m for m in after if "LibvirtConnected" in changed(m)]
        assert "hand" not in sim.client.vgpus() and not creates(sim)
        m = manager(sim)
        assert m["LibvirtConnected"] is True
        (problem,) = [p for p in m["Problems"] if p[0].startswith("config:")]
        assert problem[0].endswith("gvtd.toml") and "restore_removed" in problem[2]

        # fixed: both apply, and the problem is gone
        (tmp_path / "gvtd.toml").write_text(f'libvirt_uri = "{new}"\n')
        mark = last(sim)
        sim.client.call("Reload")
        assert sim.client.vgpus()["hand"]["State"] == "active"
        assert not [p for p in manager(sim)["Problems"] if p[0].startswith("config:")]
        lost = wait_manager(sim, "LibvirtConnected", False, after=mark)
        wait_manager(sim, "LibvirtConnected", True, after=lost)
    finally:
        sim.stop()


def test_sysfs_root_waits_for_a_restart_and_reload_says_so(sim: Simulation) -> None:
    settings(sim, 'sysfs_root = "/elsewhere"\n')
    out = sim.gvt_client("reload", check=True).stdout
    assert "Reloaded the configuration" in out
    assert "sysfs_root" in out and "/elsewhere" in out and "restart" in out
    (problem,) = [p for p in manager(sim)["Problems"] if p[0] == "settings:restart:sysfs_root"]
    assert problem[1] == "warn" and "'/sys'" in problem[2]
    assert manager(sim)["State"] == "running"  # a warning, not a fault
    # gvtd still reads the sysfs it started with
    sim.client.define(name="win10", type="i915-GVTg_V5_4", uuid=WIN10)
    assert sim.client.vgpus()["win10"]["State"] == "active"
    # put back: nothing waits for a restart any more
    settings(sim, "")
    out = sim.gvt_client("reload", check=True).stdout
    assert "restart" not in out
    assert not [p for p in manager(sim)["Problems"] if p[0].startswith("settings:restart")]


def test_suspend_policy_applies_at_reload(dbus: DBusDaemon, system_bus: DBusDaemon,
                                          tmp_path: Path) -> None:
    logind = Logind(system_bus)
    uri = node(tmp_path, "win10", WIN10)
    toml = tmp_path / "gvtd.toml"
    toml.write_text(f'libvirt_uri = "{uri}"\nsuspend = "ignore"\n')
    sim = Simulation(dbus, "desktop", config_dir=tmp_path)
    try:
        if not manager(sim)["LibvirtConnected"]:
            wait_manager(sim, "LibvirtConnected", True)
        assert manager(sim)["Suspend"] == "off" and logind.inhibit_calls() == []
        sim.client.define(name="win10", type="i915-GVTg_V5_4", uuid=WIN10,
                          start="on-demand", domain="win10")
        sim.client.call("StartDomain", "sa{sv}", ["win10", {}])

        # ignore -> the default: the delay lock
        toml.write_text(f'libvirt_uri = "{uri}"\n')
        mark = last(sim)
        sim.client.call("Reload")
        wait_manager(sim, "Suspend", "on", after=mark)
        assert logind.inhibitors() == [("sleep", "gvtd", DELAY_WHY, "delay")]

        # -> block-while-running: the old handling ends, the new one blocks for win10
        toml.write_text(f'libvirt_uri = "{uri}"\nsuspend = "block-while-running"\n')
        mark = last(sim)
        sim.client.call("Reload")
        off = wait_manager(sim, "Suspend", "off", after=mark)
        wait_manager(sim, "Suspend", "blocked", after=off)
        held = sorted(logind.inhibitors(), key=lambda i: i[3])
        assert [i[3] for i in held] == ["block", "delay"] and "win10" in held[0][2]

        # -> ignore: every lock is released
        toml.write_text(f'libvirt_uri = "{uri}"\nsuspend = "ignore"\n')
        mark = last(sim)
        sim.client.call("Reload")
        wait_manager(sim, "Suspend", "off", after=mark)
        assert logind.inhibitors() == []
        assert not [p for p in manager(sim)["Problems"] if p[0].startswith("suspend:")]
        # and the domain's state changes no longer take a lock
        calls = len(logind.inhibit_calls())
        sim.client.call("StopDomain", "sa{sv}", ["win10", {}])
        sim.client.call("StartDomain", "sa{sv}", ["win10", {}])
        assert len(logind.inhibit_calls()) == calls and logind.inhibitors() == []
    finally:
        sim.stop()
        logind.stop()


def test_log_level_applies_at_reload(dbus: DBusDaemon, tmp_path: Path) -> None:
    """log_level = "debug" at a reload: the next uevent is logged, as only debug does."""
    (tmp_path / "gvtd.toml").write_text(f'libvirt_uri = "{node(tmp_path, "win10", WIN10)}"\n')
    sim = Simulation(dbus, config_dir=tmp_path, stderr=subprocess.PIPE)
    lines: queue.Queue[str] = queue.Queue()
    assert sim.proc.stderr is not None
    # drained all along, so that gvtd never waits on a full pipe
    reader = threading.Thread(target=lambda: [lines.put(line.decode(errors="replace"))
                                              for line in sim.proc.stderr], daemon=True)
    reader.start()
    try:
        (tmp_path / "gvtd.toml").write_text(
            f'libvirt_uri = "{node(tmp_path, "win10", WIN10)}"\nlog_level = "debug"\n')
        sim.client.call("Reload")
        uuid = sim.sim_call("AddForeignMdev", "ss", ["0000:00:02.0", "i915-GVTg_V5_8"])[0]
        sim.client.wait_for(lambda m: m.member == "InterfacesAdded"
                            and m.body[0] == names.vgpu_path(uuid))
        deadline = time.monotonic() + TIMEOUT
        while True:  # the line was written before the signal: it is in the pipe
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            if "gvtd: uevent" in line and uuid in line:
                break
    finally:
        sim.stop()
        reader.join(TIMEOUT)


def test_suspend_policy_waits_while_the_host_sleeps(dbus: DBusDaemon, system_bus: DBusDaemon,
                                                    tmp_path: Path) -> None:
    """Between sleep and resume a new policy would drop what gvtd must recreate: Busy, and
    nothing changes; after the resume the same reload applies."""
    logind = Logind(system_bus)
    uri = node(tmp_path, "win10", WIN10)
    toml = tmp_path / "gvtd.toml"
    toml.write_text(f'libvirt_uri = "{uri}"\n')
    sim = Simulation(dbus, config_dir=tmp_path)
    try:
        if not manager(sim)["LibvirtConnected"]:
            wait_manager(sim, "LibvirtConnected", True)
        sim.client.define(name="idle", type="i915-GVTg_V5_8", uuid=WIN11)
        if manager(sim)["Suspend"] != "on":
            wait_manager(sim, "Suspend", "on")
        mark = last(sim)
        logind.prepare_for_sleep(True)
        wait_manager(sim, "Suspend", "sleeping", after=mark)
        assert sim.client.vgpus()["idle"]["State"] == "inactive"

        toml.write_text(f'libvirt_uri = "{uri}"\nsuspend = "ignore"\nrestore_removed = false\n')
        with pytest.raises(CallError) as e:
            sim.client.call("Reload")
        assert e.value.name == names.ERROR_PREFIX + "Busy"
        assert "nothing was changed" in e.value.text and "resumed" in e.value.text
        assert manager(sim)["Suspend"] == "sleeping"

        mark = last(sim)
        logind.prepare_for_sleep(False)
        wait_manager(sim, "Suspend", "on", after=mark)
        assert sim.client.vgpus()["idle"]["State"] == "active"
        mark = last(sim)
        sim.client.call("Reload")
        wait_manager(sim, "Suspend", "off", after=mark)
        assert logind.inhibitors() == []
    finally:
        sim.stop()
        logind.stop()
