"""gvtd killed (SIGKILL) at each step of a create and a remove: after the restart there is
exactly one mdev per definition, none leaked, none created twice."""

import json

import pytest

from gvtd import names
from harness import CallError, Simulation

U = "fff6f017-3417-4ad3-b05e-17ae3e1a4615"


def restarted(sim: Simulation) -> None:
    """Wait until gvtd owns its name again: it takes the name only after reconciling."""
    sim.client.call("AddMatch", "s", ["type='signal',sender='org.freedesktop.DBus',"
                                      f"member='NameOwnerChanged',arg0='{names.BUS_NAME}'"],
                    dest="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                    iface="org.freedesktop.DBus")
    sim.client.wait_for(lambda m: m.member == "NameOwnerChanged" and m.body[0] == names.BUS_NAME
                        and m.body[2] != "")


def creates(sim: Simulation) -> list[tuple[str, str]]:
    return [(w[1], w[2]) for w in sim.write_log() if w[0].endswith("/create")]


def owned(sim: Simulation) -> dict[str, str]:
    return json.loads((sim.state_dir / "created.json").read_text())["created"]


@pytest.mark.parametrize("phase", ["before", "after"])
def test_killed_around_the_create_write(sim: Simulation, phase: str) -> None:
    sim.sim_call("KillOnWrite", "ss", ["/create", phase])
    with pytest.raises(CallError):  # gvtd died while answering
        sim.client.define(name="win10", type="i915-GVTg_V5_4", uuid=U)
    restarted(sim)
    v = sim.client.vgpus()["win10"]
    assert (v["State"], v["Managed"]) == ("active", True)
    mdevs = [p.name for p in (sim.root / "sys/bus/mdev/devices").iterdir()]
    assert mdevs == [U]  # exactly one, none leaked
    ok = [c for c in creates(sim) if c[1] == "ok"]
    assert ok == [(U, "ok")]  # created once: adopted after the restart, not created again
    assert owned(sim) == {U: "win10"}  # recorded before the write, so it is gvtd's own
    assert (sim.config_dir / "vgpus.d" / "win10.toml").read_text().count(U) == 1


@pytest.mark.parametrize("phase, state", [("before", "active"), ("after", "inactive")])
def test_killed_around_the_remove_write(sim: Simulation, phase: str, state: str) -> None:
    sim.client.define(name="m", type="i915-GVTg_V5_4", uuid=U, start="manual")
    sim.client.call("CreateVGPU", "s", ["m"])
    sim.sim_call("KillOnWrite", "ss", ["/remove", phase])
    with pytest.raises(CallError):
        sim.client.call("RemoveVGPU", "s", ["m"])
    restarted(sim)
    assert sim.client.vgpus()["m"]["State"] == state
    assert len(list((sim.root / "sys/bus/mdev/devices").iterdir())) == (state == "active")
    assert U in owned(sim)
    assert [c for c in creates(sim) if c[1] == "ok"] == [(U, "ok")]


def test_kill_on_write_checks_its_arguments(sim: Simulation) -> None:
    with pytest.raises(CallError):
        sim.sim_call("KillOnWrite", "ss", ["/create", "during"])


def test_a_vgpu_that_keeps_vanishing_is_not_recreated_forever(sim: Simulation) -> None:
    """Created, then removed at once by the 'driver', again and again: gvtd restores it a
    bounded number of times, then stops and says why."""
    sim.sim_call("VanishAfterCreate", "su", ["i915-GVTg_V5_4", 100])
    path = sim.client.define(name="win10", type="i915-GVTg_V5_4", uuid=U)
    sim.client.wait_for(lambda m: m.member == "PropertiesChanged" and m.path == path
                        and "vanished" not in str(m.body) and
                        "LastError" in m.body[1] and "stopped recreating" in m.body[1]["LastError"].value)
    v = sim.client.vgpus()["win10"]
    assert v["State"] == "failed" and "kernel log" in v["LastError"]
    made = [c for c in creates(sim) if c == (U, "ok")]
    assert len(made) == 4  # the create, then 3 restores: bounded, no storm
    # an explicit create tries again
    sim.sim_call("VanishAfterCreate", "su", ["i915-GVTg_V5_4", 0])
    sim.client.call("CreateVGPU", "s", ["win10"])
    assert sim.client.vgpus()["win10"]["State"] == "active"
