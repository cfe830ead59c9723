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


@pytest.mark.parametrize("phase", ["before", "after"])
def test_killed_in_a_batch_of_creates(sim: Simulation, phase: str) -> None:
    """A reload that creates three vGPUs records all three in one write before the first
    create; killed at that create, the restart leaks none and creates none twice. The GPU
    has room for two: the third's record is dropped again, since it was never made."""
    uuids = [f"fff6f017-3417-4ad3-b05e-17ae3e1a46{i:02}" for i in range(3)]
    (sim.config_dir / "vgpus.d").mkdir(exist_ok=True)
    for i, u in enumerate(uuids):
        (sim.config_dir / "vgpus.d" / f"vm{i}.toml").write_text(
            f'uuid = "{u}"\ntype = "i915-GVTg_V5_8"\n')
    sim.sim_call("KillOnWrite", "ss", ["/create", phase])
    with pytest.raises(CallError):
        sim.client.call("Reload")
    restarted(sim)
    v = sim.client.vgpus()
    assert [v[n]["State"] for n in ("vm0", "vm1", "vm2")] == ["active", "active", "failed"]
    assert "No room" in v["vm2"]["LastError"]
    made = uuids[:2]
    assert sorted(p.name for p in (sim.root / "sys/bus/mdev/devices").iterdir()) == made
    assert sorted(c for c in creates(sim) if c[1] == "ok") == [(u, "ok") for u in made]
    assert owned(sim) == {made[0]: "vm0", made[1]: "vm1"}


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


def test_full_or_read_only_configuration(dbus, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The disk filling up or turning read-only: a named error, the old files intact, no
    temporary file left, and gvtd keeps running."""
    import os
    import subprocess

    from harness import tree_snapshot

    etc = tmp_path / "etc"
    etc.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "gvtd-test", str(etc)], check=True)
    sim = None
    try:
        sim = Simulation(dbus, config_dir=etc)
        sim.client.define(name="a", type="i915-GVTg_V5_8", uuid=U)
        sim.client.define(name="m", type="i915-GVTg_V5_8", start="manual")
        before = tree_snapshot(etc)
        fd = os.open(etc / "filler", os.O_WRONLY | os.O_CREAT)  # fill the file system
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        before["filler"] = (etc / "filler").read_bytes()
        with pytest.raises(CallError) as e:
            sim.client.define(name="b", type="i915-GVTg_V5_8")
        assert e.value.name == names.ERROR_PREFIX + "Failed"
        assert "No space left on device" in e.value.text and "Nothing was changed" in e.value.text
        assert tree_snapshot(etc) == before  # a.toml intact, no temporary file
        with pytest.raises(CallError) as e:  # no room to record it as gvtd's: not created
            sim.client.call("CreateVGPU", "s", ["m"])
        assert "it was not created" in e.value.text
        assert len(creates(sim)) == 1 and sim.client.vgpus()["m"]["State"] == "failed"
        (etc / "filler").unlink()
        subprocess.run(["mount", "-o", "remount,ro", str(etc)], check=True)
        with pytest.raises(CallError) as e:
            sim.client.define(name="c", type="i915-GVTg_V5_8")
        assert "Read-only file system" in e.value.text
        assert sim.client.vgpus()["a"]["State"] == "active"  # still running, still right
    finally:
        if sim is not None:
            sim.stop()
        subprocess.run(["umount", "-l", str(etc)], check=False)
