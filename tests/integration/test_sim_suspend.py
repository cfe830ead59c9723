"""The simulation's own logind: `gvtd --simulate` runs python-dbusmock's logind template on
a bus of its own, and Simulator.PrepareForSleep makes it announce sleep and resume; gvtd
removes its idle vGPU before sleep and recreates it after, as on a laptop."""

from __future__ import annotations

import pytest

from gvtd import names
from harness import CallError, DBusDaemon, Simulation
from test_suspend import changed, last, manager


def removes_and_creates(sim: Simulation) -> list[tuple[str, str]]:
    out = []
    for path, data, result in sim.write_log():
        if path.endswith("/create"):
            out.append(("create", data.strip()))
        elif path.endswith("/remove"):
            out.append(("remove", path.split("/")[-2]))
    return out


def test_simulated_sleep_removes_the_idle_vgpu_and_resume_recreates_it(
        dbus: DBusDaemon, monkeypatch: pytest.MonkeyPatch) -> None:
    # no system bus given: the simulation brings its own, with logind on it
    monkeypatch.delenv("DBUS_SYSTEM_BUS_ADDRESS", raising=False)
    sim = Simulation(dbus)
    try:
        if manager(sim)["Suspend"] != "on":
            sim.client.wait_for(lambda m: changed(m, names.ROOT_PATH).get("Suspend") == "on")
        assert not [p for p in manager(sim)["Problems"] if p[0].startswith("suspend:")]
        sim.client.define(name="idle", type="i915-GVTg_V5_8")
        uuid = sim.client.vgpus()["idle"]["UUID"]
        path = names.vgpu_path(uuid)
        before = removes_and_creates(sim)

        mark = last(sim)
        sim.sim_call("PrepareForSleep", "b", [True])
        sim.client.wait_for(lambda m: changed(m, path).get("State") == "inactive", after=mark)
        sim.client.wait_for(lambda m: changed(m, names.ROOT_PATH).get("Suspend") == "sleeping",
                            after=mark)
        assert removes_and_creates(sim)[len(before):] == [("remove", uuid)]

        mark = last(sim)
        sim.sim_call("PrepareForSleep", "b", [False])
        sim.client.wait_for(lambda m: changed(m, path).get("State") == "active", after=mark)
        sim.client.wait_for(lambda m: changed(m, names.ROOT_PATH).get("Suspend") == "on",
                            after=mark)
        assert removes_and_creates(sim)[len(before):] == [("remove", uuid), ("create", uuid)]
        assert sim.client.vgpus()["idle"]["State"] == "active"
    finally:
        sim.stop()


def test_without_its_own_logind_the_control_says_why(sim: Simulation) -> None:
    """The tests' system bus (conftest) is someone else's logind: the Simulator cannot
    speak for it, and says where to send the signal instead."""
    with pytest.raises(CallError) as e:
        sim.sim_call("PrepareForSleep", "b", [True])
    assert e.value.name == names.ERROR_PREFIX + "Failed"
    assert "no logind of its own" in e.value.text and "DBUS_SYSTEM_BUS_ADDRESS" in e.value.text
