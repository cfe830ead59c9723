"""gvt-client against the simulated daemon: output, JSON, exit codes, messages."""

import json
import subprocess
import sys

from harness import Simulation

UUID = "fff6f017-3417-4ad3-b05e-17ae3e1a4615"


def test_define_list_types_parents_status(sim: Simulation) -> None:
    out = sim.gvt_client("define", "win10", "--min-resolution", "1920x1200", "--uuid", UUID,
                         "--domain", "win10", check=True).stdout
    assert "Defined win10" in out
    listed = json.loads(sim.gvt_client("list", "--json", check=True).stdout)
    assert listed == [{"name": "win10", "uuid": UUID, "parent": "0000:00:02.0",
                       "type": "i915-GVTg_V5_4", "state": "active", "start": "auto",
                       "domain": "win10", "managed": True, "origin": "created",
                       "last_error": "", "health": "ok", "health_message": "",
                       "health_time": ""}]
    table = sim.gvt_client("list", check=True).stdout.splitlines()
    assert table[0].split() == ["NAME", "UUID", "TYPE", "PARENT", "STATE", "START", "DOMAIN",
                                 "ORIGIN", "HEALTH"]
    assert table[1].split()[:5] == ["win10", UUID, "i915-GVTg_V5_4", "0000:00:02.0", "active"]
    types = json.loads(sim.gvt_client("types", "--json", check=True).stdout)
    v4 = next(t for t in types if t["id"] == "i915-GVTg_V5_4")
    assert (v4["available"], v4["low_gm_mb"], v4["resolution"]) == (0, 128, "1920x1200")
    parents = json.loads(sim.gvt_client("parents", "--json", check=True).stdout)
    assert [(p["address"], p["platform"], p["registered"]) for p in parents] == \
        [("0000:00:02.0", "Kaby Lake", True)]
    status = json.loads(sim.gvt_client("status", "--json", check=True).stdout)
    assert status["state"] == "running" and status["problems"] == []


def test_create_remove_undefine_round_trip(sim: Simulation) -> None:
    sim.gvt_client("define", "m", "--type", "i915-GVTg_V5_8", "--start", "manual", check=True)
    assert sim.client.vgpus()["m"]["State"] == "inactive"
    sim.gvt_client("create", "m", check=True)
    assert sim.client.vgpus()["m"]["State"] == "active"
    sim.gvt_client("remove", "m", check=True)
    assert sim.client.vgpus()["m"]["State"] == "inactive"
    sim.gvt_client("undefine", "m", check=True)
    assert "m" not in sim.client.vgpus()


def test_failures_are_one_line_exit_1(sim: Simulation) -> None:
    for args in (["create", "nope"], ["undefine", "nope"],
                 ["define", "a b", "--type", "i915-GVTg_V5_4"],
                 ["define", "x", "--type", "i915-GVTg_V5_4", "--uuid", UUID.upper()]):
        p = sim.gvt_client(*args)
        assert p.returncode == 1, args
        assert p.stderr.startswith("gvt-client: ") and p.stderr.count("\n") == 1, p.stderr
        assert "Traceback" not in p.stderr


def test_usage_errors_exit_2(sim: Simulation) -> None:
    for args in (["bogus"], ["define", "x"], ["define", "x", "--type", "a", "--min-resolution",
                                              "1x1"], ["define", "x", "--type", "a", "--attr", "noequals"]):
        p = sim.gvt_client(*args)
        assert p.returncode == 2, args
        assert "Traceback" not in p.stderr


def test_daemon_not_running(dbus) -> None:  # type: ignore[no-untyped-def]
    import os

    env = dict(os.environ, DBUS_SESSION_BUS_ADDRESS=dbus.address)
    p = subprocess.run([sys.executable, "-m", "gvtd.client.main", "--session", "list"],
                       env=env, capture_output=True, text=True)
    assert p.returncode == 1
    assert "gvtd is not running" in p.stderr and "Traceback" not in p.stderr


def test_no_bus_at_all() -> None:
    import os

    env = dict(os.environ, DBUS_SESSION_BUS_ADDRESS="unix:path=/nonexistent/bus")
    p = subprocess.run([sys.executable, "-m", "gvtd.client.main", "--session", "status"],
                       env=env, capture_output=True, text=True)
    assert p.returncode == 1
    assert "Cannot connect to the D-Bus session bus" in p.stderr and "Traceback" not in p.stderr


def test_help_teaches() -> None:
    p = subprocess.run([sys.executable, "-m", "gvtd.client.main", "--help"],
                       capture_output=True, text=True, check=True)
    for word in ("define", "list", "types", "--session", "examples:"):
        assert word in p.stdout
